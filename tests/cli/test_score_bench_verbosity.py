"""-q/--quiet and -v/--verbose on cxr-score and cxr-bench, as on the other commands: -q is --quiet's short form, -v
turns on debug logging, and both together are a usage error before anything is written."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.bench import main as bench_main  # noqa: E402
from cxr.cli.score import main as score_main  # noqa: E402
from tests.badfiles import write_good_files  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {"cxr-score": score_main, "cxr-bench": bench_main}


def _invoke(command: str, *args) -> object:
    return CliRunner().invoke(COMMANDS[command], [str(a) for a in args], terminal_width=200)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_quiet_and_verbose_with_short_forms(command):
    text = _invoke(command, "--help").output
    assert "-q, --quiet" in text and "-v, --verbose" in text


def test_score_quiet_and_verbose_together_are_a_usage_error_and_write_nothing(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    write_good_files(folder)
    out = tmp_path / "res" / "results.csv"
    result = _invoke("cxr-score", folder, "--out", out, "--model", tiny_model, "-q", "-v")
    assert result.exit_code == 2
    assert "-q/--quiet and -v/--verbose cannot be used together" in result.output
    assert not out.parent.exists()


def test_bench_quiet_and_verbose_together_are_a_usage_error(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    result = _invoke("cxr-bench", "--model", tiny_model, "--json", out, "--verbose", "--quiet")
    assert result.exit_code == 2
    assert "-q/--quiet and -v/--verbose cannot be used together" in result.output
    assert not out.exists()


def _rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as fh:
        return [(r["path"], r["prob_cardiomegaly"], r["status"]) for r in csv.DictReader(fh)]


def test_score_short_q_is_quiet_and_default_keeps_the_summary(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    names = write_good_files(folder)
    runs = {}
    for flag in ("-q", "--quiet", None):
        out = tmp_path / f"r{flag or 'default'}.csv"
        result = _invoke("cxr-score", folder, "--out", out, "--model", tiny_model, "--device", "cpu",
                         *([flag] if flag else []))
        assert result.exit_code == 0, result.output
        runs[flag] = (result.output, _rows(out))
    assert runs["-q"][0] == runs["--quiet"][0] == ""  # cpu asked for, nothing failed: nothing to say
    assert "cxr-score: results: " in runs[None][0] and f"{len(names)} file(s): {len(names)} ok" in runs[None][0]
    assert runs["-q"][1] == runs["--quiet"][1] == runs[None][1] and len(runs[None][1]) == len(names)


def _score_process(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cxr.cli.score", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_score_verbose_shows_debug_logging_that_the_default_does_not(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    write_good_files(folder)
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # the walk logs it at debug level
    debug_line = f"cxr-score: {folder / 'loop'}: symlink loop, not followed"
    verbose = _score_process(folder, "--out", tmp_path / "v.csv", "--model", tiny_model, "--device", "cpu", "-v")
    default = _score_process(folder, "--out", tmp_path / "d.csv", "--model", tiny_model, "--device", "cpu")
    assert verbose.returncode == default.returncode == 3  # the loop is a folder problem either way
    assert debug_line in verbose.stderr.splitlines()
    assert debug_line not in default.stderr
    assert "cxr-score: warning: loop: symlink loop" in default.stderr  # the warning itself is unchanged
    assert _rows(tmp_path / "v.csv") == _rows(tmp_path / "d.csv")


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_bench_quiet_keeps_the_table_and_drops_the_notes(tiny_model, tmp_path, flag):
    args = ["--model", tiny_model, "--batch-sizes", "1", "--seconds", "0.1", "--warmup", "0", "--threads", "1"]
    quiet = _invoke("cxr-bench", *args, flag)
    loud = _invoke("cxr-bench", *args)
    assert quiet.exit_code == loud.exit_code == 0, quiet.output + loud.output
    assert quiet.stderr == ""
    assert loud.stderr.startswith(f"cxr-bench: {tiny_model} on ")
    header = "batch"
    assert quiet.stdout.lstrip().startswith(header) and loud.stdout.lstrip().startswith(header)


def test_bench_errors_still_show_under_quiet(tiny_model, tmp_path):
    result = _invoke("cxr-bench", "--model", tiny_model, "--json", tmp_path / "missing" / "b.json", "-q")
    assert result.exit_code == 1
    assert f"cxr-bench: error: cannot write {tmp_path / 'missing' / 'b.json'}" in result.stderr
