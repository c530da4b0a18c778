"""cxr-score's side of resuming and of leaving other runs' files alone: the journal every run keeps (--resume
continues it), leftover temporary files of killed runs, and the exit paths that must not wait on blocked readers."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable

import click


def name_leftovers(out: Path, warn: Callable[[str], None]) -> None:
    """Say which hidden temporary files a killed run (SIGKILL, power loss) left for --out: they are never removed
    here, since they hold rows; the journal holds the same rows, so --resume continues without them."""
    from cxr.runtime.journal import journal_path
    from cxr.runtime.results import leftover_temps

    for path, rows in leftover_temps(out):
        what = f"{rows} whole row(s)" if rows else "no whole row"
        warn(f"{path} was left by a killed run on this --out ({what}); "
             + (f"--resume continues from {journal_path(out)}; " if journal_path(out).exists() else "")
             + "delete it once you no longer need it")


def open_journal(out: Path, identity: dict, resume: bool, warn: Callable[[str], None]):
    """The run's journal: a new one, or with --resume the one beside --out when it was written with the same
    folder, model and settings (otherwise a usage error, exit 2). OSError when it cannot be written."""
    from cxr.runtime.journal import Journal, JournalMismatch, journal_path
    from cxr.runtime.results import escape_text

    path = journal_path(out)
    if not resume:
        journal = Journal.start(path, identity)
        if journal.replaced:
            warn(f"started {path} afresh; the earlier one held {journal.replaced} finished "
                 "file(s) (--resume would have continued it)")
        return journal
    try:
        journal = Journal.resume(path, identity)
    except JournalMismatch as exc:
        raise click.BadParameter(escape_text(
            f"{path} was written by a run with another folder, model or settings ({exc}); its rows cannot be "
            "mixed into these results: give another --out, or run without --resume to start over"),
            param_hint="--resume") from None
    if journal.ignored:
        warn(f"{path}: {journal.ignored} torn or damaged line(s) ignored (a killed run or a "
             "power loss); their files are scored again")
    return journal


def resume_note(journal, total: int, todo: int) -> str:
    return (f"resuming from {journal.path}: {total - todo} of {total} file(s) already scored, {todo} to score"
            if journal.reused else "")


def exit_now_if_readers_stuck(code) -> None:
    """After an interrupted run has written what it had (rows kept, lock released): a reader or drawing thread blocked
    in C (a FIFO, a slow network file, a decode that never ends) cannot be interrupted, and Python would wait for it
    at exit forever. Flush and leave at once instead; nothing of the run is left to write."""
    if not any(t.name.startswith(("cxr-read", "cxr-overlay")) and t.is_alive() for t in threading.enumerate()):
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1)
