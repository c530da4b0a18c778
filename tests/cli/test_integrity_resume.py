"""Issue 12 items 3 and 7: `cxr-score --resume` continues a run killed at any point from its journal and ends with
the CSV an uninterrupted run writes; a journal of another model or settings is refused; a completed run leaves an
unrelated interrupted run's `.partial`; leftovers of a killed run are named."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.journal import journal_path  # noqa: E402
from tests.badfiles import chest_like, write_bad_files  # noqa: E402
from tests.onnx_fixtures import mean_brightness_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def make_folder(folder: Path, n: int = 60, bad: bool = True) -> list[str]:
    """n small PNGs of different brightness (so every probability differs), in two subfolders, plus broken files."""
    names = []
    for i in range(n):
        rel = f"{'ab'[i % 2]}/img{i:03d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        image = np.clip(chest_like(48, 40).astype(np.int32) + (i * 7) % 90 - 45, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / rel), image)
        names.append(rel)
    if bad:
        write_bad_files(folder / "broken")
    return names


@pytest.fixture()
def folder(tmp_path) -> Path:
    make_folder(tmp_path / "scans", 12)
    return tmp_path / "scans"


@pytest.fixture()
def reference(tmp_path, folder, tiny_model) -> bytes:
    """The CSV an uninterrupted run writes."""
    out = tmp_path / "ref" / "r.csv"
    assert run(folder, "--out", out, "--model", tiny_model).exit_code == 3  # the broken files: exit 3
    assert not journal_path(out).exists()  # a completed run leaves no journal
    return out.read_bytes()


def interrupt_after(monkeypatch, n: int) -> None:
    import cxr.runtime.scoring as scoring

    real = scoring.score_folder

    def interrupted(*args, **kwargs):
        for i, row in enumerate(real(*args, **kwargs)):
            if i == n:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(scoring, "score_folder", interrupted)


def test_resume_scores_only_what_is_missing_and_writes_the_same_csv(tmp_path, folder, tiny_model, reference,
                                                                     monkeypatch):
    out = tmp_path / "r.csv"
    interrupt_after(monkeypatch, 5)
    first = run(folder, "--out", out, "--model", tiny_model, "--batch-size", "2")
    assert first.exit_code == 130 and f"--resume continues from {journal_path(out)}" in first.stderr
    monkeypatch.undo()
    scored = []
    import cxr.runtime.scoring as scoring

    real = scoring.score_folder

    def counting(*args, **kwargs):
        scored.extend(Path(f).as_posix() for f in kwargs["files"])
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "score_folder", counting)
    again = run(folder, "--out", out, "--model", tiny_model, "--resume")
    assert again.exit_code == 3, again.stderr
    total = len(reference.splitlines()) - 1
    assert f"resuming from {journal_path(out)}: 5 of {total} file(s) already scored, {total - 5} to score" \
        in again.stderr
    assert len(scored) == total - 5
    assert out.read_bytes() == reference
    assert not journal_path(out).exists()
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["outputs"]["journal"]["rows_resumed"] == 5 and manifest["options"]["resume"] is True
    assert "removed" in again.stderr and not (tmp_path / "r.csv.partial").exists()  # its own .partial: removed


@pytest.mark.parametrize("change", ["model", "threshold", "labels"])
def test_resume_refuses_a_journal_of_another_model_or_settings(tmp_path, folder, tiny_model, monkeypatch, change):
    out = tmp_path / "r.csv"
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na/img000.png,1\nb/img001.png,0\n")
    interrupt_after(monkeypatch, 3)
    assert run(folder, "--out", out, "--model", tiny_model, "--labels", labels).exit_code == 130
    monkeypatch.undo()
    before = journal_path(out).read_bytes()
    args = [folder, "--out", out, "--model", tiny_model, "--labels", labels, "--resume"]
    if change == "model":
        other = mean_brightness_model(tmp_path / "other.onnx", size=64, gain=4.0)
        args[4] = other
    elif change == "threshold":
        args += ["--threshold", "0.3"]
    else:
        labels.write_text("path,label\na/img000.png,0\nb/img001.png,0\n")
    result = run(*args)
    assert result.exit_code == 2
    key = {"model": "model_sha256", "threshold": "threshold", "labels": "labels"}[change]
    assert f"{journal_path(out)} was written by a run with another folder, model or settings ({key} " \
        in result.stderr.replace("\n", " ")
    assert journal_path(out).read_bytes() == before  # refused, and left as it was
    assert not out.exists()


def test_a_torn_last_line_is_ignored_not_trusted(tmp_path, folder, tiny_model, reference, monkeypatch):
    out = tmp_path / "r.csv"
    interrupt_after(monkeypatch, 4)
    assert run(folder, "--out", out, "--model", tiny_model).exit_code == 130
    monkeypatch.undo()
    journal = journal_path(out)
    lines = journal.read_bytes().splitlines(keepends=True)
    forged = lines[-1].replace(b'"probability": 0.', b'"probability": 1.')  # a flipped byte: checksum fails
    assert forged != lines[-1]
    journal.write_bytes(b"".join(lines[:-1]) + forged + lines[-1][: len(lines[-1]) // 2])  # then a torn line
    again = run(folder, "--out", out, "--model", tiny_model, "--resume")
    assert "2 torn or damaged line(s) ignored" in again.stderr
    assert "3 of" in again.stderr  # header + 3 whole lines of 4: the damaged and the torn one are scored again
    assert out.read_bytes() == reference


def test_a_file_changed_since_it_was_journaled_is_scored_again(tmp_path, folder, tiny_model, monkeypatch):
    out = tmp_path / "r.csv"
    interrupt_after(monkeypatch, 4)
    assert run(folder, "--out", out, "--model", tiny_model, "--batch-size", "1").exit_code == 130
    monkeypatch.undo()
    first = json.loads(journal_path(out).read_bytes().splitlines()[1][9:])["row"]
    target = folder / first["path"]
    cv2.imwrite(str(target), np.full((48, 40), 250, np.uint8))  # brighter: another probability
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = run(folder, "--out", out, "--model", tiny_model, "--resume")
    assert "3 of" in again.stderr
    fresh = tmp_path / "fresh.csv"
    run(folder, "--out", fresh, "--model", tiny_model)
    assert out.read_bytes() == fresh.read_bytes()


def test_a_completed_run_keeps_and_names_another_folders_partial(tmp_path, folder, tiny_model, monkeypatch):
    other = tmp_path / "other"
    make_folder(other, 6, bad=False)
    out = tmp_path / "r.csv"
    interrupt_after(monkeypatch, 3)
    assert run(other, "--out", out, "--model", tiny_model).exit_code == 130
    monkeypatch.undo()
    kept = tmp_path / "r.csv.partial"
    rows = kept.read_text()
    result = run(folder, "--out", out, "--model", tiny_model)
    assert result.exit_code == 3
    assert kept.read_text() == rows
    assert f"warning: kept {kept}: left by an interrupted run of another folder, model or settings" in result.stderr


def test_leftover_temp_files_of_a_killed_run_are_named(tmp_path, folder, tiny_model):
    out = tmp_path / "r.csv"
    leftover = tmp_path / ".r.csv.k1ll3d_x.tmp"
    leftover.write_text("path,prob_cardiomegaly,cardiomegaly,status,error\na.png,0.5,1,ok,\nb.png,0.5,1,ok,\n")
    result = run(folder, "--out", out, "--model", tiny_model)
    assert f"warning: {leftover} was left by a killed run on this --out (2 whole row(s))" in result.stderr
    assert leftover.exists()  # named, never removed: it holds rows


def test_resume_with_overlays_is_a_usage_error(tmp_path, folder, tiny_model):
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model, "--resume", "--overlays",
                 tmp_path / "ov")
    assert result.exit_code == 2 and "--resume cannot be combined with --overlays or --report" in result.stderr


SLOW_READS = """
import sys, time
import cxr.runtime.scoring as scoring
real = scoring._load_one
def slow(path, config):
    time.sleep(0.02)
    return real(path, config)
scoring._load_one = slow
from cxr.cli.score import main
main(sys.argv[1:])
"""


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_at_random_points_then_resumed_gives_the_uninterrupted_csv(tmp_path, tiny_model, seed):
    """SIGKILL (and SIGHUP, which kills as abruptly) at random points of a real process, once or twice, then
    --resume: the CSV is byte for byte the one an uninterrupted run writes."""
    folder = tmp_path / "scans"
    make_folder(folder, 60)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(out: Path, *extra: str):
        return subprocess.Popen([sys.executable, "-c", SLOW_READS, str(folder), "--out", str(out), "--model",
                                 str(tiny_model), "--batch-size", "4", "--quiet", *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=env)

    ref = tmp_path / "ref.csv"
    assert start(ref).wait(timeout=120) == 3
    rng = random.Random(seed)
    out = tmp_path / "r.csv"
    journal = journal_path(out)
    for _ in range(rng.choice([1, 2])):
        proc = start(out, "--resume")
        target = rng.randint(0, 55)  # journal lines before the kill (0: during start-up)
        deadline = time.monotonic() + 60
        while _lines(journal) < target + 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(rng.choice([signal.SIGKILL, signal.SIGHUP]))
        proc.wait(timeout=30)
        assert not out.exists()
    final = start(out, "--resume")
    _, stderr = final.communicate(timeout=120)
    assert final.returncode == 3, stderr
    assert out.read_bytes() == ref.read_bytes()
