"""Training throughput of DenseNet-121 at 224 on this machine: one optimizer step (forward, BCE, backward, Adam).

Batch 8 of uint8 [8, 1, 224, 224], the recipe's optimizer (Adam, coupled L2) and dropout, torch intra-op threads set
to conftest.THREADS. Reports images/s in extra_info (batch / median step time). The data loading is left out: with
the in-memory cache it is a rotation of a 224 x 224 uint8 image per sample (tens of microseconds).
Run through scripts/bench.py (`-o python_files=bench_*.py`); not collected by `make test`.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import THREADS

BATCH = 8
SIZE = 224
ROUNDS = 3  # about 3 x 2.5 s per step on 2 cores (0.32 s per image at 224 px measured here)


@pytest.mark.parametrize("batch", [BATCH])
def test_train_step_densenet121(benchmark, annotate, batch):
    import torch

    from cxr.train.model import build_model

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_model("densenet121", dropout=0.2, init="random").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-2)
    criterion = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 1, SIZE, SIZE), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 2, batch).astype(np.float32))

    def step() -> float:
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    benchmark.group = "train-step"
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    median = benchmark.stats.stats.median
    annotate(providers="torch-cpu", threads=torch.get_num_threads(), images=batch, batch=batch, size=SIZE,
             engine="pytorch", arch="densenet121", images_per_s=batch / median, s_per_image=median / batch,
             torch_version=str(torch.__version__))
    assert np.isfinite(loss)
