"""cxr-score end to end: rows, exit codes, messages, manifest, labels, threshold override, interruption, real images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime import metrics  # noqa: E402
from cxr.runtime.imaging import read_image  # noqa: E402
from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch  # noqa: E402
from tests.badfiles import write_bad_files, write_good_files  # noqa: E402
from tests.onnx_fixtures import expected_probability, mean_brightness_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def expected_prob(path: Path, size: int = 64) -> float:
    return float(expected_probability(preprocess_batch([read_image(path)], PreprocessConfig(size=size)))[0])


@pytest.fixture()
def good_folder(tmp_path) -> tuple[Path, list[str]]:
    folder = tmp_path / "good"
    names = write_good_files(folder)
    (folder / "README.txt").write_text("not an image\n")
    return folder, names


@pytest.fixture()
def mixed_folder(tmp_path) -> tuple[Path, list[str], dict[str, str]]:
    folder = tmp_path / "mixed"
    good = write_good_files(folder)
    bad = write_bad_files(folder / "broken")
    return folder, good, {f"broken/{k}": v for k, v in bad.items()}


def test_mixed_folder_one_row_per_file_error_codes_and_exit_3(tiny_model, mixed_folder, tmp_path):
    folder, good, bad = mixed_folder
    out = tmp_path / "results.csv"
    result = run(folder, "--out", out, "--model", tiny_model, "--device", "cpu", "--batch-size", "4")
    assert result.exit_code == 3, result.output
    rows = read_rows(out)
    assert list(rows) == sorted(good + list(bad))
    for rel, code in bad.items():
        assert rows[rel]["status"] == "error" and rows[rel]["error"].startswith(f"{code}: "), rows[rel]
        assert rows[rel]["prob_cardiomegaly"] == rows[rel]["cardiomegaly"] == ""
    for rel in good:
        assert rows[rel]["status"] == "ok" and rows[rel]["error"] == ""
        assert float(rows[rel]["prob_cardiomegaly"]) == pytest.approx(expected_prob(folder / rel), abs=2e-6)
    manifest = json.loads((tmp_path / "results.manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["files"], counts["ok"], counts["error"]) == (len(good) + len(bad), len(good), len(bad))
    assert sum(counts["by_error_code"].values()) == len(bad)
    assert manifest["device"] == {"requested": "cpu", "used": "cpu", "providers": ["CPUExecutionProvider"],
                                  "intra_op_threads": None}
    assert manifest["threshold"] == {"value": 0.5, "source": "card"}
    assert len(manifest["model"]["sha256"]) == 64
    assert f"{len(bad)} error" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "results.csv", "results.manifest.json", "tiny.onnx"]


def test_all_good_exit_0_relative_out_stays_where_given(tiny_model, good_folder, tmp_path, monkeypatch):
    folder, names = good_folder
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    result = run(folder, "--out", "scores.csv", "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    # --quiet: errors only; what --device auto picked is in the manifest
    assert result.stderr == ""
    assert json.loads((work / "scores.manifest.json").read_text())["device"] | {"providers": None} == {
        "requested": "auto", "used": "cpu", "providers": None, "intra_op_threads": None}
    quiet_cpu = run(folder, "--out", "scores.csv", "--model", tiny_model, "--quiet", "--device", "cpu")
    assert quiet_cpu.exit_code == 0 and quiet_cpu.stderr == ""
    rows = read_rows(work / "scores.csv")
    assert list(rows) == names and all(r["status"] == "ok" for r in rows.values())
    manifest = json.loads((work / "scores.manifest.json").read_text())
    assert manifest["counts"]["skipped_non_images"] == 1


def test_threads_reach_the_session_and_the_manifest(tiny_model, good_folder, tmp_path, monkeypatch):
    from cxr.runtime import scoring

    folder, names = good_folder
    seen = []
    real_session = scoring.Scorer._load

    def spy(self):
        seen.append(self.threads)
        real_session(self)

    monkeypatch.setattr(scoring.Scorer, "_load", spy)
    result = run(folder, "--out", tmp_path / "t.csv", "--model", tiny_model, "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert seen == [1]
    manifest = json.loads((tmp_path / "t.manifest.json").read_text())
    assert manifest["device"]["intra_op_threads"] == 1 and manifest["options"]["threads"] == 1
    default = run(folder, "--out", tmp_path / "d.csv", "--model", tiny_model, "--quiet")
    assert default.exit_code == 0 and seen == [1, None]
    assert json.loads((tmp_path / "d.manifest.json").read_text())["device"]["intra_op_threads"] is None
    bad = run(folder, "--out", tmp_path / "b.csv", "--model", tiny_model, "--threads", "0")
    assert bad.exit_code == 2 and "--threads" in bad.output and not (tmp_path / "b.csv").exists()


def test_threshold_override_is_used_and_reported(tiny_model, good_folder, tmp_path):
    folder, names = good_folder
    out = tmp_path / "r.csv"
    probs = sorted(expected_prob(folder / n) for n in names)
    cut = (probs[1] + probs[2]) / 2  # two images below, the rest above
    result = run(folder, "--out", out, "--model", tiny_model, "--threshold", f"{cut:.9f}")
    assert result.exit_code == 0, result.output
    labels = [int(r["cardiomegaly"]) for r in read_rows(out).values()]
    assert sorted(labels) == [0, 0] + [1] * (len(names) - 2)
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["threshold"]["source"] == "--threshold"
    assert manifest["threshold"]["value"] == pytest.approx(cut)
    assert manifest["card"]["threshold"]["value"] == 0.5
    assert "(--threshold)" in result.stderr


def test_labels_give_metrics_in_manifest_and_on_stderr(tiny_model, good_folder, tmp_path):
    folder, names = good_folder
    truth = {n: i % 2 for i, n in enumerate(names)}
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{n},{y}\n" for n, y in truth.items()) + "ghost.png,1\nx.png,\n")
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]
    assert (report["matched"], report["labelled_not_found"], report["ignored_lines"]) == (len(names), 1, 1)
    rows = read_rows(out)
    expected = metrics.summarize([truth[n] for n in names], [float(rows[n]["prob_cardiomegaly"]) for n in names],
                                 0.5)
    for key in ("auroc", "sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn"):
        got, want = report["metrics"][key], expected[key]
        assert (got is None and np.isnan(want)) or got == pytest.approx(want, abs=1e-6), key
    assert report["metrics"]["auroc_ci95"] == pytest.approx(expected["auroc_ci95"], abs=1e-6)
    assert f"AUROC {expected['auroc']:.4f}" in result.stderr
    assert f"{len(names)} matched" in result.stderr


@pytest.mark.parametrize("content", ["file,label\na.png,1\n", None])
def test_unusable_labels_file_is_a_usage_error(tiny_model, good_folder, tmp_path, content):
    folder, _ = good_folder
    labels = tmp_path / "labels.csv"
    if content is not None:
        labels.write_text(content)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 2
    assert "--labels" in result.output and ("missing column" in result.output or "does not exist" in result.output)
    assert not (tmp_path / "r.csv").exists()


def _readonly_dir(tmp_path: Path) -> Path:
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):
        pytest.skip("running with privileges that write into a read-only folder (root)")
    return d / "r.csv"


@pytest.mark.parametrize("make_out, message", [
    (lambda t: (t / "afile").write_text("x") and t / "afile" / "r.csv", "afile is not a folder"),
    (lambda t: (t / "existing").mkdir() or t / "existing", "is a folder"),
    (_readonly_dir, "cannot write results"),
])
def test_unwritable_output_exit_1_and_no_file(tiny_model, good_folder, tmp_path, make_out, message):
    folder, _ = good_folder
    out = make_out(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    result = run(folder, "--out", out, "--model", tiny_model)
    assert result.exit_code == 1
    assert result.stderr.startswith("cxr-score: error: ") and message in result.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("make_model, message", [
    (lambda t: t / "missing.onnx", "model file not found"),
    (lambda t: mean_brightness_model(t / "nocard.onnx", with_card=False), "no 'cxr.card' metadata"),
    (lambda t: mean_brightness_model(t / "badcard.onnx", card_json="[1, 2]"), "must be a JSON object"),
    (lambda t: (t / "text.onnx").write_text("hello") and t / "text.onnx", "cannot be loaded as an ONNX model"),
])
def test_bad_model_exit_1_with_the_reason_and_no_output(good_folder, tmp_path, make_model, message):
    folder, _ = good_folder
    model = make_model(tmp_path)
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    result = run(folder, "--out", out, "--model", model)
    assert result.exit_code == 1
    assert result.stderr.startswith("cxr-score: error: ") and message in result.stderr and str(model) in result.stderr
    assert list(out.parent.iterdir()) == []


def test_requested_cuda_that_is_unavailable_exit_1(tiny_model, good_folder, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine really has CUDA")
    folder, _ = good_folder
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model, "--device", "cuda")
    assert result.exit_code == 1 and "--device cuda was requested" in result.stderr
    assert not (tmp_path / "r.csv").exists()


def test_folder_without_images_exit_1(tiny_model, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model)
    assert result.exit_code == 1 and "no images found" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "tiny.onnx"]


def test_folder_problems_are_reported_and_exit_3(tiny_model, good_folder, tmp_path):
    folder, names = good_folder
    os.symlink(folder, folder / "loop")
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model)
    assert result.exit_code == 3
    assert "cxr-score: warning: loop: symlink loop" in result.stderr
    assert result.stderr.count("symlink loop") == 1  # said once, not also by a logger
    assert list(read_rows(tmp_path / "r.csv")) == names
    assert json.loads((tmp_path / "r.manifest.json").read_text())["counts"]["walk_problems"] == [
        "loop: symlink loop (points back to a folder above it), not followed"]


def test_interrupt_keeps_partial_and_the_previous_results(tiny_model, good_folder, tmp_path, monkeypatch):
    import cxr.runtime.scoring as scoring

    folder, names = good_folder
    out = tmp_path / "r.csv"
    out.write_text("earlier run\n")
    real = scoring.score_folder

    def interrupted(*args, **kwargs):
        for i, row in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(scoring, "score_folder", interrupted)
    result = run(folder, "--out", out, "--model", tiny_model, "--batch-size", "1")
    assert result.exit_code == 130
    assert out.read_text() == "earlier run\n"
    assert list(read_rows(tmp_path / "r.csv.partial")) == names[:2]
    assert "interrupted after 2 of" in result.stderr and "r.csv.partial" in result.stderr
    assert not (tmp_path / "r.manifest.json").exists()
    monkeypatch.setattr(scoring, "score_folder", real)  # the run is repeated and completes
    again = run(folder, "--out", out, "--model", tiny_model)
    assert again.exit_code == 0 and list(read_rows(out)) == names
    assert f"removed {tmp_path / 'r.csv.partial'}, left by earlier interrupted run(s)" in again.stderr
    assert not (tmp_path / "r.csv.partial").exists()


SLOW_AFTER_TWO_ROWS = """
import sys, time
import cxr.runtime.scoring as scoring
real = scoring.score_folder
def slow(*args, **kwargs):
    for i, row in enumerate(real(*args, **kwargs)):
        if i == 2:
            print("two rows done", flush=True)
            time.sleep(120)
        yield row
scoring.score_folder = slow
from cxr.cli.score import main
main(sys.argv[1:])
"""


def test_sigterm_keeps_the_rows_done_like_ctrl_c(tiny_model, good_folder, tmp_path):
    """A batch system's time limit (SIGTERM) mid-run: exit 143, the rows done in .partial, the earlier results and
    no hidden temporary file left behind. A real signal to a real process."""
    import signal

    folder, names = good_folder
    out = tmp_path / "r.csv"
    out.write_text("earlier run\n")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_AFTER_TWO_ROWS, str(folder), "--out", str(out), "--model",
                             str(tiny_model), "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "two rows done"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM) after 2 of" in stderr and "r.csv.partial" in stderr and "Traceback" not in stderr
    assert out.read_text() == "earlier run\n"
    assert list(read_rows(tmp_path / "r.csv.partial")) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "r.csv", "r.csv.journal", "r.csv.partial",
                                                          "r.csv.partial.json", "tiny.onnx"]


def test_sigterm_before_scoring_leaves_nothing(tiny_model, good_folder, tmp_path, monkeypatch):
    import signal

    import cxr.runtime.walk as walk_module

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the walk")

    monkeypatch.setattr(walk_module, "find_images", terminated)
    folder, _ = good_folder
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "r.csv").write_text("an earlier run\n")  # left as it was, and not called complete
    before = signal.getsignal(signal.SIGTERM)
    result = run(folder, "--out", out_dir / "r.csv", "--model", tiny_model)
    assert result.exit_code == 143
    assert f"terminated (SIGTERM) before scoring started; nothing was written to {out_dir / 'r.csv'}" in result.stderr
    assert [p.name for p in out_dir.iterdir()] == ["r.csv"] and (out_dir / "r.csv").read_text() == "an earlier run\n"
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is cxr-score's only while it runs


def test_sigterm_while_the_manifest_is_written_says_the_results_are_complete(tiny_model, good_folder, tmp_path,
                                                                             monkeypatch):
    import signal

    import cxr.runtime.results as results

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the manifest")

    monkeypatch.setattr(results, "write_json_atomic", terminated)
    folder, names = good_folder
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model)
    assert result.exit_code == 143
    assert f"terminated (SIGTERM) after {tmp_path / 'r.csv'} was written; its manifest was not" in result.stderr
    assert list(read_rows(tmp_path / "r.csv")) == names


def test_a_write_error_keeps_the_rows_done_and_exits_1_without_a_traceback(tiny_model, good_folder, tmp_path,
                                                                          monkeypatch):
    from cxr.runtime.results import ResultsWriter

    folder, names = good_folder
    out = tmp_path / "r.csv"
    real = ResultsWriter.write

    def disk_full(self, row, *args):
        if self.rows == 2:
            raise OSError(28, "No space left on device")
        real(self, row, *args)

    monkeypatch.setattr(ResultsWriter, "write", disk_full)
    result = run(folder, "--out", out, "--model", tiny_model, "--batch-size", "1")
    assert result.exit_code == 1
    assert "cannot write results: No space left on device" in result.stderr and "r.csv.partial" in result.stderr
    assert list(read_rows(tmp_path / "r.csv.partial")) == names[:2] and not out.exists()


@pytest.mark.parametrize("target", ["model", "labels", "manifest_is_model", "image"])
def test_out_never_overwrites_an_input(tiny_model, good_folder, tmp_path, target):
    folder, names = good_folder
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model, model)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    out = {"model": model, "labels": labels, "manifest_is_model": tmp_path / "model.csv",
           "image": folder / names[0]}[target]
    if target == "manifest_is_model":  # model.csv's manifest is model.manifest.json: make that the model's name
        model = model.rename(tmp_path / "model.manifest.json")
    kept = {p: p.read_bytes() for p in (model, labels, folder / names[0])}
    result = CliRunner().invoke(main, [str(folder), "--out", str(out), "--model", str(model), "--labels", str(labels)])
    assert result.exit_code == 2 and "--out" in result.output
    assert ("would overwrite" in result.output) if target != "image" else ("is an image" in result.output)
    assert {p: p.read_bytes() for p in kept} == kept
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_the_manifest_hash_is_of_the_model_that_scored(tiny_model, good_folder, tmp_path, monkeypatch):
    """Replacing the model file during a run (a re-export) must not change what the manifest says was used."""
    import hashlib

    import cxr.runtime.scoring as scoring

    folder, _ = good_folder
    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model, model)
    used = hashlib.sha256(model.read_bytes()).hexdigest()
    real = scoring.score_folder

    def replaced_midway(*args, **kwargs):
        for i, row in enumerate(real(*args, **kwargs)):
            if i == 1:
                model.write_bytes(b"a different file")
            yield row

    monkeypatch.setattr(scoring, "score_folder", replaced_midway)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model)
    assert result.exit_code == 0, result.stderr
    recorded = json.loads((tmp_path / "r.manifest.json").read_text())["model"]
    assert recorded["sha256"] == used and recorded["size_bytes"] == tiny_model.stat().st_size


def test_version_and_help_are_fast_paths():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "cxr-score" in result.output
    help_result = CliRunner().invoke(main, ["--help"])
    assert help_result.exit_code == 0 and "--labels" in help_result.output


def test_console_script_end_to_end(tiny_model, mixed_folder, tmp_path):
    folder, good, bad = mixed_folder
    out = tmp_path / "results.csv"
    script = Path(sys.executable).with_name("cxr-score")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "cxr.cli.score"]
    proc = subprocess.run(cmd + [str(folder), "--out", str(out), "--model", str(tiny_model)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(read_rows(out)) == len(good) + len(bad)
    manifest = json.loads((tmp_path / "results.manifest.json").read_text())
    assert manifest["command"][1:] == [str(folder), "--out", str(out), "--model", str(tiny_model)]


REAL_KINDS = [
    ("ctr_wingspan_jsrt/jsrt/png", "*.png", 5),
    ("ctr_wingspan_jsrt/wingspan/png", "*.png", 5),
    ("torchxrayvision_tests", "*.jpg", 10),
    ("torchxrayvision_tests/tbx11k_test_data/imgs", "*/*.png", 10),
    ("torchxrayvision_tests", "*.png", 10),
    ("dicom_samples", "*.dcm", 10),
    ("torchxrayvision_tests", "*.dcm", 10),
]


@pytest.mark.slow
def test_real_images_of_every_kind_plus_bad_files(shared_data, tiny_model, tmp_path):
    folder = tmp_path / "real"
    linked: list[str] = []
    for sub, pattern, limit in REAL_KINDS:
        for src in sorted((shared_data / sub).glob(pattern))[:limit]:
            rel = f"{sub.replace('/', '_')}/{src.relative_to(shared_data / sub).as_posix().replace('/', '_')}"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, folder / rel)
            linked.append(rel)
    bad = {f"bad/{k}": v for k, v in write_bad_files(folder / "bad").items()}
    shutil.copy(shared_data / "dicom_samples" / "README.txt", folder / "README.txt")
    out = tmp_path / "results.csv"
    result = run(folder, "--out", out, "--model", tiny_model, "--workers", "2")
    assert result.exit_code == 3, result.output
    rows = read_rows(out)
    assert list(rows) == sorted(linked + list(bad))
    not_ok = {p: r["error"] for p, r in rows.items() if p in linked and r["status"] != "ok"}
    assert not_ok == {}
    assert {p: r["error"].split(":")[0] for p, r in rows.items() if p in bad} == bad
    assert any(p.endswith("RG1_UNCR.dcm") for p in rows)  # the MONOCHROME1 CR image is among them
    probe = next(p for p in linked if p.endswith("RG1_UNCR.dcm"))
    assert float(rows[probe]["prob_cardiomegaly"]) == pytest.approx(expected_prob(folder / probe), abs=2e-6)


def test_interrupt_before_scoring_leaves_no_temporary_file(tiny_model, good_folder, tmp_path, monkeypatch):
    """Ctrl-C during a long folder walk: no results file, no .partial (nothing was done), no hidden temp file."""
    import cxr.runtime.walk as walk_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(walk_module, "find_images", interrupted)
    folder, _ = good_folder
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run(folder, "--out", out_dir / "r.csv", "--model", tiny_model)  # click turns Ctrl-C into "Aborted!"
    assert result.exit_code != 0
    assert list(out_dir.iterdir()) == []


def test_folder_of_only_bad_files_exits_3_with_a_summary(tiny_model, tmp_path):
    """No image scored: the summary still prints (model time 'n/a'), every row is an error, exit 3."""
    folder = tmp_path / "bad"
    folder.mkdir()
    expected = write_bad_files(folder)
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", tiny_model)
    assert result.exit_code == 3, result.output
    assert f"{len(expected)} file(s): 0 ok, {len(expected)} error" in result.stderr
    assert "model n/a ms/image" in result.stderr
    rows = read_rows(out)
    assert {name: r["error"].split(":")[0] for name, r in rows.items()} == expected


def test_labels_propose_a_site_threshold_with_held_out_figures(tiny_model, tmp_path):
    import cv2

    folder, rng = tmp_path / "site", np.random.default_rng(0)
    folder.mkdir()
    truth = {}
    for i in range(40):  # a site whose films all score below the card's 0.5 (a black band lowers the equalized
        # mean the model reads): positives with a narrower band, with some overlap between the classes
        rows = int(np.clip((8 if i % 2 else 24) + rng.normal(0, 6), 1, 40))
        image = rng.integers(50, 200, (64, 64)).astype(np.uint8)
        image[:rows] = 0
        cv2.imwrite(str(folder / f"f{i:02d}.png"), image)
        truth[f"f{i:02d}.png"] = i % 2
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{n},{y}\n" for n, y in truth.items()))
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]
    rows = read_rows(tmp_path / "r.csv")
    y, p = [truth[n] for n in truth], [float(rows[n]["prob_cardiomegaly"]) for n in truth]
    assert max(p) < 0.5 and report["metrics"]["sensitivity"] == 0.0  # the card's threshold calls nobody
    site = report["site_threshold"]
    expected = metrics.site_threshold(y, p, seed=0)  # from the CSV's rounded probabilities
    assert site["threshold"] == pytest.approx(expected["threshold"], abs=1e-6)
    assert site["held_out"] == pytest.approx(expected["held_out"]) and site["n"] == 40
    assert site["threshold"] < 0.5 and site["held_out"]["sensitivity"] > 0.8
    assert f"site threshold: {site['threshold']:.4g}" in result.stderr
    assert f"--threshold {site['threshold']:.4g}" in result.stderr
