"""Checkpoints: one dict of plain types and tensors, saved with torch.save and loaded with weights_only=True.

Layout (format_version 1):
    format            "cxr-checkpoint"
    format_version    1
    kind              "best" | "last"
    model             {"arch": str, "dropout": float, "seg_head": bool (absent: False), and for cxr-ensemble
                      "ensemble": {"combine": str, "members": [{"decision", "checkpoint_sha256", "seed", ...}]}}
    decision          cxr.train.decision.Decision.to_dict() (absent: the classifier alone)
    model_state       state dict of CardiomegalyNet: the weights validated, selected and exported (with
                      --ema-halflife, their moving average)
    preprocess        PreprocessConfig.to_dict()
    normalization     Normalization.to_dict()
    threshold         {"value": float, "method": "youden_j"|"target_sensitivity"|"fixed", "detail": str}
    metrics           {"val": {...}, "test": {...} (optional)}   numbers only
    config            TrainConfig as a dict (the recipe actually run)
    data              {"kind", "source", "n_train", "n_val", "n_test", "positives": {...}, ...}
    epoch             int (last completed epoch, 1-based)
    versions          {"cxr", "torch", "torchvision"}
  only in "last" (for --resume):
    optimizer_state, scheduler_state, early_stopping (dict), rng (dict of tensors / lists), history (list of dicts)
    with --ema-halflife also: train_state (the trained weights training resumes from), ema_averaged (int, the
    number of steps averaged)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxr.runtime.atomic import atomic_write
from cxr.runtime.card import Threshold
from cxr.runtime.errors import CxrError
from cxr.runtime.preprocess import Normalization, PreprocessConfig
from cxr.train.model import ARCHS, CardiomegalyEnsemble, CardiomegalyNet

FORMAT = "cxr-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "model_state", "preprocess", "normalization", "threshold")


class CheckpointError(CxrError, ValueError):
    """A checkpoint that is missing, corrupt, or does not describe a cxr model."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (temporary file, fsync, rename) so an interrupted save never leaves a broken file."""
    path = Path(path)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"refusing to save {path}: missing {missing}")
    with atomic_write(path, "wb") as fh:
        torch.save(data, fh)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best.pt; a file is taken as it is."""
    path = Path(path)
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise CheckpointError(f"{path} is a directory without best.pt: not a cxr-train run directory")
        return best
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint (weights_only=True: never unpickles code). Raises CheckpointError saying why."""
    path = resolve_checkpoint(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code refused by weights_only
        raise CheckpointError(f"{path}: cannot be read as a cxr checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cxr checkpoint (no format={FORMAT!r} marker)")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {data.get('format_version')!r} is not supported "
                              f"(this cxr reads {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {missing}")
    arch = data["model"].get("arch") if isinstance(data["model"], dict) else None
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown architecture {arch!r} (known: {ARCHS})")
    try:
        PreprocessConfig.from_dict(data["preprocess"])
        Normalization.from_dict(data["normalization"])
        Threshold(**data["threshold"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid preprocessing, normalization or threshold: {exc}") from None
    data["path"] = str(path)
    return data


def model_from_checkpoint(data: dict[str, Any]) -> CardiomegalyNet:
    """Rebuild the model (an ensemble's members too) and load its weights strictly; a mismatch is a CheckpointError
    naming the file."""
    if data["model"].get("ensemble"):
        return _ensemble_from_checkpoint(data)
    model = CardiomegalyNet(arch=data["model"]["arch"], dropout=float(data["model"].get("dropout", 0.2)),
                            normalization=Normalization.from_dict(data["normalization"]),
                            seg_head=bool(data["model"].get("seg_head", False)))
    try:
        model.load_state_dict(data["model_state"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{data.get('path', 'checkpoint')}: weights do not match architecture "
                              f"{data['model']['arch']!r}: {' '.join(first)}") from None
    return model.eval()


def _ensemble_from_checkpoint(data: dict[str, Any]) -> CardiomegalyEnsemble:
    """The ensemble a cxr-ensemble checkpoint describes (members rebuilt, their decisions read), loaded strictly."""
    from cxr.train.decision import Decision

    spec = data["model"]
    listed = spec["ensemble"].get("members") if isinstance(spec["ensemble"], dict) else None
    if not isinstance(listed, list) or len(listed) < 2 or not all(isinstance(m, dict) for m in listed):
        raise CheckpointError(f"{data.get('path', 'checkpoint')}: its ensemble does not list two or more members")
    where = data.get("path", "checkpoint")
    state = data["model_state"] if isinstance(data["model_state"], dict) else {}
    in_state = {str(k).split(".")[1] for k in state if str(k).startswith("members.") and str(k).count(".") > 1}
    if in_state != {str(i) for i in range(len(listed))}:  # checked before any network is built
        raise CheckpointError(f"{where}: its ensemble lists {len(listed)} members but its weights hold "
                              f"{len(in_state)}")
    seg = bool(spec.get("seg_head", False))
    decisions = []
    for i, m in enumerate(listed):
        if not isinstance(m.get("decision"), dict):
            raise CheckpointError(f"{where}: member {i} has no decision")
        try:
            decisions.append(Decision.from_dict(m["decision"]))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: member {i}'s decision is invalid: {exc}") from None
        if decisions[-1].mode != "classifier" and not seg:
            raise CheckpointError(f"{where}: member {i} decides on the ratio ({decisions[-1].mode}) but the ensemble "
                                  "has no segmentation head to measure it")
    members = [CardiomegalyNet(arch=spec["arch"], dropout=float(spec.get("dropout", 0.2)),
                               normalization=Normalization.from_dict(data["normalization"]), seg_head=seg)
               for _ in listed]
    model = CardiomegalyEnsemble(members, decisions)
    try:
        model.load_state_dict(data["model_state"], strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).splitlines()[0:3])
        raise CheckpointError(f"{where}: weights do not match the ensemble of "
                              f"{len(members)} {spec['arch']!r} members: {first}") from None
    return model.eval()
