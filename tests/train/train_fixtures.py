"""Shared pieces for the training tests: a small phantom set and a config for mechanics-only runs.

Mechanics tests use densenet_tiny at 64 px (a DenseNet with the same code path and far fewer FLOPs): they check
the loop's wiring (scheduler, early stopping, checkpoints, resume, DDP), not what a model learns.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxr.train.config import TrainConfig

N_PHANTOM = 60


def make_small_phantom(root: Path, n: int = N_PHANTOM) -> Path:
    from cxr.train.phantom import make_phantom

    make_phantom(root, n, seed=0, size=64)
    return root


def tiny_config(root: Path, **overrides) -> TrainConfig:
    """densenet_tiny at 64 px, random init, no workers: a few seconds per run on 2 busy cores."""
    base = dict(dataset="phantom", data_root=str(root), arch="densenet_tiny", init="random", image_size=64,
                batch_size=8, lr=1e-3, max_epochs=3, num_workers=0, bootstrap_n=50, device="cpu")
    return TrainConfig(**{**base, **overrides})


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
