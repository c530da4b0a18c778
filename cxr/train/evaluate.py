"""Evaluation during and after training: predictions gathered over ranks, the loss, the operating point and reports.

All numbers come from cxr.runtime.metrics, the same numpy code `cxr-score --labels` uses, so training and scoring
report alike. The threshold is always chosen on validation and then applied unchanged to test.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from cxr.runtime import metrics as M
from cxr.runtime.card import Threshold
from cxr.train.distributed import DistContext, gather_arrays


@dataclass
class Evaluation:
    """Predictions on one split, in dataset order, readable images only."""

    loss: float
    labels: np.ndarray  # int64 [n]
    probabilities: np.ndarray  # float64 [n]
    index: np.ndarray  # dataset index of each row
    n_unreadable: int = 0


def bce_loss(logits: np.ndarray, labels: np.ndarray, pos_weight: float | None) -> float:
    """Mean BCE-with-logits, the training criterion, on gathered predictions (identical on every rank)."""
    if logits.size == 0:
        return math.nan
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), dtype=torch.float64)
    return float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits.astype(np.float64)),
                                                    torch.from_numpy(labels.astype(np.float64)), pos_weight=pw))


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, loader, ctx: DistContext, pos_weight: float | None,
                   autocast: Any = contextlib.nullcontext) -> Evaluation:
    """Run `model` over this rank's shard, gather all ranks' predictions, and compute the loss on the whole split."""
    model.eval()
    logits, labels, index, oks = [], [], [], []
    for images, y, ok, idx in loader:
        with autocast():
            out = model(images.to(ctx.device, non_blocking=True))
        logits.append(out.float().cpu().numpy())
        labels.append(y.numpy())
        index.append(idx.numpy())
        oks.append(ok.numpy())
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    got = gather_arrays(ctx, {"logit": cat(logits, np.float64), "label": cat(labels, np.int64),
                              "index": cat(index, np.int64), "ok": cat(oks, bool)})
    order = np.argsort(got["index"], kind="stable")
    got = {k: v[order] for k, v in got.items()}
    ok = got["ok"]
    logit, label = got["logit"][ok], got["label"][ok]
    prob = 1.0 / (1.0 + np.exp(-logit))
    return Evaluation(loss=bce_loss(logit, label, pos_weight), labels=label, probabilities=prob,
                      index=got["index"][ok], n_unreadable=int((~ok).sum()))


def choose_threshold(method: str, target_sensitivity: float | None, labels: np.ndarray,
                     probabilities: np.ndarray) -> Threshold:
    """The operating point on validation: Youden's J, or the highest threshold reaching the target sensitivity."""
    n = int(labels.size)
    if not M.has_both_classes(labels):
        return Threshold(value=0.5, method="fixed", detail=f"validation (n={n}) lacks a class; 0.5 used")
    if method == "target_sensitivity":
        value = M.threshold_for_sensitivity(labels, probabilities, float(target_sensitivity))
        return Threshold(value=value, method="target_sensitivity",
                         detail=f"target sensitivity {target_sensitivity:.2f} on the validation split (n={n})")
    value = M.youden_threshold(labels, probabilities)
    return Threshold(value=value, method="youden_j", detail=f"Youden's J on the validation split (n={n})")


def epoch_metrics(ev: Evaluation, threshold: Threshold) -> dict[str, float]:
    """The per-epoch validation row: loss, AUROC, AUPRC and sensitivity/specificity/F1 at the threshold."""
    both = M.has_both_classes(ev.labels)
    at = M.binary_metrics(ev.labels, ev.probabilities, threshold.value)
    return {
        "val_loss": ev.loss,
        "val_auroc": M.roc_auc(ev.labels, ev.probabilities) if both else math.nan,
        "val_auprc": M.average_precision(ev.labels, ev.probabilities) if ev.labels.any() else math.nan,
        "val_sensitivity": at["sensitivity"], "val_specificity": at["specificity"], "val_f1": at["f1"],
        "threshold": float(threshold.value),
    }


def report(ev: Evaluation, threshold: Threshold, sources: Sequence[str] | None = None, n_boot: int = 1000,
           seed: int = 0) -> dict[str, Any]:
    """Everything reported for a split at a fixed threshold; per-source figures when there is more than one source."""
    out = M.summarize(ev.labels, ev.probabilities, threshold.value, n_boot=n_boot, seed=seed)
    out["loss"] = ev.loss
    out["n_unreadable"] = ev.n_unreadable
    if sources is not None:
        src = np.asarray([sources[i] for i in ev.index], dtype=object)
        names = sorted(set(src.tolist()))
        if len(names) > 1:
            out["by_source"] = {
                name: M.summarize(ev.labels[src == name], ev.probabilities[src == name], threshold.value,
                                  n_boot=n_boot, seed=seed)
                for name in names}
    return out
