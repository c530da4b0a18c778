"""The training loop: `train(config, run_dir, resume=False) -> summary`.

The recipe: Adam (coupled L2) or AdamW, BCE-with-logits (optional pos_weight), ReduceLROnPlateau stepped on the
validation loss, early stopping that keeps the best-validation-loss weights. Each epoch is a pure function of
(seed, epoch, rank) and the state saved in last.pt, so `resume=True` after an interruption ends exactly where an
uninterrupted run would: the shuffling order (DistributedSampler: seed + epoch), the augmentation angles (seed, epoch,
index) and the dropout RNG (re-seeded per epoch) are all derived, and last.pt also stores the RNG states, optimizer,
scheduler and early-stopping state. Under torchrun the same code runs data-parallel (see cxr.train.distributed).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

import cxr
from cxr.runtime.card import Threshold
from cxr.runtime.serialization import jsonable
from cxr.train import distributed as D
from cxr.train import rundir
from cxr.train.checkpoints import load_checkpoint, save_checkpoint
from cxr.train.config import RESUMABLE_OVERRIDES, TrainConfig
from cxr.train.data import CxrDataset
from cxr.train.decision import Decision, choose_on_validation
from cxr.train.early_stopping import EarlyStopping
from cxr.train.errors import TrainError
from cxr.train.evaluate import choose_threshold, epoch_metrics, evaluate_split
from cxr.train.model import CardiomegalyNet, build_model
from cxr.train.prepare import PreparedData, prepare_data

log = logging.getLogger(__name__)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors/lists/numbers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _versions() -> dict[str, str]:
    import torchvision

    return {"cxr": cxr.__version__ if hasattr(cxr, "__version__") else "unknown", "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "python": sys.version.split()[0]}


def _amp(config: TrainConfig, device: torch.device):
    """(autocast context factory, GradScaler or None). AMP is for CUDA only."""
    use = config.amp == "on" or (config.amp == "auto" and device.type == "cuda")
    if use and device.type != "cuda":
        raise TrainError(f"--amp on needs CUDA; this run is on {device} (use --amp auto or off)")
    if not use:
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _loaders(config: TrainConfig, data: PreparedData, ctx: D.DistContext):
    pp, kw = config.preprocess, {"num_workers": config.num_workers, "pin_memory": ctx.device.type == "cuda"}
    masks = (lambda split: data.mask_cache.get(split, {})) if config.use_seg_head else (lambda split: None)
    train_ds = CxrDataset(data.samples["train"], pp, train=True, rotation_degrees=config.rotation_degrees,
                          seed=config.seed, cache=data.cache.get("train"), masks=masks("train"),
                          augmentation=config.augmentation)
    if config.balance_sources:
        from cxr.train.sampling import SourceBalancedSampler

        sampler = SourceBalancedSampler([s.source for s in data.samples["train"]], seed=config.seed,
                                        num_replicas=ctx.world_size, rank=ctx.rank)
    else:
        sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=config.seed, drop_last=False)
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, **kw)
    evals = {}
    for split in ("val", "test"):
        if data.samples.get(split):
            ds = CxrDataset(data.samples[split], pp, cache=data.cache.get(split), masks=masks(split))
            evals[split] = DataLoader(Subset(ds, D.shard(ctx, len(ds))), batch_size=config.batch_size,
                                      shuffle=False, **kw)
    return train_ds, sampler, train_loader, evals


def _train_epoch(model, loader, optimizer, criterion, ctx, autocast, scaler, epoch: int, *,
                 mask_weight: float | None = None) -> tuple[float, int, float]:
    """One pass over this rank's share; returns (mean classifier loss over all ranks, unreadable images masked,
    mean mask loss over the images with masks, NaN without the segmentation head)."""
    from tqdm import tqdm

    from cxr.train.anatomy import mask_loss

    model.train()
    total, count, masked, seg_total, seg_count = 0.0, 0, 0, 0.0, 0
    show = ctx.is_main and sys.stderr.isatty()
    for batch in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show):
        images, labels, ok = batch[0].to(ctx.device, non_blocking=True), batch[1].to(ctx.device), batch[2]
        okf = ok.to(ctx.device).float()
        with autocast():
            out = model(images) if mask_weight is None else model(images, all_outputs=True)
        logits = out if mask_weight is None else out["logit"]
        per_image = criterion(logits.float(), labels) * okf  # unreadable images weigh nothing (same step count)
        loss = per_image.sum() / okf.sum().clamp(min=1.0)
        if mask_weight is not None:
            seg, n_seg = mask_loss(out["mask_logits"], batch[4].to(ctx.device), batch[5].to(ctx.device))
            loss = loss + mask_weight * seg
            seg_total += float(seg.detach()) * n_seg
            seg_count += n_seg
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += float(per_image.sum().detach())
        count += int(ok.sum())
        masked += int((~ok).sum())
    total, count, masked, seg_total, seg_count = D.all_reduce_sum(ctx, [total, count, masked, seg_total, seg_count])
    if masked:
        log.warning("epoch %d: %d unreadable training image(s) left out (named in the warnings above)", epoch, masked)
    return (total / count if count else float("nan")), int(masked), (seg_total / seg_count if seg_count
                                                                     else float("nan"))


def _payload(kind: str, model: CardiomegalyNet, config: TrainConfig, data: PreparedData, threshold: Threshold,
             metrics: dict, epoch: int, *, state_dict=None, decision: Decision | None = None) -> dict[str, Any]:
    return {
        "kind": kind, "model": {"arch": config.arch, "dropout": config.dropout, "seg_head": config.use_seg_head},
        "decision": (decision or Decision()).to_dict(),
        "model_state": {k: v.detach().cpu().clone() for k, v in (state_dict or model.state_dict()).items()},
        "preprocess": config.preprocess.to_dict(), "normalization": model_normalization(model),
        "threshold": {"value": float(threshold.value), "method": threshold.method, "detail": threshold.detail},
        "metrics": metrics, "config": config.to_dict(), "data": data.summary, "epoch": int(epoch),
        "versions": _versions(),
    }


def _param_groups(model: CardiomegalyNet, config: TrainConfig) -> list[dict[str, Any]]:
    """The DenseNet and classifier at --lr/--weight-decay; the decoder at its own rate (a fresh decoder underfits at
    the backbone's fine-tuning rate and strong L2)."""
    decoder = [p for n, p in model.named_parameters() if n.startswith("decoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("decoder.")]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if decoder:
        groups.append({"params": decoder, "lr": config.decoder_lr, "weight_decay": config.seg_weight_decay})
    return groups


def _selection_loss(ev, config: TrainConfig) -> float:
    """What the plateau schedule and early stopping watch: the classifier's validation BCE, plus, with the
    segmentation head, mask_loss_weight x (1 - mean Dice of heart and lungs) on the validation images with masks."""
    if ev.dice is None or not np.isfinite(ev.dice).any():
        return ev.loss
    dice = float(np.nanmean(ev.dice[:, [0, 3]]))
    return float(ev.loss + config.mask_loss_weight * (1.0 - dice))


def _anatomy_note(row: dict[str, Any]) -> str:
    if "val_dice_heart" not in row:
        return ""
    return (f" dice heart {row['val_dice_heart']:.3f} lungs {row['val_dice_lungs']:.3f} "
            f"ctr_auroc {row['val_ctr_auroc']:.3f}")


def model_normalization(model: CardiomegalyNet) -> dict[str, float]:
    return {"mean": float(model.mean), "std": float(model.std)}


def _check_resumable(saved: TrainConfig, given: TrainConfig, run_dir: Path) -> TrainConfig:
    now = given.to_dict()
    diff = [k for k, v in saved.to_dict().items() if k not in RESUMABLE_OVERRIDES and v != now[k]]
    if diff:
        raise TrainError(f"--resume {run_dir}: the run was started with a different {', '.join(diff)}; only "
                         f"{', '.join(RESUMABLE_OVERRIDES)} may change when resuming")
    return given


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train per `config` into `run_dir` (see the README for the files); returns the summary written to metrics.json.

    Raises ValueError (bad data, a split without positives, a config that cannot resume) and
    cxr.train.model.InitWeightsError (initial weights unavailable) for problems a user can fix.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    ctx = D.setup(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        _amp(config, ctx.device)  # an option that cannot work on this device fails before any image is indexed
        if ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _train(config, run_dir, resume, ctx)
    except Exception:
        if created and ctx.is_main:
            _remove_failed_start(run_dir)
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic)
        D.teardown(ctx)


def _remove_failed_start(run_dir: Path) -> None:
    """A run folder this call created is removed when the run failed before its first epoch was saved (no last.pt):
    it holds nothing to resume, and a leftover folder would only confuse the next try."""
    import shutil

    if run_dir.is_dir() and not (run_dir / "last.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        log.debug("removed %s: the run failed before its first epoch", run_dir)


def _train(config: TrainConfig, run_dir: Path, resume: bool, ctx: D.DistContext) -> dict[str, Any]:
    last = None
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise TrainError(f"--resume {run_dir}: no last.pt there, nothing to resume")
        last = load_checkpoint(run_dir / "last.pt")
        config = _check_resumable(TrainConfig.from_dict(last["config"]), config, run_dir)
    elif ctx.is_main:
        if (run_dir / "last.pt").exists():
            raise TrainError(f"{run_dir} already holds a run (last.pt); use --resume {run_dir} or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier(ctx)

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    # the model first: unavailable initial weights fail before any image is read
    model = build_model(config.arch, config.dropout, init=config.init if last is None else "random",
                        seg_head=config.use_seg_head)
    data = prepare_data(config, run_dir, ctx, resume=resume)
    if last is not None:
        data.summary = dict(last["data"])  # the same samples (from splits.csv) as the interrupted run
    if ctx.is_main and not resume:
        rundir.write_json(run_dir / "config.json", config.to_dict())
    model.to(ctx.device)
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) if ctx.enabled else model
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=config.plateau_patience,
                                                           factor=config.plateau_factor)
    pos_weight = data.pos_weight
    criterion = torch.nn.BCEWithLogitsLoss(
        reduction="none", pos_weight=None if pos_weight is None else torch.tensor(pos_weight, device=ctx.device))
    autocast, scaler = _amp(config, ctx.device)
    train_ds, sampler, train_loader, evals = _loaders(config, data, ctx)
    seg = config.use_seg_head
    val_sources = [s.source for s in data.samples["val"]]

    history: list[dict[str, Any]] = []
    stop = EarlyStopping(config.early_stopping_patience)
    best_state = None
    start = 1
    if last is not None:
        model.load_state_dict(last["model_state"])
        optimizer.load_state_dict(last["optimizer_state"])
        scheduler.load_state_dict(last["scheduler_state"])
        if scaler is not None and last.get("scaler_state"):
            scaler.load_state_dict(last["scaler_state"])
        stop = EarlyStopping.from_state(last["early_stopping"], config.early_stopping_patience,
                                        str(run_dir / "last.pt"))
        history = list(last["history"])
        best_state = load_checkpoint(run_dir / "best.pt")["model_state"]
        _set_rng_state(last["rng"])
        start = int(last["epoch"]) + 1
        log.info("resuming %s after epoch %d", run_dir, last["epoch"])

    for epoch in range(start, config.max_epochs + 1):
        if stop.stopped:
            break
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(config.seed, epoch, ctx.rank))
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss, _, train_mask_loss = _train_epoch(net, train_loader, optimizer, criterion, ctx, autocast, scaler,
                                                      epoch, mask_weight=config.mask_loss_weight if seg else None)
        ev = evaluate_split(model, evals["val"], ctx, pos_weight, autocast)
        ev_loss = _selection_loss(ev, config)
        _require_usable_validation(ev, data.samples["val"])
        if not (np.isfinite(ev.loss) and np.isfinite(ev.probabilities).all()):
            raise TrainError(f"epoch {epoch}: the model's validation outputs are not finite (loss {ev.loss}): "
                             f"training diverged; lower --lr (now {lr:g}) or check the images")
        threshold = choose_threshold(config.threshold_method, config.target_sensitivity, ev.labels,
                                     ev.probabilities)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
               **epoch_metrics(ev, threshold, val_sources)}
        if seg:
            row.update(train_mask_loss=train_mask_loss, val_selection_loss=ev_loss)
        scheduler.step(ev_loss)  # every rank holds the same gathered val loss, so schedulers agree
        improved = stop.update(ev_loss, epoch)
        if improved:
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        stop.stopped = bool(D.broadcast_from_main(ctx, stop.due))
        row.update(seconds=round(time.perf_counter() - t0, 3), is_best=int(improved))
        history.append(row)
        log.info("epoch %d (%s, %.0f s): lr %.2e train_loss %.4f val_loss %.4f val_auroc %.4f%s%s", epoch,
                 ctx.device, row["seconds"], lr, train_loss, ev.loss, row["val_auroc"], _anatomy_note(row),
                 " (best)" if improved else "")
        if ctx.is_main:
            val_metrics = jsonable({"val": {k[4:]: v for k, v in row.items() if k.startswith("val_")}})
            if improved:
                save_checkpoint(_payload("best", model, config, data, threshold, val_metrics, epoch),
                                run_dir / "best.pt")
            state = _payload("last", model, config, data, threshold, val_metrics, epoch)
            state.update(optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                         scaler_state=scaler.state_dict() if scaler is not None else {},
                         early_stopping=stop.state_dict(), rng=_rng_state(), history=history,
                         sampler={"seed": config.seed, "epoch": epoch, "world_size": ctx.world_size})
            save_checkpoint(state, run_dir / "last.pt")
            rundir.write_history(run_dir / "history.csv", history)
        if stop.stopped:
            log.info("early stopping after epoch %d: no lower validation loss for %d epochs (best epoch %d)",
                     epoch, stop.bad_epochs, stop.best_epoch)

    return _finish(config, run_dir, ctx, data=data, model=model, best_state=best_state, stop=stop, history=history,
                   evals=evals, pos_weight=pos_weight, autocast=autocast)


def _between_ties(threshold: Threshold, probabilities: np.ndarray, mode: str) -> Threshold:
    """The threshold moved halfway down to the next lower validation probability. A CTR takes few distinct values,
    so many images share the chosen one exactly; float32 in the graph and float64 here could then call the same
    image differently. The validation calls (and so its figures) do not change."""
    below = probabilities[probabilities < threshold.value]
    value = (threshold.value + below.max()) / 2 if below.size else threshold.value
    return Threshold(float(value), threshold.method, f"{threshold.detail}; probability from the {mode}, threshold "
                     "halfway to the next lower validation probability")


def _candidates(val, val_rows, decision: Decision, config: TrainConfig) -> dict[str, Decision]:
    """Every decision fitted on validation, for the reports (the ratio's own AUROC is reported even where its fit is
    refused: then the candidate is the classifier's map with the ratio's figures beside it)."""
    out = {}
    for mode in ("classifier", "ctr", "fusion"):
        if val.ctr is None or "ctr" not in decision.validation.get("auroc", {}):
            return {"classifier": decision}
        try:
            out[mode] = choose_on_validation(mode, val_rows, val.labels, val.logits, val.ctr, seed=config.seed)
        except ValueError:
            out[mode] = Decision(mode="classifier", validation={"refused": mode})
    return out


def _require_usable_validation(ev, samples) -> None:
    """ValueError when the readable validation images cannot select a model: none of them, or a single class.
    (With the image cache on, unreadable images are dropped and the splits checked before training; without it,
    this is where an unreadable validation split shows.)"""
    classes = set(np.unique(ev.labels).tolist())
    if ev.labels.size and classes == {0, 1}:
        return
    readable = set(ev.index.tolist())
    unreadable = [str(s.path) for i, s in enumerate(samples) if i not in readable]
    shown = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
    what = ("none of the validation images could be read" if not ev.labels.size else
            f"the readable validation images are all {'positive' if classes == {1} else 'negative'}")
    raise TrainError(f"{what} ({ev.labels.size} readable, {len(unreadable)} unreadable"
                     + (f": {shown}" if unreadable else "") + "); a model cannot be selected on them")


def _finish(config, run_dir, ctx, *, data, model, best_state, stop: EarlyStopping, history, evals, pos_weight,
            autocast):
    """Best weights back; the decision (classifier, CTR or fusion) and the threshold chosen on validation with them;
    test evaluated once; best.pt, metrics, plots."""
    from cxr.train.evaluate import decided, full_report

    if best_state is None:  # no epoch ran (max_epochs reached before the first): nothing to select from
        raise TrainError("no epoch was trained, so there are no best weights (raise --max-epochs)")
    model.load_state_dict(best_state)
    val = evaluate_split(model, evals["val"], ctx, pos_weight, autocast)
    val_rows = [data.samples["val"][int(i)] for i in val.index]
    decision = choose_on_validation(config.decision if config.use_seg_head else "classifier", val_rows, val.labels,
                                    val.logits, val.ctr, seed=config.seed)
    candidates = _candidates(val, val_rows, decision, config) if config.use_seg_head else {"classifier": decision}
    val_decided = decided(val, decision)
    threshold = choose_threshold(config.threshold_method, config.target_sensitivity, val_decided.labels,
                                 val_decided.probabilities)
    if decision.mode != "classifier":
        threshold = _between_ties(threshold, val_decided.probabilities, decision.mode)
    kw = {"n_boot": config.bootstrap_n, "seed": config.seed}
    metrics = {"val": full_report(val, decision, candidates, threshold, data.samples["val"], **kw),
               "decision": decision.to_dict(),
               "decision_candidates": {m: d.to_dict() for m, d in candidates.items()}}
    test = None
    if "test" in evals:
        test = evaluate_split(model, evals["test"], ctx, pos_weight, autocast)
        metrics["test"] = full_report(test, decision, candidates, threshold, data.samples["test"], **kw)
        test = decided(test, decision)
    summary = {
        "run_dir": str(run_dir), "best_epoch": stop.best_epoch, "epochs_run": len(history),
        "stopped_early": stop.stopped, "threshold": {"value": threshold.value, "method": threshold.method,
                                                        "detail": threshold.detail},
        "decision": decision.to_dict(),
        "pos_weight": pos_weight, "world_size": ctx.world_size, "device": str(ctx.device), "data": data.summary,
        "metrics": metrics,
    }
    if ctx.is_main:
        save_checkpoint(_payload("best", model, config, data, threshold, jsonable(metrics),
                                 stop.best_epoch, decision=decision), run_dir / "best.pt")
        rundir.write_json(run_dir / "metrics.json", summary)
        from cxr.train.plots import write_run_plots

        write_run_plots(run_dir, history, {"test": test, "validation": val_decided}, threshold.value, **kw)
    D.barrier(ctx)
    return copy.deepcopy(summary)
