"""Train/val/test splits by patient: assign, check, and record them so a resumed run uses exactly the same ones.

Images of one patient are near-duplicates; if they land in both train and test the test figures lie (the original
recipe reported 0.91 validation accuracy and 0.49 on test). So splits are drawn over patients, stratified by each
patient's label (the max over their images), and `check_splits` refuses any patient found in two splits.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cxr.runtime.atomic import atomic_write
from cxr.train.datasets import SPLITS, Sample, parse_split
from cxr.train.errors import TrainError

log = logging.getLogger(__name__)

SPLITS_NAME = "splits.csv"
SPLIT_COLUMNS = ("path", "label", "patient_id", "split", "source")
EXTRA_COLUMNS = ("mask_heart", "mask_left_lung", "mask_right_lung", "ctr_ref")
"""Written after SPLIT_COLUMNS (masks and reference CTR, blank where absent); optional when reading older files."""


def assign_splits(samples: Sequence[Sample], val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> list[Sample]:
    """Give every sample a split, keeping the splits the data already has. Returns new samples in the same order.

    - A split the data already names is kept: a "test" given by the data is never redrawn.
    - Unassigned images of a patient who already has a split join that split (a patient stays in one split).
    - The remaining patients form the pool. When the data lacks "val", patients whose images are all "train" join
      the pool too, so val is carved out of train (test never is: it comes from unassigned patients only; a
      missing split is drawn only when its fraction is above 0). The fractions are of the pool's patients,
      drawn per label stratum (at least one patient of each label where the stratum has three or more), so both
      classes reach every new split. What is left of the pool is "train".
    Deterministic for a given seed and set of patients (independent of the order of `samples`).
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise TrainError(f"{name} must lie in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise TrainError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if s.split is not None and s.split not in SPLITS:
            raise TrainError(f"{s.path}: unknown split {s.split!r} (expected one of {SPLITS} or None)")
        by_patient[s.patient_id].append(i)
    present = {s.split for s in samples if s.split is not None}
    need = [name for name, frac in (("test", test_fraction), ("val", val_fraction)) if name not in present and frac > 0]
    splits: list[str | None] = [s.split for s in samples]
    pool: list[str] = []
    movable: set[str] = set()  # train patients that may become val patients
    for pid in sorted(by_patient):
        existing = {splits[i] for i in by_patient[pid]} - {None}
        if not existing:
            pool.append(pid)
        elif "val" in need and existing == {"train"}:
            pool.append(pid)
            movable.add(pid)
        elif len(existing) == 1:
            only = existing.pop()
            for i in by_patient[pid]:
                splits[i] = only
        # a patient already in two splits is left as the data has it; check_splits names it
    label_of = {pid: max(samples[i].label for i in by_patient[pid]) for pid in pool}
    rng = np.random.default_rng(seed)
    chosen: dict[str, str] = {}
    for label in (0, 1):
        stratum = [pid for pid in pool if label_of[pid] == label]
        order = [stratum[j] for j in rng.permutation(len(stratum))]
        for name in need:
            frac = test_fraction if name == "test" else val_fraction
            count = int(round(frac * len(stratum)))
            if count == 0 and len(stratum) >= 3:
                count = 1
            eligible = [pid for pid in order if pid not in chosen and (name == "val" or pid not in movable)]
            for pid in eligible[:count]:
                chosen[pid] = name
    for pid in pool:
        for i in by_patient[pid]:
            splits[i] = chosen.get(pid, "train")
    out = [s if s.split == new else replace(s, split=new) for s, new in zip(samples, splits)]
    log.debug("splits: %s", split_counts(out))  # the training log shows them as a table (prepare.split_table)
    return out


def split_counts(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """{split: {"images", "patients", "positives", "negatives"}} (unassigned samples under "unassigned")."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.split or "unassigned"].append(s)
    return {name: {"images": len(g), "patients": len({s.patient_id for s in g}),
                   "positives": sum(s.label for s in g), "negatives": sum(1 - s.label for s in g)}
            for name, g in sorted(groups.items())}


def check_splits(samples: Sequence[Sample], required: Sequence[str] = ("train", "val")) -> None:
    """ValueError naming every required split that is empty or lacks positives or negatives, or the patients in two
    splits. A model cannot be selected (or its AUROC computed) on a split holding a single class."""
    counts = split_counts(samples)
    problems = []
    for name in required:
        c = counts.get(name)
        if c is None:
            problems.append(f"split '{name}' is empty")
        elif c["positives"] == 0:
            problems.append(f"split '{name}' has no positive (cardiomegaly) images ({c['images']} images)")
        elif c["negatives"] == 0:
            problems.append(f"split '{name}' has no negative images ({c['images']} images)")
    if problems:
        raise TrainError("; ".join(problems))
    check_patient_leaks(samples)


def check_patient_leaks(samples: Sequence[Sample]) -> None:
    """ValueError naming the patients whose images are in more than one split, and the way out. Only the data can
    cause this (cxr keeps a patient's images together): splits given per image, as the original recipe's
    train/val/test folders were."""
    seen: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        if s.split is not None:
            seen[s.patient_id].add(s.split)
    leaks = sorted(pid for pid, names in seen.items() if len(names) > 1)
    if leaks:
        shown = ", ".join(f"{pid} ({'/'.join(sorted(seen[pid]))})" for pid in leaks[:5])
        more = f" and {len(leaks) - 5} more" if len(leaks) > 5 else ""
        raise TrainError(
            f"{len(leaks)} patient(s) are in more than one split: {shown}{more}. The data's splits were made per "
            "image; let cxr split by patient instead: move the images out of train/val/test folders into "
            "ROOT/<positive class>/ and ROOT/<negative class>/, or leave the split column empty (a given test split "
            "can stay if its patients are nowhere else)")


def write_splits(samples: Sequence[Sample], run_dir: Path | str) -> Path:
    """Write run_dir/splits.csv (path,label,patient_id,split,source; absolute paths) atomically; return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / SPLITS_NAME
    with atomic_write(target, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SPLIT_COLUMNS + EXTRA_COLUMNS)
        for s in samples:
            masks = [str(m) for m in s.masks] if s.masks else ["", "", ""]
            writer.writerow([str(s.path), int(s.label), s.patient_id, s.split or "", s.source, *masks,
                             "" if s.ctr is None else repr(float(s.ctr))])
    return target


def read_splits(path: Path | str) -> list[Sample]:
    """The samples a run recorded with write_splits (for --resume). ValueError naming the file and row when bad."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise TrainError(f"{path}: missing column(s) {missing}; expected {list(SPLIT_COLUMNS)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainError(f"{path}: cannot read the splits file: {exc}") from exc
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            label = int(row["label"])
            if label not in (0, 1) or not row["path"] or not row["patient_id"]:
                raise TrainError("label must be 0 or 1 and path and patient_id non-empty")
            split = parse_split(row["split"])
        except (TypeError, ValueError) as exc:
            raise TrainError(f"{path}:{line}: bad row {dict(row)}: {exc}") from exc
        masks = tuple(Path(row[c]) for c in EXTRA_COLUMNS[:3]) if all(row.get(c) for c in EXTRA_COLUMNS[:3]) else None
        ctr = float(row["ctr_ref"]) if row.get("ctr_ref") else None
        out.append(Sample(Path(row["path"]), label, row["patient_id"], split, row["source"] or "", masks, ctr))
    return out
