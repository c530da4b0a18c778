r"""results.csv and its JSON manifest, written so that a crash or Ctrl-C never leaves a half-written file.

The CSV goes to a temporary file beside the final one, one os.write per row (a failed write is cut back to the last
whole row, so a full disk never leaves a cut number); on success it is fsync'd and
`os.replace`d onto the final name (atomic on POSIX). On failure the rows already done are kept as `<out>.partial`
and the final name is left untouched (a previous results file there survives), with a sidecar
`<out>.partial.json` recording the run's identity (cxr.runtime.journal.run_identity: folder, model sha256, settings).
A later run that completes removes a kept `.partial` only when its sidecar records the same identity (the complete
results now stand for it); another folder's, model's or settings' interrupted run keeps its rows, and is named.
Columns: path,prob_cardiomegaly,cardiomegaly,status,error (one row per image file), then ctr,ctr_flag
for models with a ctr output, then label when cxr-score is given --labels.

The path cell is escaped so that any file name Linux allows survives a spreadsheet and a CSV reader, and two names
never give the same cell (`escape_path`; `unescape_path` is its exact inverse, giving the real relative path as
os.fsdecode spells it):
1. a backslash becomes `\\`;
2. each byte of the name that is not UTF-8 (os.fsdecode's surrogates U+DC80..U+DCFF) becomes `\xHH` (HH >= 80),
   each C0 control character and DEL (TAB, CR, LF, ESC, ...) `\xHH` (HH < 20 or 7F);
3. other characters that can hide or reorder text (C1 controls U+0080..U+009F, format characters such as the
   bidirectional overrides, U+2028/U+2029, any other lone surrogate) become `\uHHHH` (`\UHHHHHHHH` above U+FFFF);
4. the spreadsheet guard: when the result starts with `=`, `+`, `-`, `@` or `'`, one `'` is put before it. So a real
   leading `'` is doubled (`'=a.png` -> `''=a.png`, `=a.png` -> `'=a.png`), and a cell that starts with `'` always
   lost exactly one to the guard.
Every other character (letters of any script, spaces, commas, quotes) is written as it is, with CSV quoting. The
error cell goes through the same escaping (steps 1-4), so no cell can break a row or start a formula.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import platform
import sys
import tempfile
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cxr.runtime.atomic import fsync_close, fsync_dir
from cxr.runtime.scoring import ScoreRow
from cxr.runtime.serialization import jsonable

logger = logging.getLogger(__name__)

COLUMNS = ("path", "prob_cardiomegaly", "cardiomegaly", "status", "error")
ANATOMY_COLUMNS = ("ctr", "ctr_flag")
"""Added after COLUMNS for models with a ctr output: the ratio with 4 decimals (empty when not measurable) and why
the masks look implausible (no_heart, no_lungs, one_lung_missing, lungs_cut_by_edge, heart_wider_than_lungs;
';'-joined; empty when they look right)."""
LABEL_COLUMN = "label"
"""Added last when cxr-score is given --labels: the file's reference label 0/1, empty when the labels file has none."""
_FORMULA_START = ("=", "+", "-", "@", "'", "\t", "\r")
_HIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")


def safe_cell(text: str) -> str:
    """Prefix a quote to cells a spreadsheet would run as a formula (CSV injection), and to cells starting with a
    quote, so that the guard can always be taken off again; other text is unchanged."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def escape_text(text: str) -> str:
    """Steps 1-3 of the path escaping (module docstring): no control, format or undecodable character left raw.
    Also what cxr-score prints to the terminal in place of a name, so an ESC in a name cannot forge a line."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code >= 0x80 and unicodedata.category(ch) in _HIDDEN_CATEGORIES:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def escape_path(path: str) -> str:
    """The `path` cell of a file's relative path (str as os.fsdecode gives it): escaped, then formula-guarded."""
    return safe_cell(escape_text(path))


def unescape_path(cell: str) -> str:
    """The real relative path of a `path` cell written by escape_path (ValueError for a cell it cannot have written).
    Bytes that are not UTF-8 come back as os.fsdecode's surrogates: os.fsencode gives the name's bytes."""
    if cell.startswith("'"):
        cell = cell[1:]
    out, i = [], 0
    while i < len(cell):
        ch = cell[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = cell[i + 1:i + 2]
        width = {"\\": 0, "x": 2, "u": 4, "U": 8}.get(kind)
        digits = cell[i + 2:i + 2 + (width or 0)]
        if width is None or len(digits) != width or (width and not all(c in "0123456789abcdef" for c in digits)):
            raise ValueError(f"not a cxr path cell: bad escape at {i} in {cell!r}")
        if width == 0:
            out.append("\\")
        else:
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise ValueError(f"not a cxr path cell: code point out of range at {i} in {cell!r}")
            out.append(chr(code + 0xDC00) if kind == "x" and code >= 0x80 else chr(code))
        i += 2 + width
    return "".join(out)


def csv_cells(row: ScoreRow, anatomy: bool = False, labels: bool = False, label: int | None = None) -> list[str]:
    """The CSV cells of one row (probability with 6 decimals; call and probability empty on error rows), plus
    ctr and ctr_flag when `anatomy`, and the reference `label` (empty when None) when `labels`."""
    if row.ok:
        prob, call, error = f"{row.probability:.6f}", str(int(row.label_pred)), ""
    else:
        prob, call, error = "", "", f"{row.error_code}: {row.error_message}"
    cells = [escape_path(row.path), prob, call, row.status, escape_path(error)]
    if anatomy:
        cells += ["" if row.ctr is None else f"{row.ctr:.4f}", row.ctr_flag]
    if labels:
        cells.append("" if label is None else str(int(label)))
    return cells


def partial_path(out: Path, n: int = 1) -> Path:
    """results.csv -> results.csv.partial; the n-th kept partial (n >= 2) of the same results: .partial.n."""
    return out.with_name(out.name + ".partial" + (f".{n}" if n > 1 else ""))


def stale_partials(out: Path) -> list[Path]:
    """The `.partial` files that interrupted runs left for `out`, in order."""
    found = [partial_path(out)] if partial_path(out).is_file() else []
    numbered = [(int(p.name.rsplit(".", 1)[1]), p) for p in out.parent.glob(glob.escape(out.name) + ".partial.*")
                if p.name.rsplit(".", 1)[1].isdigit() and p.is_file()]
    return found + [p for _, p in sorted(numbered)]


def sidecar_path(partial: Path) -> Path:
    """results.csv.partial -> results.csv.partial.json: the identity of the run that kept it."""
    return partial.with_name(partial.name + ".json")


def read_sidecar(partial: Path) -> dict | None:
    """The identity a kept `.partial` was written with; None when its sidecar is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(partial).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("identity") if isinstance(data, dict) and isinstance(data.get("identity"), dict) else None


def leftover_temps(out: Path) -> list[tuple[Path, int]]:
    """Hidden temporary files a killed run (SIGKILL, power loss) left for `out` and its manifest, each with its
    number of whole result rows (0 for a manifest's). Only names mkstemp gave for these very files match."""
    found = []
    for target in (out, manifest_path(out)):
        for p in sorted(out.parent.glob("." + glob.escape(target.name) + ".????????.tmp")):
            try:
                with open(p, "rb") as fh:
                    rows = max(fh.read().count(b"\n") - 1, 0) if target == out else 0
            except OSError:
                continue
            found.append((p, rows))
    return found


def lock_path(out: Path) -> Path:
    """results.csv -> results.csv.lock: held (O_EXCL, holding the pid) while a run writes `out`."""
    return out.with_name(out.name + ".lock")


class OutputLocked(Exception):
    """Another live process holds the output's lock."""


class OutputLock:
    """`<out>.lock`, created with O_EXCL and holding the pid: two runs on the same --out cannot pair one's CSV with
    the other's manifest. A lock whose pid no longer runs (a killed run) is taken over; `taken_over` then says whose."""

    def __init__(self, out: str | os.PathLike):
        self.path = lock_path(Path(out))
        self.taken_over: str | None = None
        self._held = False

    def acquire(self) -> "OutputLock":
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise OutputLocked(f"{self.path} is held by process {owner}, which is still writing these "
                                       "results; wait for it, or give another --out") from None
                self.taken_over = str(owner) if owner is not None else "an unreadable lock"
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self._held = True
            return self
        raise OutputLocked(f"{self.path}: could not be taken (another run keeps creating it)")

    def _owner(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                if self._owner() == os.getpid():
                    self.path.unlink()
            except OSError:
                pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def derived_names(out: Path) -> list[Path]:
    """Every file a run may create for `out`, longest names included: the temporary file, the lock, the numbered
    partials, the manifest (for checking NAME_MAX/PATH_MAX before scoring rather than after)."""
    return [out, out.with_name(f".{out.name}.xxxxxxxx.tmp"), lock_path(out), sidecar_path(partial_path(out, 99)),
            out.with_name(f".{out.name}.journal.xxxxxxxx.tmp"),
            manifest_path(out), manifest_path(out).with_name(f".{manifest_path(out).name}.xxxxxxxx.tmp")]


def manifest_path(out: Path) -> Path:
    """results.csv -> results.manifest.json; a name without .csv gets .manifest.json appended."""
    out = Path(out)
    if out.suffix.lower() == ".csv":
        return out.with_name(out.name[: -len(out.suffix)] + ".manifest.json")
    return out.with_name(out.name + ".manifest.json")


class ResultsWriter:
    """Write results rows to a temporary file beside `out`; `commit()` publishes it, `abort()` keeps `.partial`.

    Creating the writer creates the temporary file, so an unwritable location fails (OSError) before any scoring.
    As a context manager: commit is explicit; leaving the block by an exception (KeyboardInterrupt included)
    aborts, and `partial` then names the kept file (None when no row had been written).
    """

    def __init__(self, out: str | os.PathLike, anatomy: bool = False, labels: bool = False,
                 identity: dict | None = None):
        self.out = Path(out)
        self.identity = identity
        """What decides this run's rows (cxr.runtime.journal.run_identity): recorded beside a kept `.partial`, and
        a stale `.partial` is removed on commit only when its record is equal. May be set after creation."""
        self.anatomy = bool(anatomy)
        self.labels = bool(labels)
        if self.out.is_dir():
            raise IsADirectoryError(f"{self.out}: is a folder; --out must name a file")
        directory = self.out.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=directory)
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; the results should get the user's usual permissions
        self.tmp = Path(tmp)
        self._fd: int | None = fd
        self._complete = 0
        """Bytes of whole lines in the file: a failed write is cut back to this, so rows are whole or absent."""
        self._line(COLUMNS + (ANATOMY_COLUMNS if self.anatomy else ()) + ((LABEL_COLUMN,) if self.labels else ()))
        self.rows = 0
        self.partial: Path | None = None
        self.removed_partials: list[Path] = []
        """The `<out>.partial` files of earlier interrupted runs with this run's identity that commit() removed."""
        self.kept_partials: list[Path] = []
        """The `<out>.partial` files commit() left: written by another folder, model or settings (or unrecorded)."""
        self.done = False

    def write(self, row: ScoreRow, label: int | None = None) -> None:
        """One row; `label` is its reference label (written only when the writer was made with labels=True)."""
        self._line(csv_cells(row, self.anatomy, self.labels, label))
        self.rows += 1

    def _line(self, cells) -> None:
        """One CSV line written straight to the file (the OS has it: it survives a crash of this process). A write
        that fails part-way (disk full, file too large) is truncated back to the last whole line, then raised."""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        data = buf.getvalue().encode("utf-8")  # cells are escaped: strict, so a slip would show
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except BaseException:  # a failed write may still have landed some bytes (FUSE, NFS): cut back regardless
            try:
                os.ftruncate(self._fd, self._complete)
                os.lseek(self._fd, self._complete, os.SEEK_SET)
            except OSError:
                pass
            raise
        self._complete += len(data)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fsync_close(fd)

    def commit(self) -> Path:
        """fsync and atomically move the temporary file onto `out`."""
        self._close()
        os.replace(self.tmp, self.out)
        for stale in stale_partials(self.out):
            if self.identity is None or read_sidecar(stale) != self.identity:
                self.kept_partials.append(stale)
                continue
            try:
                stale.unlink()
                sidecar_path(stale).unlink(missing_ok=True)
                self.removed_partials.append(stale)
            except FileNotFoundError:
                pass
            except OSError as exc:  # the results are committed; a leftover that cannot go is only worth a warning
                logger.warning("%s: could not remove this leftover of an interrupted run: %s", stale,
                               exc.strerror or exc)
        fsync_dir(self.out.parent)
        self.done = True
        return self.out

    def abort(self) -> Path | None:
        """Keep the rows written so far as `<out>.partial` (`.partial.2`, ... when an earlier interrupted run's rows
        are there already), or remove the temporary file when there are none."""
        if self.done:
            return self.partial
        self.done = True
        try:
            self._close()
        except OSError:
            pass
        if self.rows == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        n = 1
        while partial_path(self.out, n).exists():  # an earlier run's rows are kept too, never overwritten
            n += 1
        self.partial = partial_path(self.out, n)
        os.replace(self.tmp, self.partial)
        if self.identity is not None:
            try:
                write_json_atomic(sidecar_path(self.partial), {"identity": self.identity})
            except OSError:  # the rows are kept; without the record a later run leaves them alone
                logger.warning("%s: could not record which run kept these rows", self.partial)
        return self.partial

    def discard(self) -> None:
        """Remove the temporary file (nothing was scored, nothing to keep)."""
        if not self.done:
            self.done = True
            try:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
            finally:
                self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            self.abort()


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """JSON (NaN/inf written as null) through the one atomic writer (cxr.runtime.atomic): temporary file beside
    `path`, fsync'd, renamed onto it, the folder fsync'd."""
    from cxr.runtime.atomic import atomic_write

    with atomic_write(path, "w") as fh:
        json.dump(jsonable(data), fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
    return Path(path)


def _file_mode() -> int:
    """0666 minus the process umask: the mode an ordinary open(..., 'w') would have given."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@dataclass
class Tally:
    """Running counts and timings over the rows of one run (what the manifest and the summary report)."""

    files: int = 0
    ok: int = 0
    error: int = 0
    by_code: Counter = field(default_factory=Counter)
    read_ms: float = 0.0
    model_ms: float = 0.0
    ctr_flags: Counter = field(default_factory=Counter)

    def add(self, row: ScoreRow) -> None:
        self.files += 1
        self.read_ms += row.read_ms
        self.model_ms += row.model_ms
        for flag in filter(None, row.ctr_flag.split(";")):
            self.ctr_flags[flag] += 1
        if row.ok:
            self.ok += 1
        else:
            self.error += 1
            self.by_code[row.error_code] += 1


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (read from the loaded modules; pydicom only if importable)."""
    import cv2
    import numpy

    import cxr

    out = {"cxr": cxr.__version__, "numpy": numpy.__version__, "opencv": cv2.__version__,
           "python": platform.python_version()}
    try:
        from cxr.runtime.ort import import_ort

        out["onnxruntime"] = import_ort().__version__
    except ImportError:
        out["onnxruntime"] = "absent"
    try:
        import pydicom

        out["pydicom"] = pydicom.__version__
    except ImportError:
        out["pydicom"] = "absent"
    return out


def card_summary(card) -> dict[str, Any]:
    """The parts of the model card a reader of the results needs (the card's own JSON form, less the I/O shapes)."""
    keep = ("task", "positive_label", "input_size", "outputs", "decision", "preprocess", "normalization", "threshold",
            "training", "export")
    full = card.to_dict()
    return {key: full[key] for key in keep}


def build_manifest(*, scorer, folder: Path, out: Path, tally: Tally, walk, threshold: float,
                   threshold_source: str, started: str, finished: str, total_s: float, scoring_s: float,
                   command: list[str], options: Mapping[str, Any] | None = None,
                   labels: Mapping[str, Any] | None = None,
                   outputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to trust or reproduce a results file, as one JSON-ready dict. `outputs`: what else the
    run wrote (overlays, report) and how that went."""
    images_per_s = tally.files / scoring_s if scoring_s > 0 else None
    return {
        "results_csv": str(out),
        "folder": str(folder),
        "folder_resolved": str(Path(folder).resolve()),
        "model": {"path": str(scorer.model_path), "resolved": str(Path(scorer.model_path).resolve()),
                  "sha256": scorer.model_sha256, "size_bytes": scorer.model_size_bytes},
        "card": card_summary(scorer.card),
        "threshold": {"value": float(threshold), "source": threshold_source},
        "device": {"requested": scorer.requested_device, "used": scorer.device, "providers": scorer.providers,
                   "intra_op_threads": scorer.threads},  # None: onnxruntime's default
        "precision": getattr(scorer, "precision_facts", None),  # what ran and why (cxr.cli.precision_opts)
        "shift_average": getattr(scorer, "shift_average_facts", None),  # cxr-score --shift-average (runtime.shifts)
        "counts": {
            "files": tally.files, "ok": tally.ok, "error": tally.error,
            "by_error_code": dict(sorted(tally.by_code.items())),
            "ctr_flags": dict(sorted(tally.ctr_flags.items())),
            "skipped_non_images": walk.skipped_non_images, "skipped_hidden": walk.skipped_hidden,
            "walk_problems": list(walk.problems),
        },
        "timings": {
            "total_s": round(total_s, 4),
            "scoring_s": round(scoring_s, 4),
            "images_per_s": round(images_per_s, 3) if images_per_s is not None else None,
            "mean_model_ms_per_image": round(tally.model_ms / tally.ok, 3) if tally.ok else None,
            "mean_read_ms_per_image": round(tally.read_ms / tally.files, 3) if tally.files else None,
            "mean_end_to_end_ms_per_image": round(scoring_s * 1000 / tally.files, 3) if tally.files else None,
        },
        "versions": versions(),
        "started": started,
        "finished": finished,
        "command": list(command),
        "options": dict(options or {}),
        "labels": dict(labels) if labels is not None else None,
        "outputs": dict(outputs or {}),
        "platform": {"system": platform.system(), "machine": platform.machine(), "executable": sys.executable},
    }
