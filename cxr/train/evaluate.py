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
from cxr.train.decision import Decision, choose_on_validation
from cxr.train.distributed import DistContext, gather_arrays


@dataclass
class Evaluation:
    """Predictions on one split, in dataset order, readable images only."""

    loss: float
    labels: np.ndarray  # int64 [n]
    probabilities: np.ndarray  # float64 [n]
    index: np.ndarray  # dataset index of each row
    n_unreadable: int = 0
    logits: np.ndarray | None = None  # float64 [n], the classifier's
    ctr: np.ndarray | None = None  # float64 [n], the model's measured CTR (NaN: not measurable); None without masks
    dice: np.ndarray | None = None  # float64 [n, 4] heart, left lung, right lung, both lungs; NaN: no reference mask


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
    from cxr.train.anatomy import ctr_from_masks, dice_lungs, dice_per_structure, measured_masks

    model.eval()
    seg = bool(getattr(model, "seg_head", False))
    cols: dict[str, list] = {"logit": [], "label": [], "index": [], "ok": [], "ctr": [], "dice": []}
    for batch in loader:
        images, y, ok, idx = batch[:4]
        with autocast():
            out = model.forward_all(images.to(ctx.device, non_blocking=True)) if seg else \
                {"logit": model(images.to(ctx.device, non_blocking=True))}
        cols["logit"].append(out["logit"].float().cpu().numpy())
        cols["label"].append(y.numpy())
        cols["index"].append(idx.numpy())
        cols["ok"].append(ok.numpy())
        if seg:
            pred = measured_masks(out["mask_logits"].float())
            cols["ctr"].append(ctr_from_masks(pred).cpu().numpy())
            target, has = batch[4].to(pred.device), batch[5].numpy()
            dice = torch.cat([dice_per_structure(pred, target), dice_lungs(pred, target)[:, None]], 1).cpu().numpy()
            dice[~has] = np.nan
            cols["dice"].append(dice)
    cat = (lambda xs, dt, shape=(0,): np.concatenate(xs).astype(dt) if xs else np.zeros(shape, dt))
    arrays = {"logit": cat(cols["logit"], np.float64), "label": cat(cols["label"], np.int64),
              "index": cat(cols["index"], np.int64), "ok": cat(cols["ok"], bool)}
    if seg:
        arrays.update(ctr=cat(cols["ctr"], np.float64), dice=cat(cols["dice"], np.float64, (0, 4)))
    got = gather_arrays(ctx, arrays)
    order = np.argsort(got["index"], kind="stable")
    got = {k: v[order] for k, v in got.items()}
    ok = got["ok"]
    logit, label = got["logit"][ok], got["label"][ok]
    prob = 1.0 / (1.0 + np.exp(-logit))
    return Evaluation(loss=bce_loss(logit, label, pos_weight), labels=label, probabilities=prob,
                      index=got["index"][ok], n_unreadable=int((~ok).sum()), logits=logit,
                      ctr=got["ctr"][ok] if seg else None, dice=got["dice"][ok] if seg else None)


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


def epoch_metrics(ev: Evaluation, threshold: Threshold, sources: Sequence[str] | None = None,
                  mask_loss: float | None = None) -> dict[str, float]:
    """The per-epoch validation row: loss, AUROC, AUPRC and sensitivity/specificity/F1 at the threshold; with
    several sources, AUROC per source; with the segmentation head, the mask loss, Dice and the CTR's AUROC."""
    both = M.has_both_classes(ev.labels)
    at = M.binary_metrics(ev.labels, ev.probabilities, threshold.value)
    extra: dict[str, float] = {}
    if sources is not None:
        src = np.asarray([sources[i] for i in ev.index], dtype=object)
        names = sorted(set(src.tolist()))
        if len(names) > 1:
            for name in names:
                sel = src == name
                extra[f"val_auroc[{name}]"] = (M.roc_auc(ev.labels[sel], ev.probabilities[sel])
                                               if M.has_both_classes(ev.labels[sel]) else math.nan)
    if ev.dice is not None:
        extra.update(anatomy_metrics(ev, prefix="val_"))
    if mask_loss is not None:
        extra["val_mask_loss"] = mask_loss
    return {**_epoch_core(ev, both, at, threshold), **extra}


def anatomy_metrics(ev: Evaluation, prefix: str = "", reference_ctr: np.ndarray | None = None) -> dict[str, float]:
    """Mean Dice per structure (images with reference masks), the CTR's AUROC and, given references, CTR error."""
    out: dict[str, float] = {}
    for j, name in enumerate(("heart", "left_lung", "right_lung", "lungs")):
        col = ev.dice[:, j]
        out[f"{prefix}dice_{name}"] = float(np.nanmean(col)) if np.isfinite(col).any() else math.nan
    finite = np.isfinite(ev.ctr)
    out[f"{prefix}ctr_measurable"] = float(finite.mean()) if ev.ctr.size else math.nan
    sel = finite & np.isin(ev.labels, (0, 1))
    out[f"{prefix}ctr_auroc"] = (M.roc_auc(ev.labels[sel], ev.ctr[sel]) if M.has_both_classes(ev.labels[sel])
                                 else math.nan)
    if reference_ctr is not None:
        both = finite & np.isfinite(reference_ctr)
        err = np.abs(ev.ctr[both] - reference_ctr[both])
        out[f"{prefix}ctr_mae"] = float(err.mean()) if err.size else math.nan
        out[f"{prefix}ctr_n_reference"] = int(np.isfinite(reference_ctr).sum())
    return out


def _epoch_core(ev: Evaluation, both: bool, at: dict, threshold: Threshold) -> dict[str, float]:
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


def decided(ev: Evaluation, decision) -> Evaluation:
    """`ev` with the decision's probabilities; images whose decision cannot be made (CTR not measurable for the ctr
    and fusion modes) are left out and counted in n_unreadable (cxr-score reports them as error rows)."""
    from dataclasses import replace

    if decision.mode == "classifier" or ev.ctr is None:
        return ev
    prob = decision.probability(ev.logits, ev.ctr)
    keep = np.isfinite(prob)
    return replace(ev, labels=ev.labels[keep], probabilities=prob[keep], index=ev.index[keep],
                   logits=ev.logits[keep], ctr=ev.ctr[keep], dice=ev.dice[keep] if ev.dice is not None else None,
                   n_unreadable=ev.n_unreadable + int((~keep).sum()))


def select(ev: Evaluation, keep: np.ndarray) -> Evaluation:
    """The rows of `ev` where `keep` is true (everything else as it is)."""
    from dataclasses import replace

    return replace(ev, labels=ev.labels[keep], probabilities=ev.probabilities[keep], index=ev.index[keep],
                   logits=None if ev.logits is None else ev.logits[keep],
                   ctr=None if ev.ctr is None else ev.ctr[keep], dice=None if ev.dice is None else ev.dice[keep])


def score_aurocs(ev: Evaluation, candidates: dict, n_boot: int, seed: int) -> dict[str, Any]:
    """AUROC with 95% CI of each candidate (classifier, ctr, fusion) on the images it can score. 'ctr' is the
    measured ratio itself (larger = more likely cardiomegaly), whatever map validation fitted to it."""
    out = {}
    for mode, dec in candidates.items():
        if mode != "ctr" and dec.mode != mode:  # a fit refused on validation: no figures of its own
            out[mode] = {"n": 0, "n_positive": 0, "auroc": math.nan, "auroc_ci95": [math.nan, math.nan],
                         "refused": dec.validation.get("why") or "the fit on validation gave the ratio a weight "
                                                                  "that was not positive"}
            continue
        prob = ev.ctr if mode == "ctr" and ev.ctr is not None else dec.probability(ev.logits, ev.ctr)
        keep = np.isfinite(prob)
        y, p = ev.labels[keep], prob[keep]
        entry: dict[str, Any] = {"n": int(keep.sum()), "n_positive": int(y.sum())}
        if M.has_both_classes(y):
            entry["auroc"] = M.roc_auc(y, p)
            entry["auroc_ci95"] = list(M.bootstrap_auroc_ci(y, p, n_boot=n_boot, seed=seed))
        else:
            entry["auroc"], entry["auroc_ci95"] = math.nan, [math.nan, math.nan]
        out[mode] = entry
    return out


def full_report(ev: Evaluation, decision, candidates: dict, threshold: Threshold, samples: Sequence,
                n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The decision's report at the threshold, the AUROC of every candidate, and anatomy figures (Dice, CTR error
    against the samples' reference CTRs), overall and per source."""
    sources = [s.source for s in samples]
    refs = np.array([np.nan if getattr(s, "ctr", None) is None else float(s.ctr) for s in samples])
    made = decided(ev, decision)
    out = report(made, threshold, sources, n_boot=n_boot, seed=seed)
    out["decision"] = decision.mode
    out["n_not_measurable"] = int(ev.labels.size - made.labels.size)  # no decision: no heart or lungs found
    src = np.asarray([sources[i] for i in ev.index], dtype=object)
    names = sorted(set(src.tolist()))
    groups = [(None, np.ones(ev.labels.size, bool))] + ([(n, src == n) for n in names] if len(names) > 1 else [])
    for name, keep in groups:
        sub = select(ev, keep)
        target = out if name is None else out.setdefault("by_source", {}).setdefault(name, {})
        if ev.logits is not None and ev.labels.size:
            target["by_score"] = score_aurocs(sub, candidates, n_boot, seed)
        if ev.dice is not None:
            target["anatomy"] = anatomy_metrics(sub, reference_ctr=refs[sub.index])
    return out


def decide_on_validation(val, val_rows, requested: str, seg: bool, config,
                         ties: str | None = None) -> tuple[Any, dict[str, Any], Evaluation, Threshold]:
    """The decision (`requested`: auto, classifier, ctr or fusion) fitted on the validation evaluation `val`
    (`val_rows[i]` the sample of its row i), every candidate for the reports, validation under the decision, and the
    threshold chosen on it by the config's method. Training's last step, and cxr-ensemble's. A decision that reads
    the ratio gets its threshold between tied probabilities; so does a classifier-mode one whose probability is
    named by `ties` (an ensemble some of whose members read the ratio)."""
    decision = choose_on_validation(requested, val_rows, val.labels, val.logits, val.ctr, seed=config.seed)
    candidates = _candidates(val, val_rows, decision, config) if seg else {"classifier": decision}
    val_decided = decided(val, decision)
    threshold = choose_threshold(config.threshold_method, config.target_sensitivity, val_decided.labels,
                                 val_decided.probabilities)
    if decision.mode != "classifier" or ties:
        threshold = _between_ties(threshold, val_decided.probabilities,
                                  decision.mode if decision.mode != "classifier" else ties)
    return decision, candidates, val_decided, threshold


def _between_ties(threshold: Threshold, probabilities: np.ndarray, mode: str) -> Threshold:
    """The threshold moved halfway down to the next lower validation probability. A CTR takes few distinct values,
    so many images share the chosen one exactly; float32 in the graph and float64 here could then call the same
    image differently. The validation calls (and so its figures) do not change."""
    below = probabilities[probabilities < threshold.value]
    value = (threshold.value + below.max()) / 2 if below.size else threshold.value
    return Threshold(float(value), threshold.method, f"{threshold.detail}; probability from the {mode}, threshold "
                     "halfway to the next lower validation probability")


def _candidates(val, val_rows, decision, config) -> dict[str, Any]:
    """Every decision fitted on validation, for the reports (the ratio's own AUROC is reported even where its fit is
    refused: then the candidate is the classifier's map with the ratio's figures beside it, and why). Also where the
    classifier was asked for (cxr-train --decision classifier, cxr-ensemble's members' average): the others are
    reported beside it, not used. Under auto, where validation had too few measurable ratios, the classifier alone."""
    too_few = "ctr" not in decision.validation.get("auroc", {}) and decision.validation.get("chosen_by") != "requested"
    if val.ctr is None or too_few:
        return {"classifier": decision}
    out = {}
    for mode in ("classifier", "ctr", "fusion"):
        try:
            out[mode] = choose_on_validation(mode, val_rows, val.labels, val.logits, val.ctr, seed=config.seed)
        except ValueError as exc:
            out[mode] = Decision(mode="classifier", validation={"refused": mode, "why": str(exc)})
    return out
