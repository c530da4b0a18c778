"""cxr-ensemble: several cxr-train runs of one split used together as one model.

    cxr-ensemble RUN_DIR RUN_DIR [...] --out ENSEMBLE_DIR [--decision average|auto]
    cxr-export ENSEMBLE_DIR --out model.onnx --opset 17

The members' probabilities are averaged (each with its own decision), their masks averaged before the ratio is
measured; the threshold is chosen on the validation split the members share (train them with one --split-seed), and
the test split is evaluated once. ENSEMBLE_DIR holds best.pt, splits.csv and metrics.json, and exports like any run;
its model card lists the members. Scoring costs one member's time per member.
Exit codes: 0 written; 1 nothing written (runs that do not fit together, unreadable checkpoints); 2 usage errors.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cxr import __version__
from cxr.cli.verbosity import setup_logging, verbosity, verbosity_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the ensemble run into (best.pt, splits.csv, metrics.json).")
@click.option("--decision", default="average", show_default=True, type=click.Choice(["average", "auto"]),
              help="average: the members' mean probability; auto: that, the ratio of the averaged masks or a fusion "
                   "of both, whichever has the best validation AUROC (as cxr-train --decision auto).")
@verbosity_options
@click.version_option(__version__, prog_name="cxr-ensemble")
def main(runs: tuple[Path, ...], out: Path, decision: str, quiet: bool, verbose: bool) -> None:
    """Use the cxr-train run directories RUNS (two or more, one split) together as one model in --out."""
    setup_logging(verbosity(quiet, verbose), "cxr-ensemble", logging.WARNING)
    if len(runs) < 2:
        raise click.UsageError("give two or more cxr-train run directories")
    from cxr.cli import require_training_extra

    require_training_extra("cxr-ensemble")
    from cxr.runtime.errors import CxrError
    from cxr.runtime.results import escape_text  # run folders' names are printed: control characters stay inert
    from cxr.train.ensemble import build_ensemble, member_lines

    try:
        summary = build_ensemble(list(runs), out, decision=decision)
    except (CxrError, ValueError, OSError) as exc:
        click.echo(escape_text(f"cxr-ensemble: error: {exc}"), err=True)
        sys.exit(1)
    if quiet:
        return
    for line in member_lines(summary):
        click.echo(escape_text(line))
    th = summary["threshold"]
    click.echo(f"decision {summary['decision']['mode']}, threshold {th['value']:.4f} ({th['method']}, on validation)")
    click.echo(escape_text(f"wrote {out}; next: cxr-export {out} --out model.onnx --opset 17"))


if __name__ == "__main__":
    main()
