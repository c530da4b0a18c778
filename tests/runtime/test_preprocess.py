"""The preprocessing contract: equalize_batch is cv2.equalizeHist bit for bit; shapes, dtypes and the 16-bit rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxr.runtime.preprocess import (
    PreprocessConfig,
    equalize,
    equalize_batch,
    preprocess_batch,
    preprocess_image,
    resize,
    to_uint8,
)


def _random_images(kind: str, rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    if kind == "uniform":
        return rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    if kind == "constant":
        return np.stack([np.full((h, w), rng.integers(0, 256), np.uint8) for _ in range(n)])
    if kind == "two_level":
        out = []
        for _ in range(n):
            a, b = rng.choice(256, 2, replace=False)
            out.append(np.where(rng.random((h, w)) < rng.uniform(0.01, 0.99), a, b).astype(np.uint8))
        return np.stack(out)
    if kind == "full_range":
        im = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        im[:, 0, 0], im[:, -1, -1] = 0, 255
        return im
    if kind == "narrow_normal":
        return rng.normal(rng.uniform(20, 230), rng.uniform(0.5, 30), (n, h, w)).clip(0, 255).astype(np.uint8)
    if kind == "sparse_levels":  # few occupied levels, big gaps, many ties at rounding boundaries
        levels = rng.choice(256, 5, replace=False)
        return levels[rng.integers(0, 5, (n, h, w))].astype(np.uint8)
    raise AssertionError(kind)


KINDS = ["uniform", "constant", "two_level", "full_range", "narrow_normal", "sparse_levels"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_equalize_batch_is_bit_identical_to_cv2(kind, seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        batch = _random_images(kind, rng, 6, h, w)
        out = equalize_batch(batch)
        assert out.dtype == np.uint8 and out.shape == batch.shape
        for i in range(batch.shape[0]):
            np.testing.assert_array_equal(out[i], cv2.equalizeHist(batch[i]))


@pytest.mark.parametrize("size", [224, 512])
def test_equalize_batch_on_large_images(size):
    rng = np.random.default_rng(size)
    batch = rng.normal(120, 40, (3, size, size)).clip(0, 255).astype(np.uint8)
    out = equalize_batch(batch)
    for i in range(3):
        np.testing.assert_array_equal(out[i], cv2.equalizeHist(batch[i]))
    np.testing.assert_array_equal(equalize(batch[1]), cv2.equalizeHist(batch[1]))


def test_equalize_batch_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        equalize_batch(np.zeros((2, 4, 4), np.uint16))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        equalize_batch(np.zeros((4, 4), np.uint8))
    assert equalize_batch(np.zeros((0, 4, 4), np.uint8)).shape == (0, 4, 4)


def test_to_uint8_minmax_rule_for_16_bit():
    im = np.array([[1000, 2000], [3000, 1000]], np.uint16)
    np.testing.assert_array_equal(to_uint8(im), np.array([[0, 128], [255, 0]], np.uint8))
    assert to_uint8(np.full((3, 3), 7, np.uint16)).max() == 0
    u8 = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert to_uint8(u8) is u8
    with pytest.raises(ValueError, match="uint8 or uint16"):
        to_uint8(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("shape,expected_interp", [((1024, 800), cv2.INTER_AREA), ((100, 120), cv2.INTER_LINEAR)])
def test_resize_squashes_with_area_when_shrinking(shape, expected_interp):
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, shape, dtype=np.uint8)
    out = resize(im, PreprocessConfig(size=224))
    assert out.shape == (224, 224)
    np.testing.assert_array_equal(out, cv2.resize(im, (224, 224), interpolation=expected_interp))


def test_preprocess_batch_shape_and_equivalence_to_single_images():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (300, 260), dtype=np.uint8),
              rng.integers(0, 65536, (500, 500), dtype=np.uint16),
              rng.integers(0, 256, (64, 64), dtype=np.uint8)]
    cfg = PreprocessConfig(size=96)
    batch = preprocess_batch(images, cfg)
    assert batch.shape == (3, 1, 96, 96) and batch.dtype == np.uint8
    for i, im in enumerate(images):
        np.testing.assert_array_equal(batch[i, 0], preprocess_image(im, cfg))
    resized = np.stack([resize(to_uint8(im), cfg) for im in images])
    np.testing.assert_array_equal(batch[:, 0], equalize_batch(resized))
    assert preprocess_batch([], cfg).shape == (0, 1, 96, 96)


def test_equalize_none_skips_equalization():
    im = np.tile(np.arange(0, 100, dtype=np.uint8), (100, 1))
    out = preprocess_image(im, PreprocessConfig(size=100, equalize="none"))
    np.testing.assert_array_equal(out, im)


@pytest.mark.parametrize("field,value", [("size", 8), ("resize", "crop"), ("equalize", "clahe"),
                                         ("shrink_interpolation", "lanczos9"), ("bit_depth_rule", "shift")])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        PreprocessConfig(**{field: value})


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = PreprocessConfig(size=128, equalize="none")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "clahe": True})
