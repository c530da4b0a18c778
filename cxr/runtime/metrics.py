"""Binary classification metrics in numpy (no torch, no sklearn): AUROC with bootstrap intervals, operating points.

Used by training (validation, test) and by `cxr-score --labels`, so both report the same numbers the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    raw = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if raw.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {raw.shape[0]} vs {s.shape[0]}")
    if raw.dtype.kind not in "biuf" or not np.isin(raw, (0, 1)).all():  # checked before any cast: 0.6 is not 0
        raise ValueError("labels must be 0 or 1")
    y = raw.astype(np.int64)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y, s


def has_both_classes(y_true) -> bool:
    y = np.asarray(y_true)
    return bool((y == 1).any() and (y == 0).any())


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties). Needs both classes."""
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs positives and negatives; got {n_pos} positive, {n_neg} negative")
    ranks = _midranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _midranks(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], sorted_s.size]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending, starting at +inf (nothing called positive)."""
    y, s = _check(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int(y.size - y.sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thresholds


def average_precision(y_true, scores) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("AUPRC needs at least one positive")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tps = np.cumsum(y_sorted)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _bootstrap_aucs(y: np.ndarray, score_sets: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """AUROC of each score set on `n_boot` stratified resamples (positives and negatives drawn separately, the same
    images for every set): float64 [n_boot, len(score_sets)]."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC interval needs positives and negatives")
    rng = np.random.default_rng(seed)
    aucs = np.empty((n_boot, len(score_sets)), np.float64)
    offset, pairs = pos.size * (pos.size + 1) / 2.0, pos.size * neg.size
    for i in range(n_boot):
        take = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        for j, s in enumerate(score_sets):
            aucs[i, j] = (_midranks(s[take])[: pos.size].sum() - offset) / pairs
    return aucs


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_auroc_ci(y_true, scores, n_boot: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for AUROC, resampling positives and negatives separately (stratified)."""
    y, s = _check(y_true, scores)
    return _percentile_interval(_bootstrap_aucs(y, [s], n_boot, seed)[:, 0], confidence)


def bootstrap_auroc_change_ci(y_true, scores_a, scores_b, n_boot: int = 1000, seed: int = 0,
                              confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for AUROC(b) - AUROC(a) of two models scored on the same images (paired: each
    resample takes the same images for both; positives and negatives resampled separately, as above)."""
    y, a = _check(y_true, scores_a)
    _, b = _check(y_true, scores_b)  # both checked against the labels, so a and b have the same length
    aucs = _bootstrap_aucs(y, [a, b], n_boot, seed)
    return _percentile_interval(aucs[:, 1] - aucs[:, 0], confidence)


def binary_metrics(y_true, probabilities, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at `probability >= threshold`. Undefined ratios are NaN, never a made-up 0."""
    y, p = _check(y_true, probabilities)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    sens, ppv = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)  # 0 when positives exist and none is found; NaN only with none at all
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": sens, "specificity": ratio(tn, tn + fp), "ppv": ppv, "npv": ratio(tn, tn + fn),
        "f1": f1, "accuracy": ratio(tp + tn, y.size),
    }


def _require_both_classes(y_true, what: str) -> None:
    y = np.asarray(y_true)
    if not has_both_classes(y):
        raise ValueError(f"{what} needs positives and negatives; got {int((y == 1).sum())} positive, "
                         f"{int((y == 0).sum())} negative")


def youden_threshold(y_true, probabilities) -> float:
    """The threshold maximising sensitivity + specificity - 1 (ties: the higher threshold). Needs both classes."""
    _require_both_classes(y_true, "Youden's J")
    fpr, tpr, thresholds = roc_curve(y_true, probabilities)
    j = tpr - fpr
    best = int(np.argmax(j[1:])) + 1  # skip the +inf point
    return float(min(max(thresholds[best], 0.0), 1.0))


def threshold_for_sensitivity(y_true, probabilities, target: float) -> float:
    """The highest threshold whose sensitivity is at least `target`."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    _require_both_classes(y_true, "a threshold for a target sensitivity")
    fpr, tpr, thresholds = roc_curve(y_true, probabilities)
    ok = np.flatnonzero(tpr >= target - 1e-12)
    return float(min(max(thresholds[ok[0]], 0.0), 1.0))


def summarize(y_true, probabilities, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Everything reported for a labelled set: n, prevalence, AUROC (95% CI), AUPRC and the operating point."""
    y, p = _check(y_true, probabilities)
    out: dict[str, Any] = {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum())}
    if has_both_classes(y):
        out["auroc"] = roc_auc(y, p)
        lo, hi = bootstrap_auroc_ci(y, p, n_boot=n_boot, seed=seed)
        out["auroc_ci95"] = [lo, hi]
        out["auprc"] = average_precision(y, p)
    else:
        out["auroc"] = math.nan
        out["auroc_ci95"] = [math.nan, math.nan]
        out["auprc"] = math.nan
    out.update(binary_metrics(y, p, threshold))
    return out


SITE_MIN_PER_CLASS = 10
"""Fewer labelled positives or negatives than this and no site threshold is proposed (halves too small to fit one)."""


def site_threshold(y_true, probabilities, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """A threshold fitted on one site's labelled films (Youden's J on all of them), and what such a fitted
    threshold gives on films it was not fitted on: the mean sensitivity and specificity over `repeats` random
    stratified halvings (fit on one half, count on the other, and the other way round). A threshold chosen on one
    set of hospitals need not suit another; this is the local one, with an estimate that is not in-sample.
    {"available": False, "why": ...} when a class has fewer than SITE_MIN_PER_CLASS films."""
    y, p = _check(y_true, probabilities)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if min(n_pos, n_neg) < SITE_MIN_PER_CLASS:
        return {"available": False, "why": f"{n_pos} positive and {n_neg} negative labelled film(s); a site "
                                           f"threshold needs at least {SITE_MIN_PER_CLASS} of each"}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    sens, spec = [], []
    for _ in range(repeats):
        a = np.zeros(y.size, bool)
        a[rng.permutation(pos)[: pos.size // 2]] = True
        a[rng.permutation(neg)[: neg.size // 2]] = True
        for fit, held in ((a, ~a), (~a, a)):
            m = binary_metrics(y[held], p[held], youden_threshold(y[fit], p[fit]))
            sens.append(m["sensitivity"])
            spec.append(m["specificity"])
    return {"available": True, "method": "youden_j", "threshold": youden_threshold(y, p), "n": int(y.size),
            "held_out": {"sensitivity": float(np.mean(sens)), "specificity": float(np.mean(spec)),
                         "halvings": repeats}}


RATIO_CLOSE = 0.03
"""A measured cardiothoracic ratio within this of the manual one counts as agreeing (the issue's target)."""


def ratio_agreement(measured, reference, flagged=None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How the model's cardiothoracic ratios agree with manual ones on the same films.

    Mean absolute error with a bootstrap 95% interval, the share within RATIO_CLOSE, bias (mean of measured minus
    manual), Pearson r and the slope of measured on manual. The last two tell a measurement from a typical heart:
    a model that gives every film about the same ratio can have a small error on a cohort of similar hearts, with r
    and slope near 0. `flagged` (bool per film, optional): the same figures on the films without a plausibility
    flag, as a user who sets the flagged rows aside gets them. NaN where a figure is undefined (fewer than 3 films,
    or no spread)."""
    m = np.asarray(measured, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    if m.shape != r.shape:
        raise ValueError(f"measured and manual ratios differ in length: {m.shape[0]} vs {r.shape[0]}")
    if not (np.isfinite(m).all() and np.isfinite(r).all()):
        raise ValueError("ratios contain NaN or infinity")
    nan = float("nan")
    err = np.abs(m - r)
    out: dict[str, Any] = {"n": int(m.size), "close": RATIO_CLOSE,
                           "mae": float(err.mean()) if m.size else nan,
                           "mae_ci95": [nan, nan],
                           "within_close": float((err <= RATIO_CLOSE + 1e-12).mean()) if m.size else nan,
                           "bias": float((m - r).mean()) if m.size else nan,
                           "pearson_r": nan, "slope": nan}
    if m.size >= 3 and n_boot > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, 2_000_000 // m.size)  # resamples at a time: memory bounded for any number of films
        boots = np.concatenate([err[rng.integers(0, m.size, size=(min(chunk, n_boot - i), m.size))].mean(axis=1)
                                for i in range(0, n_boot, chunk)])
        out["mae_ci95"] = list(_percentile_interval(boots, 0.95))
    if m.size >= 3:
        if np.ptp(r) > 0:  # the same ratio for every film: slope 0, r undefined
            out["slope"] = float(np.polyfit(r, m, 1)[0])
            if np.ptp(m) > 0:
                out["pearson_r"] = float(np.corrcoef(m, r)[0, 1])
    if flagged is not None:
        keep = ~np.asarray(flagged, dtype=bool).ravel()
        if keep.shape != m.shape:
            raise ValueError(f"flags and ratios differ in length: {keep.shape[0]} vs {m.shape[0]}")
        out["unflagged"] = {"n": int(keep.sum()),
                            "mae": float(err[keep].mean()) if keep.any() else nan,
                            "within_close": float((err[keep] <= RATIO_CLOSE + 1e-12).mean()) if keep.any() else nan}
    return out


def ratio_follows(agreement: dict[str, Any]) -> bool | None:
    """Whether the measured ratios follow the manual ones (slope and Pearson r both at least 0.5; one ratio for
    every film has slope 0); None when undefined (fewer than 3 films, or no spread in the manual ratios)."""
    r, slope = agreement.get("pearson_r", math.nan), agreement.get("slope", math.nan)
    if math.isnan(slope):
        return None
    return slope >= 0.5 and not math.isnan(r) and r >= 0.5
