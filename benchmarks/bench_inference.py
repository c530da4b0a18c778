"""DenseNet-121 at 224: ONNX Runtime CPU (fp32 and int8) against PyTorch eager on the same weights, batch 1, 8, 32.

Same intra-op threads for both engines (conftest.THREADS). Timed per call; per-image latency = median / batch.
"""

from __future__ import annotations

import numpy as np
import pytest

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
