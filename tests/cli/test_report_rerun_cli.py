"""cxr-score --report/--overlays across runs: a run stopped by Ctrl-C or SIGTERM still writes the report of the rows
done, marked partial; a rerun into the same report leaves only its own thumbnails; overlays of images a rerun does
not score are left as they are (documented: DIR may hold other runs' overlays)."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.report import THUMBS_MANIFEST  # noqa: E402
from tests.runtime.test_overlay_fixtures import maps_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 6

STOP_AFTER_TWO_ROWS = """
import os, signal, sys, time
import cxr.runtime.scoring as scoring
real = scoring.score_folder
how = sys.argv.pop(1)
def stopping(*args, **kwargs):
    for i, row in enumerate(real(*args, **kwargs)):
        if i == 2:
            if how == "ctrl-c":
                raise KeyboardInterrupt
            print("two rows done", flush=True)
            for _ in range(2400):  # the main thread busy: one long sleep in C would outlast a signal that
                time.sleep(0.05)   # another thread caught (that case: test_sigterm_caught_by_a_stuck_reader...)
        yield row
scoring.score_folder = stopping
from cxr.cli.score import main
main(sys.argv[1:])
"""


STUCK_READER = """
import signal, sys, threading, time
import cxr.runtime.scoring as scoring
from tests.main_thread import main_thread_waits
real = scoring._load_one
def load(path, config):
    if path.name == "img2.png":
        main_thread_waits(lambda frames: "score_folder" in {n for _, n in frames})  # waiting for this read
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the kernel may hand SIGTERM to any thread
        time.sleep(90)  # a read blocked in C (a hung network mount)
    return real(path, config)
scoring._load_one = load
from cxr.cli.score import main
main(sys.argv[1:])
"""

STUCK_DRAWER = """
import signal, sys, threading, time
import cxr.runtime.imaging as imaging
real = imaging.read_image
def read_image(path):
    if threading.current_thread().name.startswith("cxr-overlay") and str(path).endswith("img1.png"):
        time.sleep(90)  # the overlay's second read of a file, blocked on a hung mount
    return real(path)
imaging.read_image = read_image
import cxr.runtime.scoring as scoring
real_score = scoring.score_folder
def stopping(*args, **kwargs):
    for i, row in enumerate(real_score(*args, **kwargs)):
        if i == 2:
            signal.raise_signal(signal.SIGTERM)
        yield row
scoring.score_folder = stopping
from cxr.cli.score import main
main(sys.argv[1:])
"""


def write_folder(folder: Path, n: int = N_IMAGES) -> list[str]:
    import cv2

    folder.mkdir(parents=True)
    names = [f"img{k}.png" for k in range(n)]
    for k, name in enumerate(names):
        ramp = np.add.outer(np.arange(48), np.arange(40)) + 20 * k  # not blank (blank images are error rows)
        cv2.imwrite(str(folder / name), ramp.astype(np.uint8))
    return names


def page_rows(page: Path) -> list[dict]:
    block = re.search(r'<script type="application/json" id="cxr-data">(.*?)</script>', page.read_text(), re.S)
    return json.loads(block.group(1))["rows"]


def jpgs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")


@pytest.fixture()
def setup(tmp_path):
    model = maps_model(tmp_path / "maps.onnx")
    folder = tmp_path / "xrays"
    return model, folder, write_folder(folder)


@pytest.mark.parametrize("how, code, said", [("sigterm", 143, "terminated (SIGTERM)"),
                                              ("ctrl-c", 130, "interrupted")])
def test_a_stopped_run_writes_the_report_of_the_rows_done_marked_partial(setup, tmp_path, how, code, said):
    """A real SIGTERM to a real process (a batch system's time limit), and Ctrl-C: the page lists the two rows done,
    says at the top that it is partial and why, and its thumbnails are those rows'."""
    model, folder, names = setup
    out, report = tmp_path / "r.csv", tmp_path / "r.html"
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{name},{k % 2}\n" for k, name in enumerate(names)))
    proc = subprocess.Popen([sys.executable, "-c", STOP_AFTER_TWO_ROWS, how, str(folder), "--out", str(out),
                             "--model", str(model), "--batch-size", "1", "--device", "cpu", "--report", str(report),
                             "--overlays", str(tmp_path / "o"), "--labels", str(labels)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        if how == "sigterm":
            assert proc.stdout.readline().strip() == "two rows done"
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert f"{said} after 2 of {N_IMAGES} file(s)" in stderr and "Traceback" not in stderr
    assert f"the report of the rows done, marked partial, is {report}" in stderr
    assert not out.exists() and (tmp_path / "r.csv.partial").is_file()
    page = report.read_text()
    banner = re.search(r'<p class="warn partial" id="partial">(.*?)</p>', page, re.S).group(1)
    assert f"{said} after 2 of {N_IMAGES} file(s)" in banner and "r.csv.partial" in banner
    rows = page_rows(report)
    assert [r["p"] for r in rows] == names[:2] and all(r["img"] == 1 for r in rows)
    assert jpgs(tmp_path / "r_thumbs") == ["000000.jpg", "000000o.jpg", "000001.jpg", "000001o.jpg"]
    with open(tmp_path / "r.csv.partial", newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == names[:2]
    assert ">2: 2 ok, 0 error<" in page  # the run summary counts the rows done
    assert (f"2 matched, 0 labelled but not found, 0 labelled but failed, 0 scored without a label, 0 label line(s) "
            f"ignored, {N_IMAGES - 2} labelled but not reached before the run stopped") in page
    assert "n=2 (1 positive)" in page


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_a_rerun_into_the_same_report_leaves_only_its_thumbnails_and_other_overlays_alone(setup, tmp_path):
    model, folder, names = setup
    (tmp_path / "r_thumbs").mkdir()
    (tmp_path / "r_thumbs" / "mine.jpg").write_bytes(b"the user's")
    common = ("--model", model, "--device", "cpu", "--report", tmp_path / "r.html", "--overlays", tmp_path / "o",
              "--quiet")
    assert run(folder, "--out", tmp_path / "r.csv", *common).exit_code == 0
    assert len(jpgs(tmp_path / "r_thumbs")) == 2 * N_IMAGES + 1
    for name in names[2:]:
        (folder / name).unlink()
    again = run(folder, "--out", tmp_path / "r.csv", *common)
    assert again.exit_code == 0
    assert jpgs(tmp_path / "r_thumbs") == ["000000.jpg", "000000o.jpg", "000001.jpg", "000001o.jpg", "mine.jpg"]
    assert [r["p"] for r in page_rows(tmp_path / "r.html")] == names[:2]
    listed = json.loads((tmp_path / "r_thumbs" / THUMBS_MANIFEST).read_text())["files"]
    assert listed == ["000000.jpg", "000000o.jpg", "000001.jpg", "000001o.jpg"]
    # Overlays mirror the scored paths in a folder the user may share between runs: the earlier ones stay.
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == names
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["outputs"]["overlays"]["written"] == 2


def test_sigterm_while_the_report_is_written_says_it_was_not(setup, tmp_path, monkeypatch):
    """Results and manifest complete, the page not: the message says which is which."""
    import os

    from cxr.runtime.report import Report

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the report")

    monkeypatch.setattr(Report, "write", terminated)
    model, folder, names = setup
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--device", "cpu", "--report",
                 tmp_path / "r.html")
    assert result.exit_code == 143
    assert (f"terminated (SIGTERM) after {tmp_path / 'r.csv'} was written; so was its manifest; the report "
            f"{tmp_path / 'r.html'} was not (a rerun writes it)") in result.stderr
    assert not (tmp_path / "r.html").exists()


def run_harness(code: str, *args) -> tuple[int, str]:
    """Run a cxr-score harness (one of the code strings above) in a real process: (exit code, stderr); a run that
    does not stop within 60 s fails the test."""
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, stderr


def test_sigterm_caught_by_a_stuck_reader_still_stops_the_run_at_once(setup, tmp_path):
    """The SIGTERM lands on a reader thread blocked in a read while the main thread waits for that read: the run
    stops now, not when the read ends (90 s here, never for a hung mount), and keeps the rows done."""
    model, folder, names = setup
    out = tmp_path / "r.csv"
    code, stderr = run_harness(STUCK_READER, folder, "--out", out, "--model", model, "--batch-size", "1",
                               "--workers", "1", "--device", "cpu")
    assert code == 143, stderr
    done = int(re.search(rf"terminated \(SIGTERM\) after (\d) of {N_IMAGES} file\(s\)", stderr).group(1))
    assert done <= 2 and "Traceback" not in stderr
    with open(tmp_path / "r.csv.partial", newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == names[:done]
    assert not out.exists()


def test_a_stopped_run_does_not_wait_for_a_drawing_stuck_on_a_hung_file(setup, tmp_path):
    """Stopped while one row's overlay is blocked reading its file: the run still exits 143 with the rows and the
    report kept (that row without its picture), after at most the drawings' grace, not when the read ends."""
    model, folder, names = setup
    out, report = tmp_path / "r.csv", tmp_path / "r.html"
    code, stderr = run_harness(STUCK_DRAWER, folder, "--out", out, "--model", model, "--batch-size", "1",
                               "--device", "cpu", "--report", report)
    assert code == 143, stderr
    assert f"terminated (SIGTERM) after 2 of {N_IMAGES} file(s)" in stderr and "Traceback" not in stderr
    assert f"the report of the rows done, marked partial, is {report}" in stderr
    assert [r["p"] for r in page_rows(report)] == names[:2]
    with open(tmp_path / "r.csv.partial", newline="") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == names[:2]
