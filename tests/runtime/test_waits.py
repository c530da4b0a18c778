"""A signal the kernel hands to another thread still stops cxr's main-thread waits before the thread waited on ends.

Each case: a worker that would block for 30 s sends SIGUSR1 to itself (as the kernel may deliver a SIGTERM to any
thread); the main thread's handler raises. A plain `future.result()` / `acquire()` / `shutdown(wait=True)` would
only let the handler run once the worker is done; these must raise while it still runs."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cxr.runtime import waits
from tests.main_thread import main_thread_waits

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX thread signals")


class Stopped(BaseException):
    pass


@pytest.fixture()
def stopper():
    """A SIGUSR1 handler raising Stopped in the main thread; `blocker()` is a worker body that signals its own
    thread, then blocks until released (30 s at most); `ended` is set when it returns."""
    def handler(signum, frame):
        raise Stopped()

    previous = signal.signal(signal.SIGUSR1, handler)
    release, ended = threading.Event(), threading.Event()

    def blocker(*_args):
        main_thread_waits(lambda frames: any(f.endswith("/runtime/waits.py") for f, _ in frames))
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        release.wait(30)
        ended.set()
        return "read"

    try:
        yield blocker, release, ended
    finally:
        release.set()
        signal.signal(signal.SIGUSR1, previous)


def test_result_is_cut_short_by_a_signal_another_thread_caught(stopper):
    blocker, release, ended = stopper
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(blocker)
        with pytest.raises(Stopped):
            waits.result(future)
        assert not ended.is_set(), "the wait lasted until the worker ended"
        release.set()
        assert waits.result(future) == "read"  # and without a signal it returns the value


def test_acquire_is_cut_short_by_a_signal_another_thread_caught(stopper):
    blocker, release, ended = stopper
    slots = threading.BoundedSemaphore(1)
    slots.acquire()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: (blocker(), slots.release()))
        with pytest.raises(Stopped):
            waits.acquire(slots)
        assert not ended.is_set()
        release.set()
        waits.acquire(slots)  # released once the worker ends


def test_overlay_writer_close_is_cut_short_and_then_finishes(stopper, tmp_path, monkeypatch):
    """cxr-score waits for the queued drawings after a run; a SIGTERM then must not wait for a slow source read."""
    import cxr.runtime.imaging as imaging
    from cxr.runtime.overlay import OverlayWriter
    from cxr.runtime.scoring import ScoreRow

    blocker, release, ended = stopper
    monkeypatch.setattr(imaging, "read_image", lambda path: (blocker(), np.full((32, 32), 128, np.uint8))[1])
    writer = OverlayWriter(tmp_path, tmp_path / "o", threshold=0.5)
    writer.submit(ScoreRow(path="a.png", status="ok", probability=0.7))
    with pytest.raises(Stopped):
        writer.close()
    assert not ended.is_set()
    release.set()
    stats = writer.close()
    assert (stats.drawn, stats.failed) == (1, 0) and (Path(tmp_path) / "o" / "a.png").is_file()


def test_result_raises_a_timeout_the_work_itself_raised():
    """A read that failed with TimeoutError (ETIMEDOUT on a network file) is the result, not a wait to go on with."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: (_ for _ in ()).throw(TimeoutError("the share timed out")))
        with pytest.raises(TimeoutError, match="the share timed out"):
            waits.result(future)


def test_all_done_gives_up_after_its_timeout():
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        slow, quick = pool.submit(release.wait, 30), pool.submit(lambda: 1)
        assert waits.all_done([slow, quick], timeout=0.3) is False
        release.set()
        assert waits.all_done([slow, quick]) is True and quick.result() == 1
