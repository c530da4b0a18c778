"""Find the image files under a folder: recursive, sorted, hidden entries skipped, loops and unreadable folders
reported.

The walk never fails on one bad entry: a folder it cannot list, a symlink loop or a special file (FIFO, socket,
device) becomes a line in `WalkResult.problems`, and the walk goes on; callers report those lines (cxr-score prints
each once), so the walk itself only logs them at debug level. Symlinked folders are followed (a loop is detected by
the (st_dev, st_ino) of the real directories on the current path); symlinked files are scored like files.
Each real folder is walked once and each real file listed once, by (st_dev, st_ino): a folder or file reached again
(symlinks forming a DAG, a hard link) is a problem line naming the path kept, so 12 levels of two links each give one
row, not 4,096. The path kept is the one through the fewest symlinks, then the first in sorted order.
Which file counts as an image is `cxr.runtime.imaging.is_image_candidate`'s decision.
"""

from __future__ import annotations

import heapq
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
    """(relative POSIX path, what is wrong) per folder that could not be listed, symlink loop, special file, or
    second path to a real folder or file already listed (kept once, under the path named in the line)."""

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
    found: dict[tuple[int, int] | str, tuple[tuple[int, str], Path]] = {}  # real file -> (key, relative path)
    walked: dict[tuple[int, int], str] = {}  # real folder -> the relative path it was walked under
    root_stat = root.stat()
    # A heap of folders keyed by (symlinks crossed, relative POSIX path): a folder is always popped after its parent,
    # and the first time a real folder is popped it is under its preferred path. Each entry also carries the
    # identities of the real folders from the root to it (loop detection).
    ident = (root_stat.st_dev, root_stat.st_ino)
    heap: list[tuple[int, str, Path, tuple[int, int], frozenset[tuple[int, int]]]] = [
        (0, "", root, ident, frozenset({ident}))]
    while heap:
        links, shown, directory, ident, ancestors = heapq.heappop(heap)
        if ident in walked:
            result.add_problem(shown, f"same folder as {walked[ident] or '.'} (reached again through a symlink), "
                                      "not walked twice")
            continue
        if ident[1]:  # st_ino 0: identity unknown on this filesystem, never merged
            walked[ident] = shown
        rel_dir = PurePosixPath(shown) if shown else PurePosixPath()
        for child in _list(directory, rel_dir, shown or ".", ancestors, is_candidate, result, found, links):
            heapq.heappush(heap, child)
    result.files = sorted((path for _, path in found.values()), key=lambda path: path.as_posix())
    return result


def _list(directory: Path, rel_dir: PurePosixPath, shown: str, ancestors: frozenset, is_candidate, result: WalkResult,
          found: dict, links: int) -> list:
    """List one folder: record its image candidates in `found` (a second path to the same real file becomes a
    problem) and return its subfolders as heap entries."""
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:  # PermissionError, vanished folder, I/O error
        result.add_problem(shown, f"cannot list folder: {exc.strerror or exc}")
        logger.debug("%s: cannot list folder: %s", directory, exc.strerror or exc)
        return []
    subdirs = []
    for entry in entries:
        if entry.name.startswith("."):
            result.skipped_hidden += 1
            continue
        rel = rel_dir / entry.name
        crossed = links + entry.is_symlink()
        try:
            st = os.stat(entry.path)  # follows symlinks
        except FileNotFoundError:
            if entry.is_symlink() and _safe_candidate(is_candidate, Path(entry.path)):
                found[rel.as_posix()] = ((crossed, rel.as_posix()), Path(rel))  # dangling: an 'unreadable' row
            else:
                result.add_problem(rel.as_posix(), "broken symlink")
            continue
        except OSError as exc:
            result.add_problem(rel.as_posix(), f"cannot stat: {exc.strerror or exc}")
            continue
        ident = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            if ident in ancestors:
                result.add_problem(rel.as_posix(), "symlink loop (points back to a folder above it), not followed")
                logger.debug("%s: symlink loop, not followed", entry.path)
                continue
            subdirs.append((crossed, rel.as_posix(), Path(entry.path), ident, ancestors | {ident}))
        elif stat.S_ISREG(st.st_mode):
            if _safe_candidate(is_candidate, Path(entry.path)):
                _add_file(found, ident if st.st_ino else rel.as_posix(), (crossed, rel.as_posix()), Path(rel), result)
            else:
                result.skipped_non_images += 1
        else:
            result.add_problem(rel.as_posix(), "not a regular file (FIFO, socket or device), skipped")
    return subdirs


def _add_file(found: dict, ident, key: tuple[int, str], rel: Path, result: WalkResult) -> None:
    """Keep one path per real file: the one with the smaller key; the other becomes a problem line."""
    previous = found.get(ident)
    if previous is None:
        found[ident] = (key, rel)
        return
    keep, drop = (previous, (key, rel)) if previous[0] <= key else ((key, rel), previous)
    found[ident] = keep
    result.add_problem(drop[1].as_posix(), f"same file as {keep[1].as_posix()}, listed once")


def _safe_candidate(is_candidate: Callable[[Path], bool], path: Path) -> bool:
    """A candidate check that cannot stop the walk: a file it cannot even sniff is still a candidate (an error row)."""
    try:
        return bool(is_candidate(path))
    except OSError:
        return True
