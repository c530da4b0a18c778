"""DenseNet-121 at 224 on the OpenVINO execution provider (fp32, bf16, int8) in turn with ONNX Runtime's CPU provider,
batch 1, 8, 32 (issue 16).

onnxruntime-openvino replaces the onnxruntime module, so the rounds run in its own environment (CXR_OV_PYTHON;
`make bench` creates .venv-ov): openvino_rounds.py times CPU fp32, CPU int8 and OpenVINO fp32/bf16/int8 on the same
batch, one after the other with a 0.1 s pause, and this benchmark keeps every call's seconds in extra_info (the one
timed "round" is that whole subprocess). Where the environment is absent the benchmark records why
(extra_info["skipped"]), so BENCHMARKS.md says so instead of silently lacking the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, THREADS

BATCHES = "1,8,32"
ROUNDS = "10,5,3"
PROBE = "import onnxruntime; print('OpenVINOExecutionProvider' in onnxruntime.get_available_providers())"


def ov_python() -> tuple[Path | None, str]:
    """(the onnxruntime-openvino environment's python, '') or (None, why it cannot be used)."""
    path = Path(os.environ.get("CXR_OV_PYTHON") or REPO / ".venv-ov" / "bin" / "python")
    if not path.is_file():
        return None, (f"no onnxruntime-openvino environment at {path} (make bench creates .venv-ov; or set "
                      "CXR_OV_PYTHON)")
    probe = subprocess.run([str(path), "-c", PROBE], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        return None, f"{path}: onnxruntime there offers no OpenVINO provider ({(probe.stderr or '').strip()[-200:]})"
    return path, ""


def test_openvino_in_turn(benchmark, annotate, densenet):
    python, why = ov_python()
    benchmark.group = "openvino"
    if python is None:
        annotate(skipped=why)
        benchmark.pedantic(lambda: None, rounds=1)
        return
    out: dict = {}

    def run():
        done = subprocess.run([str(python), str(REPO / "benchmarks" / "openvino_rounds.py"), str(densenet["fp32"]),
                               "--threads", str(THREADS), "--batches", BATCHES, "--rounds", ROUNDS],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise RuntimeError(f"openvino_rounds.py exited {done.returncode}: {done.stderr.strip()[-500:]}")
        out.update(json.loads(done.stdout))

    benchmark.pedantic(run, rounds=1)
    annotate(providers=sorted({p for e in out["engines"].values() for p in e["providers"]}), mode="openvino_in_turn",
             ov_python=str(python), **out)
    assert {"cpu-fp32", "openvino-fp32"} <= set(out["engines"])
