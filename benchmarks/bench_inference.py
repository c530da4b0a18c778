"""DenseNet-121 at 224: ONNX Runtime CPU (fp32 and int8) against PyTorch eager on the same weights, batch 1, 8, 32.

Same intra-op threads for both engines (conftest.THREADS). Timed per call; per-image latency = median / batch.

Each engine has its own benchmark. The ratios in BENCHMARKS.md come from `test_engines_in_turn`: one round is
PyTorch, ONNX Runtime int8 and ONNX Runtime fp32 on the same batch, one after the other with a 0.1 s pause between
engines (conftest.settle), so a burst of load from the other tenants of a shared machine slows all three alike; the
ratio is the median over rounds of each round's own ratio. (Two runs of separate benchmarks on this machine gave
ORT/PyTorch 3.18x and 1.63x.)
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import settle

BATCHES = [1, 8, 32]
ROUNDS = {1: 10, 8: 5, 32: 3}  # about 2 s of model time per engine and batch size on 2 cores


def _batch(n: int, size: int = 224) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime(benchmark, annotate, scorers, densenet, precision, batch):
    scorer = scorers[precision]
    x = _batch(batch)
    benchmark.group = f"inference-b{batch}"
    annotate(providers=scorer.providers, images=batch, batch=batch, engine="onnxruntime", precision=precision,
             model_bytes=densenet[precision].stat().st_size,
             export_variants=densenet["variants"] if precision == "int8" else None)
    logit, prob = benchmark.pedantic(scorer.predict, args=(x,), rounds=ROUNDS[batch], warmup_rounds=1)
    assert prob.shape == (batch,)


@pytest.mark.parametrize("batch", BATCHES)
def test_pytorch_eager(benchmark, annotate, torch_model, batch):
    import torch

    x = torch.from_numpy(_batch(batch))

    def run():
        with torch.inference_mode():
            return torch_model(x)

    benchmark.group = f"inference-b{batch}"
    annotate(providers="torch-cpu", threads=torch.get_num_threads(), images=batch, batch=batch, engine="pytorch",
             precision="fp32", torch_version=str(torch.__version__))
    out = benchmark.pedantic(run, rounds=ROUNDS[batch], warmup_rounds=1)
    assert tuple(out.shape) == (batch,)


@pytest.mark.parametrize("batch", BATCHES)
def test_engines_in_turn(benchmark, annotate, scorers, torch_model, batch):
    """Timed: ONNX Runtime fp32. Before each of its rounds, the untimed setup times PyTorch and int8 on the same batch;
    every call's seconds are kept in extra_info (index 0 of each list belongs to the warm-up round)."""
    import torch

    x = _batch(batch)
    xt = torch.from_numpy(x)
    rounds: dict[str, list[float]] = {"pytorch_s": [], "int8_s": [], "fp32_s": []}

    def timed(key, fn):
        start = time.perf_counter()
        out = fn()
        rounds[key].append(time.perf_counter() - start)
        return out

    def torch_run():
        with torch.inference_mode():
            return torch_model(xt)

    def others():  # a pause before each engine: the previous one's spinning threads would slow it (conftest)
        settle()
        timed("pytorch_s", torch_run)
        settle()
        timed("int8_s", lambda: scorers["int8"].predict(x))
        settle()

    benchmark.group = f"in-turn-b{batch}"
    _, prob = benchmark.pedantic(lambda: timed("fp32_s", lambda: scorers["fp32"].predict(x)), setup=others,
                                 rounds=ROUNDS[batch], warmup_rounds=1)
    annotate(providers=scorers["fp32"].providers, images=batch, batch=batch, engine="onnxruntime", precision="fp32",
             mode="engines_in_turn", torch_threads=torch.get_num_threads(),
             paired_rounds={k: v[1:] for k, v in rounds.items()})
    assert prob.shape == (batch,) and all(len(v) == ROUNDS[batch] + 1 for v in rounds.values())
