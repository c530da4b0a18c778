"""Nan and +-inf are usage errors (exit 2) for every float option of every cxr command."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cxr.cli import FiniteFloat
from cxr.cli.bench import main as bench_main
from cxr.cli.export import main as export_main
from cxr.cli.score import main as score_main
from cxr.cli.train import main as train_main

COMMANDS = {"cxr-score": score_main, "cxr-export": export_main, "cxr-train": train_main, "cxr-bench": bench_main}
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999"]


@pytest.mark.parametrize("text", NON_FINITE)
@pytest.mark.parametrize("command, args", [
    (score_main, ["folder-not-needed", "--out", "r.csv", "--model", "m.onnx", "--threshold"]),
    (export_main, ["run", "--out", "m.onnx", "--max-auroc-drop"]),
    (train_main, ["--out", "run", "--lr"]),
    (train_main, ["--out", "run", "--pos-weight"]),
    (bench_main, ["--model", "m.onnx", "--seconds"]),
])
def test_non_finite_float_is_a_usage_error(tmp_path, command, args, text):
    args = [str(tmp_path) if a == "folder-not-needed" else a for a in args]
    result = CliRunner().invoke(command, [*args, text])
    assert result.exit_code == 2, result.output
    assert "not a finite number" in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_float_option_is_finite_checked(name):
    """A float option added later without FiniteFloat fails here, not in a user's run."""
    floats = [p.name for p in COMMANDS[name].params if isinstance(p.type, click.types.FloatParamType)]
    unchecked = [p.name for p in COMMANDS[name].params
                 if isinstance(p.type, click.types.FloatParamType) and not isinstance(p.type, FiniteFloat)]
    assert unchecked == [], f"{name}: float options without the finite check: {unchecked} (of {floats})"


def test_finite_values_still_accepted():
    assert FiniteFloat(0.0, 1.0).convert("0.25", None, None) == 0.25
    with pytest.raises(click.BadParameter, match="finite"):
        FiniteFloat(0.0, 1.0).convert("nan", None, None)
