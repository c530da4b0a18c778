"""A full disk never leaves a cut row: each row is whole in the file or absent."""

from __future__ import annotations

import errno
import os

import pytest

from cxr.runtime import results
from cxr.runtime.results import ResultsWriter
from cxr.runtime.scoring import ScoreRow


def _row(i: int) -> ScoreRow:
    return ScoreRow(f"img{i}.png", "ok", probability=0.470569, logit=0.0, label_pred=0)


@pytest.mark.parametrize("how", ["error_mid_write", "short_write_then_error"])
def test_a_failing_write_leaves_only_whole_rows(tmp_path, monkeypatch, how):
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if how == "short_write_then_error" and calls["n"] == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # the kernel wrote what fitted
        if how == "error_mid_write":
            real_write(fd, bytes(data)[:9])  # e.g. a FUSE/NFS write that lands part of the data, then fails
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "results.csv"
    writer = ResultsWriter(out)
    writer.write(_row(1))
    writer.write(_row(2))
    monkeypatch.setattr(results.os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        writer.write(_row(3))
    monkeypatch.setattr(results.os, "write", real_write)
    kept = writer.abort()
    text = kept.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert text.splitlines() == ["path,prob_cardiomegaly,cardiomegaly,status,error",
                                 "img1.png,0.470569,0,ok,", "img2.png,0.470569,0,ok,"]
    assert writer.rows == 2


def test_rows_after_a_recovered_failure_follow_the_last_whole_row(tmp_path, monkeypatch):
    real_write = os.write
    failed = {"once": False}

    def flaky(fd, data):
        if not failed["once"]:
            failed["once"] = True
            real_write(fd, bytes(data)[:5])
            raise OSError(errno.EIO, "I/O error")
        return real_write(fd, data)

    out = tmp_path / "results.csv"
    writer = ResultsWriter(out)
    monkeypatch.setattr(results.os, "write", flaky)
    with pytest.raises(OSError):
        writer.write(_row(1))
    writer.write(_row(2))
    monkeypatch.setattr(results.os, "write", real_write)
    writer.commit()
    assert out.read_text().splitlines()[1:] == ["img2.png,0.470569,0,ok,"]
