"""A new user's first hour with cxr-score: labels that do not match are loud, one label parser
with cxr-train, and scoring exactly what the user points at (a file, several files, a glob; a run given as --model;
an --out folder that does not exist yet)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.train.datasets import load_dataset  # noqa: E402
from tests.badfiles import write_good_files  # noqa: E402


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "data" / "images"
    return root, write_good_files(root)


def labels_report(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".manifest.json").read_text())["labels"]


# ------------------------------------------------------------------------------------------------ item 1


@pytest.mark.parametrize("spell", ["absolute", "bare", "labels_dir", "relative"])
def test_labels_match_however_the_csv_writes_the_path(tiny_model, folder, tmp_path, spell):
    root, names = folder
    written = {"absolute": lambda n: str(root / n), "bare": lambda n: n, "labels_dir": lambda n: f"images/{n}",
               "relative": lambda n: f"./{n}"}[spell]
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{written(n)},{('Normal', 'Cardiomegaly')[i % 2]}\n"
                                               for i, n in enumerate(names)))
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 0, result.output
    report = labels_report(out)
    assert report["matched"] == len(names) and report["metrics"]["n"] == len(names)
    assert [read_rows(out)[n]["label"] for n in names] == [str(i % 2) for i in range(len(names))]
    assert f"{len(names)} matched" in result.stderr


def test_label_and_path_columns_can_be_named(tiny_model, folder, tmp_path):
    root, names = folder
    labels = tmp_path / "labels.csv"
    labels.write_text("image,finding\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 2 and "--path-column and --label-column" in result.output
    assert "missing column(s) 'path'" in result.output
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels, "--path-column", "image",
                 "--label-column", "finding")
    assert result.exit_code == 0, result.output
    assert labels_report(out)["matched"] == len(names)


def test_no_labelled_path_matching_is_a_usage_error_before_scoring(tiny_model, folder, tmp_path):
    root, names = folder
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"/elsewhere/{n},1\n" for n in names))
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # click wraps nothing, but be safe with line breaks
    assert "no labelled path matches an image" in text and f"'/elsewhere/{names[0]}'" in text
    assert f"'{names[0]}'" in text and "tried: relative to the scored folder" in text
    assert not out.exists() and not out.with_name("r.manifest.json").exists()


def test_few_labels_matching_warns_and_exits_3_with_the_results(tiny_model, folder, tmp_path):
    root, names = folder
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + f"{names[0]},1\n" + "".join(f"other/{i}.png,0\n" for i in range(10)))
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 3, result.output
    assert "warning: --labels" in result.stderr and "few labels match" in result.stderr
    assert "'other/0.png'" in result.stderr
    assert len(read_rows(out)) == len(names) and labels_report(out)["matched"] == 1


@pytest.mark.parametrize("values, shown", [(["maybe", "??"], "'maybe', '??'"), (["", ""], "2 line(s)")])
def test_a_labels_file_without_usable_labels_says_what_labels_are(tiny_model, folder, tmp_path, values, shown):
    root, names = folder
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{n},{v}\n" for n, v in zip(names, values)))
    result = run(root, "--out", tmp_path / "r.csv", "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 2
    assert "no usable label" in result.output and shown in result.output and "true/false" in result.output


# ------------------------------------------------------------------------------------------------ item 2


def test_a_labels_csv_that_trains_scores_with_the_same_rows(tiny_model, folder, tmp_path):
    """Class names and true/false: cxr-train indexes every row, and cxr-score --labels matches every one of them."""
    root, names = folder
    values = ["Cardiomegaly", "Normal", "true", "false", "yes", "negative"]
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("path,label,patient_id\n" + "".join(f"images/{n},{v},p{i}\n"
                                                          for i, (n, v) in enumerate(zip(names, values))))
    index = load_dataset("csv", labels.parent, csv_path=labels, label_column="label")
    assert not index.skipped
    trained = {s.path.relative_to(root).as_posix(): s.label for s in index.samples}
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 0, result.output
    scored = {p: int(r["label"]) for p, r in read_rows(out).items() if r["label"] != ""}
    assert scored == trained and len(scored) == len(names)
    assert labels_report(out)["ignored_lines"] == 0


# ------------------------------------------------------------------------------------------------ item 3


def test_one_file_prints_its_probability_and_call_on_stdout(tiny_model, folder, tmp_path):
    root, names = folder
    out = tmp_path / "r.csv"
    result = run(root / "gray8.png", "--out", out, "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    row = read_rows(out)["gray8.png"]
    call = "cardiomegaly" if row["cardiomegaly"] == "1" else "no cardiomegaly"
    assert result.stdout == (f"gray8.png\tprobability {float(row['prob_cardiomegaly']):.4f}\t{call} "
                             "(threshold 0.5)\n")


def test_several_files_and_a_quoted_glob_score_those_files_only(tiny_model, folder, tmp_path):
    root, names = folder
    (root / "sub").mkdir()
    shutil.copy(root / "gray8.png", root / "sub" / "copy.png")
    (root / "notes.txt").write_text("x")
    out = tmp_path / "r.csv"
    result = run(root / "rgb.jpg", root / "sub" / "copy.png", "--out", out, "--model", tiny_model)
    assert result.exit_code == 0, result.output
    assert list(read_rows(out)) == ["rgb.jpg", "sub/copy.png"] and result.stdout == ""
    result = run(f"{root}/*", "--out", out, "--model", tiny_model)  # as the shell passes a quoted glob
    assert result.exit_code == 0, result.output
    assert list(read_rows(out)) == sorted(names)  # not notes.txt, not the folder sub/ (* is not recursive)
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["counts"]["files"] == len(read_rows(out))


@pytest.mark.parametrize("make_args, message", [
    (lambda root: [f"{root}/*.nothing"], "matches no image file"),
    (lambda root: [root, root / "rgb.jpg"], "give one folder, or image files"),
    (lambda root: [root / "absent.png"], "does not exist"),
])
def test_targets_that_cannot_be_scored_are_usage_errors(tiny_model, folder, tmp_path, make_args, message):
    root, _ = folder
    result = run(*make_args(root), "--out", tmp_path / "r.csv", "--model", tiny_model)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("make_model, source", [
    (lambda run_dir: run_dir, "cxr-export {run} --out model.onnx"),
    (lambda run_dir: run_dir / "best.pt", "cxr-export {run} --out model.onnx"),
    (lambda run_dir: run_dir / "weights.pth", "cxr-export {run}/weights.pth --out model.onnx"),
])
def test_a_training_run_as_model_says_export_it_first(folder, tmp_path, make_model, source):
    root, _ = folder
    run_dir = tmp_path / "runs" / "exp1"
    run_dir.mkdir(parents=True)
    for name in ("best.pt", "weights.pth"):
        (run_dir / name).write_bytes(b"PK\x03\x04" + b"\0" * 64)  # what torch.save writes first
    result = run(root, "--out", tmp_path / "r.csv", "--model", make_model(run_dir))
    assert result.exit_code == 1
    assert "export it first: " + source.format(run=run_dir) in result.stderr
    assert "protobuf" not in result.stderr.lower()


def test_a_checkpoint_without_a_pt_suffix_is_recognised_by_its_bytes(folder, tmp_path):
    root, _ = folder
    model = tmp_path / "model.onnx"
    model.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    result = run(root, "--out", tmp_path / "r.csv", "--model", model)
    assert result.exit_code == 1 and "a PyTorch checkpoint, not an ONNX model; export it first" in result.stderr


def test_out_in_a_missing_folder_creates_it_and_says_so(tiny_model, folder, tmp_path):
    root, names = folder
    out = tmp_path / "new" / "deeper" / "results.csv"
    result = run(root, "--out", out, "--model", tiny_model)
    assert result.exit_code == 0, result.output
    assert f"created folder {out.parent}" in result.stderr and len(read_rows(out)) == len(names)


def test_a_folder_created_for_out_is_removed_when_the_run_fails(folder, tmp_path):
    root, _ = folder
    out = tmp_path / "new" / "results.csv"
    result = run(root, "--out", out, "--model", tmp_path / "missing.onnx")
    assert result.exit_code == 1 and "model file not found" in result.stderr
    assert not (tmp_path / "new").exists()
