"""Reference labels, one parser for every command: cxr-train's CSV datasets, `cxr-score --labels` and
`cxr-export --sample` read label values with `parse_label`, so a labels.csv that trains never loses rows when scored.

`cxr-score --labels` then matches each labelled path to a scored image (`match_labels`): a path relative to the scored
folder, an absolute path under it, a path relative to the labels file's own folder (as cxr-train resolves it), or a
bare file name when exactly one scored image has that name. A blank or unreadable label is ignored and counted, never
guessed. Metrics come from `cxr.runtime.metrics.summarize`, the same function training uses.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from cxr.runtime import metrics
from cxr.runtime.errors import CxrError

if TYPE_CHECKING:
    from cxr.runtime.scoring import ScoreRow

LABEL_ALIASES = ("label", "cardiomegaly")
"""The label column when none is named: `label`, or else `cardiomegaly` (the column cxr-phantom and cxr-train use)."""
DEFAULT_CLASSES = ("Cardiomegaly", "Normal")
TRUE_VALUES = ("1", "1.0", "true", "yes", "positive", "y", "t")
FALSE_VALUES = ("0", "0.0", "false", "no", "negative", "n", "f")
ACCEPTED = "1/0, true/false, yes/no, positive/negative or the class names"
"""What `parse_label` reads, for messages."""
_EXAMPLES = 5
RATIO_WORDS = "manual cardiothoracic ratio"
"""In every message about the column of manual ratios (cxr-score --ctr-column), which says which option to fix."""
GROUP_WORDS = "groups to report the metrics by"
"""In every message about the column of groups (cxr-score --group-column), which says which option to fix."""
MAX_GROUPS = 50
"""cxr-score --group-column reports at most this many groups: a site, scanner or view position, not an id."""
BLANK_GROUP = ""
"""The group of a labelled line whose group column is blank (reported as '(blank)')."""
NO_ANATOMY = "no_anatomy"
"""cxr.runtime.scoring.NO_ANATOMY (not imported: this module stays free of the scoring session's imports)."""


class LabelsError(CxrError, ValueError):
    """The labels file cannot be used (missing columns, conflicting duplicates, unreadable)."""


class GroupsError(LabelsError):
    """The column of groups (`cxr-score --group-column`) cannot be used: missing, or one image in two groups."""


def parse_label(value: str | None, classes: tuple[str, str] = DEFAULT_CLASSES) -> int | None:
    """1/0 from 1/0, 1.0/0.0, true/false, yes/no, positive/negative, y/n, t/f or the class names (any case, spaces
    around ignored); None for a blank or anything else. The one label parser of cxr-train, cxr-score and cxr-export."""
    text = (value or "").strip().lower()
    if text in TRUE_VALUES or text == classes[0].strip().lower():
        return 1
    if text in FALSE_VALUES or text == classes[1].strip().lower():
        return 0
    return None


@dataclass
class Labels:
    """path (as written, normalized POSIX) -> 0/1, and how many lines were ignored."""

    source: Path
    labels: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    """Lines whose label is blank or not a label `parse_label` reads."""
    bad_values: list[str] = field(default_factory=list)
    """The first few unreadable (non-blank) label values, for messages."""
    ratio_column: str | None = None
    """The column of manual cardiothoracic ratios (`cxr-score --ctr-column`), or None."""
    ratios: dict[str, float] = field(default_factory=dict)
    """path -> the manual ratio, for labelled lines whose ratio is a number in (0, 1]."""
    ratio_blank: int = 0
    """Labelled lines without a manual ratio (blank: not measured)."""
    ratio_ignored: int = 0
    """Labelled lines whose ratio is not such a number (unreadable, out of range)."""
    ratio_bad_values: list[str] = field(default_factory=list)
    group_column: str | None = None
    """The column whose values the metrics are also reported by (`cxr-score --group-column`), or None."""
    groups: dict[str, str] = field(default_factory=dict)
    """path -> its group (the column's stripped text; BLANK_GROUP when blank), for every labelled line."""


def normalize_path(text: str) -> str:
    text = text.strip().replace("\\", "/")
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    return PurePosixPath(*parts).as_posix() if parts else ""


def label_rows(path: str | os.PathLike, path_column: str | None = None, label_column: str | None = None,
               ratio_column: str | None = None, group_column: str | None = None) -> Iterator[tuple]:
    """(line number, normalized path, stripped label text) for each data line of a labels CSV, in file order.

    The one reader of labels files for cxr-score --labels and cxr-export --sample: UTF-8 with or without a BOM (as
    spreadsheets save it), header names stripped; the path column `path_column` (default `path`), the label column
    `label_column` (default `label`, or else `cardiomegaly`). What a blank or unreadable label means is the caller's
    decision. With `ratio_column` (manual cardiothoracic ratios) each tuple also holds that column's stripped text,
    and then with `group_column` that one's. Raises LabelsError naming the file for missing columns or a file that
    cannot be read."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            path_col, label_col = _columns(path, header, path_column, label_column)
            for column, what, which, error in ((ratio_column, f"the {RATIO_WORDS}", f"the {RATIO_WORDS}s",
                                                LabelsError),
                                               (group_column, f"the {GROUP_WORDS}", f"the {GROUP_WORDS}",
                                                GroupsError)):
                if column is None:
                    continue
                if column not in header:
                    raise error(f"{path}: missing column {column!r} ({what}); the CSV has {header}")
                if column in (path_col, label_col):
                    raise error(f"{path}: {column!r} is the {'path' if column == path_col else 'label'} "
                                f"column, not one of {which}")
            if group_column is not None and group_column == ratio_column:
                raise GroupsError(f"{path}: {group_column!r} is the column of {RATIO_WORDS}s (--ctr-column), not "
                                  f"one of the {GROUP_WORDS}")
            extra = [c for c in (ratio_column, group_column) if c is not None]
            reader.fieldnames = header
            for line_no, rec in enumerate(reader, start=2):
                row = (line_no, normalize_path(rec.get(path_col) or ""), (rec.get(label_col) or "").strip())
                yield (*row, *((rec.get(c) or "").strip() for c in extra))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"{path}: cannot read labels: {exc}") from None


def _columns(path: Path, header: list[str], path_column: str | None, label_column: str | None) -> tuple[str, str]:
    path_col = path_column or "path"
    label_col = label_column or next((c for c in LABEL_ALIASES if c in header), "label")
    missing = []
    if path_col not in header:
        missing.append(f"{path_col!r} (the image path)")
    if label_col not in header:
        missing.append(f"{label_col!r}" + ("" if label_column else " or 'cardiomegaly'") + " (the label)")
    if missing:
        raise LabelsError(f"{path}: missing column(s) {', '.join(missing)}; the CSV has {header or 'no header'}")
    return path_col, label_col


def read_labels(path: str | os.PathLike, path_column: str | None = None, label_column: str | None = None,
                classes: tuple[str, str] = DEFAULT_CLASSES, ratio_column: str | None = None,
                group_column: str | None = None) -> Labels:
    """Read a labels CSV (other columns are ignored); values as `parse_label` reads them, with `ratio_column`
    the manual cardiothoracic ratio of each labelled line (`parse_ratio`), and with `group_column` its group (site,
    scanner, view position: the metrics are also reported per group). Raises LabelsError naming the file for
    missing columns or a path labelled both 0 and 1 (or given two ratios, or two groups)."""
    path = Path(path)
    out = Labels(source=path, ratio_column=ratio_column, group_column=group_column)
    for line_no, key, value, *more in label_rows(path, path_column, label_column, ratio_column, group_column):
        label = parse_label(value, classes)
        if not key or label is None:
            out.ignored += 1
            if value and label is None and len(out.bad_values) < _EXAMPLES and value not in out.bad_values:
                out.bad_values.append(value)
            continue
        if out.labels.get(key, label) != label:
            raise LabelsError(f"{path}: line {line_no}: {key!r} is labelled both 0 and 1")
        out.labels[key] = label
        if ratio_column is not None:
            _add_ratio(out, path, line_no, key, more.pop(0))
        if group_column is not None:
            group = more.pop(0)
            if out.groups.get(key, group) != group:
                raise GroupsError(f"{path}: line {line_no}: {key!r} is given two {group_column!r} values, "
                                  f"{out.groups[key]!r} and {group!r}")
            out.groups[key] = group
    return out


def parse_ratio(value: str) -> float | None:
    """A manual cardiothoracic ratio: a finite number in (0, 1] (a heart as wide as the chest is 1); else None."""
    try:
        ratio = float(value)
    except ValueError:
        return None
    return ratio if math.isfinite(ratio) and 0.0 < ratio <= 1.0 else None


def _add_ratio(out: Labels, path: Path, line_no: int, key: str, value: str) -> None:
    if not value:
        out.ratio_blank += 1
        return
    ratio = parse_ratio(value)
    if ratio is None:
        out.ratio_ignored += 1
        if len(out.ratio_bad_values) < _EXAMPLES and value not in out.ratio_bad_values:
            out.ratio_bad_values.append(value)
        return
    if out.ratios.get(key, ratio) != ratio:
        raise LabelsError(f"{path}: line {line_no}: {key!r} is given two manual ratios, {out.ratios[key]:g} and "
                          f"{ratio:g}")
    out.ratios[key] = ratio


HOW = {"relative": "relative to the scored folder", "absolute": "absolute path under the scored folder",
       "labels_dir": "relative to the labels file's folder", "name": "bare file name (unique among scored images)"}
"""How a labelled path can match a scored image, in the order tried."""


@dataclass
class LabelMatch:
    """The labels keyed by the scored images' relative POSIX paths, and how each labelled path fared."""

    by_file: dict[str, int] = field(default_factory=dict)
    how: Counter = field(default_factory=Counter)
    """Matched labelled paths per way of matching (keys of HOW)."""
    unmatched: list[str] = field(default_factory=list)
    """Labelled paths that match no scored image, in file order."""
    ambiguous: list[str] = field(default_factory=list)
    """Bare file names that several scored images share (not matched)."""
    ratio_by_file: dict[str, float] = field(default_factory=dict)
    """The manual ratios (`Labels.ratios`) keyed the same way as `by_file`."""
    group_by_file: dict[str, str] = field(default_factory=dict)
    """The groups (`Labels.groups`) keyed the same way as `by_file`."""

    def describe(self, labels: Labels, files: Sequence[Path]) -> str:
        """Why labelled paths did not match: examples of both sides and what was tried, for stderr."""
        unmatched = len(self.unmatched) + len(self.ambiguous)
        parts = [f"{len(self.by_file)} of {len(files)} scored image(s) have a label; {unmatched} of "
                 f"{len(labels.labels)} labelled path(s) match no scored image"]
        if self.unmatched:
            parts.append("e.g. " + ", ".join(map(repr, self.unmatched[:3])))
        if self.ambiguous:
            parts.append("file names shared by several images: " + ", ".join(map(repr, self.ambiguous[:3])))
        if files:
            parts.append("scored paths look like " + ", ".join(repr(f.as_posix()) for f in files[:3]))
        parts.append("tried: " + "; ".join(HOW.values()))
        return "; ".join(parts)


def match_labels(labels: Labels, root: str | os.PathLike, files: Sequence[Path]) -> LabelMatch:
    """Match each labelled path to one of `files` (paths relative to `root`), in the order of HOW. Raises
    LabelsError when two labelled paths name the same image with different labels."""
    scored = {Path(f).as_posix() for f in files}
    names: dict[str, list[str]] = {}
    for rel in scored:
        names.setdefault(posixpath.basename(rel), []).append(rel)
    bases = _bases(Path(root))
    labels_dir = os.path.abspath(labels.source.parent)
    out = LabelMatch()
    first_key: dict[str, str] = {}
    for key, label in labels.labels.items():
        rel, how = _locate(key, scored, names, bases, labels_dir)
        if rel is None:
            (out.ambiguous if how == "ambiguous" else out.unmatched).append(key)
            continue
        if out.by_file.get(rel, label) != label:
            raise LabelsError(f"{labels.source}: {first_key[rel]!r} and {key!r} are the same image {rel!r} with "
                              "different labels")
        out.by_file[rel] = label
        first_key.setdefault(rel, key)
        out.how[how] += 1
        ratio = labels.ratios.get(key)
        if ratio is not None:
            if out.ratio_by_file.get(rel, ratio) != ratio:
                raise LabelsError(f"{labels.source}: {first_key[rel]!r} and {key!r} are the same image {rel!r} with "
                                  "different manual ratios")
            out.ratio_by_file[rel] = ratio
        if labels.group_column is not None:
            group = labels.groups.get(key, BLANK_GROUP)
            if out.group_by_file.get(rel, group) != group:
                raise GroupsError(f"{labels.source}: {first_key[rel]!r} and {key!r} are the same image {rel!r} in "
                                  f"different {labels.group_column!r} groups")
            out.group_by_file[rel] = group
    return out


def _bases(root: Path) -> list[str]:
    """The scored folder as given (absolute) and with its symbolic links resolved."""
    given, real = os.path.abspath(root), os.path.realpath(root)
    return [given] if given == real else [given, real]


def _under(path: str, bases: list[str]) -> Iterator[str]:
    for base in bases:
        rel = posixpath.relpath(path, base) if path.startswith(base.rstrip("/") + "/") else None
        if rel is not None:
            yield rel


def _locate(key: str, scored: set[str], names: dict[str, list[str]], bases: list[str],
            labels_dir: str) -> tuple[str | None, str]:
    """(the scored image's relative path, how it matched), or (None, 'ambiguous' | '')."""
    if posixpath.isabs(key):
        for candidate in (posixpath.normpath(key), os.path.realpath(key)):
            rel = next((r for r in _under(candidate, bases) if r in scored), None)
            if rel is not None:
                return rel, "absolute"
        return None, ""
    if key in scored:
        return key, "relative"
    rel = next((r for r in _under(posixpath.normpath(posixpath.join(labels_dir, key)), bases) if r in scored), None)
    if rel is not None:
        return rel, "labels_dir"
    if "/" not in key:
        found = names.get(key, [])
        if len(found) == 1:
            return found[0], "name"
        if found:
            return None, "ambiguous"
    return None, ""


class LabelMatcher:
    """Collects (label, probability) for rows with status ok that have a label, one row at a time.

    Keeps only the matched pairs and the set of labelled paths seen, so memory grows with the labels file,
    not with the folder. With a `LabelMatch` rows are looked up by its matched paths, else by the paths as written.
    """

    def __init__(self, labels: Labels, match: LabelMatch | None = None):
        self.labels = labels
        self.match = match
        self.table = match.by_file if match is not None else labels.labels
        self.y: list[int] = []
        self.p: list[float] = []
        self.paths: list[str] = []
        """The path of each (y, p) pair, for re-scoring them (cxr.runtime.precision_check)."""
        self.group_table = match.group_by_file if match is not None else labels.groups
        self.scored_without_label = 0
        self.ratio_table = match.ratio_by_file if match is not None else labels.ratios
        self.ratio_pairs: list[tuple[float, float, bool]] = []
        """(the model's ctr, the manual ratio, flagged) for rows with status ok, a ctr and a manual ratio."""
        self.ratio_paths: list[str] = []
        """The path of each ratio pair (for the figures per group)."""
        self.ratio_not_measured = 0
        """Rows with a manual ratio and no ctr: the masks held no heart or no lungs (status ok, or the error
        no_anatomy of a model deciding by its ratio)."""
        self.ratio_not_scored = 0
        """Rows with a manual ratio that failed for another reason (unreadable image, ...)."""
        self.few = False
        """Set by cxr-score when few labelled paths match (the run then exits 3)."""
        self._seen_labelled: set[str] = set()

    def label_of(self, path: str) -> int | None:
        return self.table.get(path)

    def add(self, row: ScoreRow) -> None:
        label = self.table.get(row.path)
        if label is not None:
            self._seen_labelled.add(row.path)
        manual = self.ratio_table.get(row.path)
        if manual is not None:
            if row.ok and row.ctr is not None:
                self.ratio_pairs.append((float(row.ctr), manual, bool(row.ctr_flag)))
                self.ratio_paths.append(row.path)
            elif row.ok or row.error_code == NO_ANATOMY:
                self.ratio_not_measured += 1
            else:
                self.ratio_not_scored += 1
        if not row.ok:
            return
        if label is None:
            self.scored_without_label += 1
        else:
            self.y.append(label)
            self.p.append(float(row.probability))
            self.paths.append(row.path)

    def report(self, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Matching counts and `metrics.summarize` at `threshold` (None when nothing matched)."""
        labelled = len(self.labels.labels)
        not_found = labelled - len(self._seen_labelled)
        extra: dict[str, Any] = {}
        if self.match is not None:
            not_found = len(self.match.unmatched) + len(self.match.ambiguous) + len(self.table) - len(
                self._seen_labelled)
            extra = {"matched_by": {HOW[k]: n for k, n in self.match.how.items()},
                     "not_found_examples": (self.match.unmatched + self.match.ambiguous)[:_EXAMPLES]}
        return {
            "file": str(self.labels.source),
            "labelled": labelled,
            "ignored_lines": self.labels.ignored,
            "matched": len(self.y),
            "labelled_not_found": not_found,
            "labelled_not_scored": len(self._seen_labelled) - len(self.y),
            "scored_without_label": self.scored_without_label,
            "threshold": float(threshold),
            **extra,
            "metrics": (metrics.summarize(self.y, self.p, threshold, n_boot=n_boot, seed=seed)
                        if self.y else None),
            "site_threshold": metrics.site_threshold(self.y, self.p, seed=seed) if self.y else None,
            **({"ctr_agreement": self.ratio_report(n_boot, seed)} if self.labels.ratio_column else {}),
            **({"groups": self.group_report(threshold, n_boot, seed)} if self.labels.group_column else {}),
        }

    def group_report(self, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """`metrics.summarize` at `threshold` on each group's matched films, groups in sorted order (a blank group
        first, as BLANK_GROUP): a site's AP and PA films, or two scanners, can differ far more than one overall AUROC
        says. A group with one class has no AUROC (NaN), only its operating point. Every group of the matched films
        is reported, with its labelled films that failed to score (`failed`) and, in a run cut short, those not
        reached (`not_reached`): a group whose films all failed has n 0 and NaN figures, never silence. With manual
        ratios (--ctr-column) each group also gets `ctr_agreement`: `metrics.ratio_agreement` on its films that have
        a ctr and a manual ratio (the ratio's error on the hospital left out is not its error on the others)."""
        matched = self._group_counts(self.table)
        seen = self._group_counts(self._seen_labelled)
        by: dict[str, tuple[list[int], list[float]]] = {}
        for path, y, p in zip(self.paths, self.y, self.p):
            ys, ps = by.setdefault(self._group_of(path), ([], []))
            ys.append(y)
            ps.append(p)
        pairs: dict[str, list[tuple[float, float, bool]]] = {}
        for path, pair in zip(self.ratio_paths, self.ratio_pairs):
            pairs.setdefault(self._group_of(path), []).append(pair)
        groups = []
        for g in sorted(set(matched) | set(by)):
            ys, ps = by.get(g, ([], []))  # none scored: summarize gives n 0 and NaN figures
            entry = {"group": g, "labelled": matched[g], "failed": seen[g] - len(ys),
                     "not_reached": matched[g] - seen[g],
                     **metrics.summarize(ys, ps, threshold, n_boot=n_boot, seed=seed)}
            if self.labels.ratio_column is not None:
                measured, manual, flagged = (list(t) for t in zip(*pairs[g])) if g in pairs else ([], [], [])
                entry["ctr_agreement"] = metrics.ratio_agreement(measured, manual, flagged, n_boot=n_boot, seed=seed)
            groups.append(entry)
        return {"column": self.labels.group_column, "groups": groups}

    def groups_matched(self) -> list[str]:
        """The distinct groups of the matched labelled images (what group_report may report), sorted."""
        return sorted(self._group_counts(self.table))

    def _group_of(self, path: str) -> str:
        return self.group_table.get(path, BLANK_GROUP)

    def _group_counts(self, paths) -> Counter:
        return Counter(map(self._group_of, paths))

    def ratio_report(self, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """The ctr column against the manual ratios (`metrics.ratio_agreement`), with what was left out and why."""
        measured, manual, flagged = (list(t) for t in zip(*self.ratio_pairs)) if self.ratio_pairs else ([], [], [])
        agreement = metrics.ratio_agreement(measured, manual, flagged, n_boot=n_boot, seed=seed)
        return {"column": self.labels.ratio_column, "manual_ratios": len(self.labels.ratios),
                "matched_ratios": len(self.ratio_table), "blank_lines": self.labels.ratio_blank,
                "ignored_lines": self.labels.ratio_ignored, "not_measured": self.ratio_not_measured,
                "not_scored": self.ratio_not_scored,
                "follows": metrics.ratio_follows(agreement), **agreement}
