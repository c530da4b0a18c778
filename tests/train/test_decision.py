"""The decision fitted on validation: logistic fits, the choice between classifier, CTR and fusion, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.train.decision import Decision, choose_decision, fit_logistic


def _cohort(n=300, ctr_sign=1.0, ctr_noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cls = 1.0 * y + rng.normal(0, 1.0, n)  # a mediocre classifier (AUROC about 0.75)
    ctr = 0.48 + ctr_sign * 0.08 * (y - 0.5) + rng.normal(0, ctr_noise, n)
    return y, cls, ctr


def test_fit_logistic_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (20000, 2))
    p = 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.7 * x[:, 1] + 0.3)))
    y = (rng.random(20000) < p).astype(int)
    w, b = fit_logistic(x, y)
    np.testing.assert_allclose(w, [1.5, -0.7], atol=0.08)
    assert b == pytest.approx(0.3, abs=0.08)


def test_auto_takes_the_ratio_when_it_separates_best():
    y, cls, ctr = _cohort()
    d = choose_decision("auto", y, cls, ctr)
    auroc = d.validation["auroc"]
    assert auroc["ctr"] > auroc["classifier"] and d.mode in ("ctr", "fusion") and d.w_ctr > 0
    assert d.mode == max(("classifier", "ctr", "fusion"), key=lambda m: auroc[m])
    prob = d.probability(cls, ctr)
    assert ((prob > 0.5) == (y == 1)).mean() > 0.9


def test_a_ratio_that_reads_backwards_is_never_used():
    y, cls, ctr = _cohort(ctr_sign=-1.0)
    d = choose_decision("auto", y, cls, ctr)
    assert d.mode == "classifier" and d.validation["auroc"]["ctr"] < 0.5
    with pytest.raises(ValueError, match="larger heart would lower the probability"):
        choose_decision("ctr", y, cls, ctr)


def test_fusion_is_judged_out_of_fold():
    """On noise, an in-sample fusion would look better than chance; out of fold it does not."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    d = choose_decision("auto", y, rng.normal(size=60), 0.5 + rng.normal(0, 0.05, 60))
    assert d.validation["auroc"]["fusion"] < 0.7


def test_unmeasurable_ratios_are_left_out_and_the_formula_matches_numpy():
    y, cls, ctr = _cohort()
    ctr[:5] = np.nan
    d = choose_decision("fusion", y, cls, ctr)
    assert d.validation["n_ctr_measurable"] == len(y) - 5
    logit = d.logit(cls, ctr)
    assert np.isnan(logit[:5]).all()
    np.testing.assert_allclose(logit[5:], d.w_classifier * cls[5:] + d.w_ctr * ctr[5:] + d.intercept)
    assert Decision.from_dict(d.to_dict()) == d


def test_without_masks_the_classifier_is_the_only_candidate():
    y, cls, _ = _cohort()
    d = choose_decision("auto", y, cls, None)
    assert d.mode == "classifier" and d.validation["chosen_by"] == "only candidate"
    np.testing.assert_allclose(d.probability(cls, None), 1 / (1 + np.exp(-cls)))


def test_threshold_between_ties_keeps_validation_calls():
    from cxr.runtime.card import Threshold
    from cxr.train.evaluate import _between_ties

    probs = np.array([0.2, 0.35, 0.35, 0.6, 0.6, 0.6, 0.9])
    moved = _between_ties(Threshold(0.6, "youden_j", "x"), probs, "ctr")
    assert moved.value == pytest.approx(0.475) and "halfway" in moved.detail
    assert ((probs >= moved.value) == (probs >= 0.6)).all()  # no validation image changes side
    lowest = _between_ties(Threshold(0.2, "youden_j", "x"), probs, "ctr")
    assert lowest.value == 0.2


@pytest.mark.parametrize("n, world", [(33, 2), (10, 3), (7, 1)])
def test_balanced_sampler_gives_every_rank_the_same_number_of_draws(n, world):
    from cxr.train.sampling import BalancedSampler

    sources = ["a"] * (n - 3) + ["b"] * 3
    samplers = [BalancedSampler(sources, seed=1, num_replicas=world, rank=r) for r in range(world)]
    counts = [len(list(s)) for s in samplers]
    assert len(set(counts)) == 1 and counts[0] == len(samplers[0]) and counts[0] * world >= n
    draws = np.concatenate([list(BalancedSampler(sources, seed=s)) for s in range(200)])
    share_b = np.isin(draws, [n - 3, n - 2, n - 1]).mean()
    assert share_b == pytest.approx(0.5, abs=0.05)  # each source drawn equally often, whatever its size


def test_label_balance_makes_every_source_half_positive():
    """wingspan-like (71% positive) and JSRT-like (28%) sources: drawn with --balance-labels, each source shows half
    positives, so the source no longer predicts the label; sources keep their size unless balanced too."""
    from cxr.train.sampling import BalancedSampler, balanced_weights

    sources = ["w"] * 100 + ["j"] * 300
    labels = [1] * 71 + [0] * 29 + [1] * 84 + [0] * 216
    p = balanced_weights(sources, labels, by_source=False)
    w, j, y = np.array(sources) == "w", np.array(sources) == "j", np.array(labels) == 1
    assert p.sum() == pytest.approx(1.0)
    assert p[w].sum() == pytest.approx(0.25) and p[j].sum() == pytest.approx(0.75)  # sizes kept
    assert p[w & y].sum() == pytest.approx(p[w & ~y].sum()) == pytest.approx(0.125)
    assert p[j & y].sum() == pytest.approx(p[j & ~y].sum()) == pytest.approx(0.375)
    both = balanced_weights(sources, labels, by_source=True)
    for cell in (w & y, w & ~y, j & y, j & ~y):
        assert both[cell].sum() == pytest.approx(0.25)
    # a source with one class keeps its whole share; the draws follow the weights
    one = balanced_weights(["a", "a", "b", "b", "b"], [0, 0, 1, 0, 0], by_source=True)
    np.testing.assert_allclose(one, [0.25, 0.25, 0.25, 0.125, 0.125])
    draws = np.concatenate([list(BalancedSampler(sources, labels, by_source=False, seed=s)) for s in range(100)])
    assert np.array(labels)[draws].mean() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="labels"):
        balanced_weights(["a", "b"], [1])


def test_label_balance_refuses_a_second_class_weight():
    from cxr.train.config import TrainConfig
    from cxr.train.errors import ConfigError

    with pytest.raises(ConfigError, match="balance-labels"):
        TrainConfig(data_root="x", balance_labels=True, pos_weight="auto")


def _samples(sources, labels, ctrs):
    from pathlib import Path

    from cxr.train.datasets import Sample

    return [Sample(Path(f"/x/{i}.png"), int(y), f"p{i}", "val", src, None, None if c is None else float(c))
            for i, (src, y, c) in enumerate(zip(sources, labels, ctrs))]


def test_sources_whose_labels_are_their_ratio_are_found():
    from cxr.train.decision import ratio_defined_sources

    rows = _samples(["wj", "wj", "nih", "nih", "rad", "rad"], [1, 0, 1, 0, 1, 0], [0.55, 0.45, None, None, 0.48, 0.4])
    assert ratio_defined_sources(rows) == ["wj"]  # nih has no ratio; rad's reader disagrees with its ratio once


def test_the_decision_is_judged_on_sources_whose_labels_are_not_the_ratio():
    from cxr.train.decision import choose_on_validation

    # a mask-labelled source where the ratio is the label itself (CTR AUROC 1.0 there), and a reader-labelled one
    # where the classifier is better than the ratio: pooled, auto would take the ratio for a circular reason
    rng = np.random.default_rng(3)
    n = 200
    y_wj = rng.integers(0, 2, n)
    ctr_wj = np.where(y_wj == 1, rng.uniform(0.51, 0.65, n), rng.uniform(0.35, 0.49, n))
    y_nih, cls_nih, ctr_nih = _cohort(n=n, ctr_sign=-0.5, ctr_noise=0.2, seed=4)  # ratio useless on nih
    cls_wj = 0.6 * y_wj + rng.normal(0, 1.0, n)
    y = np.concatenate([y_wj, y_nih])
    cls = np.concatenate([cls_wj, cls_nih])
    ctr = np.concatenate([ctr_wj, ctr_nih])
    rows = _samples(["wj"] * n + ["nih"] * n, y, np.concatenate([ctr_wj, [None] * n]))
    pooled = choose_decision("auto", y, cls, ctr)
    assert pooled.mode in ("ctr", "fusion")
    d = choose_on_validation("auto", rows, y, cls, ctr)
    assert d.mode == "classifier"
    assert d.validation["ratio_defined_sources"] == ["wj"]
    assert d.validation["n_ctr_measurable"] == n and "left out: wj" in d.validation["note"]
    # only circular sources: decided on all of them, with the caveat written down
    only = choose_on_validation("auto", rows[:n], y_wj, cls_wj, ctr_wj)
    assert only.mode in ("ctr", "fusion") and "every usable validation label is its reference ratio" in \
        only.validation["note"]


def test_a_refused_candidate_reports_the_fits_own_reason():
    """The report says why a candidate has no figures: the fit's own message, not a fixed guess."""
    from cxr.train.decision import Decision
    from cxr.train.evaluate import Evaluation, score_aurocs

    ev = Evaluation(loss=0.5, labels=np.array([0, 1, 0, 1]), probabilities=np.array([0.2, 0.7, 0.4, 0.9]),
                    index=np.arange(4), logits=np.array([-1.4, 0.8, -0.4, 2.2]), ctr=np.array([0.4, 0.6, 0.45, 0.55]))
    why = "--decision fusion: too few validation images with a measurable CTR and both classes (3 measurable) to fit it"
    got = score_aurocs(ev, {"classifier": Decision(), "fusion": Decision(validation={"refused": "fusion", "why": why})},
                       n_boot=20, seed=0)
    assert got["fusion"]["refused"] == why and math.isnan(got["fusion"]["auroc"])
    old = score_aurocs(ev, {"fusion": Decision(validation={"refused": "fusion"})}, n_boot=20, seed=0)
    assert "weight that was not positive" in old["fusion"]["refused"]  # runs from before the reason was kept
    assert got["classifier"]["auroc"] == 1.0
