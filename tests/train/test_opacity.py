"""--aug-opacity: a fluid-like opacity at a lung's base, drawn inside the lung masks; the masks are not changed."""

import numpy as np
import pytest

pytest.importorskip("albumentations")

S = 96


def chest() -> tuple[np.ndarray, np.ndarray]:
    """Dark lungs (rows 20-79) either side of a bright heart; channels heart, left lung, right lung."""
    image = np.full((S, S), 60, np.uint8)
    masks = np.zeros((3, S, S), np.uint8)
    masks[1, 20:80, 8:38] = 1
    masks[2, 20:80, 58:88] = 1
    masks[0, 50:76, 40:56] = 1
    image[masks[0] > 0] = 200
    return image, masks


def draws(options: dict, image, masks, n: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    from cxr.train.augment import Augmenter

    aug = Augmenter(options, S)
    return [aug(image, masks, np.random.SeedSequence([3, 1, k])) for k in range(n)]


def test_the_base_of_a_lung_turns_towards_the_hearts_brightness_and_nothing_else_moves():
    image, masks = chest()
    seen = {"left": 0, "right": 0, "both": 0}
    for out, m in draws({"aug_opacity": 1.0}, image, masks):
        assert np.array_equal(m, masks) and out.dtype == np.uint8 and out.shape == (S, S)
        change = out.astype(int) - image.astype(int)
        assert (change[masks[0] > 0] == 0).all()  # the heart already has the target's brightness
        assert (change[:, :2] == 0).all() and (change[:, -2:] == 0).all() and (change[:8] == 0).all()
        assert (change[20:30] == 0).all()  # the lung's top: the level lies at 45-90% of its height (rows 46-73)
        assert (change >= 0).all() and change.max() <= 200 - 60
        left, right = change[74:80, 10:36].mean(), change[74:80, 60:86].mean()
        for name, inside in (("left", left), ("right", right)):
            assert inside == 0 or inside >= 0.3 * 140, (name, inside)  # 40-90% of the way, less the soft level
        seen["both" if left and right else "left" if left else "right"] += 1
    assert all(seen.values()), seen  # one lung or the other or both, drawn at random


def test_a_film_without_lung_masks_is_left_as_it_is_and_a_draw_repeats_with_its_seed():
    image, masks = chest()
    no_lungs = masks.copy()
    no_lungs[1:] = 0
    assert all(np.array_equal(out, image) for out, _ in draws({"aug_opacity": 1.0}, image, no_lungs, 6))
    first = [out for out, _ in draws({"aug_opacity": 1.0}, image, masks, 6)]
    again = [out for out, _ in draws({"aug_opacity": 1.0}, image, masks, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({a.tobytes() for a in first}) > 1
    assert all(np.array_equal(out, image) for out, _ in draws({"aug_opacity": 0.0}, image, masks, 3))


def test_the_opacity_falls_on_films_apart_from_the_other_changes():
    """albumentations' Compose seeds every transform alike; the opacity draws from a seed of its own, so it is not
    tied to sharpening (or any other change of the film) and the other changes keep their draws."""
    image, masks = chest()
    with_it = draws({"aug_opacity": 0.5, "aug_sharpen": 0.5}, image, masks, 200)
    sharpen = draws({"aug_sharpen": 0.5}, image, masks, 200)
    plain = draws({}, image, masks, 1)[0][0]
    seen = {(not np.array_equal(a, b), not np.array_equal(b, plain)) for (a, _), (b, _) in zip(with_it, sharpen)}
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_the_option_is_checked(tmp_path):
    from cxr.train.config import TrainConfig

    labels = tmp_path / "labels.csv"
    labels.write_text("path,cardiomegaly,h,l,r\na.png,1,h.png,l.png,r.png\n")
    masked = dict(dataset="csv", data_root=str(tmp_path), csv_path=str(labels), mask_columns="h,l,r")
    assert TrainConfig(aug_opacity=0.3, **masked).aug_opacity == 0.3
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="aug_opacity.*must be a probability"):
            TrainConfig(aug_opacity=bad, **masked)
    with pytest.raises(ValueError, match=r"aug_opacity.*needs masks \(--mask-columns\).*--seg-head"):
        TrainConfig(aug_opacity=0.3)  # the recipe's source has no mask columns
