"""Real images for the export checks: `--sample DIR`, or the run's validation split (splits.csv), with labels.

Parity on real, preprocessed chest X-rays (not random tensors) is what tells a user the exported file behaves like
the checkpoint on the inputs it will actually see. Images go through `cxr.runtime.imaging.read_image` and
`preprocess_batch` with the checkpoint's PreprocessConfig, exactly as `cxr-score` will feed them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.export.errors import ExportError
from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Preprocessed images uint8 [N, 1, S, S]; labels int8 [N] with -1 where unknown."""

    images: np.ndarray
    paths: list[str]
    labels: np.ndarray
    source: str
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, labels) of the images with a known 0/1 label."""
        idx = np.flatnonzero(self.labels >= 0)
        return idx, self.labels[idx].astype(np.int64)

    def summary(self) -> dict:
        idx, y = self.labelled()
        return {"source": self.source, "n_images": len(self), "n_labelled": int(idx.size),
                "n_positive": int(y.sum()), "n_skipped": len(self.skipped), "skipped": self.skipped[:20]}


def _load(paths: list[Path], labels: list[int], config: PreprocessConfig, source: str,
          shown: list[str]) -> ImageSet:
    from cxr.runtime.errors import ImageError
    from cxr.runtime.imaging import read_image

    arrays, kept_paths, kept_labels, skipped = [], [], [], []
    for path, label, name in zip(paths, labels, shown):
        try:  # preprocessed as read: only S x S images are held, never hundreds of full-size radiographs
            arrays.append(preprocess_batch([read_image(path)], config)[0])
        except ImageError as exc:
            log.warning("skipping %s: %s", path, exc)
            skipped.append(f"{name}: {exc.code}")
            continue
        kept_paths.append(name)
        kept_labels.append(label)
    s = config.size
    images = np.stack(arrays) if arrays else np.zeros((0, 1, s, s), np.uint8)
    return ImageSet(images=images, paths=kept_paths, labels=np.asarray(kept_labels, np.int8).reshape(-1),
                    source=source, skipped=skipped)


def read_labels(labels_csv: Path, root: Path) -> dict[Path, int]:
    """CSV with a `path` column (relative to `root`) and `label` or `cardiomegaly` (empty = unknown -> -1), read by
    cxr-score's reader and label parser (cxr.runtime.labels: 1/0, true/false, class names as cxr-train reads them).
    Returns every listed file, in the CSV's order, with its label. An unreadable label, or one file listed with two
    labels, is an ExportError naming the file and line."""
    from cxr.runtime.labels import ACCEPTED, LabelsError, label_rows, parse_label

    labels_csv = Path(labels_csv)
    out: dict[Path, int] = {}
    try:
        for line_no, key, value in label_rows(labels_csv):
            if not key and not value:
                continue  # a blank row (spreadsheets save trailing ',,' lines); cxr-score ignores it too
            if not key:
                raise ExportError(f"{labels_csv}: line {line_no}: a label without a path")
            label = parse_label(value) if value else -1
            if label is None:
                raise ExportError(f"{labels_csv}: line {line_no}: label {value!r} for {key!r} is not {ACCEPTED} "
                                  "or empty")
            if out.get(root / key, label) != label:
                raise ExportError(f"{labels_csv}: line {line_no}: {key!r} is listed with two different labels")
            out[root / key] = label
    except LabelsError as exc:
        raise ExportError(str(exc)) from None
    if not out:
        raise ExportError(f"{labels_csv}: no files listed")
    return out


def images_from_dir(directory: Path, config: PreprocessConfig, limit: int | None = None,
                    labels_csv: Path | None = None) -> ImageSet:
    """The files a labels CSV lists (`labels_csv`, else DIR/labels.csv when present), else every image candidate
    under `directory` (recursive, sorted). A labels file defines the set, so masks or other images lying beside
    the X-rays are not mistaken for them."""
    from cxr.runtime.imaging import is_image_candidate

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: not a directory of sample images")
    if labels_csv is None and (directory / "labels.csv").is_file():
        labels_csv = directory / "labels.csv"
    if labels_csv is not None:
        listed = read_labels(labels_csv, directory)
        files, labels = list(listed), list(listed.values())
    else:
        files = sorted(p for p in directory.rglob("*") if p.is_file() and is_image_candidate(p))
        labels = [-1] * len(files)
    if limit is not None:
        files, labels = files[:limit], labels[:limit]
    shown = [p.relative_to(directory).as_posix() if p.is_relative_to(directory) else str(p) for p in files]
    return _load(files, labels, config, f"directory {directory}", shown)


def images_from_run(run_dir: Path, config: PreprocessConfig, split: str = "val",
                    limit: int | None = None, spread: bool = False) -> ImageSet:
    """The run's `split` images and labels from run_dir/splits.csv (relative paths are taken from the run dir).
    `limit` keeps the first images, or with `spread` images evenly spaced over the split (splits.csv lists a folder
    dataset class by class, so the first 64 training images may all be positive)."""
    from cxr.train.splits import read_splits

    splits_csv = Path(run_dir) / "splits.csv"
    samples = [s for s in read_splits(splits_csv) if s.split == split]
    if not samples:
        raise ExportError(f"{splits_csv}: no images in the {split!r} split")
    if limit is not None and spread and len(samples) > limit:
        samples = [samples[i] for i in np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))]
    samples = samples[:limit] if limit is not None else samples
    paths = [Path(s.path) if Path(s.path).is_absolute() else Path(run_dir) / s.path for s in samples]
    labels = [int(s.label) if s.label in (0, 1) else -1 for s in samples]
    return _load(paths, labels, config, f"{split} split of {splits_csv}", [str(s.path) for s in samples])


def find_images(checkpoint_path: Path, config: PreprocessConfig, sample_dir: Path | None = None,
                limit: int | None = None, labels_csv: Path | None = None, purpose: str = "validation") -> ImageSet:
    """`sample_dir` if given, else the validation split of the run the checkpoint belongs to; else a clear error."""
    if sample_dir is not None:
        found = images_from_dir(sample_dir, config, limit=limit, labels_csv=labels_csv)
    else:
        run_dir = Path(checkpoint_path).parent
        if not (run_dir / "splits.csv").is_file():
            raise ExportError(
                f"no real images for {purpose}: pass --sample DIR (a folder of chest X-rays), or export from a "
                f"cxr-train run directory that has splits.csv (looked for {run_dir / 'splits.csv'})")
        found = images_from_run(run_dir, config, limit=limit)
    if len(found) == 0:
        raise ExportError(f"no readable images for {purpose} in the {found.source}"
                          + (f" ({len(found.skipped)} skipped as unreadable)" if found.skipped else ""))
    log.info("%s images: %d from the %s", purpose, len(found), found.source)
    return found
