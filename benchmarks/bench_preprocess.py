"""Equalization: the vectorized `equalize_batch` against a per-image cv2.equalizeHist loop, 32 images at 224
and 1024."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxr.runtime.preprocess import equalize_batch

N = 32


def _cv2_loop(batch: np.ndarray) -> np.ndarray:
    return np.stack([cv2.equalizeHist(im) for im in batch])


@pytest.mark.parametrize("size", [224, 1024])
@pytest.mark.parametrize("method", ["equalize_batch", "cv2_loop"])
def test_equalize(benchmark, annotate, chest_1024, size, method):
    image, source = chest_1024
    base = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    batch = np.stack([np.roll(base, i, axis=0) for i in range(N)])
    fn = equalize_batch if method == "equalize_batch" else _cv2_loop
    benchmark.group = f"equalize-{size}"
    annotate(threads=cv2.getNumThreads(), images=N, size=size, method=method, image_source=source)
    out = benchmark.pedantic(fn, args=(batch,), rounds=20 if size == 224 else 5, warmup_rounds=1)
    assert np.array_equal(out, _cv2_loop(batch))  # the two forms agree bit for bit
