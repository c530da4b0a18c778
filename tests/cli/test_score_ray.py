"""cxr-score --engine ray on a local Ray instance (ray.init(num_cpus=2), one per module): the same CSV as the local
engine on good and bad files and on path lists, an actor killed mid-run, Ctrl-C, the manifest, and the usage errors.

What this proves: the Ray pipeline (CPU read tasks, a scorer actor pool, rows back in order) gives the local engine's
rows byte for byte, and Ray's restart of a dead actor loses and duplicates nothing. What it cannot prove on one box:
several nodes, shared storage, GPUs, Ray Client (ray://) and network faults; see the README's cluster section.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'cxr[ray]'; make test has it)")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.ray_engine import RayOptions, RayRun, ScoreActor  # noqa: E402
from cxr.runtime.scoring import Scorer, score_folder  # noqa: E402
from cxr.runtime.walk import find_images  # noqa: E402
from tests.badfiles import chest_like, write_bad_files, write_good_files  # noqa: E402
from tests.onnx_fixtures import mean_brightness_model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for sig, handler in handlers.items():  # ray.init made SIGTERM sys.exit(15) in this process: not for later tests
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A folder of good and bad files (in a subfolder too), a model, and the local engine's results for both."""
    root = tmp_path_factory.mktemp("ray")
    folder = root / "mixed"
    write_good_files(folder)
    write_bad_files(folder / "broken")
    import cv2

    (folder / "more").mkdir()
    for i in range(24):  # enough batches for an actor to die in the middle of the run
        cv2.imwrite(str(folder / "more" / f"img{i:02d}.png"), chest_like(96 + i, 96))
    model = mean_brightness_model(root / "tiny.onnx", size=64)
    local = root / "local.csv"
    result = _run(folder, "--out", local, "--model", model, "--batch-size", "4")
    assert result.exit_code == 3, result.output  # bad files: error rows, exit 3
    return {"root": root, "folder": folder, "model": model, "local": local}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_ray_engine_writes_the_local_engines_csv_and_a_manifest_naming_the_cluster(setup, tmp_path):
    out = tmp_path / "ray.csv"
    result = _run(setup["folder"], "--out", out, "--model", setup["model"], "--engine", "ray", "--batch-size", "4")
    assert result.exit_code == 3, result.output
    assert out.read_bytes() == setup["local"].read_bytes()
    rows = _rows(out)
    assert len(rows) == 17 + 24 and sum(r["status"] == "error" for r in rows) == 11
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    manifest = json.loads((tmp_path / "ray.manifest.json").read_text())
    engine = manifest["engine"]
    assert engine["name"] == "ray" and engine["actors"] == 1 and engine["gpus_per_actor"] == 0.0
    assert engine["cluster"]["resources"]["CPU"] == 2.0 and len(engine["cluster"]["nodes"]) == 1
    assert engine["cluster"]["connected_by_this_run"] is False  # it joined the test's instance
    assert sum(engine["rows_by_actor"].values()) == len(rows) and engine["duplicate_rows_dropped"] == 0
    assert manifest["counts"]["files"] == len(rows) and manifest["counts"]["error"] == 11
    local = json.loads((setup["root"] / "local.manifest.json").read_text())
    assert local["engine"] == {"name": "local"}
    assert local["counts"] == manifest["counts"] and local["model"]["sha256"] == manifest["model"]["sha256"]


def _write_list(kind: str, path: Path, entries: list[str]) -> None:
    if kind == "txt":
        path.write_text("# scans to score\n" + "\n".join(entries) + "\n\n")
    elif kind == "csv":
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient", "path"])
            writer.writerows([["p", e] for e in entries])
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"path": entries}), path)


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_a_path_list_gives_the_same_rows_as_the_folder(setup, tmp_path, kind):
    folder = setup["folder"]
    files = [f.as_posix() for f in find_images(folder).files]
    # relative entries are relative to the list's folder, absolute ones kept; a duplicate is scored once
    entries = [os.path.relpath(folder / f, tmp_path) for f in files[::2]] + [str(folder / f) for f in files[1::2]]
    listing = tmp_path / f"scans.{kind}"
    _write_list(kind, listing, entries + entries[:1])
    out = tmp_path / "ray.csv"
    result = _run(listing, "--out", out, "--model", setup["model"], "--engine", "ray", "--batch-size", "4")
    assert result.exit_code == 3, result.output
    assert out.read_bytes() == setup["local"].read_bytes()
    local_out = tmp_path / "local.csv"  # the local engine takes the same list
    assert _run(listing, "--out", local_out, "--model", setup["model"], "--batch-size", "4").exit_code == 3
    assert local_out.read_bytes() == setup["local"].read_bytes()


def test_a_listed_file_that_is_gone_is_an_error_row_not_a_stop(setup, tmp_path):
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{setup['folder'] / 'gray8.png'}\n{setup['folder'] / 'gone.png'}\n")
    out = tmp_path / "ray.csv"
    result = _run(listing, "--out", out, "--model", setup["model"], "--engine", "ray")
    assert result.exit_code == 3, result.output
    rows = {r["path"]: r for r in _rows(out)}
    assert rows["gray8.png"]["status"] == "ok"
    assert rows["gone.png"]["status"] == "error" and rows["gone.png"]["error"].startswith("unreadable:")


def _dies_on_third_batch(marker: Path) -> type:
    """A scorer actor whose first process SIGKILLs itself in the middle of its third batch (the marker file says
    whether this is the first process), as an OOM kill or a lost node would. Defined in a function, so the class
    and its marker travel to the actor by value."""

    class DiesOnThirdBatch(ScoreActor):
        def __init__(self, *args):
            super().__init__(*args)
            self.calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 3 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    return DiesOnThirdBatch


def test_an_actor_killed_mid_run_is_restarted_and_no_row_is_lost_or_doubled(setup, tmp_path):
    marker = tmp_path / "killed.pid"
    folder = setup["folder"]
    files = find_images(folder).files
    scorer = Scorer(setup["model"], device="cpu")
    run = RayRun.connect(RayOptions())
    rows = list(run.rows(folder, files, scorer, "cpu", scorer.threshold, batch_size=2,
                         actor_class=_dies_on_third_batch(marker)))
    assert marker.is_file(), "the actor was never killed"
    killed = int(marker.read_text())
    actors = {int(name.split(":")[1]) for name in run.workers}
    assert actors - {killed}, "no other actor process scored rows after the kill"
    local = list(score_folder(folder, scorer, batch_size=2, files=files))
    strip = [(r.path, r.status, r.probability, r.label_pred, r.error_code, r.error_message) for r in rows]
    assert strip == [(r.path, r.status, r.probability, r.label_pred, r.error_code, r.error_message) for r in local]
    assert run.duplicates_dropped == 0 and sum(run.workers.values()) == len(files)


def test_ctrl_c_keeps_the_rows_done_and_the_next_run_works(setup, tmp_path, monkeypatch):
    from cxr.runtime import results

    real_write = results.ResultsWriter.write

    def write(self, row, label=None):
        if self.rows == 5:
            raise KeyboardInterrupt
        real_write(self, row, label)

    monkeypatch.setattr(results.ResultsWriter, "write", write)
    out = tmp_path / "ray.csv"
    result = CliRunner().invoke(main, [str(setup["folder"]), "--out", str(out), "--model", str(setup["model"]),
                                       "--engine", "ray", "--batch-size", "4"])
    assert result.exit_code == 130
    assert not out.exists()
    kept = _rows(tmp_path / "ray.csv.partial")
    assert kept == _rows(setup["local"])[:5]
    monkeypatch.setattr(results.ResultsWriter, "write", real_write)
    again = _run(setup["folder"], "--out", out, "--model", setup["model"], "--engine", "ray", "--batch-size", "4")
    assert again.exit_code == 3 and out.read_bytes() == setup["local"].read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--actors", "2"], "--actors only apply with --engine ray"),
    (["--engine", "ray", "--device", "cuda"], "needs --gpus-per-actor"),
    (["--engine", "ray", "--device", "cpu", "--gpus-per-actor", "1"], "never use"),
    (["--engine", "ray", "--report", "r.html"], "need --engine local"),
])
def test_engine_usage_errors_exit_2_before_anything_is_written(setup, tmp_path, args, message):
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(main, [str(setup["folder"]), "--out", str(out), "--model", str(setup["model"]), *args])
    assert result.exit_code == 2 and message in result.output
    assert list(tmp_path.iterdir()) == []


def test_without_ray_the_engine_names_the_extra(setup, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'", name="ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = CliRunner().invoke(main, [str(setup["folder"]), "--out", str(tmp_path / "r.csv"), "--model",
                                       str(setup["model"]), "--engine", "ray"])
    assert result.exit_code == 2 and "pip install 'cxr[ray]'" in result.output
    assert list(tmp_path.iterdir()) == []



SLOW_AFTER_TWO_ROWS = """
import sys, time
from cxr.runtime.ray_engine import RayRun
real = RayRun.rows
def slow(*args, **kwargs):
    for i, row in enumerate(real(*args, **kwargs)):
        if i == 2:
            print("two rows done", flush=True)
            time.sleep(120)
        yield row
RayRun.rows = slow
from cxr.cli.score import main
main(sys.argv[1:])
"""


def test_sigterm_keeps_the_rows_done_although_ray_init_sets_its_own_handler(setup, tmp_path):
    """ray.init makes SIGTERM sys.exit(15); the command puts its own handler back: exit 143 and the rows done kept.
    A real signal to a real process that joins this module's Ray instance by its address."""
    import subprocess
    import sys

    out = tmp_path / "r.csv"
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", SLOW_AFTER_TWO_ROWS, str(setup["folder"]), "--out", str(out),
                             "--model", str(setup["model"]), "--engine", "ray", "--ray-address", address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline().strip() == "two rows done"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM) after 2 of 41" in stderr and "Traceback" not in stderr
    assert _rows(tmp_path / "r.csv.partial") == _rows(setup["local"])[:2]
    # the rows done, the record of which run left them, and the journal a --resume continues from
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv.journal", "r.csv.partial", "r.csv.partial.json"]


def test_an_actor_that_cannot_load_the_model_stops_the_run_with_one_plain_error(setup, tmp_path):
    """A node whose copy of the model differs (the actor's sha256 check) fails the pipeline: a RayEngineError naming
    the cause, not a cluster traceback and not an endless restart loop."""
    from cxr.runtime.ray_engine import RayEngineError

    class OtherModel(ScoreActor):
        def __init__(self, model_path, device, threads, threshold, sha256):
            super().__init__(model_path, device, threads, threshold, "0" * 64)

    folder = setup["folder"]
    scorer = Scorer(setup["model"], device="cpu")
    run = RayRun.connect(RayOptions())
    with pytest.raises(RayEngineError, match="is not the file the driver loaded"):
        list(run.rows(folder, find_images(folder).files, scorer, "cpu", 0.5, batch_size=4, actor_class=OtherModel))
