"""cxr-train as a user runs it: --help with defaults, an end-to-end tiny run, user errors as one line and exit 1.

Runs use densenet_tiny at 64 px on 60 phantom images (mechanics only, a few seconds each).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
import urllib.error

import pytest
from click.testing import CliRunner

from cxr.cli.train import main
from cxr.train.config import TrainConfig
from tests.train.train_fixtures import make_small_phantom

TINY = ["--arch", "densenet_tiny", "--init", "random", "--image-size", "64", "--batch-size", "8", "--lr", "1e-3",
        "--max-epochs", "2", "--num-workers", "0", "--bootstrap-n", "50", "--device", "cpu"]
RUN_FILES = ("config.json", "splits.csv", "history.csv", "best.pt", "last.pt", "metrics.json", "loss.png",
             "val_auroc.png", "lr.png", "test_roc.png", "summary.png")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_small_phantom(tmp_path_factory.mktemp("phantom"))


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def help_text() -> str:
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    return result.output


@pytest.mark.parametrize("option, default", [
    ("--arch", "densenet121"), ("--init", "imagenet"), ("--optimizer", "adam"), ("--lr", "1e-05"),
    ("--weight-decay", "0.01"), ("--batch-size", "32"), ("--max-epochs", "30"), ("--plateau-patience", "2"),
    ("--plateau-factor", "0.1"), ("--early-stopping-patience", "4"), ("--rotation-degrees", "5.0"),
    ("--image-size", "224"), ("--dropout", "0.2"), ("--pos-weight", "none"), ("--threshold-method", "youden_j"),
    ("--amp", "auto"), ("--device", "auto"), ("--cache-images", "auto"), ("--seed", "0"),
])
def test_help_shows_recipe_defaults(help_text, option, default):
    entry = re.search(rf"^ +{option}\b.*?(?=^ +-|\Z)", help_text, flags=re.M | re.S)
    line = " ".join(entry.group(0).split())
    assert f"[default: {default}]" in line


def test_help_has_an_option_for_every_config_field(help_text):
    for field in dataclasses.fields(TrainConfig):
        flag = {"dataset": "--data", "data_root": "--data", "csv_path": "--csv",
                "extra_sources": "--data", "source_name": "name="}.get(
            field.name, "--" + field.name.replace("_", "-"))
        assert flag in help_text, field.name
    for flag in ("--out", "--resume", "KIND:PATH"):
        assert flag in help_text


def test_help_does_not_import_torch():
    code = "import sys, cxr.cli.train; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("extra, method", [
    ([], "youden_j"),
    (["--threshold-method", "target_sensitivity", "--target-sensitivity", "0.9"], "target_sensitivity"),
])
def test_end_to_end_run_writes_every_run_file(phantom, tmp_path, extra, method):
    out = tmp_path / "run"
    result = run("--data", f"phantom:{phantom}", "--out", out, *TINY, *extra)
    assert result.exit_code == 0, result.output
    assert "test AUROC" in result.output and str(out) in result.output
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"]["method"] == method
    if method == "target_sensitivity":
        assert metrics["metrics"]["val"]["sensitivity"] >= 0.9
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "densenet_tiny" and config["data_root"] == str(phantom.resolve())
    with open(out / "history.csv") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]


def test_resume_extends_a_finished_run(phantom, tmp_path):
    out = tmp_path / "run"
    assert run("--data", f"phantom:{phantom}", "--out", out, *TINY).exit_code == 0
    result = run("--resume", out, "--max-epochs", "3")
    assert result.exit_code == 0, result.output
    with open(out / "history.csv") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2", "3"]


def _all_negative_csv(phantom, tmp_path):
    path = tmp_path / "labels.csv"
    rows = list(csv.DictReader(open(phantom / "labels.csv")))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "cardiomegaly"])
        for row in rows:
            writer.writerow([phantom / row["path"], 0])
    return path


def _negative_test_split_csv(phantom, tmp_path):
    """A predefined split whose test part holds negatives only: its AUROC would be undefined."""
    path = tmp_path / "labels.csv"
    rows = list(csv.DictReader(open(phantom / "labels.csv")))
    patients = sorted({row["patient_id"] for row in rows})
    negative_only = {pid for pid in patients if all(r["cardiomegaly"] == "0" for r in rows if r["patient_id"] == pid)}
    split_of = {pid: "test" if pid in negative_only and i % 4 == 0 else ("val" if i % 4 == 1 else "train")
                for i, pid in enumerate(patients)}  # per patient: no patient in two splits
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "cardiomegaly", "patient_id", "split"])
        for row in rows:
            writer.writerow([phantom / row["path"], row["cardiomegaly"], row["patient_id"],
                             split_of[row["patient_id"]]])
    return path


@pytest.mark.parametrize("case, message", [
    ("missing_root", "does not exist"),
    ("test_split_one_class", "split 'test' has no positive"),
    ("no_positives", "no positive"),
    ("imagenet_offline", "--init random"),
    ("existing_run", "already holds a run"),
    ("resume_changed_lr", "different lr"),
])
def test_user_errors_exit_1_with_one_line(phantom, tmp_path, monkeypatch, case, message):
    args = ["--data", f"phantom:{phantom}", "--out", tmp_path / "run", *TINY]
    if case == "missing_root":
        args[1] = f"phantom:{tmp_path / 'absent'}"
    elif case == "no_positives":
        args[:2] = ["--data", f"csv:{tmp_path}", "--csv", _all_negative_csv(phantom, tmp_path)]
    elif case == "test_split_one_class":
        args[:2] = ["--data", f"csv:{tmp_path}", "--csv", _negative_test_split_csv(phantom, tmp_path)]
    elif case == "imagenet_offline":
        import torchvision.models._api as api

        def refuse(*a, **k):
            raise urllib.error.URLError("offline (test)")
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
        monkeypatch.setattr(api, "load_state_dict_from_url", refuse)
        args = ["--data", f"phantom:{phantom}", "--out", tmp_path / "run", "--image-size", "64"]
    elif case in ("existing_run", "resume_changed_lr"):
        assert run(*args, "--max-epochs", "1").exit_code == 0  # the last --max-epochs wins
        if case == "resume_changed_lr":
            args = ["--resume", tmp_path / "run", "--lr", "0.5"]
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.startswith("cxr-train: error: ") or "\ncxr-train: error: " in result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["--data", "mystery:/x", "--out", "r"],
    ["--data", "no-colon", "--out", "r"],
    ["--out", "r"],
    ["--data", "folder:/x", "--out", "r", "--pos-weight", "lots"],
])
def test_usage_errors_exit_2(args):
    assert CliRunner().invoke(main, args).exit_code == 2
