"""cxr-export: a cxr-train run directory (or checkpoint) to one validated, self-describing ONNX file.

    cxr-export runs/exp1 --out model.onnx [--opset 17] [--sample DIR] [--quantize int8] [--fp16]

Writes model.onnx and model.validation.json (and model.int8.onnx / model.fp16.onnx when asked). Exit codes: 0 written;
1 nothing written (missing/corrupt checkpoint, architecture mismatch, failed validation); 2 usage errors.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cxr import __version__
from cxr.cli import FiniteFloat
from cxr.cli.verbosity import setup_logging, verbosity, verbosity_options
from cxr.export.options import (
    DEFAULT_MAX_AUROC_DROP,
    DEFAULT_MAX_SAMPLES,
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    ExportOptions,
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output ONNX file (e.g. model.onnx); side files are named after it.")
@click.option("--opset", default=DEFAULT_OPSET, show_default=True,
              type=click.IntRange(SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1),
              help="ONNX opset; the written file's default-domain opset is checked to equal it.")
@click.option("--sample", "sample_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of real chest X-rays for validation (default: the run's validation split).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV (path,label|cardiomegaly) for --sample images; used for the AUROC change of --quantize/--fp16.")
@click.option("--no-validate", is_flag=True, help="Skip the behavioural checks (parity, batch invariance, runtime).")
@click.option("--quantize", type=click.Choice(["int8"]), help="Also write MODEL.int8.onnx (static QDQ).")
@click.option("--calibration", "calibration_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of calibration images for --quantize int8 (default: the run's training split; without "
                   "one, the evaluation images, with a warning).")
@click.option("--fp16", is_flag=True, help="Also write MODEL.fp16.onnx (uint8 input and float32 outputs kept).")
@click.option("--max-auroc-drop", default=DEFAULT_MAX_AUROC_DROP, show_default=True, type=FiniteFloat(),
              help="Refuse a reduced-precision copy whose AUROC drops by more than this.")
@click.option("--force", is_flag=True, help="Write reduced-precision copies even when the AUROC guard refuses them.")
@click.option("--max-samples", default=DEFAULT_MAX_SAMPLES, show_default=True, type=click.IntRange(1, 100000),
              help="At most this many images for the parity checks.")
@verbosity_options
@click.version_option(__version__, prog_name="cxr-export")
def main(checkpoint: Path, out: Path, no_validate: bool, quiet: bool, verbose: bool, **options) -> None:
    """Export CHECKPOINT (a cxr-train run directory or a .pt file) to a validated ONNX file."""
    setup_logging(verbosity(quiet, verbose), "cxr-export", logging.WARNING)
    if options["labels"] is not None and options["sample_dir"] is None:
        raise click.UsageError("--labels labels the --sample images; without --sample the run's validation split "
                               "(with its own labels) is used")
    if out.suffix.lower() != ".onnx":
        raise click.BadParameter(f"{out}: give an ONNX file name ending in .onnx, e.g. {out.with_suffix('.onnx')}",
                                 param_hint="--out")
    from cxr.cli import require_training_extra

    require_training_extra("cxr-export")
    from cxr.export.errors import ExportError
    from cxr.export.onnx_export import export_onnx
    from cxr.train.checkpoints import CheckpointError

    try:
        report = export_onnx(checkpoint, out, ExportOptions(validate=not no_validate, **options))
    except (CheckpointError, ExportError, ValueError, OSError) as exc:
        click.echo(f"cxr-export: error: {exc}", err=True)
        sys.exit(1)
    if not quiet:
        for line in report.summary_lines():
            click.echo(line)
    for name, v in report.variants.items():  # --quiet: the reason is kept in the validation report's variants
        if not v.get("written") and not quiet:
            click.echo(f"cxr-export: warning: {name} copy not written: {v.get('reason')}", err=True)


if __name__ == "__main__":
    main()
