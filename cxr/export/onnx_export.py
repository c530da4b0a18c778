"""Export a cxr-train checkpoint to one validated, self-describing ONNX file.

    best.pt --(eval mode, TorchScript exporter, opset as asked)--> graph: image uint8 [N,1,S,S] -> logit, probability
            --(model card under metadata key cxr.card)--> temporary file --(validate.py checks)--> model.onnx

Files written next to `out` (model.onnx):
    model.validation.json        what was checked and the figures (parity, batch invariance, ...)
    model.int8.onnx / .fp16.onnx  optional reduced-precision copies, each with its own card (precision, figures)
    model.rejected.onnx (+ model.rejected.validation.json)   the file that failed a check, kept for inspection;
                                  nothing is ever written under the final name unless every check passed.
The TorchScript exporter (dynamo=False) is used because the dynamo exporter on torch 2.14 wrote opset 18 and
external data when asked for 17 (FIELD-NOTES); the opset of the written file is checked either way.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxr.export.errors import ExportError
from cxr.runtime.serialization import sha256_file

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(13, 21)
"""13..20: each exports DenseNet-121 with the TorchScript exporter and runs in ONNX Runtime here. 21+ is not
supported by torch.onnx's TorchScript exporter (it warns and falls back); <13 lacks per-channel QDQ for int8."""
QUANTIZE_MODES = ("int8",)
EXPORTER = "torch.onnx.export (TorchScript, dynamo=False)"


def check_opset_supported(opset: int) -> int:
    """Raise ValueError for an opset outside SUPPORTED_OPSETS (checked before anything is loaded)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset!r} is not supported: choose {SUPPORTED_OPSETS.start}.."
                         f"{SUPPORTED_OPSETS.stop - 1} (the range the TorchScript exporter handles for DenseNet)")
    return opset


def side_path(out: Path, tag: str) -> Path:
    """model.onnx + 'int8.onnx' -> model.int8.onnx; + 'validation.json' -> model.validation.json."""
    out = Path(out)
    base = out.name[:-len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{base}.{tag}")


@dataclass
class ExportReport:
    """What export_onnx wrote and measured."""

    path: Path
    size_bytes: int
    opset: int
    threshold: dict[str, Any]
    checkpoint: Path
    checkpoint_sha256: str
    validation: dict[str, Any] | str
    """The validation report (figures per check), or 'skipped'."""
    report_path: Path | None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """'int8' / 'fp16': path (or None when refused), size, speed-up, AUROC change, reason."""

    def summary_lines(self) -> list[str]:
        lines = [f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, opset {self.opset})",
                 f"threshold {self.threshold['value']:.4f} ({self.threshold['method']})"]
        if isinstance(self.validation, dict):
            checks = self.validation["checks"]
            inv = checks["batch_invariance"]["per_batch_size"]
            lines.append(f"parity vs PyTorch: max |prob diff| {checks['parity_torch_vs_ort']['max_abs_diff']:.2e} "
                         f"on {self.validation['n_images']} images ({self.validation.get('images', '')})")
            lines.append("batch invariance: max |diff| " + ", ".join(
                f"b={k}: {v:.1e}" for k, v in inv.items() if k != "max"))
            lines.append(f"validation report: {self.report_path}")
        else:
            lines.append("validation: skipped (--no-validate)")
        for name, v in self.variants.items():
            if v.get("path"):
                lines.append(f"{name}: wrote {v['path']} ({v['size_bytes'] / 1e6:.2f} MB, "
                             f"{v.get('size_ratio', float('nan')):.2f}x smaller, "
                             f"speed-up {v.get('speedup', float('nan')):.2f}x, "
                             f"AUROC change {_fmt(v.get('auroc_change'))})"
                             + (f"; {v['reason']}" if v.get("reason") else ""))
            else:
                lines.append(f"{name}: NOT written: {v.get('reason')}")
        return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


class ExportWrapper:
    """Builds the traced module: image uint8 -> logit, probability (the decision's), cam and, with the segmentation
    head, ctr and masks. Every output is computed in the graph so every runtime gets it without torch."""

    @staticmethod
    def outputs(model) -> tuple[str, ...]:
        from cxr.runtime.card import OUTPUT_NAMES

        return OUTPUT_NAMES + (("cam", "ctr", "masks") if getattr(model, "seg_head", False) else ("cam",))

    @staticmethod
    def build(model, decision=None):
        import torch

        from cxr.train.anatomy import binary_masks, ctr_from_masks
        from cxr.train.decision import Decision

        decision = decision or Decision()
        seg = bool(getattr(model, "seg_head", False))

        class Wrapper(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, image):
                out = self.inner.forward_all(image)
                cls_logit = out["logit"].float()
                cam = self.inner.cam(out["features"]).float()
                if not seg:
                    return cls_logit, torch.sigmoid(cls_logit), cam
                masks = binary_masks(out["mask_logits"].float())
                ctr = ctr_from_masks(masks)
                if decision.mode == "classifier":
                    logit = cls_logit
                elif decision.mode == "ctr":
                    logit = decision.w_ctr * ctr + decision.intercept
                else:
                    logit = decision.w_classifier * cls_logit + decision.w_ctr * ctr + decision.intercept
                return logit, torch.sigmoid(logit), cam, ctr, masks

        return Wrapper(model)


def export_graph(model, opset: int, size: int, training: bool = False, decision=None):
    """Trace `model` into an in-memory onnx.ModelProto with outputs logit, probability, cam (and ctr, masks with the
    segmentation head), N dynamic. `training=True` exists only so tests can produce a training-mode file."""
    import onnx
    import torch

    wrapper = ExportWrapper.build(model, decision).train(training)
    names = list(ExportWrapper.outputs(model))
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    dummy = torch.zeros((2, 1, size, size), dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*[Rr]emove usage of this function.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (dummy,), buffer, dynamo=False, opset_version=opset, training=mode,
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "N"}, **{n: {0: "N"} for n in names}},
                          do_constant_folding=not training)
    proto = onnx.load_from_string(buffer.getvalue())
    with torch.inference_mode():
        shapes = [tuple(t.shape) for t in wrapper.eval()(dummy)]
    wrapper.train(training)
    _fix_output_shapes(proto, shapes)
    return proto


def _fix_output_shapes(proto, shapes) -> None:
    """Every output dimension but N is fixed by S; the tracer leaves some symbolic (e.g. after a Cast)."""
    for output, shape in zip(proto.graph.output, shapes):
        dims = output.type.tensor_type.shape.dim
        for dim, size in zip(list(dims)[1:], shape[1:]):
            dim.Clear()
            dim.dim_value = int(size)


def save_with_card(proto, card, path: Path) -> Path:
    """Set the card under cxr.card and save as one file (fsync'd)."""
    from onnx import helper

    from cxr.runtime.card import CARD_KEY

    del proto.metadata_props[:]
    helper.set_model_props(proto, {CARD_KEY: card.to_json()})
    proto.producer_name, proto.producer_version = "cxr-export", _cxr_version()
    data = proto.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


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
    }
    return ModelCard(preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]),
                     normalization=Normalization.from_dict(ckpt["normalization"]),
                     threshold=Threshold(**ckpt["threshold"]),
                     training=jsonable(training), export=jsonable(export_facts),
                     output_names=tuple(outputs), decision=jsonable(ckpt.get("decision") or {"mode": "classifier"}))


def _validation_summary(report: dict[str, Any]) -> dict[str, Any]:
    checks = report["checks"]
    return {"passed": True, "images": report.get("images"), "n_images": report["n_images"],
            "parity_max_abs_diff": checks["parity_torch_vs_ort"]["max_abs_diff"],
            "parity_tolerance": checks["parity_torch_vs_ort"]["tolerance"],
            "batch_invariance_max_abs_diff": checks["batch_invariance"]["max_abs_diff"],
            "batch_sizes": [int(k) for k in checks["batch_invariance"]["per_batch_size"] if k != "max"],
            "checks": sorted(checks) + ["runtime_scorer"]}


def _reject(tmp: Path, out: Path, report: dict | None, exc: ExportError) -> ExportError:
    from cxr.export.validate import write_report

    rejected = side_path(out, "rejected.onnx")
    if tmp.exists():
        os.replace(tmp, rejected)
    if report is not None:
        write_report(report, side_path(out, "rejected.validation.json"))
    return ExportError(f"{exc} -- export rejected; nothing written to {out} "
                       f"(the failed file is kept as {rejected} for inspection)")


def export_onnx(checkpoint: Path, out: Path, opset: int = 17, sample_dir: Path | None = None,
                validate: bool = True, quantize: str | None = None, calibration_dir: Path | None = None,
                fp16: bool = False, max_auroc_drop: float = 0.01, force: bool = False,
                labels: Path | None = None, max_samples: int = 32) -> ExportReport:
    """Export `checkpoint` (a run directory or a .pt file) to `out`; see the module docstring for the files.

    Raises ValueError for bad arguments (before loading anything), CheckpointError for a missing/corrupt/mismatched
    checkpoint, ExportError for anything that fails during export or validation."""
    from cxr.export.samples import find_images
    from cxr.export.validate import check_scorer, validate_export, write_report
    from cxr.runtime.preprocess import PreprocessConfig
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint

    check_opset_supported(opset)
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":  # also keeps a typo from overwriting the checkpoint, splits.csv or a report
        raise ValueError(f"--out {out}: give an ONNX file name ending in .onnx, e.g. {out.with_suffix('.onnx')}")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the output directory {out.parent} does not exist")

    ckpt_path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    config = PreprocessConfig.from_dict(ckpt["preprocess"])
    images = (find_images(ckpt_path, config, sample_dir, limit=max_samples, labels_csv=labels)
              if validate else None)
    variant_images = None
    if quantize or fp16:  # before anything is written: a missing image set must not leave a half-done export
        from cxr.export.quantize import variant_inputs

        variant_images = variant_inputs(ckpt_path, config, sample_dir, calibration_dir, labels, quantize == "int8")

    facts: dict[str, Any] = {
        "opset": opset, "exporter": EXPORTER, "precision": "fp32", "versions": versions(),
        "checkpoint": {"file": ckpt_path.name, "sha256": sha256_file(ckpt_path), "kind": ckpt.get("kind"),
                       "epoch": ckpt.get("epoch")},
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "validation": "pending" if validate else "skipped",
    }
    log.info("exporting %s (%s, S=%d) to %s at opset %d", ckpt_path, ckpt["model"]["arch"], config.size, out, opset)
    from cxr.train.decision import Decision

    decision = Decision.from_dict(ckpt.get("decision"))
    outputs = ExportWrapper.outputs(model)
    proto = export_graph(model, opset, config.size, decision=decision)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    report: dict[str, Any] | None = None
    try:
        save_with_card(proto, build_card(ckpt, facts, outputs), tmp)
        if validate:
            report = {"checkpoint": str(ckpt_path), "opset": opset, "images": images.source}
            try:
                report.update(validate_export(tmp, model, images.images, opset, config.size, decision=decision))
            except ExportError as exc:
                report.update(getattr(exc, "report", {}))
                raise
            report["image_set"] = images.summary()
            facts["validation"] = _validation_summary(report)
            save_with_card(proto, build_card(ckpt, facts, outputs), tmp)
            check_scorer(tmp, images.images, report["ort_probabilities"], report)
        else:
            from cxr.export.validate import validate_structure

            report = {"checkpoint": str(ckpt_path), "opset": opset, "passed": True, "checks": {},
                      "note": "behavioural checks skipped (--no-validate)"}
            validate_structure(tmp, opset, config.size, report)
    except ExportError as exc:
        if report is not None:
            report["passed"] = False
        raise _reject(tmp, out, report, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    for stale in (side_path(out, "rejected.onnx"), side_path(out, "rejected.validation.json")):
        stale.unlink(missing_ok=True)
    report_path = write_report({**report, "model": str(out), "card_export": facts}, side_path(out, "validation.json"))
    result = ExportReport(path=out, size_bytes=out.stat().st_size, opset=opset, threshold=dict(ckpt["threshold"]),
                          checkpoint=ckpt_path, checkpoint_sha256=facts["checkpoint"]["sha256"],
                          validation=report if validate else "skipped", report_path=report_path)

    if quantize or fp16:
        from cxr.export.quantize import make_variants

        result.variants = make_variants(
            fp32_path=out, ckpt=ckpt, facts=facts, config=config, opset=opset, int8=quantize == "int8", fp16=fp16,
            inputs=variant_images, max_auroc_drop=max_auroc_drop, force=force)
        report_data = {**report, "model": str(out), "card_export": facts, "variants": result.variants}
        write_report(report_data, report_path)
    return result
