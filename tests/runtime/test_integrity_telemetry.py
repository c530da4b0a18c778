"""Onnxruntime telemetry is off for every session cxr creates.

onnxruntime 1.32 writes a device id and an event queue under ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ on its
first session unless ORT_DISABLE_TELEMETRY=1 was set before it was imported (disable_telemetry_events() alone does
not stop it: checked when this test was written).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")

from cxr.runtime.ort import TELEMETRY_ENV  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_a_scoring_session_leaves_no_telemetry_files(tmp_path, tiny_model):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (TELEMETRY_ENV, "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    code = ("import os, sys, numpy as np\n"
            "from cxr.runtime.scoring import Scorer\n"
            "s = Scorer(sys.argv[1], device='cpu')\n"
            "s(np.zeros((1, 1, 64, 64), np.uint8))\n"
            f"print(os.environ.get({TELEMETRY_ENV!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert not [p for p in left if "onnxruntime" in p or "Microsoft" in p], left


def test_every_session_calls_disable_telemetry_events(tiny_model, monkeypatch):
    import onnxruntime

    from cxr.runtime.scoring import Scorer

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1), raising=False)
    Scorer(tiny_model, device="cpu")
    assert calls and os.environ[TELEMETRY_ENV] == "1"


def _imports_onnxruntime(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "onnxruntime" for a in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "onnxruntime"


@pytest.mark.parametrize("path", sorted((REPO / "cxr").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_onnxruntime_is_only_imported_after_import_ort(path):
    """Every import of onnxruntime in cxr goes through cxr.runtime.ort.import_ort (or follows a call to it)."""
    if path.name == "ort.py" and path.parent.name == "runtime":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module))]:
        called = False
        for stmt in sorted((n for n in ast.walk(func) if hasattr(n, "lineno")), key=lambda n: n.lineno):
            if isinstance(stmt, ast.Call) and getattr(stmt.func, "id", None) == "import_ort":
                called = True
            if _imports_onnxruntime(stmt):
                assert called, f"{path}:{stmt.lineno} imports onnxruntime without cxr.runtime.ort.import_ort()"
