"""The one atomic writer: temp file in the target's folder, fsync'd, renamed; on failure the old file stands and no
temporary file is left."""

from __future__ import annotations

import os
import stat

import pytest

from cxr.runtime import atomic
from cxr.runtime.atomic import atomic_write, write_text_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_the_whole_file_via_a_temp_beside_it_fsyncd(tmp_path, monkeypatch):
    renames, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b))[1])
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "metrics.json"
    write_text_atomic(target, '{"auroc": 0.9}\n')
    assert target.read_text() == '{"auroc": 0.9}\n'
    (src, dst), = renames
    assert os.path.dirname(src) == str(tmp_path) and os.path.basename(src).startswith(".metrics.json.")
    assert str(dst) == str(target)
    assert len(synced) >= 1  # the file (and, where the OS allows, the folder)
    assert _leftovers(tmp_path) == []


def test_gets_the_permissions_an_ordinary_open_would(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    path = tmp_path / "a.bin"
    with atomic_write(path, "wb") as fh:
        fh.write(b"\x00\x01")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert path.read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, failure):
    target = tmp_path / "history.csv"
    target.write_text("epoch\n1\n")
    with pytest.raises(type(failure)):
        with atomic_write(target) as fh:
            fh.write("epoch\n1\n2\n")
            raise failure
    assert target.read_text() == "epoch\n1\n"
    assert _leftovers(tmp_path) == []


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb', not 'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass


def test_an_interrupted_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from cxr.train import checkpoints
    from cxr.train.model import build_model
    from tests.train.test_checkpoints import _payload

    path = checkpoints.save_checkpoint(_payload(build_model("densenet_tiny")), tmp_path / "last.pt")
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint(_payload(build_model("densenet_tiny")), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
