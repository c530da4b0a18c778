"""scripts/bench.py renders BENCHMARKS.md from a pytest-benchmark JSON: ratios and PASS/MISS from known medians."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
CPU = {"cpu_model": "Test CPU", "cores_logical": 2, "cores_physical": 2, "max_mhz": 2500.0, "clock_source": "test",
       "isa": {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "fma": True}, "threads": 2}


def _bench(name, group, median_s, **extra):
    stats = {"median": median_s, "iqr": 0.0, "stddev": 0.0, "rounds": 3, "mean": median_s}
    return {"name": name, "group": group, "stats": stats, "extra_info": {**CPU, **extra}}


def _data(ort_b1: float, torch_b1: float, e2e: float, model_only: float, rss_10k: float) -> dict:
    benches = [_bench("ort_fp32_1", "inference-b1", ort_b1, engine="onnxruntime", precision="fp32", batch=1, images=1,
                      providers=["CPUExecutionProvider"], model_bytes=28_000_000),
               _bench("ort_int8_1", "inference-b1", ort_b1 / 2, engine="onnxruntime", precision="int8", batch=1,
                      images=1, providers=["CPUExecutionProvider"], model_bytes=7_000_000,
                      export_variants={"int8": {"auroc_change": -0.002}}),
               _bench("torch_1", "inference-b1", torch_b1, engine="pytorch", precision="fp32", batch=1, images=1),
               _bench("e2e", "end-to-end", e2e, mode="score_folder", images=64),
               _bench("model", "end-to-end", model_only, mode="model_only", images=64),
               _bench("m1", "memory", 1.0, model="densenet121-fp32", files=200, peak_rss_mb=300.0, images=200),
               _bench("m2", "memory", 1.0, model="mean-brightness", files=1000, peak_rss_mb=100.0, images=1000),
               _bench("m3", "memory", 1.0, model="mean-brightness", files=10000, peak_rss_mb=rss_10k, images=10000)]
    return {"datetime": "2026-01-01T00:00:00", "machine_info": {"python_version": "3.11"}, "benchmarks": benches}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _target_rows(text: str) -> dict[str, str]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and ("PASS" in line or "MISS" in line)]
    return {row.split("|")[1].strip().split(" ")[0]: row for row in rows}


@pytest.mark.parametrize("ort_b1, torch_b1, e2e, rss_10k, verdicts", [
    (0.040, 0.080, 1.00, 110.0, {"ORT": "PASS", "end": "PASS", "int8": "PASS", "cxr-score": "PASS"}),
    (0.050, 0.060, 2.00, 450.0, {"ORT": "MISS", "end": "MISS", "int8": "PASS", "cxr-score": "MISS"}),
])
def test_render_targets_and_ratios(bench, tmp_path, ort_b1, torch_b1, e2e, rss_10k, verdicts):
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(_data(ort_b1, torch_b1, e2e, 0.9, rss_10k)))
    assert bench.main(["--render-only", str(src), "--out", str(out), "--int8-report", str(tmp_path / "none")]) == 0
    text = out.read_text()
    rows = _target_rows(text)
    for key, verdict in verdicts.items():
        assert f"**{verdict}**" in rows[key], rows[key]
    assert f"{torch_b1 / ort_b1:.2f}x" in rows["ORT"]
    assert f"{100 * 0.9 / e2e:.1f}%" in rows["end"]
    assert "-0.0020" in rows["int8"] and "AUROC loss not measured here" in rows["int8"]
    assert f"estimate for DenseNet on 10,000: {300 + rss_10k - 100:.0f} MB" in rows["cxr-score"]
    assert "4.00x smaller" in text and "Peak fp32: 160.0 GFLOP/s" in text
    assert "No CUDA device on this machine" in text


@pytest.mark.parametrize("change, verdict, written", [(-0.014, "MISS", False), (-0.004, "PASS", True)])
def test_trained_int8_report_fills_the_auroc_loss(bench, tmp_path, change, verdict, written):
    """make demo's export report (a trained model) gives the int8 AUROC change; both speed and AUROC decide."""
    src, out, report = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md", tmp_path / "model.validation.json"
    src.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 110.0)))
    report.write_text(json.dumps({"variants": {"int8": {"auroc_change": change, "auroc_fp32": 0.9961,
                                                        "auroc": 0.9961 + change, "n_labelled": 120,
                                                        "written": written}}}))
    assert bench.main(["--render-only", str(src), "--out", str(out), "--int8-report", str(report)]) == 0
    row = _target_rows(out.read_text())["int8"]
    assert f"AUROC change {change:+.4f}" in row and "120 validation images" in row
    assert ("refused by the export guard" in row) is (not written)
    assert f"**{verdict}**" in row and "(speed only)" not in row


def test_render_only_without_benchmarks_fails(bench, tmp_path):
    src = tmp_path / "empty.json"
    src.write_text(json.dumps({"benchmarks": []}))
    assert bench.main(["--render-only", str(src), "--out", str(tmp_path / "B.md"),
                       "--int8-report", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "B.md").exists()
