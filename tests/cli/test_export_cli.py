"""cxr-export command line: summary on success, `cxr-export: error:` and exit 1 on failures, exit 2 on usage."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("torch")

from cxr.cli.export import main  # noqa: E402
from tests.export.conftest import write_run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The export tests' tiny run (densenet_tiny, S=64, 12 validation phantoms)."""
    return write_run(tmp_path_factory.mktemp("cli-run") / "run")


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_prints_summary(tiny_run, tmp_path):
    out = tmp_path / "model.onnx"
    result = _run(tiny_run, "--out", out, "--opset", 17)
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "model.validation.json").is_file()
    assert "opset 17" in result.output and "parity vs PyTorch" in result.output
    assert "threshold 0.4200 (youden_j)" in result.output and "batch invariance" in result.output


@pytest.mark.parametrize("opset", ["7", "12", "21", "99", "x"])
def test_bad_opset_is_usage_error(tmp_path, opset):
    result = _run(tmp_path / "missing", "--out", tmp_path / "m.onnx", "--opset", opset)
    assert result.exit_code == 2 and "--opset" in result.output


def test_labels_without_sample_is_a_usage_error(tiny_run, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,1\n")
    result = _run(tiny_run, "--out", tmp_path / "m.onnx", "--labels", labels)
    assert result.exit_code == 2 and "--labels labels the --sample images" in result.output
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("case", ["missing", "corrupt", "arch_mismatch", "no_images"])
def test_failures_exit_1(tiny_run, tmp_path, case):
    if case == "missing":
        target, needle = tmp_path / "no-such-run", "no such file"
    elif case == "corrupt":
        target, needle = tmp_path / "best.pt", "cannot be read as a cxr checkpoint"
        target.write_bytes(os.urandom(1000))
    elif case == "arch_mismatch":
        from cxr.train.checkpoints import load_checkpoint, save_checkpoint

        data = load_checkpoint(tiny_run)
        data["model"] = {"arch": "densenet121", "dropout": 0.2}
        target = save_checkpoint({k: v for k, v in data.items() if k != "path"}, tmp_path / "best.pt")
        needle = "do not match architecture 'densenet121'"
    else:
        (tmp_path / "run").mkdir()
        target = tmp_path / "run" / "best.pt"
        target.write_bytes((tiny_run / "best.pt").read_bytes())
        needle = "pass --sample DIR"
    out = tmp_path / "m.onnx"
    result = _run(target, "--out", out)
    assert result.exit_code == 1
    assert result.output.startswith("cxr-export: error: ") and needle in result.output
    assert not out.exists()


def test_int8_refused_warns_but_fp32_written(tiny_run, tmp_path):
    out = tmp_path / "model.onnx"
    result = _run(tiny_run, "--out", out, "--quantize", "int8", "--max-auroc-drop", "-1")
    assert result.exit_code == 0, result.output
    assert "int8: NOT written" in result.output and out.is_file()
    assert not (tmp_path / "model.int8.onnx").exists() and (tmp_path / "model.int8.rejected.onnx").exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_drops_the_refused_copy_warning_and_the_report_keeps_its_reason(tiny_run, tmp_path, quiet):
    import json

    out = tmp_path / "model.onnx"
    result = _run(tiny_run, "--out", out, "--quantize", "int8", "--max-auroc-drop", "-1", *(["-q"] if quiet else []))
    assert result.exit_code == 0 and out.is_file()
    reason = json.loads((tmp_path / "model.validation.json").read_text())["variants"]["int8"]["reason"]
    assert "AUROC dropped by" in reason
    assert (result.stderr == "") is quiet and (result.stdout == "") is quiet
    if not quiet:
        assert f"cxr-export: warning: int8 copy not written: {reason}" in result.stderr


@pytest.mark.parametrize("name", ["best.pt", "model", "splits.csv"])
def test_out_must_be_an_onnx_file_name(tiny_run, tmp_path, name):
    """A typo such as --out run/best.pt would overwrite the trained weights."""
    target = tmp_path / name
    target.write_bytes(b"keep me")
    result = _run(tiny_run, "--out", target)
    assert result.exit_code == 2 and "ending in .onnx" in result.output
    assert target.read_bytes() == b"keep me"
