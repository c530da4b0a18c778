"""Reduced-precision copies of a validated fp32 export: int8 (static QDQ) and fp16, each judged before writing.

int8: onnxruntime.quantization.quantize_static, QDQ format, per-channel int8 weights, uint8 activations, calibrated
on real preprocessed images (`--calibration DIR`, else the run's training split, else the evaluation images). Only
Conv and Gemm are quantized, so the uint8 input, the Cast/Div/Sub preprocessing nodes and the float32 outputs stay
as they are.
Two layers stay float: the stem convolution and the classifier (see `float_nodes`). The stem reads the equalized
image, whose histogram is flat over 0..255; on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernels add pairs of
products in 16 bits (vpmaddubsw) and saturate on such inputs. On the trained demo model this one layer moved
probabilities by up to 0.8 (mean 0.16) and cost 0.014 AUROC; kept float, the mean change is 0.004 and the AUROC change
on the held-out cohort 0.000, at the same speed. The classifier is one 1024 -> 1 dot product.
Tensor names are shortened in the int8 file (QDQ roughly doubles the node count; on the tiny test model the names
outweighed the int8 saving). fp16: onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True).

Each copy is compared with the fp32 file on the same images and session options: size, median latency (speed-up),
max |prob diff| and AUROC change on a labelled set. An AUROC drop above `max_auroc_drop`, or no labelled set with both
classes to measure it on, refuses the copy unless `force`; the refused file is kept as model.int8.rejected.onnx.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.export.artifacts import build_card, save_with_card, side_path
from cxr.export.errors import ExportError
from cxr.export.options import ExportOptions

log = logging.getLogger(__name__)

TIMING_REPEATS = 5
TIMING_IMAGES = 8
CALIBRATION_IMAGES = 64
EVAL_IMAGES = 512
CHECK_IMAGES = 8  # images for the variant's batch-invariance and runtime-Scorer checks
VARIANT_BATCH_TOLERANCE = 1e-4  # max |prob alone - prob in a batch| for an int8/fp16 copy (fp32: BATCH_TOLERANCE)


class _Calibration:
    """CalibrationDataReader over uint8 [N, 1, S, S] in small batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 8):
        self._batches = [{"image": images[i:i + batch_size]} for i in range(0, images.shape[0], batch_size)]
        self._next = 0

    def get_next(self):
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def compact_names(proto) -> None:
    """Rename every internal tensor and node to a short id (graph inputs, outputs and behaviour unchanged)."""
    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return mapping.setdefault(name, f"t{len(mapping)}")

    for t in graph.initializer:
        t.name = short(t.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.doc_string = ""
    for v in graph.value_info:
        v.name = short(v.name)


def float_nodes(proto) -> tuple[list[str], list[str]]:
    """(node names, why) of the nodes int8 leaves in float: the first Conv in graph order (the stem, which reads the
    equalized image) and every Gemm/MatMul (the classifier). Nodes without a name are named here (n<index>, made
    unique), since the quantizer excludes nodes by name."""
    names, why = [], []
    stem_found = False
    taken = {node.name for node in proto.graph.node}
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Conv" and not stem_found:
            stem_found = True
            reason = "stem Conv: reads the equalized 0..255 image; uint8 x int8 saturates without VNNI"
        elif node.op_type in ("Gemm", "MatMul"):
            reason = f"classifier {node.op_type}"
        else:
            continue
        if not node.name:
            name, k = f"n{i}", 0
            while name in taken:  # never the name of another node, which would then be excluded too
                k += 1
                name = f"n{i}_{k}"
            node.name = name
            taken.add(name)
        names.append(node.name)
        why.append(f"{node.name} ({reason})")
    return names, why


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, per_channel: bool = True) -> dict:
    """Static QDQ int8 of `fp32_path` written to `out_path` (card metadata not yet set). Returns the settings."""
    import onnx

    from cxr.runtime.ort import import_ort

    import_ort()  # telemetry off before onnxruntime.quantization loads onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(_Calibration, CalibrationDataReader):
        pass

    source = onnx.load(str(fp32_path))
    unnamed = any(not node.name for node in source.graph.node)
    excluded, why = float_nodes(source)
    model_in = fp32_path
    if unnamed:  # quantize a copy in which the excluded nodes have the names float_nodes gave them
        model_in = out_path.with_name(f".{out_path.name}.named.onnx")
        onnx.save(source, str(model_in))
    del source
    settings = {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": per_channel,
                "weight_type": "int8", "activation_type": "uint8", "op_types": ["Conv", "Gemm"],
                "kept_float": why, "calibration_method": "MinMax",
                "n_calibration_images": int(calibration.shape[0])}
    quant_logger = logging.getLogger()  # the quantizer warns through the root logger about every BN bias
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)
    try:
        quantize_static(str(model_in), str(out_path), Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm"], nodes_to_exclude=excluded)
    except Exception as exc:
        raise ExportError(f"{fp32_path}: int8 quantization failed ({type(exc).__name__}: {exc})") from None
    finally:
        quant_logger.setLevel(level)
        if model_in != fp32_path:
            model_in.unlink(missing_ok=True)
    proto = onnx.load(str(out_path))
    compact_names(proto)
    onnx.save(proto, str(out_path))
    return settings


def convert_fp16(fp32_path: Path, out_path: Path) -> dict:
    """fp16 weights and activations, uint8 input and float32 outputs kept (keep_io_types=True)."""
    import onnx

    from cxr.runtime.ort import import_ort

    import_ort()  # telemetry off before onnxruntime.transformers loads onnxruntime
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise ExportError(f"--fp16 needs onnxruntime.transformers.float16, which this onnxruntime lacks ({exc}); "
                          "install onnxruntime>=1.16 or onnxconverter-common") from None
    proto = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(proto, str(out_path))
    return {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}


def median_latency(session, images: np.ndarray, repeats: int = TIMING_REPEATS) -> float:
    """Median seconds per image over `repeats` runs of the whole batch (after one warm-up run)."""
    from cxr.export.validate import run_ort

    run_ort(session, images, batch_size=images.shape[0])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_ort(session, images, batch_size=images.shape[0])
        times.append((time.perf_counter() - start) / images.shape[0])
    return float(statistics.median(times))


def compare(fp32_path: Path, variant_path: Path, images, timing_images: int = TIMING_IMAGES) -> dict[str, Any]:
    """Size, latency, max |prob diff| and AUROC of a variant against the fp32 file, same images and options."""
    from cxr.export.validate import max_abs_diff, ort_session, run_ort
    from cxr.runtime.metrics import has_both_classes, roc_auc

    ref, var = ort_session(fp32_path), ort_session(variant_path)
    p_ref, p_var = run_ort(ref, images.images)[1], run_ort(var, images.images)[1]
    timing = images.images[np.resize(np.arange(len(images)), timing_images)]
    t_ref, t_var = median_latency(ref, timing), median_latency(var, timing)
    size_ref, size_var = os.path.getsize(fp32_path), os.path.getsize(variant_path)
    out: dict[str, Any] = {
        "size_bytes": size_var, "fp32_size_bytes": size_ref, "size_ratio": size_ref / size_var,
        "latency_ms_per_image": 1000 * t_var, "fp32_latency_ms_per_image": 1000 * t_ref, "speedup": t_ref / t_var,
        "timing": f"median of {TIMING_REPEATS} runs, batch of {timing_images}, CPU, same session options",
        "max_abs_prob_diff_vs_fp32": max_abs_diff(p_var, p_ref), "n_images": len(images),
        "images": images.source, "auroc_fp32": None, "auroc": None, "auroc_change": None,
    }
    idx, y = images.labelled()
    # a CTR-based decision has no probability where no heart or lungs were found: compare where both copies have one
    keep = np.isfinite(p_ref[idx]) & np.isfinite(p_var[idx])
    idx, y = idx[keep], y[keep]
    out["n_labelled"] = int(idx.size)
    if has_both_classes(y):
        out["auroc_fp32"] = roc_auc(y, p_ref[idx])
        out["auroc"] = roc_auc(y, p_var[idx])
        out["auroc_change"] = out["auroc"] - out["auroc_fp32"]
    return out


def _guard(figures: dict[str, Any], max_auroc_drop: float, force: bool) -> str | None:
    """Why the variant must not be written (None when it may)."""
    change = figures["auroc_change"]
    if change is None:
        reason = (f"no labelled set with both classes to measure the AUROC change on "
                  f"({figures['n_labelled']} labelled images in {figures['images']}); pass --labels or export a run "
                  "with a validation split")
    elif -change > max_auroc_drop:
        reason = (f"AUROC dropped by {-change:.4f} ({figures['auroc_fp32']:.4f} -> {figures['auroc']:.4f}), more "
                  f"than --max-auroc-drop {max_auroc_drop}")
    else:
        return None
    return f"{reason} (written anyway: --force)" if force else reason


@dataclass
class VariantInputs:
    """The images the reduced-precision copies need, found before anything is written (a missing set is an error
    before the fp32 file exists, not after)."""

    eval_set: Any
    calibration: np.ndarray | None
    calibration_source: str | None


@dataclass(frozen=True)
class Fp32Export:
    """The validated fp32 file a reduced-precision copy is made from, with what its card needs."""

    path: Path
    ckpt: dict
    facts: dict
    opset: int
    size: int


def make_variant(kind: str, fp32: Fp32Export, inputs: VariantInputs, options: ExportOptions) -> dict[str, Any]:
    """Build, check, compare and (unless refused) write model.<kind>.onnx with its own card."""
    import onnx

    from cxr.export.validate import (
        SCORER_TOLERANCE,
        batch_invariance,
        check_io,
        check_model_file,
        check_opset,
        ort_session,
        run_ort,
        scorer_check,
    )

    fp32_path, ckpt, facts, eval_set = fp32.path, fp32.ckpt, fp32.facts, inputs.eval_set
    final = side_path(fp32_path, f"{kind}.onnx")
    rejected = side_path(fp32_path, f"{kind}.rejected.onnx")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    figures: dict[str, Any] = {}
    try:
        settings = (quantize_int8(fp32_path, tmp, inputs.calibration) if kind == "int8"
                    else convert_fp16(fp32_path, tmp))
        check_model_file(tmp)
        check_opset(tmp, fp32.opset)
        check_io(tmp, fp32.size)
        figures = compare(fp32_path, tmp, eval_set)
        figures["batch_invariance"] = batch_invariance(ort_session(tmp), eval_set.images[:CHECK_IMAGES])
        if not figures["batch_invariance"]["max"] <= VARIANT_BATCH_TOLERANCE:  # NaN fails too
            raise ExportError(f"{tmp}: the {kind} copy's probability for an image changes with the other images "
                              f"in its batch by {figures['batch_invariance']['max']:.2e} (more than "
                              f"{VARIANT_BATCH_TOLERANCE:g})")
        variant_facts = {**facts, "precision": kind,
                         "validation": {"fp32_source": fp32_path.name, "fp32_source_validation": facts["validation"]},
                         "reduced_precision": {**settings, **{
            k: figures[k] for k in ("max_abs_prob_diff_vs_fp32", "auroc_fp32", "auroc", "auroc_change", "speedup",
                                     "size_ratio", "n_images", "images")}}}
        variant = onnx.load(str(tmp))
        save_with_card(variant, build_card(ckpt, variant_facts, tuple(o.name for o in variant.graph.output)), tmp)
        check_images = eval_set.images[:CHECK_IMAGES]
        expected = run_ort(ort_session(tmp), check_images)[1]
        figures["scorer_max_abs_diff"] = scorer_check(tmp, check_images, expected)
        if not figures["scorer_max_abs_diff"] <= SCORER_TOLERANCE:  # NaN fails too
            raise ExportError(f"{tmp}: the runtime Scorer's probabilities differ from ONNX Runtime's by "
                              f"{figures['scorer_max_abs_diff']:.2e}")
    except ExportError as exc:  # a broken copy is refused like an inaccurate one (even with --force); fp32 stands
        kept = None
        if tmp.exists():
            os.replace(tmp, rejected)
            kept = str(rejected)
        reason = str(exc).replace(str(tmp), final.name)
        log.warning("%s copy not written: %s", kind, reason)
        return {**figures, "path": None, "rejected_path": kept, "reason": reason, "written": False}
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    figures["settings"] = settings
    reason = _guard(figures, options.max_auroc_drop, options.force)
    if reason is not None and not options.force:
        os.replace(tmp, rejected)
        log.warning("%s copy not written: %s", kind, reason)
        return {**figures, "path": None, "rejected_path": str(rejected), "reason": reason, "written": False}
    os.replace(tmp, final)
    rejected.unlink(missing_ok=True)
    return {**figures, "path": str(final), "size_bytes": final.stat().st_size, "written": True,
            **({"reason": reason} if reason else {})}


def variant_inputs(ckpt_path: Path, config, options: ExportOptions) -> VariantInputs:
    """The evaluation set (--sample DIR, else the run's validation split) and, for int8, the calibration images:
    --calibration DIR, else the run's training split (never the images the AUROC guard is measured on), else, with
    no training split at hand, the evaluation images themselves (said in the card and in a warning)."""
    from cxr.export.samples import find_images, images_from_dir, images_from_run

    sample_dir, calibration_dir = options.sample_dir, options.calibration_dir
    eval_set = find_images(ckpt_path, config, sample_dir, limit=EVAL_IMAGES, labels_csv=options.labels,
                           purpose="evaluating reduced precision")
    if not options.int8:
        return VariantInputs(eval_set, None, None)
    if calibration_dir is not None:
        calibration = images_from_dir(calibration_dir, config, limit=CALIBRATION_IMAGES)
        if len(calibration) == 0:
            raise ExportError(f"{calibration_dir}: no readable calibration images")
        return VariantInputs(eval_set, calibration.images, str(calibration_dir))
    run_dir = Path(ckpt_path).parent
    if (run_dir / "splits.csv").is_file():
        try:
            train = images_from_run(run_dir, config, split="train", limit=CALIBRATION_IMAGES, spread=True)
        except ExportError:
            train = None
        if train is not None and len(train) > 0:
            return VariantInputs(eval_set, train.images, train.source)
    log.warning("int8 calibration uses the %s, the same images its AUROC change is measured on (no --calibration "
                "DIR and no training split): the check is then less strict", eval_set.source)
    return VariantInputs(eval_set, eval_set.images[:CALIBRATION_IMAGES],
                         f"{eval_set.source} (the evaluation images: no training split)")


def make_variants(fp32: Fp32Export, inputs: VariantInputs, options: ExportOptions) -> dict[str, dict[str, Any]]:
    """The copies `options` ask for (int8, fp16) of the validated fp32 file."""
    out: dict[str, dict[str, Any]] = {}
    if options.int8:
        out["int8"] = make_variant("int8", fp32, inputs, options)
        out["int8"]["calibration"] = inputs.calibration_source
    if options.fp16:
        out["fp16"] = make_variant("fp16", fp32, inputs, options)
    return out
