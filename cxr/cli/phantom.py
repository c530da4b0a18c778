"""cxr-phantom: write the built-in synthetic chest X-ray set (PNGs + labels.csv + phantom.json) to a folder.

Re-running with the same --n/--seed/--size on a complete set reuses it (the demo relies on that). A folder holding
anything else is refused unless --overwrite, which replaces only what cxr-phantom writes (images/, labels.csv,
phantom.json and the images it names P00000_0.png ...)
and leaves other files alone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cxr import __version__
from cxr.cli.verbosity import setup_logging, verbosity, verbosity_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same n/seed/size gives the same bytes.")
@click.option("--size", type=click.IntRange(64, 4096), default=256, show_default=True, help="Image side in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace a phantom set (or cxr-phantom's files) already in OUT.")
@click.option("--masks", is_flag=True,
              help="Also write heart / left lung / right lung masks and their columns (mask_heart, mask_left_lung, "
                   "mask_right_lung, ctr_mask) for training the segmentation head.")
@verbosity_options
@click.version_option(__version__, prog_name="cxr-phantom")
def main(out: Path, n: int, seed: int, size: int, overwrite: bool, masks: bool, quiet: bool, verbose: bool) -> None:
    """Write N synthetic chest radiographs with labels (cardiomegaly = cardiothoracic ratio > 0.5) to OUT."""
    setup_logging(verbosity(quiet, verbose), "cxr-phantom", logging.WARNING)
    from cxr.train.phantom import (
        IMAGE_NAME,
        IMAGES_DIR,
        LABELS_NAME,
        MASKS_DIR,
        PARAMS_NAME,
        existing_phantom,
        make_phantom,
    )

    if out.exists() and not out.is_dir():
        click.echo(f"error: {out} exists and is not a folder", err=True)
        sys.exit(1)
    params = existing_phantom(out, n, seed, size, masks)
    if params is not None and not overwrite:
        if not quiet:
            click.echo(f"reusing the phantom set in {out} (n={n}, seed={seed}, size={size}): "
                       f"{params.get('positives', '?')} of {n} positive")
        return
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            click.echo(f"error: {out} is not empty and holds no phantom set made with n={n}, seed={seed}, "
                       f"size={size}; choose an empty folder or pass --overwrite", err=True)
            sys.exit(1)
        for folder in (out / IMAGES_DIR, *(out / MASKS_DIR / p for p in ("heart", "left_lung", "right_lung"))):
            for old in folder.glob("P*_*.png"):
                if IMAGE_NAME.fullmatch(old.name):
                    old.unlink()
        for name in (LABELS_NAME, PARAMS_NAME):
            (out / name).unlink(missing_ok=True)
    try:
        labels = make_phantom(out, n, seed=seed, size=size, masks=masks)
    except OSError as exc:
        click.echo(f"error: cannot write the phantom set to {out}: {exc}", err=True)
        sys.exit(1)
    written = existing_phantom(out, n, seed, size, masks) or {}
    if not quiet:
        click.echo(f"wrote {n} phantom images to {out} ({labels.name}): {written.get('positives', '?')} of {n} "
                   "positive")


if __name__ == "__main__":
    main()
