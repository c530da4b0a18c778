"""cxr-train: train the cardiomegaly DenseNet-121 into a run directory (defaults = the original recipe).

One option per TrainConfig field, generated from the dataclass so the two never drift; the help text of each is the
field's docstring. Exit codes: 0 trained; 1 a problem the user can fix (bad data, a split without positives, ImageNet
weights unavailable, a run directory that cannot be resumed), printed as `cxr-train: error: ...` without a traceback;
2 usage errors (click); 130 interrupted (resume with --resume RUN_DIR). torch is imported inside the command.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import logging
import math
import os
import sys
import typing
from pathlib import Path

import click

from cxr import __version__
from cxr.cli import FiniteFloat
from cxr.cli.verbosity import setup_logging, verbosity, verbosity_options
from cxr.runtime.errors import CxrError
from cxr.train import config as C
from cxr.train.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
_SPECIAL = {"dataset", "data_root", "csv_path", "extra_sources"}  # given as --data KIND:PATH (repeatable) and --csv
_CHOICES = {"dataset": C.DATASET_KINDS, "arch": C.ARCHS, "optimizer": C.OPTIMIZERS, "amp": C.AMP_MODES,
            "cache_images": C.CACHE_MODES, "uncertain": C.UNCERTAIN_POLICIES,
            "nih_negatives": C.NIH_NEGATIVES, "threshold_method": C.THRESHOLD_METHODS,
            "seg_head": C.SEG_HEAD_MODES, "decision": C.DECISIONS}


class Device(click.ParamType):
    """auto, cpu, cuda or cuda:N."""

    name = "auto|cpu|cuda|cuda:N"

    def convert(self, value, param, ctx):
        if C.is_device_choice(value):
            return value
        self.fail(f"{value!r} is not auto, cpu, cuda or cuda:N (e.g. cuda:1)", param, ctx)


class PosWeight(click.ParamType):
    """'auto', 'none' or a positive number."""

    name = "auto|none|FLOAT"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, float) and math.isfinite(value)):
            return value
        text = str(value).strip().lower()
        if text in ("auto", "none"):
            return None if text == "none" else "auto"
        try:
            number = float(text)
        except ValueError:
            self.fail(f"{value!r} is not auto, none or a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _field_docs() -> dict[str, str]:
    """The docstring under each TrainConfig field (the single source of the option help)."""
    tree = ast.parse(inspect.getsource(C.TrainConfig))
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _option(field: dataclasses.Field, doc: str):
    name = "--" + field.name.replace("_", "-")
    hint = typing.get_type_hints(C.TrainConfig)[field.name]
    kw = {"default": field.default, "show_default": True, "help": doc}
    if field.name == "pos_weight":
        return click.option(name, type=PosWeight(), **{**kw, "default": "none"})
    if field.name == "device":
        return click.option(name, type=Device(), **kw)
    if field.name in _CHOICES:
        return click.option(name, type=click.Choice(_CHOICES[field.name]), **kw)
    if hint is bool:
        return click.option(f"{name}/--no-{name[2:]}", **kw)
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = {int: int, float: FiniteFloat(), str: str}.get(base[0], str)
    return click.option(name, type=kind, **kw)


def _with_config_options(func):
    docs = _field_docs()
    for field in reversed(dataclasses.fields(C.TrainConfig)):
        if field.name not in _SPECIAL:
            func = _option(field, docs.get(field.name, ""))(func)
    return func


def _parse_data(values: tuple[str, ...]) -> list[dict] | None:
    """Each --data KIND:PATH[;key=value...] as a dict (kind, data_root, options); None when none was given."""
    if not values:
        return None
    try:
        specs = [C.parse_source(v) for v in values]
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    for spec in specs:
        spec["data_root"] = str(Path(spec["data_root"]).expanduser().resolve())
        if spec.get("csv_path"):
            spec["csv_path"] = str(Path(spec["csv_path"]).expanduser().resolve())
    return specs


def _first_source(spec: dict, csv_path: Path | None, fields: dict) -> dict:
    """TrainConfig fields of the first --data: its own ;key=value options override the top-level ones."""
    own = {k: v for k, v in spec.items() if k not in ("kind", "data_root", "name")}
    if csv_path is not None and "csv_path" in own:
        raise ConfigError("--csv and --data ...;csv=... both name the first source's labels file; give one")
    out = {"dataset": spec["kind"], "data_root": spec["data_root"],
           "csv_path": None if csv_path is None else str(csv_path.expanduser().resolve())}
    out.update(own)
    if "name" in spec:
        out["source_name"] = spec["name"]
    return {**fields, **out}


def _error(message: str) -> None:
    click.echo(f"cxr-train: error: {message}", err=True)


def _setup_logging(level_name: str) -> None:
    """Per-epoch lines from rank 0; the other ranks show warnings and errors only (unless -v or -q)."""
    rank = int(os.environ.get("RANK", "0"))
    prefix = "cxr-train" if "RANK" not in os.environ else f"cxr-train[{rank}]"
    setup_logging(level_name, prefix, logging.INFO if rank == 0 else logging.WARNING)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.option("--data", "data_spec", metavar="KIND:PATH[;key=value...]", multiple=True,
              help=f"Dataset kind and root, e.g. folder:/data/nih (Cardiomegaly/ and Normal/ subfolders), "
                   f"csv:/data/imgs (with --csv labels.csv), nih:/data/ChestX-ray14, chexpert:/data/CheXpert-v1.0, "
                   f"phantom:DIR (the synthetic set made by cxr-phantom). KIND is one of "
                   f"{', '.join(C.DATASET_KINDS)}. Repeat it to train on several sources at once; each may set its "
                   f"own options after ';', e.g. 'csv:/d/wj;csv=/d/wj/labels.csv;label_column=y;mask_columns=a,b,c;"
                   f"name=wj' (keys: csv, {', '.join(C.SOURCE_OPTIONS[1:])}, name); what a source leaves out comes "
                   f"from the options below (the first source) or their defaults. Splits are by patient within each "
                   f"source and figures are reported per source. Required unless --resume.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Labels CSV (kind csv; optional for nih/chexpert). Columns set by --path-column etc.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory to create (config.json, splits.csv, history.csv, best.pt, last.pt, metrics.json, "
                   "plots). Required unless --resume.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the interrupted run in this directory from its last.pt (optimizer, scheduler, early "
                   f"stopping and RNG state). Only {', '.join(C.RESUMABLE_OVERRIDES)} may be changed.")
@_with_config_options
@verbosity_options
@click.version_option(__version__, prog_name="cxr-train")
@click.pass_context
def main(ctx: click.Context, data_spec: tuple[str, ...], csv_path: Path | None, out: Path | None, resume: Path | None,
         quiet: bool, verbose: bool, **fields) -> None:
    """Train DenseNet-121 to detect cardiomegaly; the defaults are the original recipe (ImageNet init, Adam 1e-5
    with L2 1e-2, batch 32, plateau patience 2 x0.1, early stopping 4, rotation 5 degrees, 224 px).

    \b
    Examples:
      cxr-train --data folder:/data/nih_cardiomegaly --out runs/r1
      cxr-train --data phantom:demo_out/phantom --init random --lr 1e-4 --image-size 128 --out runs/demo
      cxr-train --resume runs/r1
      torchrun --standalone --nproc_per_node 2 -m cxr.cli.train --data folder:/data/nih --out runs/ddp
    Research software, not a medical device.
    """
    _setup_logging(verbosity(quiet, verbose))
    data = _parse_data(data_spec)
    explicit = {k for k in fields if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    try:
        if resume is not None:
            if out is not None and out.resolve() != resume.resolve():
                raise ConfigError(f"--out {out} and --resume {resume} name different run directories")
            if data or csv_path is not None:
                raise ConfigError("--data/--csv cannot change when resuming (the run's splits.csv is used)")
            saved = json.loads((resume / "config.json").read_text(encoding="utf-8"))
            config = C.TrainConfig.from_dict(saved).replace(**{k: fields[k] for k in explicit})
            run_dir = resume
        else:
            if not data or out is None:
                raise click.UsageError("--data KIND:PATH and --out RUN_DIR are required (or --resume RUN_DIR)")
            config = C.TrainConfig(**_first_source(data[0], csv_path, fields), extra_sources=tuple(data[1:]))
            run_dir = out
    except (OSError, json.JSONDecodeError) as exc:
        _error(f"--resume {resume}: cannot read config.json ({exc})")
        sys.exit(EXIT_FAILED)
    except CxrError as exc:
        _error(str(exc))
        sys.exit(EXIT_FAILED)

    from cxr.cli import require_training_extra

    require_training_extra("cxr-train")
    from cxr.train.loop import train

    try:
        summary = train(config, run_dir, resume=resume is not None)
    except (CxrError, FileNotFoundError) as exc:  # a ValueError from anywhere else is a bug: its traceback shows
        _error(str(exc))
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        _error(f"interrupted; continue with: cxr-train --resume {run_dir}")
        sys.exit(EXIT_INTERRUPTED)
    if int(os.environ.get("RANK", "0")) == 0 and not quiet:
        _print_summary(summary)


def _print_summary(summary: dict) -> None:
    def fmt(x) -> str:
        return "n/a" if x is None or x != x else f"{x:.3f}"

    m = summary["metrics"]
    th = summary["threshold"]
    decision = summary.get("decision") or {"mode": "classifier"}
    lines = [f"run: {summary['run_dir']}", f"epochs: {summary['epochs_run']} (best {summary['best_epoch']}"
             f"{', stopped early' if summary['stopped_early'] else ''}) on {summary.get('device', '?')}",
             f"threshold: {th['value']:.4f} ({th['detail']})",
             f"val AUROC {fmt(m['val']['auroc'])}  sensitivity {fmt(m['val']['sensitivity'])}  "
             f"specificity {fmt(m['val']['specificity'])}"]
    if decision["mode"] != "classifier" or "ctr" in (decision.get("validation") or {}).get("auroc", {}):
        cands = (decision.get("validation") or {}).get("auroc", {})
        lines.append(f"decision: {decision['mode']} (validation AUROC " + ", ".join(
            f"{k} {fmt(v)}" for k, v in cands.items()) + f"; {decision['validation'].get('chosen_by', '')})")
    if "test" in m:
        t = m["test"]
        lo, hi = t["auroc_ci95"]
        lines.append(f"test AUROC {fmt(t['auroc'])} (95% CI {fmt(lo)}-{fmt(hi)})  AUPRC {fmt(t['auprc'])}  "
                     f"sensitivity {fmt(t['sensitivity'])}  specificity {fmt(t['specificity'])}  (n={t['n']})")
        for name, s in [("all", t)] + sorted(t.get("by_source", {}).items()):
            parts = [f"n={s.get('n')} ({s.get('n_positive')} positive)"]
            for mode, sc in (s.get("by_score") or {}).items():
                parts.append(f"{mode} {fmt(sc['auroc'])} ({fmt(sc['auroc_ci95'][0])}-{fmt(sc['auroc_ci95'][1])})")
            if "by_score" not in s:
                parts.append(f"AUROC {fmt(s.get('auroc'))}")
            a = s.get("anatomy") or {}
            if a.get("dice_heart") == a.get("dice_heart"):
                parts.append(f"Dice heart {fmt(a.get('dice_heart'))} lungs {fmt(a.get('dice_lungs'))}")
            if a.get("ctr_mae") is not None and a.get("ctr_mae") == a.get("ctr_mae"):
                parts.append(f"CTR error {fmt(a.get('ctr_mae'))}")
            if name != "all" or "by_score" in s:
                lines.append(f"  test[{name}] " + "  ".join(parts))
    click.echo("\n".join(lines))


if __name__ == "__main__":  # torchrun -m cxr.cli.train
    main()
