"""--aug-draws: 'joint' keeps the draws every run so far was made with (the image-only changes fall on the same
films); 'independent' draws each change apart, with the probability its option names."""

import numpy as np
import pytest

pytest.importorskip("albumentations")

RECIPE = {"aug_scale": 0.1, "aug_stretch": 0.15, "aug_translate": 0.06, "aug_brightness": 0.1, "aug_contrast": 0.1,
          "aug_gamma": 0.2, "aug_blur": 0.2, "aug_noise": 0.02, "aug_jpeg": 50, "aug_sharpen": 0.5, "aug_clahe": 0.5,
          "rotation_degrees": 5}


def applied(options: dict, n: int = 300) -> list[frozenset]:
    """Which transforms acted on each of n films (by class name)."""
    from cxr.train.augment import Augmenter

    aug = Augmenter(options, 64)
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    masks = np.zeros((3, 64, 64), np.uint8)
    out = []
    for k in range(n):
        aug(image, masks, np.random.SeedSequence([0, 0, k]))
        out.append(frozenset(type(t).__name__ for t in aug.transform.transforms if t.params))
    return out


def test_joint_draws_put_every_image_only_change_on_the_same_films():
    films = applied(RECIPE)
    pairs = {("UnsharpMask" in f, "CLAHE" in f, "GaussNoise" in f, "ImageCompression" in f) for f in films}
    assert pairs == {(True,) * 4, (False,) * 4}
    assert all("GaussianBlur" not in f or "UnsharpMask" in f for f in films)


def test_independent_draws_each_change_apart_at_its_own_rate():
    films = applied({**RECIPE, "aug_draws": "independent"})
    assert len(set(films)) > 20  # many combinations, not two
    together = sum(("UnsharpMask" in f) and ("CLAHE" in f) for f in films) / len(films)
    assert together == pytest.approx(0.25, abs=0.08)  # 0.5 x 0.5, not 0.5
    for name, p in (("UnsharpMask", 0.5), ("CLAHE", 0.5), ("GaussianBlur", 0.2), ("ImageCompression", 0.5)):
        assert sum(name in f for f in films) / len(films) == pytest.approx(p, abs=0.08), name
    assert all("Affine" in f for f in films)


def test_joint_is_the_default_and_the_option_is_checked():
    from cxr.train.augment import Augmenter
    from cxr.train.config import TrainConfig

    assert TrainConfig().aug_draws == "joint"
    with pytest.raises(ValueError, match="aug_draws"):
        TrainConfig(aug_draws="apart")
    image = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    masks = np.zeros((3, 64, 64), np.uint8)
    a, b = Augmenter(RECIPE, 64), Augmenter({**RECIPE, "aug_draws": "joint"}, 64)
    for k in range(5):
        assert np.array_equal(a(image, masks, np.random.SeedSequence([2, 0, k]))[0],
                              b(image, masks, np.random.SeedSequence([2, 0, k]))[0])
