"""cxr-score's warnings, said and kept: each is printed on stderr unless --quiet, and every one is kept for the
manifest's `warnings` list, so a quiet run (errors only on stderr) can still be audited afterwards.

Besides cxr-score's own warnings (few labels match, a lock taken over, a kept partial file, drawings that failed),
this collects what the runtime logs at warning level (a DICOM window ignored, a batch retried image by image, a GPU
that could not be initialised) and Python's warnings (a decoder's complaints), which would otherwise print
unprefixed whatever --quiet says.
"""

from __future__ import annotations

import logging
from typing import Callable

LIMIT = 1000  # warnings listed in a manifest; past that, only counted (a folder of 100,000 odd DICOM files)
_LOGGERS = ("cxr", "py.warnings")


class RunWarnings(logging.Handler):
    """Call it with a warning's text (no 'cxr-score: warning: ' prefix); as a logging handler (installed by
    `start_capture`) it takes the records of the `cxr` logger and Python's warnings. `echo` prints one stderr line."""

    def __init__(self, echo: Callable[[str], None], *, quiet: bool, verbose: bool = False) -> None:
        super().__init__(logging.WARNING)
        self.echo, self.quiet, self.verbose = echo, quiet, verbose
        self.messages: list[str] = []
        self.not_listed = 0
        self._restore: list[tuple[logging.Logger, int, bool]] = []

    def __call__(self, message: str) -> None:
        self._keep(message)
        if not self.quiet:
            self.echo(f"cxr-score: warning: {message}")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip()
        except Exception:  # a malformed log call must not stop the run
            self.handleError(record)
            return
        self._keep(message)
        if not self.quiet and not self.verbose:  # -v: the debug handler on the root logger prints it, prefixed
            lines = message.splitlines() if record.name == "py.warnings" else [f"cxr-score: warning: {message}"]
            for line in lines:  # Python's warning as Python prints it: the warning, then its source line
                self.echo(line)

    def _keep(self, message: str) -> None:
        with self.lock:
            if len(self.messages) < LIMIT:
                self.messages.append(message)
            else:
                self.not_listed += 1

    def start_capture(self) -> None:
        """Take the `cxr` logger's warnings and Python's warnings until `stop_capture`."""
        logging.captureWarnings(True)
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self._restore.append((logger, logger.level, logger.propagate))
            logger.addHandler(self)
            if logger.getEffectiveLevel() > logging.WARNING:
                logger.setLevel(logging.WARNING)
            if not self.verbose:
                logger.propagate = False  # said here (or kept quiet), not a second time by a root handler
        # (with -v the root's debug handler prints every record, this handler only keeps them)

    def stop_capture(self) -> None:
        """Give the loggers back as they were (the name `release` belongs to logging.Handler: its lock)."""
        while self._restore:
            logger, level, propagate = self._restore.pop()
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate
        logging.captureWarnings(False)

    def manifest(self) -> list[str]:
        """The manifest's `warnings`: every warning, said or (with --quiet) kept unsaid, in order; past LIMIT a last
        line counts the rest."""
        more = [f"... and {self.not_listed} more warning(s) not listed"] if self.not_listed else []
        return [*self.messages, *more]
