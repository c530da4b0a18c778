"""scripts/bench.py's OpenVINO section: per-image medians and per-round ratios from known seconds, and the reason
the rows are missing when the onnxruntime-openvino environment was absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script_ov", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(extra: dict) -> dict:
    return {"benchmarks": [{"name": "test_openvino_in_turn", "group": "openvino", "extra_info": extra,
                            "stats": {"median": 1.0, "iqr": 0.0, "stddev": 0.0, "rounds": 1, "mean": 1.0}}]}


def test_rows_ratios_and_flags(bench):
    seconds = {"1": {"cpu-fp32": [0.040, 0.080, 0.060], "openvino-bf16": [0.020, 0.020, 0.040]},
               "8": {"cpu-fp32": [0.8, 0.8, 0.8], "openvino-bf16": [0.2, 0.4, 0.4]}}
    lines = bench.openvino_section(_data({
        "engines": {"cpu-fp32": {}, "openvino-bf16": {}}, "seconds": seconds, "threads": 2,
        "cpu_flags": ["avx512f", "amx_bf16"], "onnxruntime": {"distribution": "onnxruntime-openvino",
                                                              "version": "1.24.1"},
        "max_abs_prob_diff_vs_cpu_fp32": {"cpu-fp32": 0.0, "openvino-bf16": 0.002}}))
    text = "\n".join(lines)
    assert "CPU flags: avx512f amx_bf16; onnxruntime-openvino 1.24.1" in text
    bf16 = next(line for line in lines if line.startswith("| ORT OpenVINO EP bf16"))
    # ms/img: median 20 ms at b1, 400 ms / 8 = 50 ms at b8; ratios: per-round medians of (2, 4, 1.5) and (4, 2, 2)
    assert bf16 == "| ORT OpenVINO EP bf16 (hint bf16) | 20.00 | 50.00 | 2.00x | 2.00x | 2.0e-03 |"
    assert "| ORT OpenVINO EP int8 (same int8 file) | not run | not run | not run | not run | n/a |" in text


def test_skipped_rows_say_why(bench):
    lines = bench.openvino_section(_data({"skipped": "no onnxruntime-openvino environment at /x/python"}))
    assert "Skipped: no onnxruntime-openvino environment at /x/python." in lines
    assert "## OpenVINO execution provider (issue 16)" in bench.render(
        {"benchmarks": _data({"skipped": "why"})["benchmarks"], "datetime": "2026"})
