"""Source-balanced sampling: each source is drawn equally often per epoch, whatever its size.

Per epoch, len(dataset) indices are drawn with replacement, each source given the same total weight; the draw is a
pure function of (seed, epoch), so resumed runs and every DDP rank see the same order (each rank takes every
world_size-th index, as DistributedSampler does).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class SourceBalancedSampler(Sampler[int]):
    def __init__(self, sources: Sequence[str], seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.sources = list(sources)
        counts = Counter(self.sources)
        weights = np.array([1.0 / counts[s] for s in self.sources], np.float64)
        self.p = weights / weights.sum()
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _total(self) -> int:
        """Draws per epoch: the dataset's size rounded up so every rank gets as many (DDP steps must agree)."""
        return -(-len(self.sources) // self.num_replicas) * self.num_replicas

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        return rng.choice(len(self.sources), size=self._total(), replace=True, p=self.p)

    def __iter__(self) -> Iterator[int]:
        return iter(self._draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self._total() // self.num_replicas
