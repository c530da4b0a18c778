"""Index a labelled chest X-ray collection into `Sample`s (path, label, patient, split, source). No torch here.

Five layouts (`DATASET_KINDS`):
  folder    root/{train,val,test}/{Cardiomegaly,Normal}/...  or  root/{Cardiomegaly,Normal}/...  (split None)
  csv       a labels CSV: path,label[,patient_id][,split][,dataset|source]
  nih       ChestX-ray14: Data_Entry_2017*.csv, images anywhere under root/images*/, train_val_list.txt/test_list.txt;
            positives list Cardiomegaly, negatives are 'No Finding' (the recipe's Normal; nih_negatives="all": any
            image without Cardiomegaly)
  chexpert  CheXpert train.csv (split None: split by patient later) and valid.csv, which becomes "test": CheXpert's
            small hand-labelled validation set is what papers report as the held-out set
  phantom   a folder written by cxr-phantom (its labels.csv)
Nothing is dropped silently: every row or file left out is in `DatasetIndex.skipped` with a reason, and a warning
gives the counts. Splits that are not in the data are assigned later by patient (cxr.train.splits).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cxr.runtime.labels import parse_label  # the one label parser (cxr-score and cxr-export read labels with it too)
from cxr.train.errors import TrainError

log = logging.getLogger(__name__)

DATASET_KINDS = ("folder", "csv", "nih", "chexpert", "phantom")
SPLITS = ("train", "val", "test")
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore", "drop")  # "drop" is a synonym of "ignore"
NIH_NEGATIVES = ("no_finding", "all")
DEFAULT_PATIENT_COLUMN = "patient_id"
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}
_FALLBACK_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp", ".pgm"}
_NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")


def nih_patient(path: Path) -> str | None:
    """The patient of an NIH-style file name (00000001_000.png -> 00000001), or None for any other name."""
    match = _NIH_NAME.match(Path(path).stem)
    return match.group(1) if match else None
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


@dataclass(frozen=True)
class Sample:
    """One labelled image."""

    path: Path
    """Absolute path to the image."""
    label: int
    """1 = cardiomegaly, 0 = not."""
    patient_id: str
    """Never empty: where the data has no patient ids it is the image's own id (file stem)."""
    split: str | None = None
    """'train' | 'val' | 'test', or None when still to be assigned (by patient, cxr.train.splits)."""
    source: str = ""
    """Sub-dataset or site (wingspan, jsrt, nih, chexpert, phantom, ...) for per-source figures."""
    masks: tuple[Path, Path, Path] | None = None
    """Heart, left-lung and right-lung mask files (absolute), or None: the image then trains the classifier only."""
    ctr: float | None = None
    """A reference cardiothoracic ratio (e.g. measured on manual masks), reported against the model's."""


@dataclass
class DatasetIndex:
    """What `load_dataset` found: the usable samples and every row or file it left out, with the reason."""

    samples: list[Sample]
    skipped: list[tuple[str, str]]
    kind: str
    root: Path
    patient_ids_known: bool

    def summary(self) -> dict:
        """Counts for logs and the run record: totals, positives/negatives per split and per source, skips by reason."""
        def counts(group: Iterable[Sample]) -> dict:
            group = list(group)
            pos = sum(s.label for s in group)
            return {"total": len(group), "positives": pos, "negatives": len(group) - pos}

        by_split = {name: counts(s for s in self.samples if (s.split or "unassigned") == name)
                    for name in sorted({s.split or "unassigned" for s in self.samples})}
        by_source = {name: counts(s for s in self.samples if s.source == name)
                     for name in sorted({s.source for s in self.samples})}
        return {"kind": self.kind, "root": str(self.root), **counts(self.samples),
                "patients": len({s.patient_id for s in self.samples}), "patient_ids_known": self.patient_ids_known,
                "by_split": by_split, "by_source": by_source,
                "skipped": dict(sorted(Counter(reason for _, reason in self.skipped).items()))}


def load_dataset(kind: str, root: Path | str, *, csv_path: Path | str | None = None, path_column: str = "path",
                 label_column: str = "cardiomegaly", patient_column: str = DEFAULT_PATIENT_COLUMN,
                 split_column: str = "split", source_column: str | None = None, positive_class: str = "Cardiomegaly",
                 negative_class: str = "Normal", uncertain: str = "zeros", frontal_only: bool = False,
                 nih_negatives: str = "no_finding", verify_images: bool = False, workers: int = 2,
                 mask_columns: Sequence[str] = (), ctr_column: str | None = None) -> DatasetIndex:
    """Index the dataset of `kind` under `root` (see the module docstring for the layouts).

    Raises ValueError for an unknown kind or policy, a missing root or labels file, or a CSV without a needed column.
    With verify_images=True every image is also decoded (cxr.runtime.imaging.read_image, `workers` threads) and the
    unreadable ones are skipped with their ImageError code as the reason. `mask_columns` (csv/phantom: heart, left
    lung, right lung) name mask files; a row whose mask cell is blank has no masks, a named file that is missing is
    an error naming it. `ctr_column` gives each row's reference CTR.
    """
    if kind not in DATASET_KINDS:
        raise TrainError(f"dataset kind must be one of {DATASET_KINDS}, got {kind!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise TrainError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if nih_negatives not in NIH_NEGATIVES:
        raise TrainError(f"nih_negatives must be one of {NIH_NEGATIVES}, got {nih_negatives!r}")
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise TrainError(f"{root}: dataset root does not exist")
    classes = (positive_class, negative_class)
    if kind == "folder":
        index = _load_folder(root, classes)
    elif kind in ("csv", "phantom"):
        if kind == "phantom" and csv_path is None:
            csv_path = root / "labels.csv"
        names = CsvColumns(path_column, label_column, patient_column, split_column, source_column,
                           tuple(mask_columns), ctr_column)
        index = _load_csv(root, csv_path, names, classes, default_source="phantom" if kind == "phantom" else "")
        index.kind = kind
    elif kind == "nih":
        index = _load_nih(root, csv_path, nih_negatives)
    else:
        index = _load_chexpert(root, csv_path, uncertain, frontal_only)
    if (mask_columns or ctr_column) and kind not in ("csv", "phantom"):
        raise TrainError(f"{root}: mask and CTR columns come from a labels CSV; dataset kind {kind!r} has none")
    if verify_images:
        _verify(index, workers)
    if index.skipped:
        log.warning("%s dataset %s: %d of %d entries skipped (%s)", kind, root, len(index.skipped),
                    len(index.skipped) + len(index.samples),
                    ", ".join(f"{r}: {c}" for r, c in index.summary()["skipped"].items()))
    return index


def parse_split(value: str) -> str | None:
    """'train' | 'val' | 'test' (also training/valid/validation/testing) or None for blank; ValueError otherwise."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text not in _SPLIT_ALIASES:
        raise TrainError(f"unknown split {value!r} (expected one of {SPLITS} or blank)")
    return _SPLIT_ALIASES[text]


def is_image_file(path: Path) -> bool:
    """cxr.runtime.imaging.is_image_candidate where it exists, else a suffix check."""
    try:
        from cxr.runtime.imaging import is_image_candidate
    except ImportError:
        return path.suffix.lower() in _FALLBACK_SUFFIXES
    return bool(is_image_candidate(path))


# ------------------------------------------------------------------------------------------------ folder


def _load_folder(root: Path, classes: tuple[str, str]) -> DatasetIndex:
    if not root.is_dir():
        raise TrainError(f"{root}: a folder dataset must be a directory")
    skipped: list[tuple[str, str]] = []
    split_dirs = {_SPLIT_ALIASES[p.name.lower()]: p for p in _subdirs(root) if p.name.lower() in _SPLIT_ALIASES}
    layouts = [(split, d) for split, d in sorted(split_dirs.items())] if split_dirs else [(None, root)]
    if split_dirs:
        for other in sorted(set(_subdirs(root)) - set(split_dirs.values())):
            skipped.append((str(other), "not a split folder"))
    entries: list[tuple[Path, int, str | None]] = []
    for split, base in layouts:
        found = {p.name.lower(): p for p in _subdirs(base)}
        class_dirs = [(found.get(name.lower()), label) for name, label in zip(classes, (1, 0))]
        if all(d is None for d, _ in class_dirs):
            raise TrainError(f"{base}: no class folders {classes[0]!r} or {classes[1]!r} "
                             f"(expected {root}/[train|val|test/]{classes[0]}|{classes[1]}/...)")
        used = {d for d, _ in class_dirs if d is not None}
        for other in sorted(set(_subdirs(base)) - used - set(split_dirs.values())):
            skipped.append((str(other), "not a class folder"))
        for d, label in class_dirs:
            if d is not None:
                entries.extend((f, label, split) for f in _walk_images(d, skipped))
    # The patient is the NIH-style name's first part (00000001_000.png -> 00000001) wherever a name has that form;
    # any other image is its own patient, named by its path under the root (a file stem repeats across folders,
    # e.g. study1/view1_frontal.png and study2/view1_frontal.png, and would merge unrelated images).
    nih_ids = [nih_patient(f) for f, _, _ in entries]
    unmatched = sum(pid is None for pid in nih_ids)
    if unmatched and unmatched < len(entries):
        log.warning("%s: %d of %d image names are not NIH-style (00000001_000.png); each of those is its own patient",
                    root, unmatched, len(entries))
    samples = [Sample(f, label, pid or _relative_id(f, root), split, "")
               for (f, label, split), pid in zip(entries, nih_ids)]
    return DatasetIndex(samples, skipped, "folder", root, bool(entries) and unmatched == 0)


def _relative_id(path: Path, root: Path) -> str:
    """An image's own patient id when none is known: its path under `root` (POSIX), else its absolute path."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk_images(folder: Path, skipped: list[tuple[str, str]]) -> list[Path]:
    """Image files under folder, recursively, sorted; other files go to `skipped`. Hidden entries are ignored.
    The runtime's walk (cxr.runtime.walk): symlinked folders are followed, but a link back to a folder above it is
    a skipped entry, not a loop that lists every image again at each level. Images in a format cxr refuses (GIF,
    WebP, JPEG 2000, HEIC) are skipped with that reason before splitting, not masked out of every batch later."""
    from cxr.runtime.imaging import unsupported_format
    from cxr.runtime.walk import find_images

    def candidate(path: Path) -> bool:
        if not path.exists():
            return False  # a dangling symlink: the walk reports it (once)
        refused = unsupported_format(path)
        if refused is not None:
            skipped.append((str(path), f"unsupported image format ({refused}); convert to PNG"))
            return False
        if is_image_file(path):
            return True
        skipped.append((str(path), "not an image file"))
        return False

    result = find_images(folder, is_candidate=candidate)
    for rel, reason in result.problem_entries:
        skipped.append((str(folder / rel), reason))
    return sorted(folder / f for f in result.files)  # Path order, as before: the same folder gives the same splits


# ------------------------------------------------------------------------------------------------ csv


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainError(f"{path}: cannot read the labels CSV: {exc}") from exc


def _require(path: Path, columns: list[str], needed: Iterable[str], options: dict[str, str] | None = None) -> None:
    """ValueError for missing columns, naming the option that chooses each (`options`: column -> option) where the
    user can choose it; fixed columns (NIH, CheXpert) are named as the format defines them."""
    missing = [c for c in needed if c not in columns]
    if missing:
        fix = [f"{c!r} ({options[c]})" if options and c in options else repr(c) for c in missing]
        raise TrainError(f"{path}: missing column(s) {', '.join(fix)}; the CSV has {columns}")


@dataclass(frozen=True)
class CsvColumns:
    """The labels-CSV column names a csv/phantom dataset is read with (the --*-column options)."""

    path: str
    label: str
    patient: str
    split: str
    source: str | None
    masks: tuple[str, ...] = ()
    ctr: str | None = None


def _load_csv(root: Path, csv_path, names: CsvColumns, classes, default_source: str) -> DatasetIndex:
    path_column, label_column, patient_column = names.path, names.label, names.patient
    split_column, source_column, mask_columns, ctr_column = names.split, names.source, names.masks, names.ctr
    if csv_path is None:
        csv_path = root if root.is_file() else root / "labels.csv"
    csv_path = Path(csv_path).expanduser().resolve()
    if not csv_path.is_file():
        raise TrainError(f"{csv_path}: labels CSV not found")
    columns, rows = _read_csv(csv_path)
    _require(csv_path, columns, [path_column, label_column],
             {path_column: "choose it with --path-column", label_column: "choose it with --label-column"})
    for what, names in (("mask column(s) (--mask-columns)", list(mask_columns)),
                        ("CTR column (--ctr-column)", [ctr_column] if ctr_column else [])):
        missing = [c for c in names if c not in columns]
        if missing:
            raise TrainError(f"{csv_path}: {what} {missing} not found; the CSV has {columns}")
    if source_column is None:
        source_column = next((c for c in ("dataset", "source") if c in columns), None)
    elif source_column not in columns:
        raise TrainError(f"{csv_path}: source column {source_column!r} (--source-column) not found; "
                         f"the CSV has {columns}")
    bases = [root] if root.is_dir() else []
    bases += [csv_path.parent] if csv_path.parent not in bases else []
    has_patients = patient_column in columns
    if not has_patients and patient_column != DEFAULT_PATIENT_COLUMN:  # named by the user: a typo must not leak
        raise TrainError(f"{csv_path}: patient column {patient_column!r} (--patient-column) not found; "
                         f"the CSV has {columns}")
    skipped: list[tuple[str, str]] = []
    samples: list[Sample] = []
    all_ids = True
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        rel = (row.get(path_column) or "").strip()
        if not rel:
            skipped.append((where, "no path"))
            continue
        raw = (row.get(label_column) or "").strip()
        label = parse_label(raw, classes)
        if label is None:
            skipped.append((f"{where} {rel}", "no label" if not raw else f"bad label {raw!r}"))
            continue
        try:
            split = parse_split(row.get(split_column, "")) if split_column in columns else None
        except ValueError as exc:
            skipped.append((f"{where} {rel}", str(exc)))
            continue
        path = _resolve(rel, bases)
        if path is None:
            skipped.append((str(bases[0] / rel), "missing file"))
            continue
        pid = (row.get(patient_column) or "").strip() if has_patients else ""
        pid = pid or nih_patient(path) or ""  # no id in the CSV: an NIH-style name gives one, as for folders
        all_ids &= bool(pid)
        source = (row.get(source_column) or "").strip() if source_column else default_source
        masks = _row_masks(row, mask_columns, bases, where)
        ctr = _row_ctr(row, ctr_column, where)
        samples.append(Sample(path, label, pid or rel.replace("\\", "/"), split, source or default_source, masks, ctr))
    return DatasetIndex(samples, skipped, "csv", bases[0], bool(samples) and all_ids)


def _row_masks(row: dict, columns: tuple[str, ...], bases: list[Path], where: str) -> tuple[Path, Path, Path] | None:
    """The row's three mask files, or None when its mask cells are blank; ValueError for a partial or missing set."""
    if not columns:
        return None
    cells = [(row.get(c) or "").strip() for c in columns]
    if not any(cells):
        return None
    if not all(cells):
        raise TrainError(f"{where}: some mask cells are blank ({dict(zip(columns, cells))}); give all three or none")
    paths = [_resolve(c, bases) for c in cells]
    missing = [c for c, p in zip(cells, paths) if p is None]
    if missing:
        raise TrainError(f"{where}: mask file(s) not found: {missing}")
    return tuple(paths)  # type: ignore[return-value]


def _row_ctr(row: dict, column: str | None, where: str) -> float | None:
    text = (row.get(column) or "").strip() if column else ""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise TrainError(f"{where}: CTR {text!r} is not a number") from None
    if not 0.0 < value < 2.0:
        raise TrainError(f"{where}: CTR {value} is not a plausible ratio")
    return value


def _resolve(rel: str, bases: list[Path]) -> Path | None:
    p = Path(rel).expanduser()
    candidates = [p] if p.is_absolute() else [b / p for b in bases]
    return next((c.resolve() for c in candidates if c.is_file()), None)


# ------------------------------------------------------------------------------------------------ nih


def _load_nih(root: Path, csv_path, negatives: str = "no_finding") -> DatasetIndex:
    from cxr.runtime.walk import find_images

    if csv_path is None:
        found = sorted(root.glob("Data_Entry_2017*.csv"))
        if not found:
            raise TrainError(f"{root}: no Data_Entry_2017*.csv (the ChestX-ray14 labels file)")
        if len(found) > 1:
            log.warning("%s: several label files %s; using %s", root, [f.name for f in found], found[0].name)
        csv_path = found[0]
    csv_path = Path(csv_path)
    columns, rows = _read_csv(csv_path)
    _require(csv_path, columns, ["Image Index", "Finding Labels", "Patient ID"])
    image_dirs = sorted(p for p in root.glob("images*") if p.is_dir()) or [root]
    names: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for d in image_dirs:  # the CSV picks the files, so every file is a candidate; a symlink loop is walked once
        walked = find_images(d, is_candidate=lambda _path: True)
        for rel in walked.files:
            names.setdefault(rel.name, d / rel)
        skipped.extend((str(d / rel), reason) for rel, reason in walked.problem_entries)
    split_of = {}
    for list_name, split in (("train_val_list.txt", None), ("test_list.txt", "test")):
        list_path = root / list_name
        if list_path.is_file():
            split_of.update({n.strip(): split for n in list_path.read_text().split() if n.strip()})
    samples = []
    outside_lists = 0
    for line, row in enumerate(rows, start=2):
        name = row["Image Index"].strip()
        path = names.get(name)
        if path is None:
            skipped.append((f"{csv_path}:{line} {name}", "missing file"))
            continue
        findings = {f.strip() for f in row["Finding Labels"].split("|")}
        if negatives == "no_finding" and "Cardiomegaly" not in findings and findings != {"No Finding"}:
            skipped.append((f"{csv_path}:{line} {name}", "other finding, not Normal (--nih-negatives all keeps it)"))
            continue
        pid = row["Patient ID"].strip()
        pid = f"{int(pid):08d}" if pid.isdigit() else pid or Path(name).stem
        if split_of and name not in split_of:
            outside_lists += 1
        samples.append(Sample(path.resolve(), int("Cardiomegaly" in findings), pid, split_of.get(name), "nih"))
    if outside_lists:
        log.warning("%s: %d images are in neither train_val_list.txt nor test_list.txt; they are left unassigned",
                    root, outside_lists)
    return DatasetIndex(samples, skipped, "nih", root, True)


# ------------------------------------------------------------------------------------------------ chexpert


def _load_chexpert(root: Path, csv_path, uncertain: str, frontal_only: bool) -> DatasetIndex:
    files = [(Path(csv_path), None)] if csv_path is not None else \
        [(root / name, split) for name, split in (("train.csv", None), ("valid.csv", "test"))
         if (root / name).is_file()]
    if not files:
        raise TrainError(f"{root}: no train.csv or valid.csv (the CheXpert label files)")
    bases = [root.parent, root]
    skipped: list[tuple[str, str]] = []
    samples = []
    for path, split in files:
        columns, rows = _read_csv(path)
        _require(path, columns, ["Path", "Cardiomegaly"] + (["Frontal/Lateral"] if frontal_only else []))
        for line, row in enumerate(rows, start=2):
            rel = row["Path"].strip()
            where = f"{path}:{line} {rel}"
            if frontal_only and row["Frontal/Lateral"].strip().lower() != "frontal":
                skipped.append((where, "lateral view"))
                continue
            label = _chexpert_label(row["Cardiomegaly"], uncertain)
            if label is None:
                skipped.append((where, "uncertain label"))
                continue
            if label == -2:
                skipped.append((where, f"bad label {row['Cardiomegaly']!r}"))
                continue
            image = _resolve(rel, bases) or _resolve(_strip_first(rel), [root])
            if image is None:
                skipped.append((str(root.parent / rel), "missing file"))
                continue
            m = _CHEXPERT_PATIENT.search(rel)
            samples.append(Sample(image, label, m.group(1) if m else image.stem, split, "chexpert"))
    return DatasetIndex(samples, skipped, "chexpert", root, True)


def _chexpert_label(value: str, uncertain: str) -> int | None:
    """1.0 -> 1; 0.0 or blank (not mentioned) -> 0; -1.0 per policy (None = skip); -2 for anything else."""
    text = (value or "").strip()
    if text == "":
        return 0
    try:
        number = float(text)
    except ValueError:
        return -2
    if number == 1.0:
        return 1
    if number == 0.0:
        return 0
    if number == -1.0:
        return {"ones": 1, "zeros": 0}.get(uncertain)
    return -2


def _strip_first(rel: str) -> str:
    parts = Path(rel).parts
    return str(Path(*parts[1:])) if len(parts) > 1 else rel


# ------------------------------------------------------------------------------------------------ verification


def _verify(index: DatasetIndex, workers: int) -> None:
    """Decode every image; move the unreadable ones to `skipped` with their ImageError code."""
    from cxr.runtime.errors import ImageError
    from cxr.runtime.imaging import read_image

    def check(sample: Sample) -> str | None:
        try:
            read_image(sample.path)
        except ImageError as exc:
            return exc.code
        except (OSError, ValueError) as exc:
            return f"unreadable ({type(exc).__name__})"
        return None

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        problems = list(pool.map(check, index.samples))
    kept = []
    for sample, problem in zip(index.samples, problems):
        if problem is None:
            kept.append(sample)
        else:
            index.skipped.append((str(sample.path), problem))
    index.samples = kept
