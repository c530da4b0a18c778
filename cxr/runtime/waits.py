"""Waits in the main thread that a signal can cut short.

Python runs a signal handler (cxr-score's SIGTERM, Ctrl-C's KeyboardInterrupt) in the main thread, but the kernel may
hand the signal to any thread of the process: a reader, a drawer, an onnxruntime worker. The handler then only runs
when the main thread next executes Python code, so a plain `future.result()` waiting on a reader stuck in C (a hung
network mount, a 20 s decode) would put off a batch system's SIGTERM until that read ends, past its kill deadline.
These waits look up every POLL_S seconds instead, which lets the pending handler run (measured: a SIGTERM caught by a
reader thread stopped a wait after 0.5 s instead of when the reader's 5 s read ended).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from typing import Collection, TypeVar

POLL_S = 0.2
T = TypeVar("T")


def result(future: Future[T]) -> T:
    """`future.result()`, looking up every POLL_S seconds so a pending signal handler runs."""
    while not future.done():  # not result(timeout): a future that failed with TimeoutError would look unfinished
        wait((future,), timeout=POLL_S)
    return future.result()


def acquire(lock: threading.Semaphore | threading.Lock) -> None:
    """`lock.acquire()`, looking up every POLL_S seconds so a pending signal handler runs."""
    while not lock.acquire(timeout=POLL_S):
        pass


def all_done(futures: Collection[Future], timeout: float | None = None) -> bool:
    """Wait until every future is done (True), or `timeout` seconds have passed (False), looking up every POLL_S
    seconds so a pending signal handler runs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(futures)
    while pending:
        left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if left <= 0:
            return False
        pending = wait(pending, timeout=left).not_done
    return True
