"""The resume journal: `<out>.journal`, an append-only record of every file a cxr-score run has finished, so that a
run killed at any point (Ctrl-C, SIGTERM, SIGKILL, SIGHUP, a crash, a power loss) can be continued with --resume and
still end with the CSV an uninterrupted run writes.

Format: text lines, each `CRC32 JSON\\n` (8 hex digits of zlib.crc32 over the JSON's UTF-8 bytes, a space, the JSON).
The first line holds the run's identity (`run_identity`: the folder, the model's sha256, the threshold, the device,
the labels file's sha256 and columns); every later line one finished file: its relative path, size and mtime (ns) when
it was scored, and its row (every ScoreRow field but the maps). A line is trusted only when it is whole: ends in a
newline, its checksum matches, its JSON has the expected fields. Anything else (a line torn by a kill or a power loss,
zeros a filesystem left after a crash) is ignored, and its file is scored again.

Durability: each line is one os.write, so once a file's line is written it survives the process (SIGKILL included);
the journal is fsync'd at most once a second while scoring and at the end, so a power loss costs at most the last
second's files, which the resumed run scores again. Resuming rewrites the journal (temporary file, fsync, rename)
with only its whole lines, then appends.

A journaled file is reused only while its size and mtime are unchanged; a file that changed, or is new, is scored.
A journal written for another folder, model or settings is refused (`JournalMismatch`), never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from cxr.runtime.atomic import fsync_close
from cxr.runtime.scoring import ScoreRow

VERSION = 1
FSYNC_EVERY_S = 1.0
_ROW_FIELDS = tuple(f.name for f in fields(ScoreRow) if f.name not in ("cam", "masks"))
NO_FILE = (-1, -1)
"""(size, mtime_ns) of a file that could not be stat'ed when its (error) row was written."""


def journal_path(out: Path) -> Path:
    """results.csv -> results.csv.journal"""
    return Path(out).with_name(Path(out).name + ".journal")


def run_identity(*, folder: Path, model_sha256: str, threshold: float, device: str,
                 labels: Path | None = None, path_column: str = "path", label_column: str | None = None,
                 files_given: bool = False, precision: str = "fp32",
                 shift_average: int | None = None) -> dict[str, Any]:
    """What decides a run's rows besides the files themselves: a journal or a kept `.partial` belongs to a run only
    when this is equal. Batch size, workers and threads change how fast, not what, and are left out; the precision
    changes the probabilities (bf16 runs the fp32 file), so it is in (named only when not fp32, as before it was), and
    so is --shift-average (named only when given)."""
    ident: dict[str, Any] = {"folder": os.fsdecode(os.path.abspath(folder)), "files_given": bool(files_given),
                             "model_sha256": model_sha256, "threshold": float(threshold), "device": device,
                             "labels": None}
    if precision != "fp32":
        ident["precision"] = precision
    if shift_average is not None:
        ident["shift_average"] = int(shift_average)
    if labels is not None:
        digest = hashlib.sha256(Path(labels).read_bytes()).hexdigest()
        ident["labels"] = {"sha256": digest, "path_column": path_column, "label_column": label_column}
    return ident


def describe_difference(theirs: dict, ours: dict) -> str:
    """'model_sha256 ab12... here, cd34... in the journal; ...' for the fields that differ."""
    parts = []
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            parts.append(f"{key} {_short(ours.get(key))} here, {_short(theirs.get(key))} there")
    return "; ".join(parts) or "the journal's format differs"


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


class JournalMismatch(Exception):
    """The journal was written by a run with another folder, model or settings."""


def file_identity(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a scored file, or NO_FILE when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return NO_FILE
    return st.st_size, st.st_mtime_ns


def encode_line(obj: dict) -> bytes:
    body = json.dumps(obj, ensure_ascii=True, sort_keys=True).encode("ascii")  # lone surrogates become \\udcXX
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_line(line: bytes) -> dict | None:
    """The JSON object of one whole, checksummed line, or None for a torn or damaged one."""
    if not line.endswith(b"\n") or len(line) < 11 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _entry(obj: dict) -> tuple[str, tuple[int, int], ScoreRow] | None:
    """(relative path, (size, mtime_ns), row) of a file line, None when its fields are not what a run writes."""
    row = obj.get("row")
    ident = obj.get("file")
    if not (isinstance(row, dict) and set(row) == set(_ROW_FIELDS) and isinstance(row.get("path"), str)
            and isinstance(ident, list) and len(ident) == 2 and all(type(v) is int for v in ident)):
        return None
    try:
        scored = ScoreRow(**row)
    except TypeError:
        return None
    if scored.status not in ("ok", "error") or (scored.ok and not isinstance(scored.probability, float)):
        return None
    return scored.path, (ident[0], ident[1]), scored


@dataclass
class Loaded:
    """What a journal held: its identity (None when it has no whole header) and its whole file lines."""

    identity: dict | None
    rows: dict[str, tuple[tuple[int, int], ScoreRow]] = field(default_factory=dict)
    ignored: int = 0
    """Lines that were torn, damaged or not understood (their files are scored again)."""


def read_journal(path: Path) -> Loaded:
    """Parse a journal; later lines for the same file replace earlier ones."""
    with open(path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    if not lines:
        return Loaded(None)
    header = decode_line(lines[0])
    if header is None or header.get("cxr_journal") != VERSION or not isinstance(header.get("identity"), dict):
        return Loaded(None, ignored=len(lines))
    loaded = Loaded(header["identity"])
    for line in lines[1:]:
        obj = decode_line(line)
        entry = _entry(obj) if obj is not None else None
        if entry is None:
            loaded.ignored += 1
            continue
        loaded.rows[entry[0]] = (entry[1], entry[2])
    return loaded


class Journal:
    """The journal a run appends to. `start` begins a new one (replacing any); `resume` continues a matching one."""

    def __init__(self, path: Path, fd: int, reused: dict[str, tuple[tuple[int, int], ScoreRow]], ignored: int = 0,
                 replaced: int | None = None):
        self.path = path
        self._fd: int | None = fd
        self._synced = time.monotonic()
        self.reused = reused
        """Journaled rows the run may take instead of scoring (still to be checked against the files' identity)."""
        self.ignored = ignored
        self.replaced = replaced
        """Rows of an earlier journal that `start` replaced (None: there was none)."""
        self.resumed = 0
        """Rows taken from the journal in this run (set by `rows_for`)."""

    @classmethod
    def start(cls, path: Path, identity: dict) -> "Journal":
        replaced = None
        if path.is_file():
            try:
                replaced = len(read_journal(path).rows)
            except OSError:
                replaced = 0
        return cls(path, _rewrite(path, identity, []), {}, replaced=replaced)

    @classmethod
    def resume(cls, path: Path, identity: dict) -> "Journal":
        """Continue the journal at `path` (a new one when there is none or it holds no whole header line); raises
        JournalMismatch when it was written for another identity, OSError when it cannot be read or rewritten."""
        if not path.exists():
            return cls.start(path, identity)
        loaded = read_journal(path)
        if loaded.identity is None:
            journal = cls.start(path, identity)
            journal.ignored = loaded.ignored
            return journal
        if loaded.identity != identity:
            raise JournalMismatch(describe_difference(loaded.identity, identity))
        kept = [encode_line({"file": list(ident), "row": _row_dict(row)}) for ident, row in loaded.rows.values()]
        return cls(path, _rewrite(path, identity, kept), loaded.rows, ignored=loaded.ignored)

    def todo(self, folder: Path, files: list[Path]) -> list[Path]:
        """The files of `files` that need scoring: not journaled, or changed since (size or mtime); the others'
        journaled rows are kept for `rows_for`."""
        keep: dict[str, ScoreRow] = {}
        todo = []
        for rel in files:
            key = Path(rel).as_posix()
            entry = self.reused.get(key)
            if entry is not None and entry[0] == file_identity(folder / rel):
                keep[key] = entry[1]
            else:
                todo.append(rel)
        self._keep = keep
        return todo

    def rows_for(self, files: Iterable[Path], scored: Iterator[ScoreRow]) -> Iterator[ScoreRow]:
        """The rows of `files` in order: journaled ones as they were, the others from `scored` (the rows of
        `todo(...)`'s files, in the same order)."""
        keep = getattr(self, "_keep", {})
        for rel in files:
            row = keep.get(Path(rel).as_posix())
            if row is None:
                row = next(scored)
            else:
                self.resumed += 1
            yield row

    def record(self, folder: Path, row: ScoreRow) -> None:
        """Append one finished file's line (one os.write; fsync'd at most once a second)."""
        line = encode_line({"file": list(file_identity(folder / row.path)), "row": _row_dict(row)})
        done = 0
        while done < len(line):
            done += os.write(self._fd, line[done:])
        now = time.monotonic()
        if now - self._synced >= FSYNC_EVERY_S:
            os.fsync(self._fd)
            self._synced = now

    def close(self) -> None:
        """fsync and close (the journal stays for a later --resume)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fsync_close(fd)

    def remove(self) -> None:
        """The results are complete: the journal has served."""
        try:
            self.close()
        except OSError:
            pass
        self.path.unlink(missing_ok=True)

    def manifest(self) -> dict:
        return {"journal": {"path": str(self.path), "rows_resumed": self.resumed, "lines_ignored": self.ignored}}


def _row_dict(row: ScoreRow) -> dict:
    return {name: getattr(row, name) for name in _ROW_FIELDS}


def _rewrite(path: Path, identity: dict, lines: list[bytes]) -> int:
    """Write a journal of `identity` and `lines` atomically over `path`; the fd to append to."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        data = encode_line({"cxr_journal": VERSION, "identity": identity}) + b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return fd
