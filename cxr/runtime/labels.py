"""Reference labels for `cxr-score --labels`: read a path,label CSV and compute metrics on the matched rows.

Paths are relative to the scored folder (POSIX, a leading './' is ignored). Labels are 0 or 1; a blank or any other
value is ignored and counted, never guessed. Metrics come from `cxr.runtime.metrics.summarize`, the same function
training uses, so both report the same numbers the same way.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from cxr.runtime import metrics
from cxr.runtime.scoring import ScoreRow

REQUIRED_COLUMNS = ("path", "label")
LABEL_ALIASES = ("label", "cardiomegaly")
"""The label column: `label`, or else `cardiomegaly` (the column cxr-phantom and ../shared/data write)."""


class LabelsError(ValueError):
    """The labels file cannot be used (missing columns, conflicting duplicates, unreadable)."""


@dataclass
class Labels:
    """path (normalized POSIX) -> 0/1, and how many lines were ignored."""

    source: Path
    labels: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    """Lines whose label is blank or not 0/1."""


def normalize_path(text: str) -> str:
    text = text.strip().replace("\\", "/")
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    return PurePosixPath(*parts).as_posix() if parts else ""


def label_rows(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """(line number, normalized path, stripped label text) for each data line of a labels CSV, in file order.

    The one reader of labels files (cxr-score --labels, cxr-export --sample): UTF-8 with or without a BOM (as
    spreadsheets save it), header names stripped, the label column `label` or else `cardiomegaly`. What a blank or
    non-0/1 label means is the caller's decision. Raises LabelsError naming the file for missing columns or a file
    that cannot be read."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            label_column = next((c for c in LABEL_ALIASES if c in header), "label")
            missing = [c for c in ("path", label_column) if c not in header]
            if missing:
                raise LabelsError(f"{path}: missing column(s) {', '.join(missing)}; found {header or 'no header'}"
                                  f" (expected a CSV with columns {','.join(REQUIRED_COLUMNS)})")
            reader.fieldnames = header
            for line_no, rec in enumerate(reader, start=2):
                yield line_no, normalize_path(rec.get("path") or ""), (rec.get(label_column) or "").strip()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"{path}: cannot read labels: {exc}") from None


def read_labels(path: str | os.PathLike) -> Labels:
    """Read a labels CSV with columns path,label (other columns are ignored). Raises LabelsError naming the file."""
    path = Path(path)
    out = Labels(source=path)
    for line_no, key, value in label_rows(path):
        if not key or value not in ("0", "1"):
            out.ignored += 1
            continue
        label = int(value)
        if out.labels.get(key, label) != label:
            raise LabelsError(f"{path}: line {line_no}: {key!r} is labelled both 0 and 1")
        out.labels[key] = label
    return out


class LabelMatcher:
    """Collects (label, probability) for rows with status ok that have a label, one row at a time.

    Keeps only the matched pairs and the set of labelled paths seen, so memory grows with the labels file,
    not with the folder.
    """

    def __init__(self, labels: Labels):
        self.labels = labels
        self.y: list[int] = []
        self.p: list[float] = []
        self.scored_without_label = 0
        self._seen_labelled: set[str] = set()

    def add(self, row: ScoreRow) -> None:
        label = self.labels.labels.get(row.path)
        if label is not None:
            self._seen_labelled.add(row.path)
        if not row.ok:
            return
        if label is None:
            self.scored_without_label += 1
        else:
            self.y.append(label)
            self.p.append(float(row.probability))

    def report(self, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Matching counts and `metrics.summarize` at `threshold` (None when nothing matched)."""
        return {
            "file": str(self.labels.source),
            "labelled": len(self.labels.labels),
            "ignored_lines": self.labels.ignored,
            "matched": len(self.y),
            "labelled_not_found": len(self.labels.labels) - len(self._seen_labelled),
            "labelled_not_scored": len(self._seen_labelled) - len(self.y),
            "scored_without_label": self.scored_without_label,
            "threshold": float(threshold),
            "metrics": (metrics.summarize(self.y, self.p, threshold, n_boot=n_boot, seed=seed)
                        if self.y else None),
        }


def evaluate(rows: Iterable[ScoreRow], labels: Labels, threshold: float, n_boot: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """`LabelMatcher` over an iterable of rows, in one call."""
    matcher = LabelMatcher(labels)
    for row in rows:
        matcher.add(row)
    return matcher.report(threshold, n_boot=n_boot, seed=seed)
