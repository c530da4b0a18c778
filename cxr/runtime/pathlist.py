"""A file that lists the images to score (cxr-score LIST): .txt (one path per line), .csv (a `path` column) or
.parquet (a `path` column; needs pyarrow, which the `ray` extra brings).

Relative entries are relative to the list file's folder; absolute ones are kept. Blank lines and, in a .txt list,
lines starting with '#' are skipped; a path listed twice is scored once. Names that are not UTF-8 survive a .txt list
(read as bytes, decoded like os.fsdecode). A listed file that does not exist is not a usage error: on shared storage
it becomes an 'unreadable' row like any file that cannot be read, so one vanished scan never stops an archive run.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from cxr.runtime.errors import CxrError

LIST_SUFFIXES = (".txt", ".csv", ".parquet")
PATH_COLUMN = "path"


class PathListError(CxrError):
    """A path list that cannot be used: unreadable, no `path` column, no entry. The message names the file."""


def is_path_list(path: Path) -> bool:
    """Whether a target given to cxr-score is a list of paths (by its suffix) rather than an image."""
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def read_path_list(path: Path) -> list[Path]:
    """The absolute paths a list file names, in its order, each once (PathListError when it cannot be used)."""
    suffix = path.suffix.lower()
    try:
        entries = (_read_parquet(path) if suffix == ".parquet" else _read_csv(path) if suffix == ".csv"
                   else _read_txt(path))
    except OSError as exc:
        raise PathListError(f"{path}: cannot read the path list: {exc.strerror or exc}") from None
    entries = [e for e in entries if e.strip()]
    if not entries:
        raise PathListError(f"{path}: the path list names no file")
    base = path.parent
    return list(dict.fromkeys(Path(os.path.abspath(base / entry)) for entry in entries))


def _read_txt(path: Path) -> list[str]:
    lines = path.read_bytes().split(b"\n")
    out = []
    for line in lines:
        line = line.rstrip(b"\r")
        if line.strip() and not line.lstrip().startswith(b"#"):
            out.append(os.fsdecode(line))
    return out


def _read_csv(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PathListError(f"{path}: the path list is not UTF-8 text (byte {exc.start}); use a .txt list, one "
                            "path per line, for names that are not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or PATH_COLUMN not in reader.fieldnames:
        raise PathListError(f"{path}: the path list has no '{PATH_COLUMN}' column (header: "
                            f"{', '.join(reader.fieldnames or []) or 'none'})")
    return [row[PATH_COLUMN] or "" for row in reader]


def _read_parquet(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PathListError(f"{path}: reading a .parquet path list needs pyarrow: pip install 'cxr[ray]' (or "
                            "pyarrow)") from None
    try:
        schema = pq.read_schema(path)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid for a file that is not Parquet
        raise PathListError(f"{path}: not a readable Parquet file: {exc}") from None
    if PATH_COLUMN not in schema.names:
        raise PathListError(f"{path}: the path list has no '{PATH_COLUMN}' column (columns: "
                            f"{', '.join(schema.names) or 'none'})")
    column = pq.read_table(path, columns=[PATH_COLUMN]).column(PATH_COLUMN)
    return [os.fsdecode(v) if isinstance(v, bytes) else ("" if v is None else str(v)) for v in column.to_pylist()]
