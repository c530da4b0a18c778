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


def _data(ort_b1: float, torch_b1: float, e2e: float, model_only: float, rss: float, mem_files: int = 10_000,
          trained_change: float | None = -0.002) -> dict:
    benches = [_bench("ort_fp32_1", "inference-b1", ort_b1, engine="onnxruntime", precision="fp32", batch=1, images=1,
                      providers=["CPUExecutionProvider"], model_bytes=28_000_000),
               _bench("ort_int8_1", "inference-b1", ort_b1 / 2, engine="onnxruntime", precision="int8", batch=1,
                      images=1, providers=["CPUExecutionProvider"], model_bytes=7_000_000),
               _bench("torch_1", "inference-b1", torch_b1, engine="pytorch", precision="fp32", batch=1, images=1),
               # model-only rounds taken in turn with the timed score_folder rounds; their median is model_only
               _bench("e2e", "end-to-end", e2e, mode="score_folder", images=64,
                      model_only_round_s=[model_only * 3, model_only, model_only * 0.5]),
               _bench("mem", "memory", 600.0, model="densenet121-fp32", files=mem_files, peak_rss_mb=rss,
                      images=mem_files, pixels="1024x1024 8-bit PNG")]
    if trained_change is not None:
        benches.append(_bench("int8t", "int8-trained", 2.0, engine="onnxruntime", precision="int8", images=300,
                              batch=8, size=128, auroc_fp32=0.9940, auroc_int8=0.9940 + trained_change,
                              auroc_change=trained_change, auroc_change_ci95=[trained_change - 0.003, 0.001],
                              max_abs_prob_diff=0.04, mean_abs_prob_diff=0.004, threshold=0.66,
                              decisions_flipped=1, fp32_round_s=[2.4, 2.5, 2.6],
                              kept_float=["conv0 (stem Conv)"], model_bytes={"fp32": 28, "int8": 7}))
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


@pytest.mark.parametrize("ort_b1, torch_b1, e2e, rss, verdicts", [
    (0.040, 0.080, 1.00, 350.0, {"ORT": "PASS", "end": "PASS", "int8": "PASS", "cxr-score": "PASS"}),
    (0.050, 0.060, 2.00, 520.0, {"ORT": "MISS", "end": "MISS", "int8": "PASS", "cxr-score": "MISS"}),
])
def test_render_targets_and_ratios(bench, tmp_path, ort_b1, torch_b1, e2e, rss, verdicts):
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(_data(ort_b1, torch_b1, e2e, 0.9, rss)))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    text = out.read_text()
    rows = _target_rows(text)
    for key, verdict in verdicts.items():
        assert f"**{verdict}**" in rows[key], rows[key]
    assert f"{torch_b1 / ort_b1:.2f}x" in rows["ORT"]
    assert f"{100 * 0.9 / e2e:.1f}%" in rows["end"]  # median of the paired model-only rounds / score_folder
    assert "AUROC change -0.0020 (95% CI -0.0050 to +0.0010; 0.9940 -> 0.9920)" in rows["int8"]
    assert "300 held-out images; 1.25x on that model at 128 px" in rows["int8"]  # 2.5 s fp32 / 2.0 s int8
    assert f"{rss:.0f} MB peak RSS: DenseNet-121 fp32 at 224 on 10,000 files" in rows["cxr-score"]
    assert "4.00x smaller" in text and "Peak fp32: 160.0 GFLOP/s" in text
    assert "1 of 300 decisions flip" in text and "Kept float: conv0 (stem Conv)" in text
    assert "No CUDA device in this run" in text


@pytest.mark.parametrize("change, verdict", [(-0.014, "MISS"), (-0.004, "PASS")])
def test_trained_int8_auroc_loss_decides_with_speed(bench, tmp_path, change, verdict):
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 350.0, trained_change=change)))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    row = _target_rows(out.read_text())["int8"]
    assert f"AUROC change {change:+.4f}" in row and f"**{verdict}**" in row and "(speed only)" not in row


def test_auroc_loss_is_a_miss_even_without_speed_rows(bench, tmp_path):
    data = _data(0.040, 0.080, 1.00, 0.9, 350.0, trained_change=-0.02)
    data["benchmarks"] = [b for b in data["benchmarks"] if not b["group"].startswith("inference-")]
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(data))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    row = _target_rows(out.read_text())["int8"]
    assert "speed-up n/a" in row and "**MISS**" in row


def test_without_trained_run_int8_is_speed_only(bench, tmp_path):
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 350.0, trained_change=None)))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    row = _target_rows(out.read_text())["int8"]
    assert "AUROC loss not measured" in row and "(speed only)" in row


def test_memory_below_10000_files_is_not_a_verdict(bench, tmp_path):
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 350.0, mem_files=40)))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| cxr-score peak memory"))
    assert "on 40 files" in row and "needs a run on 10,000 files" in row and row.endswith("| not measured |")


def test_demo_run_is_reused_when_finished(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or type("R", (), {"returncode": 0}))
    assert bench.ensure_demo_run(tmp_path) == 0 and len(calls) == 1 and calls[0][-2:] == ["--out", str(tmp_path)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    (tmp_path / "phantom_holdout").mkdir()
    (tmp_path / "phantom_holdout" / "labels.csv").write_text("path,label\n")
    assert bench.ensure_demo_run(tmp_path) == 0 and len(calls) == 1


def test_cuda_rows_name_the_card_and_give_the_ratios(bench, tmp_path):
    data = _data(0.040, 0.080, 1.00, 0.9, 350.0)
    gpu = {"gpu": "NVIDIA H100 80GB HBM3", "batch": 64, "images": 64}
    data["benchmarks"] += [
        _bench("ort32", "cuda-b64", 0.100, engine="onnxruntime", precision="fp32", **gpu),
        _bench("ort16", "cuda-b64", 0.040, engine="onnxruntime", precision="fp16", **gpu),
        _bench("pt32", "cuda-b64", 0.150, engine="pytorch", precision="fp32", **gpu)]
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(data))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    cuda = out.read_text().split("## CUDA", 1)[1]
    assert "Card: NVIDIA H100 80GB HBM3. Batch 64" in cuda
    assert "| ONNX Runtime CUDA EP (I/O binding) | fp16 | 40.00 | 0.00 | 0.625 | 1600 |" in cuda
    assert "ONNX Runtime / PyTorch at fp32: 1.50x" in cuda and "fp16 / fp32 with onnxruntime: 2.50x" in cuda
    assert "at fp16:" not in cuda  # no PyTorch fp16 row, no made-up ratio
    assert "No CUDA device" not in cuda and "No pytorch rows" not in cuda


def test_a_run_keeps_its_json_beside_the_report(bench, tmp_path, monkeypatch):
    raw = tmp_path / "raw.json"

    def fake_run(json_path, extra_args, demo_out):
        json_path.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 350.0)))
        return 0

    monkeypatch.setattr(bench, "run_benchmarks", fake_run)
    out = tmp_path / "BENCHMARKS.md"
    assert bench.main(["--json", str(raw), "--out", str(out), "--no-demo"]) == 0
    kept = tmp_path / "BENCHMARKS.json"
    assert kept.read_text() == raw.read_text()
    assert "[BENCHMARKS.json](BENCHMARKS.json)" in out.read_text()
    kept.unlink()
    assert bench.main(["--render-only", str(raw), "--out", str(out)]) == 0
    assert not kept.exists()  # re-rendering writes only the report


def test_render_only_without_benchmarks_fails(bench, tmp_path):
    src = tmp_path / "empty.json"
    src.write_text(json.dumps({"benchmarks": []}))
    assert bench.main(["--render-only", str(src), "--out", str(tmp_path / "B.md")]) == 1
    assert not (tmp_path / "B.md").exists()


def test_ratios_come_from_rounds_taken_in_turn(bench, tmp_path):
    """A burst of load hits PyTorch, int8 and fp32 of one round alike: the ratio is the median of per-round ratios,
    not of two separate benchmarks' medians (which here say 2.00x)."""
    data = _data(0.040, 0.080, 1.00, 0.9, 350.0)
    data["benchmarks"].append(_bench("turn_1", "in-turn-b1", 2.0, engine="onnxruntime", precision="fp32", batch=1,
                                     images=1, mode="engines_in_turn",
                                     paired_rounds={"fp32_s": [1.0, 2.0, 4.0], "pytorch_s": [3.0, 5.0, 8.0],
                                                    "int8_s": [0.5, 1.0, 2.0]}))
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(data))
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 1 | 2000.00 | 5000.00 | 2.50x | 1000.00 | 2.00x |" in text  # per-round 3, 2.5, 2 and 2, 2, 2
    assert "2.50x (batch 8: n/a" in _target_rows(text)["ORT"] and "**PASS**" in _target_rows(text)["ORT"]
    assert "- Batches 1: rounds taken in turn" in text


def test_re_rendering_keeps_the_many_files_section(bench, tmp_path):
    """benchmarks/many_files.py writes its own section into BENCHMARKS.md; make bench must not wipe it."""
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 350.0)))
    out = tmp_path / "BENCHMARKS.md"
    section = "<!-- many-files:begin -->\n## many files\n| rows | 100,000 |\n<!-- many-files:end -->"
    out.write_text("old report\n\n" + section + "\n")
    assert bench.main(["--render-only", str(raw), "--out", str(out)]) == 0
    text = out.read_text()
    assert "old report" not in text and text.count(section) == 1 and text.endswith(section + "\n")


def test_make_bench_keeps_the_ray_engine_section_of_make_bench_ray(bench, tmp_path):
    src, out = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    src.write_text(json.dumps(_data(0.040, 0.080, 1.00, 0.9, 350.0)))
    section = "<!-- ray-engine:start -->\n## Ray engine\n\n| ray | 1.0x |\n<!-- ray-engine:end -->"
    out.write_text("# Benchmarks\n\nold figures\n\n" + section + "\n")
    assert bench.main(["--render-only", str(src), "--out", str(out)]) == 0
    text = out.read_text()
    assert "old figures" not in text and text.count(section) == 1 and text.endswith(section + "\n")
