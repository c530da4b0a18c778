"""The runtime layer and cxr-score never load torch (imports only point down the layers; cxr[cpu] alone must work).

Each check runs in a fresh interpreter, because this test process may well have imported torch already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME_MODULES = ["cxr.runtime", "cxr.runtime.errors", "cxr.runtime.imaging", "cxr.runtime.preprocess",
                   "cxr.runtime.card", "cxr.runtime.ort", "cxr.runtime.onnx_scan", "cxr.runtime.scoring",
                   "cxr.runtime.results", "cxr.runtime.walk", "cxr.runtime.labels", "cxr.runtime.metrics",
                   "cxr.runtime.bench", "cxr.runtime.anatomy", "cxr.runtime.pathlist", "cxr.runtime.ray_engine",
                   "cxr.cli.engines",
                   "cxr.runtime.overlay", "cxr.runtime.report", "cxr.runtime.report_assets", "cxr.cli.score",
                   "cxr.cli.bench", "cxr.cli.phantom", "cxr.train.phantom", "cxr.train.datasets", "cxr.train.splits"]


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def test_importing_the_runtime_leaves_torch_out():
    code = ("import importlib, json, sys\n"
            f"for name in {RUNTIME_MODULES!r}: importlib.import_module(name)\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'torchvision': 'torchvision' in sys.modules}))")
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"torch": False, "torchvision": False}


def test_cxr_score_help_is_torch_and_onnxruntime_free():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cxr.cli.score", "--help"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0 and "--model" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "click" in imported  # the import log was really read
    assert "torch" not in imported and "onnxruntime" not in imported


def test_console_script_help_runs():
    script = Path(sys.executable).with_name("cxr-score")
    if not script.exists():
        pytest.skip(f"{script} is not installed (cxr not pip-installed into this interpreter)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "FOLDER" in proc.stdout


def test_a_whole_scoring_run_leaves_torch_out(tmp_path):
    pytest.importorskip("onnx")
    from tests.badfiles import write_good_files
    from tests.onnx_fixtures import mean_brightness_model

    model = mean_brightness_model(tmp_path / "m.onnx", size=64)
    folder = tmp_path / "images"
    write_good_files(folder)
    code = ("import sys\n"
            "from cxr.cli.score import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('torch' in sys.modules, code)")
    proc = python(code, str(folder), "--out", str(tmp_path / "r.csv"), "--model", str(model), "--quiet")
    assert proc.stdout.split() == ["False", "0"], proc.stderr
