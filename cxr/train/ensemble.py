"""Several cxr-train runs of one split used as one model (cxr-ensemble), exported like any run.

    run1/best.pt, run2/best.pt, ...  (same split of the same sources: trained with one --split-seed)
        --> members' probabilities averaged (each member's own decision: classifier, ctr or fusion)
            members' mask probabilities averaged, the ratio measured on the averaged masks
            members' activation maps averaged (each scaled to its own maximum first)
        --> the ensemble's decision and threshold chosen on the shared validation split, test evaluated once
        --> OUT/best.pt (+ splits.csv, metrics.json): `cxr-export OUT` writes one ONNX file.

Why one split: the threshold (and any fusion) is chosen on validation; a member trained on some of those images would
make them look easier than new patients. The members' splits.csv must therefore hold the same images in every split.

A member whose decision uses the ratio and cannot measure it on an image (no heart or lungs found) is left out of that
image's average; only when no member can decide is the image not scored (cxr-score: no_anatomy).
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr.train.decision import Decision
from cxr.train.errors import TrainError
from cxr.train.model import CardiomegalyEnsemble

log = logging.getLogger(__name__)

COMBINE = ("mean of the members' probabilities (each member's own decision; a member that cannot decide an image is "
           "left out of its mean); masks: mean of the members' mask probabilities, the ratio measured on them; "
           "activation map: mean of the members' maps, each scaled to its own maximum")
DECISIONS = ("average", "auto")
"""average: the members' mean probability is the ensemble's (threshold chosen on validation); auto: as cxr-train's
--decision auto, the mean probability, the ratio of the averaged masks, or a fusion of both, by validation AUROC."""


def _split_sets(run_dir: Path) -> dict[str, set[tuple[str, str, str]]]:
    """(path, label, source) of each split in run_dir/splits.csv; TrainError naming the file when it cannot serve."""
    path = run_dir / "splits.csv"
    if not path.is_file():
        raise TrainError(f"{run_dir}: no splits.csv: give cxr-train run directories (the split is needed to choose "
                         "the threshold on validation)")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "label", "split", "source"} - set(reader.fieldnames or ())
            if missing:
                raise TrainError(f"{path}: missing column(s) {sorted(missing)}; not a cxr-train splits file")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainError(f"{path}: cannot read the splits file: {exc}") from None
    return {s: {(r["path"], r["label"], r["source"]) for r in rows if r.get("split") == s}
            for s in ("train", "val", "test")}


def load_members(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Each run's best.pt, checked to fit the first: same architecture, input, segmentation head and split; not a
    copy of another member; not itself an ensemble. TrainError naming the run and the difference otherwise."""
    from cxr.runtime.serialization import sha256_file
    from cxr.train.checkpoints import load_checkpoint, resolve_checkpoint

    if len(run_dirs) < 2:
        raise TrainError("give two or more cxr-train run directories to use together")
    members, seen = [], {}
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise TrainError(f"{run_dir}: not a cxr-train run directory")
        path = resolve_checkpoint(run_dir)
        ckpt = load_checkpoint(path)
        if ckpt["model"].get("ensemble"):
            raise TrainError(f"{run_dir}: already an ensemble; give the runs it was built from")
        if not isinstance(ckpt.get("config"), dict):
            raise TrainError(f"{path}: no training config in the checkpoint; not a cxr-train run")
        digest = sha256_file(path)
        if digest in seen:
            raise TrainError(f"{run_dir}: the same weights as {seen[digest]} (a member given twice)")
        seen[digest] = run_dir
        members.append({"run_dir": run_dir, "ckpt": ckpt, "sha256": digest, "splits": _split_sets(run_dir)})
    first = members[0]
    for m in members[1:]:
        _require_same(first, m)
    return members


def _require_same(first: dict, other: dict) -> None:
    a, b = first["ckpt"], other["ckpt"]
    name, ref = other["run_dir"], first["run_dir"]
    for what, x, y in (("architecture", a["model"]["arch"], b["model"]["arch"]),
                       ("segmentation head", bool(a["model"].get("seg_head")), bool(b["model"].get("seg_head"))),
                       ("preprocessing", a["preprocess"], b["preprocess"]),
                       ("normalization", a["normalization"], b["normalization"])):
        if x != y:
            raise TrainError(f"{name}: its {what} ({y}) differs from {ref}'s ({x}); members must take the same input "
                             "and have the same outputs")
    for split in ("val", "test", "train"):
        x, y = first["splits"][split], other["splits"][split]
        if x != y:
            raise TrainError(
                f"{name}: its {split} split differs from {ref}'s ({len(x ^ y)} images in one and not the other, or "
                "with another label or source); "
                "members must share their split (train them with the same --split-seed), else validation, where "
                "the threshold is chosen, would hold images some members trained on")


def _loader(samples: list, preprocess, seg: bool, batch_size: int):
    from torch.utils.data import DataLoader

    from cxr.train.data import CxrDataset, preload_masks

    masks = preload_masks(samples, preprocess.size, workers=2) if seg else None
    return DataLoader(CxrDataset(samples, preprocess, masks=masks), batch_size=batch_size, shuffle=False,
                      num_workers=0)


def build_ensemble(run_dirs: Sequence[Path], out: Path, decision: str = "average") -> dict[str, Any]:
    """Check the members, evaluate them together on the shared validation (and test) split, choose the decision and
    threshold on validation, and write OUT as a run directory cxr-export reads. Returns metrics.json's content.
    Nothing is left in OUT when this fails (a folder it created is removed)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    out = Path(out)
    if (out / "best.pt").exists():
        raise TrainError(f"{out} already holds a run (best.pt); choose another --out")
    members = load_members(run_dirs)
    if any(out.resolve() == m["run_dir"].resolve() for m in members):
        raise TrainError(f"--out {out} is one of the members")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)  # now: a folder that cannot be made fails before the evaluation
    try:
        return _build(members, out, decision)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _build(members: list[dict[str, Any]], out: Path, decision: str) -> dict[str, Any]:
    from cxr.runtime.preprocess import PreprocessConfig
    from cxr.runtime.serialization import jsonable
    from cxr.train import rundir
    from cxr.train.checkpoints import model_from_checkpoint, save_checkpoint
    from cxr.train.config import TrainConfig
    from cxr.train.evaluate import decide_on_validation, full_report
    from cxr.train.splits import read_splits

    first = members[0]["ckpt"]
    config = TrainConfig.from_dict(first["config"])
    preprocess = PreprocessConfig.from_dict(first["preprocess"])
    decisions = [Decision.from_dict(m["ckpt"].get("decision")) for m in members]
    model = CardiomegalyEnsemble([model_from_checkpoint(m["ckpt"]) for m in members], decisions).eval()
    samples = read_splits(members[0]["run_dir"] / "splits.csv")
    by_split = {s: [x for x in samples if x.split == s] for s in ("val", "test")}
    pos_weight = (first.get("data") or {}).get("pos_weight")
    log.info("evaluating %d members together on validation (%d images)", len(members), len(by_split["val"]))
    val, val_undecided = _evaluate(model, by_split["val"], preprocess, config.batch_size, pos_weight)
    val_rows = [by_split["val"][int(i)] for i in val.index]
    requested = "classifier" if decision == "average" or not model.seg_head else "auto"
    # members reading the ratio make the mean take few distinct values: the threshold goes between ties, as for a
    # single model's ratio decision
    ties = (f"{len(members)} members' mean (some reading the ratio)"
            if any(d.mode != "classifier" for d in decisions) else None)
    chosen, candidates, _, threshold = decide_on_validation(val, val_rows, requested, model.seg_head, config,
                                                            ties=ties)
    kw = {"n_boot": config.bootstrap_n, "seed": config.seed}
    metrics: dict[str, Any] = {"val": full_report(val, chosen, candidates, threshold, by_split["val"], **kw),
                               "decision": chosen.to_dict(),
                               "decision_candidates": {m: d.to_dict() for m, d in candidates.items()}}
    metrics["val"]["n_not_measurable"] += val_undecided
    if by_split["test"]:
        test, test_undecided = _evaluate(model, by_split["test"], preprocess, config.batch_size, pos_weight)
        metrics["test"] = full_report(test, chosen, candidates, threshold, by_split["test"], **kw)
        metrics["test"]["n_not_measurable"] += test_undecided
    described = [_describe(m) for m in members]
    metrics["members"] = described
    spec = {"arch": first["model"]["arch"], "dropout": first["model"].get("dropout", 0.2),
            "seg_head": model.seg_head, "ensemble": {"combine": COMBINE, "requested_decision": decision,
                                                     "members": described}}
    payload = {
        "kind": "best", "model": spec, "decision": chosen.to_dict(),
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "preprocess": first["preprocess"], "normalization": first["normalization"],
        "threshold": {"value": float(threshold.value), "method": threshold.method,
                      "detail": f"{threshold.detail}; the {len(members)} members' mean probability"
                      if chosen.mode == "classifier" else threshold.detail},
        "metrics": jsonable(metrics), "config": first["config"], "data": first.get("data") or {}, "epoch": None,
        "versions": first.get("versions", {}),
    }
    shutil.copyfile(members[0]["run_dir"] / "splits.csv", out / "splits.csv")
    summary = {"run_dir": str(out), "ensemble_of": [str(m["run_dir"]) for m in members],
               "ensemble": spec["ensemble"], "threshold": payload["threshold"],
               "decision": chosen.to_dict(), "data": payload["data"], "metrics": metrics}
    rundir.write_json(out / "metrics.json", summary)
    save_checkpoint(payload, out / "best.pt")  # last: a folder with best.pt is a finished ensemble
    return jsonable(summary)


def _evaluate(model: CardiomegalyEnsemble, samples: list, preprocess, batch_size: int, pos_weight):
    """(the evaluation on the films the ensemble could decide, how many it could not): a film no member could decide
    (each reads the ratio, none could measure it) has no probability; it is left out of the figures, counted as not
    measurable (cxr-score: no_anatomy), and out of the loss."""
    from dataclasses import replace

    from cxr.train.distributed import DistContext
    from cxr.train.evaluate import bce_loss, evaluate_split, select

    ev = evaluate_split(model, _loader(samples, preprocess, model.seg_head, batch_size), DistContext(), pos_weight)
    keep = np.isfinite(ev.probabilities)
    if keep.all():
        return ev, 0
    kept = select(ev, keep)
    return replace(kept, loss=bce_loss(kept.logits, kept.labels, pos_weight)), int((~keep).sum())


def _describe(member: dict[str, Any]) -> dict[str, Any]:
    """What the card says of a member: its run folder (the path's last three parts: a card is shared, a home folder's
    name need not be), weights, seeds, decision, and its own validation and test AUROC."""
    ckpt = member["ckpt"]
    config, metrics = ckpt.get("config") or {}, ckpt.get("metrics") or {}

    def auroc(split: str) -> float:
        value = (metrics.get(split) or {}).get("auroc")
        return float(value) if isinstance(value, (int, float)) else float("nan")

    return {"run": "/".join(member["run_dir"].resolve().parts[-3:]), "checkpoint_sha256": member["sha256"],
            "seed": config.get("seed"), "split_seed": config.get("split_seed"),
            "epoch": ckpt.get("epoch"), "decision": Decision.from_dict(ckpt.get("decision")).to_dict(),
            "val_auroc": auroc("val"), "test_auroc": auroc("test"), "machines": ckpt.get("machines") or []}


def member_lines(summary: dict[str, Any]) -> list[str]:
    """The members beside the ensemble, for the terminal: decision, validation and test AUROC."""
    fmt = (lambda v: "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}")
    metrics = summary["metrics"]
    lines = [f"{'member':<28} {'seed':>4} {'decision':>10} {'val AUROC':>9} {'test AUROC':>10}"]
    for m in summary["ensemble"]["members"]:
        run = str(m["run"])
        run = run if len(run) <= 28 else "..." + run[-25:]
        lines.append(f"{run:<28} {str(m['seed']):>4} {m['decision']['mode']:>10} {fmt(m['val_auroc']):>9} "
                     f"{fmt(m['test_auroc']):>10}")
    test = metrics.get("test") or {}
    lines.append(f"{'ensemble':<28} {'':>4} {summary['decision']['mode']:>10} {fmt(metrics['val'].get('auroc')):>9} "
                 f"{fmt(test.get('auroc')):>10}")
    return lines
