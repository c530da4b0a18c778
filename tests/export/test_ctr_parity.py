"""cxr-export's CTR check between ONNX Runtime and PyTorch: with a masks output, exact against the masks (the same
masks give the same ratio; where a pixel flipped, each ratio is its own masks'), so one flipped pixel on narrow lungs
(a large, honest change of the ratio) passes and a ratio that no mask explains fails; without masks, 0.02."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.export.validate import ExportError, _extra_within, extra_parity
from cxr.runtime.anatomy import ctr_reference


def chest(lung_half_width: int) -> np.ndarray:
    """[3, 40, 60] masks: a heart 20 px wide, two lungs side by side spanning 2 x lung_half_width columns."""
    m = np.zeros((3, 40, 60), np.uint8)
    m[0, 20:30, 20:40] = 1
    m[1, 5:35, 30 - lung_half_width:30] = 1
    m[2, 5:35, 30:30 + lung_half_width] = 1
    return m


def outputs(masks: list[np.ndarray], ctr: list[float]) -> dict[str, np.ndarray]:
    return {"masks": np.stack(masks), "ctr": np.asarray(ctr, np.float32)}


def check(ort, ref):
    return _extra_within(extra_parity(ort, ref), "model.onnx")


def test_one_flipped_pixel_on_narrow_lungs_is_explained_by_the_masks():
    wide, narrow = chest(25), chest(5)  # ratios 0.4 and 2.0
    flipped = narrow.copy()
    flipped[2, 10, 35] = 1  # one more lung column on one row: the thorax 11 px instead of 10
    a, b = ctr_reference(flipped), ctr_reference(narrow)
    assert abs(a - b) > 0.15  # far beyond any fixed tolerance a wide chest would need
    figures = check(outputs([wide, flipped], [ctr_reference(wide), a]),
                    outputs([wide, narrow], [ctr_reference(wide), b]))
    assert (figures["ctr_images_masks_differ"], figures["ctr_not_its_masks_ratio"]) == (1, 0)
    assert figures["ctr_max_rel_diff_same_masks"] == 0.0 and figures["ctr_max_abs_diff"] == pytest.approx(abs(a - b))


def test_a_ratio_that_is_not_its_masks_ratio_fails():
    narrow = chest(5)
    flipped = narrow.copy()
    flipped[2, 10, 35] = 1
    with pytest.raises(ExportError, match="on 1 image.* a CTR is not the ratio of its own masks"):
        check(outputs([flipped], [ctr_reference(flipped) + 0.01]), outputs([narrow], [ctr_reference(narrow)]))


@pytest.mark.parametrize("ort_ctr, message", [(0.41, "ctr_max_rel_diff_same_masks 0.01"),
                                              (float("nan"), "disagree on which images have a measurable CTR")])
def test_the_same_masks_must_give_the_same_ratio(ort_ctr, message):
    wide = chest(25)
    assert ctr_reference(wide) == pytest.approx(0.4)
    with pytest.raises(ExportError, match=message):
        check(outputs([wide], [ort_ctr]), outputs([wide], [0.4]))


def test_a_flipped_pixel_that_empties_a_structure_gives_nan_as_its_ratio():
    lone = np.zeros((3, 40, 60), np.uint8)
    lone[0, 20, 20] = 1  # a one-pixel heart
    lone[1:, 5:35, 5:55] = 1
    gone = lone.copy()
    gone[0, 20, 20] = 0
    figures = check(outputs([gone], [float("nan")]), outputs([lone], [ctr_reference(lone)]))
    assert figures["ctr_not_its_masks_ratio"] == 0 and figures["ctr_nan_agree"] is False


def test_without_masks_the_ratio_is_held_to_two_hundredths():
    check({"ctr": np.float32([0.40])}, {"ctr": np.float32([0.415])})
    with pytest.raises(ExportError, match="ctr_max_abs_diff 0.03 is more than 0.02"):
        check({"ctr": np.float32([0.40])}, {"ctr": np.float32([0.43])})


def test_either_side_must_give_its_own_masks_ratio():
    narrow = chest(5)
    flipped = narrow.copy()
    flipped[2, 10, 35] = 1
    with pytest.raises(ExportError, match="a CTR is not the ratio of its own masks"):  # PyTorch's side wrong
        check(outputs([flipped], [ctr_reference(flipped)]), outputs([narrow], [ctr_reference(narrow) - 0.01]))


def test_on_a_plausible_chest_a_flip_may_move_the_ratio_by_two_hundredths_at_most():
    wide = chest(25)  # heart 20 of 50 px
    wider_heart = wide.copy()
    wider_heart[0, 25, 40:42] = 1  # two pixels: the heart 22 px wide, explained by the masks
    a, b = ctr_reference(wider_heart), ctr_reference(wide)
    assert a - b == pytest.approx(0.04)
    with pytest.raises(ExportError, match="ctr_max_abs_diff_plausible 0.04 is more than 0.02"):
        check(outputs([wider_heart], [a]), outputs([wide], [b]))
    one = wide.copy()
    one[0, 25, 40] = 1  # one pixel: 0.02, within
    assert check(outputs([one], [ctr_reference(one)]), outputs([wide], [b]))["ctr_max_abs_diff_plausible"] == \
        pytest.approx(0.02)


def test_masks_half_gone_on_one_film_fail_however_many_films_were_checked():
    films = [chest(25) for _ in range(32)]
    broken = [m.copy() for m in films]
    broken[7][0, 20:30, 20:30] = 0  # half the heart gone in one runtime: 100 of 7,200 pixels, 1.4% of that film
    ort = outputs(broken, [ctr_reference(m) for m in broken])
    ref = outputs(films, [ctr_reference(m) for m in films])
    figures = extra_parity(ort, ref)
    assert figures["masks_disagreement"] < 1e-3  # diluted over 32 films: the overall share alone would pass
    with pytest.raises(ExportError, match="masks_max_film_disagreement 0.0139 is more than 0.01"):
        _extra_within(figures, "model.onnx")


def test_the_overall_mask_disagreement_is_bounded_too():
    films = [chest(25) for _ in range(2)]
    noisy = [m.copy() for m in films]
    for m in noisy:
        m[0, 0, :36] = 1  # 36 of 7,200 pixels on each film: 0.5%, under the per-film bound
    with pytest.raises(ExportError, match="masks_disagreement 0.005 is more than 0.001"):
        check(outputs(noisy, [ctr_reference(m) for m in noisy]), outputs(films, [ctr_reference(m) for m in films]))


def test_an_ensemble_that_cannot_decide_gives_no_ratio_whatever_its_masks():
    """cxr-ensemble's graph sets ctr to NaN where no member could decide (logit NaN), though the averaged masks may
    measure: that is its ratio, on either side; a model whose decision stands must give its masks' ratio."""
    narrow = chest(5)
    flipped = narrow.copy()
    flipped[2, 10, 35] = 1
    nan = float("nan")
    ort, ref = outputs([flipped], [nan]), outputs([narrow], [nan])
    ort["logit"], ref["logit"] = np.float32([nan]), np.float32([nan])
    assert check(ort, ref)["ctr_not_its_masks_ratio"] == 0
    ort["logit"], ref["logit"] = np.float32([0.3]), np.float32([0.3])
    with pytest.raises(ExportError, match="on 1 image.* a CTR is not the ratio of its own masks"):
        check(ort, ref)
