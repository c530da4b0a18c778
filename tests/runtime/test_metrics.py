"""numpy metrics against hand-computed values and brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.runtime import metrics


def _auc_brute(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("seed", range(6))
def test_auroc_equals_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    y[:2] = [0, 1]
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes many ties
    assert metrics.roc_auc(y, s) == pytest.approx(_auc_brute(y, s), abs=1e-12)


def test_hand_computed_example():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9])
    assert metrics.roc_auc(y, s) == pytest.approx(7 / 9)
    m = metrics.binary_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 0, 3, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == 1.0
    assert m["ppv"] == 1.0 and m["npv"] == pytest.approx(0.75) and m["f1"] == pytest.approx(0.8)
    assert metrics.youden_threshold(y, s) == pytest.approx(0.8)
    assert metrics.threshold_for_sensitivity(y, s, 1.0) == pytest.approx(0.35)
    # AP: ranks 0.9(+) 0.8(+) 0.4,0.4(-,-) 0.35(+) 0.1(-): precision at each new recall 1, 1, 3/5
    assert metrics.average_precision(y, s) == pytest.approx((1 + 1 + 0.6) / 3)


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.random(300) + 0.5 * y
    lo, hi = metrics.bootstrap_auroc_ci(y, s, n_boot=300, seed=7)
    auc = metrics.roc_auc(y, s)
    assert lo < auc < hi and hi - lo < 0.2
    assert (lo, hi) == metrics.bootstrap_auroc_ci(y, s, n_boot=300, seed=7)


def test_paired_auroc_change_interval():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    a = rng.random(300) + 0.5 * y
    # identical models: every paired resample gives exactly zero change
    assert metrics.bootstrap_auroc_change_ci(y, a, a, n_boot=200) == (0.0, 0.0)
    # a model with more signal: the interval holds the observed change and lies above zero
    b = a + 0.5 * y
    change = metrics.roc_auc(y, b) - metrics.roc_auc(y, a)
    lo, hi = metrics.bootstrap_auroc_change_ci(y, a, b, n_boot=300, seed=3)
    assert 0.0 < lo < change < hi
    assert (lo, hi) == metrics.bootstrap_auroc_change_ci(y, a, b, n_boot=300, seed=3)
    # pairing makes the interval of a small perturbation much narrower than the unpaired AUROC interval
    c = a + rng.normal(0, 0.01, 300)
    lo_c, hi_c = metrics.bootstrap_auroc_change_ci(y, a, c, n_boot=300)
    lo_a, hi_a = metrics.bootstrap_auroc_ci(y, a, n_boot=300)
    assert hi_c - lo_c < (hi_a - lo_a) / 4
    with pytest.raises(ValueError, match="labels and scores differ in length"):
        metrics.bootstrap_auroc_change_ci(y, a, a[:-1])
    with pytest.raises(ValueError, match="positives and negatives"):
        metrics.bootstrap_auroc_change_ci([1, 1], [0.1, 0.2], [0.2, 0.3])


def test_single_class_gives_nan_auroc_not_a_number_made_up():
    out = metrics.summarize([1, 1, 1], [0.2, 0.7, 0.9], threshold=0.5, n_boot=10)
    assert math.isnan(out["auroc"]) and out["sensitivity"] == pytest.approx(2 / 3)
    assert math.isnan(out["specificity"])
    with pytest.raises(ValueError, match="positives and negatives"):
        metrics.roc_auc([1, 1], [0.1, 0.2])


@pytest.mark.parametrize("y,s,message", [
    ([0, 1, 2], [0.1, 0.2, 0.3], "0 or 1"),
    ([0, 1], [0.1], "differ in length"),
    ([0, 1], [0.1, float("nan")], "NaN"),
    ([0.6, 1, 0, 0.4], [0.1, 0.9, 0.2, 0.3], "0 or 1"),  # a soft label is refused, never cast to 0
    (["0", "1"], [0.1, 0.9], "0 or 1"),
])
def test_bad_inputs_are_refused(y, s, message):
    with pytest.raises(ValueError, match=message):
        metrics.roc_auc(y, s)


def test_boolean_and_float_labels_that_are_0_or_1_are_accepted():
    assert metrics.roc_auc([False, True, True], [0.1, 0.8, 0.7]) == 1.0
    assert metrics.roc_auc([0.0, 1.0, 1.0], [0.1, 0.8, 0.7]) == 1.0


@pytest.mark.parametrize("y,p,f1", [
    ([1, 1, 0, 0, 0], [0.1, 0.2, 0.9, 0.8, 0.7], 0.0),  # tp=0, fp=3, fn=2: F1 is 0 (as sklearn), not undefined
    ([1, 1, 0], [0.1, 0.2, 0.3], 0.0),  # nothing called positive, positives missed: 0
    ([0, 0, 0], [0.1, 0.2, 0.3], float("nan")),  # no positives and none called: undefined
    ([1, 0, 1, 0], [0.9, 0.1, 0.2, 0.8], 0.5),  # tp=1, fp=1, fn=1
])
def test_f1_is_zero_when_positives_are_all_missed_and_nan_only_when_undefined(y, p, f1):
    got = metrics.binary_metrics(y, p, threshold=0.5)["f1"]
    assert (math.isnan(got) and math.isnan(f1)) or got == pytest.approx(f1)


@pytest.mark.parametrize("fn", [lambda y, p: metrics.youden_threshold(y, p),
                                lambda y, p: metrics.threshold_for_sensitivity(y, p, 0.9)])
def test_thresholds_need_both_classes(fn):
    with pytest.raises(ValueError, match="needs positives and negatives; got 0 positive, 3 negative"):
        fn([0, 0, 0], [0.1, 0.5, 0.9])


def test_site_threshold_finds_the_local_operating_point():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(400)].astype(int)
    # a site where the model's probabilities run low: positives around 0.25, negatives around 0.10
    p = np.clip(np.where(y == 1, rng.normal(0.25, 0.04, y.size), rng.normal(0.10, 0.04, y.size)), 0, 1)
    site = metrics.site_threshold(y, p)
    assert site["available"] and site["method"] == "youden_j" and site["n"] == 600
    assert site["threshold"] == metrics.youden_threshold(y, p) and 0.12 < site["threshold"] < 0.23
    assert site["held_out"]["sensitivity"] > 0.9 and site["held_out"]["specificity"] > 0.9
    at_half = metrics.binary_metrics(y, p, 0.5)  # a card's threshold from other hospitals calls nobody
    assert at_half["sensitivity"] == 0.0


def test_site_threshold_estimate_is_held_out_not_in_sample():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    p = rng.uniform(size=y.size)  # no information: any fitted threshold looks good in-sample only
    site = metrics.site_threshold(y, p, seed=3)
    in_sample = metrics.binary_metrics(y, p, site["threshold"])
    assert in_sample["sensitivity"] + in_sample["specificity"] - 1 > 0.15
    held = site["held_out"]
    assert abs(held["sensitivity"] + held["specificity"] - 1) < 0.12 and held["halvings"] == 20
    assert metrics.site_threshold(y, p, seed=3) == site  # seeded


def test_site_threshold_needs_enough_of_each_class():
    site = metrics.site_threshold([1] * 9 + [0] * 50, np.linspace(0, 1, 59))
    assert site == {"available": False,
                    "why": "9 positive and 50 negative labelled film(s); a site threshold needs at least 10 of each"}


def test_ratio_agreement_on_hand_computed_films():
    manual = [0.40, 0.45, 0.50, 0.55, 0.60]
    measured = [0.42, 0.44, 0.55, 0.56, 0.70]  # errors 0.02, 0.01, 0.05, 0.01, 0.10
    a = metrics.ratio_agreement(measured, manual, flagged=[False, False, False, False, True], n_boot=200)
    assert a["n"] == 5 and a["mae"] == pytest.approx(0.038)
    assert a["within_close"] == pytest.approx(0.6)  # 0.02, 0.01, 0.01
    assert a["bias"] == pytest.approx(0.034)
    assert a["pearson_r"] == pytest.approx(np.corrcoef(measured, manual)[0, 1])
    assert a["slope"] == pytest.approx(np.polyfit(manual, measured, 1)[0])
    lo, hi = a["mae_ci95"]
    assert 0.0 < lo <= a["mae"] <= hi <= 0.1
    assert a["unflagged"] == {"n": 4, "mae": pytest.approx(0.0225), "within_close": pytest.approx(0.75)}
    assert metrics.ratio_follows(a) is True


def test_one_ratio_for_every_film_does_not_follow():
    """The typical-heart failure: a small error on similar hearts, slope 0."""
    manual = [0.44, 0.46, 0.47, 0.48, 0.50]
    a = metrics.ratio_agreement([0.47] * 5, manual)
    assert a["mae"] == pytest.approx(0.016) and a["within_close"] == 1.0
    assert a["slope"] == pytest.approx(0.0, abs=1e-12) and math.isnan(a["pearson_r"])
    assert metrics.ratio_follows(a) is False
    assert metrics.ratio_follows(metrics.ratio_agreement([0.4, 0.5, 0.6], [0.5, 0.5, 0.5])) is None  # no spread
    few = metrics.ratio_agreement([0.5, 0.6], [0.5, 0.6])
    assert few["mae"] == 0.0 and math.isnan(few["slope"]) and metrics.ratio_follows(few) is None


@pytest.mark.parametrize("measured, manual, flagged, message", [
    ([0.5, 0.5], [0.5], None, "differ in length"),
    ([0.5, float("nan")], [0.5, 0.5], None, "NaN"),
    ([0.5, 0.5], [0.5, 0.5], [True], "flags and ratios differ"),
])
def test_ratio_agreement_refuses_bad_input(measured, manual, flagged, message):
    with pytest.raises(ValueError, match=message):
        metrics.ratio_agreement(measured, manual, flagged)
