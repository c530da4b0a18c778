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
from collections.abc import Callable
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
from cxr.train.decision import Decision
from cxr.train.early_stopping import EarlyStopping
from cxr.train.errors import TrainError
from cxr.train.evaluate import choose_threshold, decide_on_validation, epoch_metrics, evaluate_split
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


def machine_record(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where training ran: the CPU (model, the ISA flags its kernels dispatch on, cores), torch's intra-op threads and
    the device. Float results of the same seed and data differ between CPU kinds (kernels differ in summation order),
    and over 20 epochs such differences can move a run's schedule, so a run says where it was trained."""
    from cxr.runtime.bench import cpu_info
    from cxr.runtime.precision import cpu_flags

    info = cpu_info()
    device = torch.device(device)
    record = {"cpu_model": info.get("model"), "cpu_flags": [f for f, present in cpu_flags(info).items() if present],
              "logical_cores": info.get("logical_cores"), "torch_threads": torch.get_num_threads(),
              "device": str(device)}
    if device.type == "cuda":
        record["cuda_device"] = torch.cuda.get_device_name(device)
    return record


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
    if config.balance_sources or config.balance_labels:
        from cxr.train.sampling import BalancedSampler

        train = data.samples["train"]
        labels = [s.label for s in train] if config.balance_labels else None
        sampler = BalancedSampler([s.source for s in train], labels, by_source=config.balance_sources,
                                  seed=config.seed, num_replicas=ctx.world_size, rank=ctx.rank)
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
                 mask_weight: float | None = None,
                 after_step: Callable[[], None] | None = None) -> tuple[float, int, float]:
    """One pass over this rank's share (`after_step` called after every optimizer step); returns (mean classifier
    loss over all ranks, unreadable images masked, mean mask loss over the images with masks, NaN without the
    segmentation head)."""
    from tqdm import tqdm

    from cxr.train.anatomy import mask_loss

    model.train()
    total, count, masked, seg_total, seg_count = 0.0, 0, 0, 0.0, 0
    show = ctx.is_main and sys.stderr.isatty() and log.isEnabledFor(logging.INFO)  # with the epoch lines: not -q
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
        stepped = True
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            stepped = scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped (inf/NaN)
        else:
            loss.backward()
            optimizer.step()
        if after_step is not None and stepped:
            after_step()
        total += float(per_image.sum().detach())
        count += int(ok.sum())
        masked += int((~ok).sum())
    total, count, masked, seg_total, seg_count = D.all_reduce_sum(ctx, [total, count, masked, seg_total, seg_count])
    if masked:
        log.warning("epoch %d: %d unreadable training image(s) left out (named in the warnings above)", epoch, masked)
    return (total / count if count else float("nan")), int(masked), (seg_total / seg_count if seg_count
                                                                     else float("nan"))


def _param_groups(model: CardiomegalyNet, config: TrainConfig) -> list[dict[str, Any]]:
    """The DenseNet and classifier at --lr/--weight-decay; the decoder at its own rate (a fresh decoder underfits at
    the backbone's fine-tuning rate and strong L2)."""
    decoder = [p for n, p in model.named_parameters() if n.startswith("decoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("decoder.")]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if decoder:
        groups.append({"params": decoder, "lr": config.decoder_lr, "weight_decay": config.seg_weight_decay})
    return groups


def _weight_average(model: CardiomegalyNet, config: TrainConfig, steps_per_epoch: int):
    """The exponential moving average of the weights (--ema-halflife epochs), or None when off. BatchNorm's running
    statistics are averaged with the weights (use_buffers), so the average is evaluated as it stands."""
    if not config.ema_halflife:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 0.5 ** (1.0 / (config.ema_halflife * max(1, steps_per_epoch)))
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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
        return _TrainRun(config, run_dir, resume, ctx).run()
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


class _TrainRun:
    """One call of `train`, its state in one place. `prepare`: the run folder, the model, data, optimizer, scheduler
    and, when resuming, everything last.pt saved; `epochs`: train, validate, step the schedule, early-stop,
    checkpoint; `finish`: the best weights, the decision and threshold chosen on validation, the test split evaluated
    once, best.pt, metrics.json and plots. The steps draw random numbers in a fixed order, which resume relies on."""

    model: CardiomegalyNet
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    data: PreparedData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    criterion: torch.nn.BCEWithLogitsLoss
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler | None
    train_ds: CxrDataset
    sampler: Any  # DistributedSampler or BalancedSampler: both reshuffle on set_epoch
    train_loader: DataLoader
    evals: dict[str, DataLoader]  # "val" and, when the data has one, "test": this rank's shard of each
    ema: Any  # AveragedModel of the weights (--ema-halflife), or None: what is validated, selected and saved

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool, ctx: D.DistContext) -> None:
        self.config, self.run_dir, self.resume, self.ctx = config, run_dir, resume, ctx
        self.last: dict[str, Any] | None = None  # last.pt, when resuming
        self.stop = EarlyStopping(config.early_stopping_patience)
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None  # on the CPU, from the best validation epoch
        self.start = 1  # the first epoch this call trains
        self.machines: list[dict[str, Any]] = []  # where each part of the run trained (one entry per machine kind)

    def run(self) -> dict[str, Any]:
        self.prepare()
        self.epochs()
        return self.finish()

    def prepare(self) -> None:
        config, ctx = self.config, self.ctx
        self._open_run_dir()
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        # the model first: unavailable initial weights fail before any image is read
        self.model = build_model(config.arch, config.dropout, init=config.init if self.last is None else "random",
                                 seg_head=config.use_seg_head)
        self.data = prepare_data(config, self.run_dir, ctx, resume=self.resume)
        if self.last is not None:
            self.data.summary = dict(self.last["data"])  # the same samples (from splits.csv) as the interrupted run
        self._optimization()
        self.train_ds, self.sampler, self.train_loader, self.evals = _loaders(config, self.data, ctx)
        self.ema = _weight_average(self.model, config, len(self.train_loader))
        if self.last is not None:
            self._restore(self.last)
        self._note_machine(machine_record(ctx.device))
        if ctx.is_main:  # on --resume too, once it can go on: the recipe as it now runs (a longer --max-epochs, ...)
            rundir.write_json(self.run_dir / "config.json", config.to_dict())

    def _note_machine(self, here: dict[str, Any]) -> None:
        """Add this machine to the run's record unless the run so far trained on the same kind (CPU model, ISA flags,
        device); say so when a resume moves a run to another kind."""
        kind = ("cpu_model", "cpu_flags", "device", "cuda_device")
        if self.machines and all(self.machines[-1].get(k) == here.get(k) for k in kind):
            return
        if self.machines and self.ctx.is_main:
            before = self.machines[-1]
            log.warning("resuming on another kind of machine (%s, %s; the run so far: %s, %s): its floating-point "
                        "results differ in the last bits, so the run goes on as it would have there only nearly, "
                        "not bit for bit", here.get("cpu_model"), here.get("device"), before.get("cpu_model"),
                        before.get("device"))
        self.machines.append({**here, "from_epoch": self.start})

    def _open_run_dir(self) -> None:
        """Resuming: last.pt loaded and the config checked against it. Otherwise rank 0 refuses a folder that holds a
        run and creates the folder; every rank waits for it."""
        run_dir = self.run_dir
        if self.resume:
            if not (run_dir / "last.pt").is_file():
                raise TrainError(f"--resume {run_dir}: no last.pt there, nothing to resume")
            self.last = load_checkpoint(run_dir / "last.pt")
            self.config = _check_resumable(TrainConfig.from_dict(self.last["config"]), self.config, run_dir)
        elif self.ctx.is_main:
            if (run_dir / "last.pt").exists():
                raise TrainError(f"{run_dir} already holds a run (last.pt); use --resume {run_dir} or another --out")
            run_dir.mkdir(parents=True, exist_ok=True)
        D.barrier(self.ctx)

    def _optimization(self) -> None:
        """The model on its device (under DDP when distributed), optimizer, plateau schedule, loss and AMP."""
        model, config, ctx = self.model, self.config, self.ctx
        model.to(ctx.device)
        self.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None) if ctx.enabled else model
        opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", patience=config.plateau_patience, factor=config.plateau_factor)
        pos_weight = self.data.pos_weight
        self.criterion = torch.nn.BCEWithLogitsLoss(
            reduction="none", pos_weight=None if pos_weight is None else torch.tensor(pos_weight, device=ctx.device))
        self.autocast, self.scaler = _amp(config, ctx.device)

    def _restore(self, last: dict[str, Any]) -> None:
        """Weights, optimizer, schedule, scaler, early stopping, history, best weights and RNG states from last.pt."""
        self.model.load_state_dict(last["train_state"] if "train_state" in last else last["model_state"])
        if self.ema is not None:
            self.ema.module.load_state_dict(last["model_state"])
            self.ema.n_averaged.fill_(int(last["ema_averaged"]))
        self.optimizer.load_state_dict(last["optimizer_state"])
        self.scheduler.load_state_dict(last["scheduler_state"])
        if self.scaler is not None and last.get("scaler_state"):
            self.scaler.load_state_dict(last["scaler_state"])
        self.stop = EarlyStopping.from_state(last["early_stopping"], self.config.early_stopping_patience,
                                             str(self.run_dir / "last.pt"))
        self.history = list(last["history"])
        self.best_state = load_checkpoint(self.run_dir / "best.pt")["model_state"]
        _set_rng_state(last["rng"])
        self.start = int(last["epoch"]) + 1
        self.machines = [dict(m) for m in last.get("machines") or []]
        log.info("resuming %s after epoch %d", self.run_dir, last["epoch"])

    def epochs(self) -> None:
        for epoch in range(self.start, self.config.max_epochs + 1):
            if self.stop.stopped:
                break
            self._epoch(epoch)

    def _epoch(self, epoch: int) -> None:
        """Train one epoch, validate, step the schedule and early stopping, log, and (rank 0) save."""
        config, ctx, stop = self.config, self.ctx, self.stop
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(config.seed, epoch, ctx.rank))
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        seg = config.use_seg_head
        train_loss, _, train_mask_loss = _train_epoch(self.net, self.train_loader, self.optimizer, self.criterion, ctx,
                                                      self.autocast, self.scaler, epoch,
                                                      mask_weight=config.mask_loss_weight if seg else None,
                                                      after_step=self._average if self.ema is not None else None)
        if self.ema is not None:  # each rank averaged its own BatchNorm statistics: validate and save rank 0's
            D.broadcast_buffers(ctx, self.ema.module)
        ev, ev_loss, threshold = self._validate(epoch, lr)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
               **epoch_metrics(ev, threshold, [s.source for s in self.data.samples["val"]])}
        if seg:
            row.update(train_mask_loss=train_mask_loss, val_selection_loss=ev_loss)
        self.scheduler.step(ev_loss)  # every rank holds the same gathered val loss, so schedulers agree
        improved = stop.update(ev_loss, epoch)
        if improved:
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.selected.state_dict().items()}
        stop.stopped = bool(D.broadcast_from_main(ctx, stop.due))
        row.update(seconds=round(time.perf_counter() - t0, 3), is_best=int(improved))
        self.history.append(row)
        log.info("epoch %d (%s, %.0f s): lr %.2e train_loss %.4f val_loss %.4f val_auroc %.4f%s%s", epoch,
                 ctx.device, row["seconds"], lr, train_loss, ev.loss, row["val_auroc"], _anatomy_note(row),
                 " (best)" if improved else "")
        if ctx.is_main:
            self._save(epoch, row, threshold, improved)
        if stop.stopped:
            log.info("early stopping after epoch %d: no lower validation loss for %d epochs (best epoch %d)",
                     epoch, stop.bad_epochs, stop.best_epoch)

    @property
    def selected(self) -> CardiomegalyNet:
        """The weights validated, selected and saved: the moving average when on, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    def _average(self) -> None:
        self.ema.update_parameters(self.model)
        for avg, buf in zip(self.ema.module.buffers(), self.model.buffers()):
            if not avg.is_floating_point():  # counters (BatchNorm's num_batches_tracked) are copied, not averaged
                avg.copy_(buf)

    def _evaluate(self, split: str):
        return evaluate_split(self.selected, self.evals[split], self.ctx, self.data.pos_weight, self.autocast)

    def _validate(self, epoch: int, lr: float) -> tuple[Any, float, Threshold]:
        """(validation evaluation, the loss model selection watches, the epoch's threshold); TrainError when the
        validation images cannot select a model or the outputs are not finite."""
        ev = self._evaluate("val")
        ev_loss = _selection_loss(ev, self.config)
        _require_usable_validation(ev, self.data.samples["val"])
        if not (np.isfinite(ev.loss) and np.isfinite(ev.probabilities).all()):
            raise TrainError(f"epoch {epoch}: the model's validation outputs are not finite (loss {ev.loss}): "
                             f"training diverged; lower --lr (now {lr:g}) or check the images")
        threshold = choose_threshold(self.config.threshold_method, self.config.target_sensitivity, ev.labels,
                                     ev.probabilities)
        return ev, ev_loss, threshold

    def _save(self, epoch: int, row: dict[str, Any], threshold: Threshold, improved: bool) -> None:
        """best.pt when the epoch improved; last.pt (everything resume needs) and history.csv always."""
        val_metrics = jsonable({"val": {k[4:]: v for k, v in row.items() if k.startswith("val_")}})
        if improved:
            save_checkpoint(self._payload("best", threshold, val_metrics, epoch), self.run_dir / "best.pt")
        state = self._payload("last", threshold, val_metrics, epoch)
        if self.ema is not None:  # model_state holds the average (what export reads); training resumes from these
            state.update(train_state={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                         ema_averaged=int(self.ema.n_averaged))
        state.update(optimizer_state=self.optimizer.state_dict(), scheduler_state=self.scheduler.state_dict(),
                     scaler_state=self.scaler.state_dict() if self.scaler is not None else {},
                     early_stopping=self.stop.state_dict(), rng=_rng_state(), history=self.history,
                     sampler={"seed": self.config.seed, "epoch": epoch, "world_size": self.ctx.world_size})
        save_checkpoint(state, self.run_dir / "last.pt")
        rundir.write_history(self.run_dir / "history.csv", self.history)

    def _payload(self, kind: str, threshold: Threshold, metrics: dict, epoch: int, *,
                 decision: Decision | None = None) -> dict[str, Any]:
        """A checkpoint of the selected weights (kind "best" or "last") with what export needs."""
        config, model = self.config, self.selected
        return {
            "kind": kind, "model": {"arch": config.arch, "dropout": config.dropout, "seg_head": config.use_seg_head},
            "decision": (decision or Decision()).to_dict(),
            "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "preprocess": config.preprocess.to_dict(), "normalization": model_normalization(model),
            "threshold": {"value": float(threshold.value), "method": threshold.method, "detail": threshold.detail},
            "metrics": metrics, "config": config.to_dict(), "data": self.data.summary, "epoch": int(epoch),
            "versions": _versions(), "machines": copy.deepcopy(self.machines),
        }

    def finish(self) -> dict[str, Any]:
        """Best weights back; the decision (classifier, CTR or fusion) and the threshold chosen on validation with
        them; test evaluated once; best.pt, metrics.json, plots. Returns the summary metrics.json holds."""
        from cxr.train.evaluate import decided, full_report

        config, ctx, data, stop = self.config, self.ctx, self.data, self.stop
        if self.best_state is None:  # no epoch ran (max_epochs reached before the first): nothing to select from
            raise TrainError("no epoch was trained, so there are no best weights (raise --max-epochs)")
        self.selected.load_state_dict(self.best_state)
        val = self._evaluate("val")
        decision, candidates, val_decided, threshold = self._decide(val)
        kw = {"n_boot": config.bootstrap_n, "seed": config.seed}
        metrics = {"val": full_report(val, decision, candidates, threshold, data.samples["val"], **kw),
                   "decision": decision.to_dict(),
                   "decision_candidates": {m: d.to_dict() for m, d in candidates.items()}}
        test = None
        if "test" in self.evals:
            test = self._evaluate("test")
            metrics["test"] = full_report(test, decision, candidates, threshold, data.samples["test"], **kw)
            test = decided(test, decision)
        summary = {
            "run_dir": str(self.run_dir), "best_epoch": stop.best_epoch, "epochs_run": len(self.history),
            "stopped_early": stop.stopped, "threshold": {"value": threshold.value, "method": threshold.method,
                                                            "detail": threshold.detail},
            "decision": decision.to_dict(),
            "pos_weight": data.pos_weight, "world_size": ctx.world_size, "device": str(ctx.device),
            "data": data.summary, "metrics": metrics, "versions": _versions(),
            "machines": copy.deepcopy(self.machines),
        }
        if ctx.is_main:
            save_checkpoint(self._payload("best", threshold, jsonable(metrics), stop.best_epoch, decision=decision),
                            self.run_dir / "best.pt")
            rundir.write_json(self.run_dir / "metrics.json", summary)
            from cxr.train.plots import write_run_plots

            write_run_plots(self.run_dir, self.history, {"test": test, "validation": val_decided}, threshold.value,
                            **kw)
        D.barrier(ctx)
        return copy.deepcopy(summary)

    def _decide(self, val) -> tuple[Decision, dict[str, Decision], Any, Threshold]:
        """(the decision, every candidate decision for the reports, validation under the decision, its threshold)."""
        config = self.config
        val_rows = [self.data.samples["val"][int(i)] for i in val.index]
        return decide_on_validation(val, val_rows, config.decision if config.use_seg_head else "classifier",
                                    config.use_seg_head, config)
