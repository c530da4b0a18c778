"""--out is locked for the run (a second run on it is refused, a dead run's lock taken
over), and an --out that is a symlink, FIFO or device, or whose derived names are too long, fails before scoring."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.results import OutputLock, OutputLocked, lock_path  # noqa: E402
from tests.badfiles import chest_like  # noqa: E402


@pytest.fixture()
def folder(tmp_path):
    path = tmp_path / "in"
    path.mkdir()
    cv2.imwrite(str(path / "a.png"), chest_like(96, 96))
    return path


def run(folder, out, model):
    return CliRunner().invoke(main, [str(folder), "--out", str(out), "--model", str(model)], catch_exceptions=False)


def test_a_second_run_on_the_same_out_is_refused(tmp_path, folder, tiny_model):
    out = tmp_path / "r.csv"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(out).write_text(f"{holder.pid}\n")
        result = run(folder, out, tiny_model)
        assert result.exit_code == 1
        assert f"another run is writing {out}" in result.stderr and f"process {holder.pid}" in result.stderr
        assert not out.exists() and lock_path(out).read_text() == f"{holder.pid}\n"  # its lock is left alone
    finally:
        holder.kill()
        holder.wait()
    result = run(folder, out, tiny_model)  # the holder is gone: its lock is taken over, with a message
    assert result.exit_code == 0, result.output
    assert f"took over {lock_path(out)}, left by process {holder.pid}" in result.stderr
    assert out.is_file() and not lock_path(out).exists()


def test_the_lock_is_released_whatever_the_exit(tmp_path, folder, tiny_model):
    out = tmp_path / "r.csv"
    assert run(folder, out, tiny_model).exit_code == 0
    assert not lock_path(out).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(empty, out, tiny_model).exit_code == 1  # no images: exit 1, lock gone too
    assert not lock_path(out).exists()


def test_output_lock_in_process(tmp_path):
    first = OutputLock(tmp_path / "r.csv").acquire()
    with pytest.raises(OutputLocked, match="still writing"):
        OutputLock(tmp_path / "r.csv").acquire()
    first.release()
    assert not lock_path(tmp_path / "r.csv").exists()


def test_symlink_out_is_refused_and_left_alone(tmp_path, folder, tiny_model):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    out = tmp_path / "r.csv"
    out.symlink_to(target)
    result = run(folder, out, tiny_model)
    assert result.exit_code == 1 and "is a symbolic link" in result.stderr
    assert out.is_symlink() and target.read_text() == "keep me\n"


def test_fifo_out_is_refused_and_left_alone(tmp_path, folder, tiny_model):
    out = tmp_path / "r.csv"
    os.mkfifo(out)
    result = run(folder, out, tiny_model)
    assert result.exit_code == 1 and "is a FIFO" in result.stderr
    import stat

    assert stat.S_ISFIFO(os.lstat(out).st_mode)


def test_device_node_out_is_refused_and_left_alone(tmp_path, folder, tiny_model):
    """As root, `--out /dev/null` would have replaced the system's node: a private copy of that node (character
    device 1:3, made in tmp_path, so a regression cannot touch the real one) must be refused and stay a device."""
    import stat

    out = tmp_path / "null.csv"
    try:
        os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here (needs root / CAP_MKNOD): {exc}")
    result = run(folder, out, tiny_model)
    assert result.exit_code == 1 and "device" in result.stderr and str(out) in result.stderr
    assert stat.S_ISCHR(os.lstat(out).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("null.csv") and p != out]


def test_over_long_names_fail_before_scoring(tmp_path, folder, tiny_model):
    out = tmp_path / ("r" * 240 + ".csv")  # fits NAME_MAX itself; its temporary file and .partial.N do not
    result = run(folder, out, tiny_model)
    assert result.exit_code == 1 and "too long" in result.stderr and "give a shorter --out" in result.stderr
    assert "on cpu" not in result.stderr  # refused before the model was even loaded
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny.onnx", folder] or sorted(tmp_path.iterdir()) == sorted(
        [tmp_path / "tiny.onnx", folder])
