"""The demo pipeline at a tiny scale, through the same script and commands as `make demo`, so the demo cannot rot.

Mechanics only: the small DenseNet ("densenet_tiny"), 64 px, one epoch, so the AUROC floor is switched off here;
the full demo (DenseNet-121, AUROC >= 0.90) stays out of `make test`.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--n-train", "100", "--n-holdout", "40", "--size", "64", "--epochs", "1", "--arch", "densenet_tiny",
        "--bootstrap-n", "50", "--min-auroc", "0"]


def _demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out), *ARGS],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_outputs(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ("run/best.pt", "run/last.pt", "run/history.csv", "run/metrics.json", "run/splits.csv",
                 "model.onnx", "model.validation.json", "results.csv", "results.manifest.json"):
        assert (out / name).is_file(), name
    assert "Settings scaled for a 2-core CPU" in first.stdout and "--init random" in first.stdout
    assert "AUROC" in first.stdout and "95% bootstrap CI" in first.stdout and "mean_model_ms_per_image" in first.stdout

    manifest = json.loads((out / "results.manifest.json").read_text())
    assert manifest["counts"] == {**manifest["counts"], "files": 40, "ok": 40, "error": 0}
    assert manifest["card"]["export"]["opset"] == 17
    metrics = manifest["labels"]["metrics"]
    assert metrics["n"] == 40 and 0.0 <= metrics["auroc"] <= 1.0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
    ratio = manifest["labels"]["ctr_agreement"]  # cxr-score --ctr-column ctr: the phantoms' true ratio
    assert ratio["column"] == "ctr" and ratio["manual_ratios"] == 40
    assert ratio["n"] + ratio["not_measured"] == 40 == ratio["n"] + sum(r["ctr"] == "" for r in rows)

    results_before = (out / "results.csv").read_bytes()
    model_mtime = (out / "model.onnx").stat().st_mtime_ns
    second = _demo(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "already holds a finished run: reusing it" in second.stdout
    assert "model.onnx is newer than" in second.stdout
    assert "cxr-train --data" not in second.stdout and "cxr-export " not in second.stdout
    assert (out / "model.onnx").stat().st_mtime_ns == model_mtime
    assert (out / "results.csv").read_bytes() == results_before  # seeded: the same numbers
