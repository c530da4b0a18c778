"""For the signal tests: wait until the main thread is really blocked where a test means to signal it (on a loaded
machine it may still be busy elsewhere, and a signal then would test nothing). Also imported by the tests' child
processes (cxr-score harnesses run with the repository as working directory)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable


def main_thread_waits(inside: Callable[[list[tuple[str, str]]], bool], limit_s: float = 30.0) -> None:
    """Return once the main thread is blocked in a threading wait and `inside(frames)` holds for its stack (a list
    of (file name, function name), innermost first), or after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        frame, names = sys._current_frames().get(threading.main_thread().ident), []
        while frame is not None:
            names.append((frame.f_code.co_filename, frame.f_code.co_name))
            frame = frame.f_back
        if "wait" in {n for f, n in names if f.endswith("threading.py")} and inside(names):
            return
        time.sleep(0.01)
