"""Balanced sampling: sources drawn equally often (--balance-sources) and/or, inside each source, positives and
negatives drawn equally often (--balance-labels).

Balancing the labels inside each source removes what a source's make-up says about the label: with wingspan's films
71% enlarged hearts and JSRT's 28%, a network can score "looks like wingspan" instead of the heart, a shortcut that
does not carry to another hospital. Drawn so, every source shows half positives.

Per epoch, len(dataset) indices are drawn with replacement from those weights; the draw is a pure function of
(seed, epoch), so resumed runs and every DDP rank see the same order (each rank takes every world_size-th index, as
DistributedSampler does).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def balanced_weights(sources: Sequence[str], labels: Sequence[int] | None = None,
                     by_source: bool = True) -> np.ndarray:
    """Each image's probability of being drawn. by_source: every source the same total (else its share of the
    images); labels: inside a source, each class present the same share of the source's total (a source with one
    class keeps it all)."""
    sources = list(sources)
    n = len(sources)
    per_source = Counter(sources)
    total = {s: (1.0 / len(per_source) if by_source else c / n) for s, c in per_source.items()}
    if labels is None:
        w = [total[s] / per_source[s] for s in sources]
    else:
        labels = [int(y) for y in labels]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} sources")
        cell = Counter(zip(sources, labels))
        classes = {s: len({y for (t, y) in cell if t == s}) for s in per_source}
        w = [total[s] / classes[s] / cell[(s, y)] for s, y in zip(sources, labels)]
    p = np.asarray(w, np.float64)
    return p / p.sum()


class BalancedSampler(Sampler[int]):
    def __init__(self, sources: Sequence[str], labels: Sequence[int] | None = None, by_source: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.n = len(sources)
        self.p = balanced_weights(sources, labels, by_source)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _total(self) -> int:
        """Draws per epoch: the dataset's size rounded up so every rank gets as many (DDP steps must agree)."""
        return -(-self.n // self.num_replicas) * self.num_replicas

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        return rng.choice(self.n, size=self._total(), replace=True, p=self.p)

    def __iter__(self) -> Iterator[int]:
        return iter(self._draw()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self._total() // self.num_replicas
