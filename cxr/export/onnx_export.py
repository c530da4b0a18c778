"""Export a cxr-train checkpoint to one validated, self-describing ONNX file.

    best.pt --(eval mode, TorchScript exporter, opset as asked)--> graph: image uint8 [N,1,S,S] -> logit, probability
            --(model card under metadata key cxr.card)--> temporary file --(validate.py checks)--> model.onnx

Files written next to `out` (model.onnx):
    model.validation.json        what was checked and the figures (parity, batch invariance, ...)
    model.int8.onnx / .fp16.onnx  optional reduced-precision copies, each with its own card (precision, figures)
    model.precision.json          where onnxruntime here offers the OpenVINO provider: its fp32/bf16/int8 accuracy
                                  and speed on the labelled images, for --precision auto (else the report says why not)
    model.rejected.onnx (+ model.rejected.validation.json)   the file that failed a check, kept for inspection;
                                  nothing is ever written under the final name unless every check passed.
The graph itself is built in cxr.export.graph, the card and side files in cxr.export.artifacts; what to do comes as
one cxr.export.options.ExportOptions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxr.export.artifacts import build_card, save_with_card, side_path, versions
from cxr.export.errors import ExportError
from cxr.export.graph import EXPORTER, ExportWrapper, export_graph
from cxr.export.options import ExportOptions
from cxr.runtime.serialization import sha256_file

log = logging.getLogger(__name__)


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
    openvino: dict[str, Any] | None = None
    """OpenVINO fp32/bf16/int8 measured on the labelled images (cxr.runtime.precision_gate.openvino_precisions)."""

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
        if self.openvino is not None:
            from cxr.runtime.precision_gate import openvino_lines

            lines += openvino_lines(self.openvino)
        return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


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


def export_onnx(checkpoint: Path, out: Path, options: ExportOptions | None = None) -> ExportReport:
    """Export `checkpoint` (a run directory or a .pt file) to `out` as `options` say (defaults: ExportOptions());
    see the module docstring for the files.

    Raises ValueError for bad arguments (before loading anything), CheckpointError for a missing/corrupt/mismatched
    checkpoint, ExportError for anything that fails during export or validation."""
    from cxr.export.samples import find_images
    from cxr.export.validate import check_scorer, validate_export, write_report
    from cxr.runtime.preprocess import PreprocessConfig
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint

    options = ExportOptions() if options is None else options
    opset, validate = options.opset, options.validate
    out = Path(out)
    if out.suffix.lower() != ".onnx":  # also keeps a typo from overwriting the checkpoint, splits.csv or a report
        raise ValueError(f"--out {out}: give an ONNX file name ending in .onnx, e.g. {out.with_suffix('.onnx')}")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: the output directory {out.parent} does not exist")

    ckpt_path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    config = PreprocessConfig.from_dict(ckpt["preprocess"])
    images = (find_images(ckpt_path, config, options.sample_dir, limit=options.max_samples,
                          labels_csv=options.labels) if validate else None)
    variant_images = None
    if options.reduced_precision:  # before anything is written: a missing image set must not leave a half-done export
        from cxr.export.quantize import variant_inputs

        variant_images = variant_inputs(ckpt_path, config, options)

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

    if options.reduced_precision:
        from cxr.export.quantize import Fp32Export, make_variants

        fp32 = Fp32Export(path=out, ckpt=ckpt, facts=facts, opset=opset, size=config.size)
        result.variants = make_variants(fp32, variant_images, options)
    eval_set = variant_images.eval_set if variant_images is not None else images
    result.openvino = _openvino_precisions(out, eval_set)
    report_data = {**report, "model": str(out), "card_export": facts, "openvino_precisions": result.openvino,
                   **({"variants": result.variants} if options.reduced_precision else {})}
    write_report(report_data, report_path)
    return result


def _openvino_precisions(out: Path, eval_set) -> dict[str, Any]:
    """OpenVINO's precisions measured on the export's labelled images where onnxruntime-openvino is installed (kept in
    model.precision.json), else why not."""
    import numpy as np

    from cxr.runtime.precision_gate import openvino_precisions

    if eval_set is None:
        y, source = np.zeros(0, np.int64), "no image set (--no-validate)"
        images = np.zeros((0, 1, 1, 1), np.uint8)
    else:
        (idx, y), source = eval_set.labelled(), eval_set.source
        images = eval_set.images[idx]
    return openvino_precisions(out, images, y, source)
