"""Where the model's probability comes from: the classifier, the measured cardiothoracic ratio, or both.

    classifier   logit = classifier logit                                  (the recipe)
    ctr          logit = a * ctr + c                                       (a logistic map of the ratio)
    fusion       logit = w * classifier logit + a * ctr + c                 (logistic regression on both)

The coefficients are fitted on the validation split (numpy, Newton's method with a small ridge). `auto` picks the
mode with the best validation AUROC; the fusion's AUROC is judged out of fold (5-fold cross-validation inside
validation), since a model fitted and scored on the same images would look better than it is. The classifier and
CTR maps are monotonic, so fitting them cannot change their AUROC. The chosen mode and its coefficients travel in the
checkpoint and the model card, and the exported graph computes the same logit. Images whose CTR cannot be measured
(no heart or no lungs found) have no ctr/fusion probability: cxr-score reports them as errors for those modes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cxr.runtime import metrics as M

MODES = ("classifier", "ctr", "fusion")
CV_FOLDS = 5
RIDGE = 1e-3


@dataclass(frozen=True)
class Decision:
    """logit = w_classifier * classifier_logit + w_ctr * ctr + intercept (unused terms are absent from the graph)."""

    mode: str = "classifier"
    w_classifier: float = 1.0
    w_ctr: float = 0.0
    intercept: float = 0.0
    validation: dict[str, Any] = field(default_factory=dict)
    """Validation AUROC of each candidate, how it was judged, and why this mode was chosen."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"decision mode must be one of {MODES}, got {self.mode!r}")
        for name in ("w_classifier", "w_ctr", "intercept"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"decision {name} must be finite, got {getattr(self, name)!r}")

    def logit(self, classifier_logit: np.ndarray, ctr: np.ndarray | None) -> np.ndarray:
        """The decision logit in numpy (float64; the same formula as the exported graph)."""
        return self.combine(np.asarray(classifier_logit, np.float64),
                            None if ctr is None else np.asarray(ctr, np.float64))

    def combine(self, classifier_logit, ctr):
        """The decision logit from numpy arrays or torch tensors alike (the export traces it): only the terms the
        mode uses are computed, so a classifier decision never needs a ratio."""
        if self.mode == "classifier":
            return classifier_logit
        if self.mode == "ctr":
            return self.w_ctr * ctr + self.intercept
        return self.w_classifier * classifier_logit + self.w_ctr * ctr + self.intercept

    def probability(self, classifier_logit: np.ndarray, ctr: np.ndarray | None) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(classifier_logit, ctr)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Decision":
        return cls() if not data else cls(**{k: data[k] for k in ("mode", "w_classifier", "w_ctr", "intercept",
                                                                 "validation") if k in data})


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE, iters: int = 50) -> tuple[np.ndarray, float]:
    """Logistic regression (weights, intercept) by Newton's method on standardised features with an L2 ridge."""
    x = np.asarray(x, np.float64).reshape(len(y), -1)
    y = np.asarray(y, np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    z = np.column_stack([(x - mu) / sd, np.ones(len(y))])
    beta = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], ridge * len(y))
    penalty[-1] = 0.0  # the intercept is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        grad = z.T @ (p - y) + penalty * beta
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    w = beta[:-1] / sd
    return w, float(beta[-1] - (w * mu).sum())


def _oof_fusion_scores(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold fusion logits: each image scored by a fusion fitted on the other folds (stratified folds)."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(y), int)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        folds[idx] = np.arange(idx.size) % CV_FOLDS
    out = np.zeros(len(y))
    for k in range(CV_FOLDS):
        train, test = folds != k, folds == k
        if not test.any() or not M.has_both_classes(y[train]):
            continue
        w, b = fit_logistic(x[train], y[train])
        out[test] = x[test] @ w + b
    return out


def choose_decision(requested: str, labels: np.ndarray, classifier_logit: np.ndarray, ctr: np.ndarray | None,
                    seed: int = 0) -> Decision:
    """Fit the candidates on validation and keep the requested one, or (auto) the best by validation AUROC."""
    y = np.asarray(labels, np.int64)
    if ctr is None or requested == "classifier":
        auroc = M.roc_auc(y, classifier_logit) if M.has_both_classes(y) else math.nan
        return Decision(validation={"auroc": {"classifier": auroc}, "chosen_by": "only candidate" if ctr is None
                                    else "requested"})
    ctr = np.asarray(ctr, np.float64)
    ok = np.isfinite(ctr)
    y_ok, cls_ok, ctr_ok = y[ok], np.asarray(classifier_logit, np.float64)[ok], ctr[ok]
    if not M.has_both_classes(y_ok) or ok.sum() < 2 * CV_FOLDS:
        if requested in ("ctr", "fusion"):
            raise ValueError(f"--decision {requested}: too few validation images with a measurable CTR and both "
                             f"classes ({int(ok.sum())} measurable) to fit it")
        return Decision(validation={"auroc": {"classifier": M.roc_auc(y, classifier_logit)},
                                    "chosen_by": "too few measurable CTRs on validation for ctr/fusion"})
    both = np.column_stack([cls_ok, ctr_ok])
    auroc = {"classifier": M.roc_auc(y_ok, cls_ok), "ctr": M.roc_auc(y_ok, ctr_ok),
             "fusion": M.roc_auc(y_ok, _oof_fusion_scores(both, y_ok, seed))}
    validation = {"auroc": auroc, "n": int(y.size), "n_ctr_measurable": int(ok.sum()),
                  "judged": f"AUROC on the {int(ok.sum())} validation images with a measurable CTR; fusion out of "
                            f"fold ({CV_FOLDS}-fold cross-validation), classifier and ctr as they are"}
    if requested != "auto":
        validation["chosen_by"] = "requested"
        return _fit(requested, requested, y_ok, ctr_ok, both, validation)
    # the simpler candidate wins ties (order of MODES); a ratio that does not separate the classes is not used
    usable = [m for m in MODES if ctr_usable(auroc, m)]
    for mode in sorted(usable, key=lambda m: (round(auroc[m], 6), -MODES.index(m)), reverse=True):
        validation["chosen_by"] = "best validation AUROC"
        try:
            return _fit(mode, "auto", y_ok, ctr_ok, both, validation)
        except ValueError:
            validation.setdefault("refused", []).append(f"{mode}: the fitted CTR weight was not positive")
    return Decision(validation=validation)  # classifier is always usable: not reached


def ratio_defined_sources(samples) -> list[str]:
    """Sources whose every label is exactly its reference ratio > 0.5 (wingspan/JSRT's `cardiomegaly_mask_ctr` with
    `ctr_mask`): on them the CTR candidate is scored against its own definition, so its AUROC there says how well the
    masks are drawn, not how well the ratio predicts cardiomegaly as a reader calls it."""
    by_source: dict[str, bool] = {}
    for s in samples:
        circular = s.ctr is not None and math.isfinite(s.ctr) and int(s.ctr > 0.5) == int(s.label)
        by_source[s.source] = by_source.get(s.source, True) and circular
    return sorted(name for name, circular in by_source.items() if circular)


def choose_on_validation(requested: str, samples, labels: np.ndarray, classifier_logit: np.ndarray,
                         ctr: np.ndarray | None, seed: int = 0) -> Decision:
    """choose_decision, judged and fitted on the validation images of sources whose labels are not the ratio itself
    where they can decide it (both classes, enough measurable ratios); otherwise on all of validation, with the
    caveat recorded. `samples[i]` is the sample of row i."""
    circular = ratio_defined_sources(samples) if ctr is not None else []
    if not circular or requested == "classifier":
        return choose_decision(requested, labels, classifier_logit, ctr, seed=seed)
    keep = np.array([s.source not in circular for s in samples], bool)
    y, c = np.asarray(labels)[keep], np.asarray(ctr, np.float64)[keep]
    if M.has_both_classes(y) and np.isfinite(c[y == 1]).any() and np.isfinite(c).sum() >= 2 * CV_FOLDS:
        decision = choose_decision(requested, y, np.asarray(classifier_logit)[keep], c, seed=seed)
        note = (f"judged and fitted on the {int(keep.sum())} validation images of sources whose labels are not the "
                f"ratio itself; left out: {', '.join(circular)} (labels = reference ratio > 0.5)")
    else:
        decision = choose_decision(requested, labels, classifier_logit, ctr, seed=seed)
        note = (f"every usable validation label is its reference ratio > 0.5 ({', '.join(circular)}): the CTR's "
                "validation AUROC measures the masks against their own definition, not the ratio as a predictor "
                "of reader-called cardiomegaly")
    return Decision(decision.mode, decision.w_classifier, decision.w_ctr, decision.intercept,
                    {**decision.validation, "ratio_defined_sources": circular, "note": note})


def _fit(mode: str, requested: str, y: np.ndarray, ctr: np.ndarray, both: np.ndarray,
         validation: dict[str, Any]) -> Decision:
    if mode == "classifier":
        return Decision(validation=validation)
    if mode == "ctr":
        w, b = fit_logistic(ctr[:, None], y)
        _require_positive_ctr_weight(float(w[0]), requested, "ctr")
        return Decision("ctr", 0.0, float(w[0]), b, validation)
    w, b = fit_logistic(both, y)
    _require_positive_ctr_weight(float(w[1]), requested, "fusion")
    return Decision("fusion", float(w[0]), float(w[1]), b, validation)


def _require_positive_ctr_weight(weight: float, requested: str, mode: str) -> None:
    """A larger heart must never lower the probability: a fit that says so (validation where the ratio does not
    separate the classes) is refused rather than turned into a model that reads the ratio backwards."""
    if weight <= 0:
        raise ValueError(f"--decision {requested}: the {mode} fitted on validation gives the cardiothoracic ratio a "
                         f"weight of {weight:.3g} (a larger heart would lower the probability); the ratio does not "
                         "separate the classes there, so this decision is not used")


def ctr_usable(auroc: dict[str, float], mode: str) -> bool:
    """auto may pick ctr or fusion only where the measured ratio itself separates the classes (AUROC > 0.5)."""
    return mode == "classifier" or auroc.get("ctr", 0.0) > 0.5
