"""Find the image files under a folder: recursive, sorted, hidden entries skipped, loops and unreadable folders reported.

The walk never fails on one bad entry: a folder it cannot list, a symlink loop or a special file (FIFO, socket,
device) becomes a line in `WalkResult.problems`, and the walk goes on; callers report those lines (cxr-score prints
each once), so the walk itself only logs them at debug level. Symlinked folders are followed (a loop is detected by
the (st_dev, st_ino) of the real directories on the current path); symlinked files are scored like files.
Which file counts as an image is `cxr.runtime.imaging.is_image_candidate`'s decision.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

logger = logging.getLogger(__name__)


@dataclass
class WalkResult:
    """What `find_images` found. `files` are relative to the walked folder, sorted by their POSIX form."""

    files: list[Path] = field(default_factory=list)
    skipped_non_images: int = 0
    """Regular files that are not image candidates (README.txt, labels.csv, ...)."""
    skipped_hidden: int = 0
    """Files and folders whose name starts with '.' (not descended into, not counted as non-images)."""
    problem_entries: list[tuple[str, str]] = field(default_factory=list)
    """(relative POSIX path, what is wrong) per folder that could not be listed, symlink loop, or special file."""

    @property
    def problems(self) -> list[str]:
        """One line per problem, "path: what is wrong" (the path may itself contain ": ")."""
        return [f"{path}: {reason}" for path, reason in self.problem_entries]

    def add_problem(self, path: str, reason: str) -> None:
        self.problem_entries.append((path, reason))


def find_images(folder: str | os.PathLike, is_candidate: Callable[[Path], bool] | None = None) -> WalkResult:
    """Walk `folder` recursively and return the image candidates in sorted relative-path order.

    `is_candidate` defaults to `cxr.runtime.imaging.is_image_candidate`; it is only ever called on regular files
    (or dangling symlinks, which then fail to read and become error rows rather than vanishing silently).
    Raises FileNotFoundError / NotADirectoryError when `folder` itself is missing or not a folder.
    """
    if is_candidate is None:
        from cxr.runtime.imaging import is_image_candidate as is_candidate
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"{root}: folder not found")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")

    result = WalkResult()
    found: list[tuple[str, Path]] = []
    root_stat = root.stat()
    # Each stack entry: (absolute dir, relative POSIX prefix, identities of the real dirs from root to here).
    stack: list[tuple[Path, PurePosixPath, frozenset[tuple[int, int]]]] = [
        (root, PurePosixPath(), frozenset({(root_stat.st_dev, root_stat.st_ino)}))]
    while stack:
        directory, rel_dir, ancestors = stack.pop()
        shown = rel_dir.as_posix() if rel_dir.parts else "."
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:  # PermissionError, vanished folder, I/O error
            result.add_problem(shown, f"cannot list folder: {exc.strerror or exc}")
            logger.debug("%s: cannot list folder: %s", directory, exc.strerror or exc)
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                result.skipped_hidden += 1
                continue
            rel = rel_dir / entry.name
            try:
                st = os.stat(entry.path)  # follows symlinks
            except FileNotFoundError:
                if entry.is_symlink() and _safe_candidate(is_candidate, Path(entry.path)):
                    found.append((rel.as_posix(), Path(rel)))  # dangling link: an 'unreadable' row, not silence
                else:
                    result.add_problem(rel.as_posix(), "broken symlink")
                continue
            except OSError as exc:
                result.add_problem(rel.as_posix(), f"cannot stat: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    result.add_problem(rel.as_posix(), "symlink loop (points back to a folder above it), not followed")
                    logger.debug("%s: symlink loop, not followed", entry.path)
                    continue
                subdirs.append((Path(entry.path), rel, ancestors | {ident}))
            elif stat.S_ISREG(st.st_mode):
                if _safe_candidate(is_candidate, Path(entry.path)):
                    found.append((rel.as_posix(), Path(rel)))
                else:
                    result.skipped_non_images += 1
            else:
                result.add_problem(rel.as_posix(), "not a regular file (FIFO, socket or device), skipped")
        stack.extend(reversed(subdirs))
    found.sort(key=lambda item: item[0])
    result.files = [path for _, path in found]
    return result


def _safe_candidate(is_candidate: Callable[[Path], bool], path: Path) -> bool:
    """A candidate check that cannot stop the walk: a file it cannot even sniff is still a candidate (an error row)."""
    try:
        return bool(is_candidate(path))
    except OSError:
        return True
