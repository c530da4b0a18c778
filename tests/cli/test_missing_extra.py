"""A scoring-only install still has cxr-train and cxr-export on PATH: they must name the missing extra, not crash."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from cxr.cli.export import main as export_main
from cxr.cli.train import main as train_main


@pytest.mark.parametrize("main, prog, args", [
    (train_main, "cxr-train", ["--data", "phantom:{tmp}", "--out", "{tmp}/run", "--init", "random"]),
    (export_main, "cxr-export", ["{tmp}", "--out", "{tmp}/model.onnx"]),
])
def test_without_torch_the_training_commands_say_how_to_install_it(main, prog, args, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert f"{prog}: error: torch not installed" in result.output
    assert "pip install 'cxr[train]'" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "model.onnx").exists()
