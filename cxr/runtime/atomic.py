"""The one atomic file writer: a reader sees the old file or the whole new one, never a half-written file.

`atomic_write(path)` writes to a temporary file in the same folder (so the final rename never crosses file systems;
named by mkstemp, so two processes never share one), then flushes, fsyncs and renames it onto `path` (atomic on
POSIX), and fsyncs the folder so the rename itself survives a crash. If the body raises, or is interrupted, the
temporary file is removed and `path` is left as it was. The file gets the permissions an ordinary open() would give.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once, at import: os.umask cannot be read without briefly changing it


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing ('w' text or 'wb' bytes); on a clean exit it replaces
    `path` (see the module docstring); on any exception it is removed and the exception propagates."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        binary = mode == "wb"
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def fsync_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` itself and fsync it: for files that are checked under a temporary name of their own
    before the caller renames them (an ONNX export is validated before it takes the final name)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def fsync_dir(directory: Path) -> None:
    """fsync a folder so a rename in it is durable; quietly nothing where the OS cannot (some file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_close(fd: int) -> None:
    """fsync then close a descriptor (closed even when the fsync fails, whose error propagates)."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
