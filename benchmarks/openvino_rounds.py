"""Rounds taken in turn of ONNX Runtime's CPU provider and the OpenVINO provider (fp32, bf16, int8) on one batch.

Run by the python of the onnxruntime-openvino environment (bench_openvino.py starts it; torch-free), since that
package replaces the onnxruntime module: the CPU-provider rows here are that build's own CPU provider, timed in the
same rounds, so each OpenVINO row has a ratio against CPU fp32 measured side by side.

    python benchmarks/openvino_rounds.py MODEL.onnx --threads 2 --batches 1,8,32 --rounds 10,5,3

Prints one JSON object: engines, per batch and engine the seconds of each call, and the max |prob diff| vs CPU fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.runtime.precision import BF16_FLAGS, Host, int8_path, ort_build  # noqa: E402
from cxr.runtime.scoring import Scorer  # noqa: E402

PAUSE_S = 0.1  # between engines, as benchmarks/conftest.ENGINE_PAUSE_S: spinning threads would slow the next one


def engines(model: Path, threads: int, host: Host, batch: int) -> dict[str, Scorer]:
    """CPU fp32/int8 and OpenVINO fp32/bf16/int8, as far as the host and the files allow, as cxr-score
    --batch-size `batch` builds them (the OpenVINO sessions compiled for that batch); and bf16 on a dynamic batch,
    as before that, to show what the fixed shape gives."""
    out = {"cpu-fp32": Scorer(model, device="cpu", threads=threads)}
    int8 = int8_path(model)
    if int8.is_file():
        out["cpu-int8"] = Scorer(int8, device="cpu", threads=threads)
    out["openvino-fp32"] = Scorer(model, device="openvino", threads=threads, batch_size=batch)
    if host.present(BF16_FLAGS):
        out["openvino-bf16"] = Scorer(model, device="openvino", threads=threads, precision="bf16", batch_size=batch)
        out["openvino-bf16-dynamic"] = Scorer(model, device="openvino", threads=threads, precision="bf16")
    if int8.is_file():
        out["openvino-int8"] = Scorer(int8, device="openvino", threads=threads, batch_size=batch)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--rounds", default="10,5,3")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rounds = [int(r) for r in args.rounds.split(",")]
    host = Host.detect()
    result = {"engines": {}, "onnxruntime": ort_build(), "cpu_flags": host.present(), "threads": args.threads,
              "seconds": {}, "max_abs_prob_diff_vs_cpu_fp32": {}}
    for batch, n in zip(batches, rounds):
        scorers = engines(args.model, args.threads, host, batch)
        size = scorers["cpu-fp32"].input_size
        result["engines"].update({k: {"providers": s.providers, "file": s.model_path.name, "precision": s.precision,
                                      "compiled_for_batch": s.static_batch is not None} for k, s in scorers.items()})
        x = np.random.default_rng(batch).integers(0, 256, (batch, 1, size, size), dtype=np.uint8)
        ref = scorers["cpu-fp32"].predict(x)[1]
        times: dict[str, list[float]] = {k: [] for k in scorers}
        for name, scorer in scorers.items():  # warm-up, and the parity figure on this batch
            prob = scorer.predict(x)[1]
            diff = float(np.max(np.abs(prob - ref)))
            result["max_abs_prob_diff_vs_cpu_fp32"][name] = max(diff, result["max_abs_prob_diff_vs_cpu_fp32"].get(
                name, 0.0))
        for _ in range(n):
            for name, scorer in scorers.items():
                time.sleep(PAUSE_S)
                start = time.perf_counter()
                scorer.predict(x)
                times[name].append(time.perf_counter() - start)
        result["seconds"][str(batch)] = times
        del scorers
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
