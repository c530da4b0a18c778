"""The files an export writes, shared by the fp32 export and its reduced-precision copies: side-file names, the
model card built from a checkpoint, and the card saved into an ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxr.runtime.atomic import fsync_write


def side_path(out: Path, tag: str) -> Path:
    """model.onnx + 'int8.onnx' -> model.int8.onnx; + 'validation.json' -> model.validation.json."""
    out = Path(out)
    base = out.name[:-len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{base}.{tag}")


def save_with_card(proto, card, path: Path) -> Path:
    """Set the card under cxr.card and save as one file (fsync'd; the caller renames it once it passes its checks)."""
    from onnx import helper

    from cxr.runtime.card import CARD_KEY

    del proto.metadata_props[:]
    helper.set_model_props(proto, {CARD_KEY: card.to_json()})
    proto.producer_name, proto.producer_version = "cxr-export", _cxr_version()
    return fsync_write(path, proto.SerializeToString())


def _cxr_version() -> str:
    import cxr

    return cxr.__version__


def versions() -> dict[str, str]:
    import onnx
    import torch

    from cxr.runtime.ort import import_ort

    onnxruntime = import_ort()

    return {"cxr": _cxr_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def build_card(ckpt: dict[str, Any], export_facts: dict[str, Any], outputs: tuple[str, ...] = ("logit", "probability")):
    """The model card from the checkpoint: preprocess, normalization, threshold, training summary, export facts."""
    from cxr.runtime.card import ModelCard, Threshold
    from cxr.runtime.preprocess import Normalization, PreprocessConfig
    from cxr.runtime.serialization import jsonable

    data = dict(ckpt.get("data") or {})
    # A shared model should not carry image-level file names (NIH names embed patient ids): counts only.
    unreadable = data.pop("unreadable", None) or []
    data["n_unreadable"] = len(unreadable)
    training = {
        "model": ckpt["model"],
        "data": data,
        "split_sizes": {k: data.get(f"n_{k}") for k in ("train", "val", "test") if f"n_{k}" in data},
        "metrics": ckpt.get("metrics", {}),
        "config": ckpt.get("config", {}),
        "epoch": ckpt.get("epoch"),
        "versions": ckpt.get("versions", {}),
        "machines": ckpt.get("machines", []),
    }
    return ModelCard(preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]),
                     normalization=Normalization.from_dict(ckpt["normalization"]),
                     threshold=Threshold(**ckpt["threshold"]),
                     training=jsonable(training), export=jsonable(export_facts),
                     output_names=tuple(outputs), decision=jsonable(ckpt.get("decision") or {"mode": "classifier"}))


