"""Issue 12 items 8 and 12: SIGTERM ends a run within seconds even while a reader thread is blocked in C (a blocking
read, a decode that does not end), with the rows done kept and exit 143; a closed or broken stderr loses neither the
results nor the exit code."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnx")

from tests.badfiles import write_good_files  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

BLOCKING_READER = """
import os, sys, time
import cxr.runtime.imaging as imaging
real = imaging.read_image
block_on, how = os.environ["BLOCK_ON"], os.environ["BLOCK_HOW"]
r, w = os.pipe()  # the write end stays open: a read of r never returns
def reader(path):
    if os.path.basename(path) == block_on:
        print("blocked", flush=True)
        if how == "read":
            os.read(r, 1)  # a blocking read in C, as on a FIFO or a hung network file
        else:
            time.sleep(3600)  # a decode that does not end (the GIL released, as OpenCV does)
    return real(path)
imaging.read_image = reader
from cxr.cli.score import main
main(sys.argv[1:])
"""


def rows(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return [r["path"] for r in csv.DictReader(fh)]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["read", "decode"])
def test_sigterm_while_a_reader_is_blocked_ends_the_run_in_seconds(tmp_path, tiny_model, how):
    folder = tmp_path / "scans"
    names = write_good_files(folder)
    blocked = names[2]
    out = tmp_path / "r.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BLOCK_ON": Path(blocked).name, "BLOCK_HOW": how}
    proc = subprocess.Popen([sys.executable, "-c", BLOCKING_READER, str(folder), "--out", str(out), "--model",
                             str(tiny_model), "--batch-size", "1", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout.readline().strip() == "blocked"
        time.sleep(1.5)  # the rows before the blocked file are written meanwhile
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert took < 5, f"SIGTERM took {took:.1f} s to end the run"
    assert f"terminated (SIGTERM) after 2 of {len(names)} file(s)" in stderr and "Traceback" not in stderr
    assert rows(tmp_path / "r.csv.partial") == names[:2]
    assert not out.exists()
    assert not (tmp_path / "r.csv.lock").exists()  # released before leaving


def _score_with_stderr(tmp_path, tiny_model, shell_redirect: str):
    folder = tmp_path / "scans"
    names = write_good_files(folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # an error row: exit 3 and a stderr line
    out = tmp_path / "r.csv"
    command = (f"exec {sys.executable} -m cxr.cli.score {folder} --out {out} --model {tiny_model} "
               f"{shell_redirect}; ")
    return names, out, command


def test_a_closed_stderr_loses_neither_the_results_nor_the_exit_code(tmp_path, tiny_model):
    names, out, command = _score_with_stderr(tmp_path, tiny_model, "2>&-")
    result = subprocess.run(["bash", "-c", command], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, timeout=120)
    assert result.returncode == 3, result
    assert rows(out) == sorted(names + ["broken.png"])
    with open(out, "rb") as fh:
        assert all(line.count(b",") >= 4 for line in fh)  # nothing but rows: no warning landed in the CSV


def test_a_broken_stderr_pipe_loses_neither_the_results_nor_the_exit_code(tmp_path, tiny_model):
    """`cxr-score ... 2>&1 | head -1`: the reader of stderr is gone after its first line."""
    names, out, command = _score_with_stderr(tmp_path, tiny_model, "2>&1 | head -c 1 >/dev/null")
    result = subprocess.run(["bash", "-c", "set -o pipefail; " + command.replace("exec ", "")
                             + "echo rc=${PIPESTATUS[0]}"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert "rc=3" in result.stdout, result
    assert rows(out) == sorted(names + ["broken.png"])
