"""Checks every exported file must pass before it is written under its final name.

Structure: onnx.checker (full_check), one self-contained file, the opset asked for, the I/O contract, no
BatchNormalization left in training mode. Behaviour: ONNX Runtime (CPU) against PyTorch on real preprocessed images
(max |probability difference| <= 1e-4 in fp32), batch invariance (each image alone vs in batches of 2, 7 and 32), and
the runtime's own `Scorer` loading the file and reproducing ONNX Runtime's probabilities.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cxr.export.errors import ExportError
from cxr.runtime.atomic import write_text_atomic
from cxr.runtime.card import INPUT_NAME, OPTIONAL_OUTPUTS, OUTPUT_NAMES
from cxr.runtime.serialization import jsonable

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # max |prob ORT - prob torch| for an fp32 export
BATCH_TOLERANCE = 1e-5  # max |prob alone - prob in a batch|
SCORER_TOLERANCE = 1e-6  # max |prob Scorer - prob ORT| (same file, same provider)
BATCH_SIZES = (2, 7, 32)
DEFAULT_DOMAINS = ("", "ai.onnx")


def check_model_file(path: Path) -> dict[str, bool]:
    """onnx.checker with full_check (shape inference included), and no external data: one self-contained file."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path}: not a loadable ONNX file ({type(exc).__name__}: {exc})") from None
    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise ExportError(f"{path}: {len(external)} tensor(s) stored as external data (e.g. {external[0]!r}); "
                          "the export must be one self-contained file")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path}: onnx.checker rejected the model: {exc}") from None
    return {"full_check": True, "single_file": True}


def file_opset(path: Path) -> int:
    """The default-domain ('' or 'ai.onnx') opset_import version of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise ExportError(f"{path}: no default-domain opset_import")
    return int(max(versions))


def check_opset(model_path: Path, expected: int) -> int:
    """Raise ExportError unless the file's default-domain opset is exactly `expected`; returns it."""
    found = file_opset(model_path)
    if found != int(expected):
        raise ExportError(f"{model_path}: asked for opset {expected}, file says {found}")
    return found


def check_batchnorm_eval(model_path: Path) -> int:
    """No BatchNormalization in training mode (attribute training_mode=1, or running-stat outputs); returns BN count."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path), load_external_data=False)
    count, bad = 0, []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        count += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        outputs = [o for o in node.output if o]
        if int(attrs.get("training_mode", 0)) != 0 or len(outputs) > 1:
            bad.append(node.name or node.output[0])
    if bad:
        raise ExportError(f"{model_path}: {len(bad)} BatchNormalization node(s) in training mode (e.g. {bad[0]!r}); "
                          "the model was exported with batch statistics instead of its running statistics")
    return count


def check_io(model_path: Path, size: int, input_dtype: str = "tensor(uint8)") -> dict[str, Any]:
    """Input `image` uint8 [N, 1, S, S] with N dynamic; outputs `logit`, `probability` float32 [N]."""
    session = ort_session(model_path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    problems = []
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != input_dtype:
        problems.append(f"input must be one {input_dtype} named {INPUT_NAME!r}, got "
                        f"{[(i.name, i.type) for i in inputs]}")
    elif isinstance(inputs[0].shape[0], int) or list(inputs[0].shape[1:]) != [1, size, size]:
        problems.append(f"input shape must be [N, 1, {size}, {size}] with N dynamic, got {inputs[0].shape}")
    core, extra = outputs[:len(OUTPUT_NAMES)], outputs[len(OUTPUT_NAMES):]
    if tuple(o.name for o in core) != OUTPUT_NAMES or any(o.type != "tensor(float)" for o in core):
        problems.append(f"outputs must be {list(OUTPUT_NAMES)} float32, got {[(o.name, o.type) for o in outputs]}")
    elif any(len(o.shape) != 1 or isinstance(o.shape[0], int) for o in core):
        problems.append(f"outputs must be 1-D [N], got {[o.shape for o in outputs]}")
    problems += _extra_output_problems(extra, size)
    if problems:
        raise ExportError(f"{model_path}: the I/O contract is not met: " + "; ".join(problems))
    return {"input": [inputs[0].name, inputs[0].type, [str(d) for d in inputs[0].shape]],
            "outputs": [[o.name, o.type, [str(d) for d in o.shape]] for o in outputs]}


_EXTRA_SPECS = {"cam": ("tensor(float)", 3), "ctr": ("tensor(float)", 1), "masks": ("tensor(uint8)", 4)}


def _extra_output_problems(extra, size: int) -> list[str]:
    """The optional outputs: known names in the contract's order, each of its type and rank, N dynamic."""
    names = [o.name for o in extra]
    if names != [n for n in OPTIONAL_OUTPUTS if n in names]:
        return [f"outputs after {list(OUTPUT_NAMES)} must be among {list(OPTIONAL_OUTPUTS)} in that order, got {names}"]
    problems = []
    for o in extra:
        dtype, rank = _EXTRA_SPECS[o.name]
        if o.type != dtype or len(o.shape) != rank or isinstance(o.shape[0], int):
            problems.append(f"output {o.name!r} must be {dtype} of rank {rank} with N dynamic, got {o.type} {o.shape}")
        elif o.name == "masks" and list(o.shape[1:]) != [3, size, size]:
            problems.append(f"output 'masks' must be [N, 3, {size}, {size}], got {o.shape}")
    return problems


def ort_session(model_path: Path):
    """A CPU ONNX Runtime session with fixed options (the same for every model compared)."""
    from cxr.runtime.ort import import_ort

    ort = import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])


def run_ort(session, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(logit, probability) float32 [N] for uint8 [N, 1, S, S], in chunks of batch_size."""
    logits, probs = [], []
    for start in range(0, images.shape[0], batch_size):
        logit, prob = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[start:start + batch_size]})
        logits.append(logit)
        probs.append(prob)
    return np.concatenate(logits).astype(np.float32), np.concatenate(probs).astype(np.float32)


def run_torch(model, images: np.ndarray, batch_size: int = 16, decision=None) -> np.ndarray:
    """Probabilities float32 [N] from the PyTorch model in eval mode (the reference the export must match)."""
    return run_torch_all(model, images, batch_size, decision)["probability"]


def run_torch_all(model, images: np.ndarray, batch_size: int = 16, decision=None) -> dict[str, np.ndarray]:
    """Every output of the export wrapper, run eagerly in PyTorch (eval mode), by output name."""
    import torch

    from cxr.export.graph import ExportWrapper

    names = ExportWrapper.outputs(model)
    wrapper = ExportWrapper.build(model, decision).eval()
    parts: dict[str, list] = {n: [] for n in names}
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            outs = wrapper(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])))
            for name, value in zip(names, outs):
                parts[name].append(value.numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}


def run_ort_all(session, images: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list] = {n: [] for n in names}
    for start in range(0, images.shape[0], batch_size):
        for name, value in zip(names, session.run(names, {INPUT_NAME: images[start:start + batch_size]})):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


CTR_TOLERANCE = 0.02
"""max |ctr ORT - ctr torch| on films whose masks look like a chest on both sides (and on every film of a model
without a masks output): the masks are thresholded, so a pixel whose logit sits within float error of 0 can flip and
move an extent by one pixel (1/thorax width, about 0.01 at 160 px); the probability is compared where the CTRs agree
exactly."""
CTR_SAME_MASKS_TOLERANCE = 1e-5
"""With a masks output the ratio is also held to the masks: where ONNX Runtime's and PyTorch's masks are the same,
their CTRs agree to float rounding (relative to the ratio); where pixels flipped, each CTR must be the ratio of its
own masks (`cxr.runtime.anatomy.ctr_reference`; NaN where its decision is NaN, an ensemble none of whose members
could decide). On films whose masks `cxr-score` would flag (narrow lungs, a ratio above 1, lungs at the edge), that
is the whole check: there one pixel moves the ratio by ratio / lung width, 0.08 on an NIH film whose masks gave 2.34
against 2.43, which no fixed tolerance tells from a wrong ratio; on plausible films CTR_TOLERANCE holds as well."""
MASK_DISAGREEMENT_TOLERANCE = 1e-3
"""Mask pixels that differ between ONNX Runtime and PyTorch, as a share of all pixels of the validation images."""
MASK_FILM_DISAGREEMENT_TOLERANCE = 0.01
"""The same on any one film: the share above is diluted by the number of images, so it cannot stop a film whose
masks are half gone in one runtime; a flipped pixel can move a whole island in or out of the main part, so not less."""
CAM_TOLERANCE = 1e-3


def extra_parity(ort: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """Figures for the optional outputs (cam relative to its range, mask pixels that differ, ctr)."""
    out: dict[str, Any] = {}
    if "cam" in ort:
        scale = max(float(np.abs(ref["cam"]).max()), 1e-6)
        out["cam_max_rel_diff"] = float(np.abs(ort["cam"] - ref["cam"]).max() / scale)
    if "masks" in ort:
        out["masks_disagreement"] = float((ort["masks"] != ref["masks"]).mean())
    if "ctr" in ort:
        a, b = ort["ctr"], ref["ctr"]
        same_nan = np.isnan(a) == np.isnan(b)
        both = ~np.isnan(a) & ~np.isnan(b)
        out["ctr_nan_agree"] = bool(same_nan.all())
        out["ctr_max_abs_diff"] = float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0
        out["ctr_equal"] = (a == b) | (np.isnan(a) & np.isnan(b))
        if "masks" in ort:
            logits = (ort.get("logit", np.zeros_like(a)), ref.get("logit", np.zeros_like(b)))
            out.update(_ctr_explained((a, b), (ort["masks"], ref["masks"]), logits))
    return out


def _ctr_explained(ctrs: tuple[np.ndarray, np.ndarray], masks: tuple[np.ndarray, np.ndarray],
                   logits: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """CTR parity judged against the masks (see CTR_SAME_MASKS_TOLERANCE), for (ONNX Runtime, PyTorch): the largest
    share of differing mask pixels on one film, the largest relative CTR difference on films whose masks are the same,
    how many CTRs on films whose masks differ are not their own masks' ratio, and the largest CTR difference on films
    whose masks differ and look like a chest on both sides."""
    from cxr.runtime.anatomy import ctr_reference, mask_flags

    (a, b), (masks_a, masks_b) = ctrs, masks
    flips = (masks_a != masks_b).reshape(masks_a.shape[0], -1).mean(axis=1)
    differ = flips > 0
    same = ~differ & ~np.isnan(a) & ~np.isnan(b)
    rel = np.abs(a[same] - b[same]) / np.maximum(1.0, np.abs(b[same]))
    not_own, plausible_diff = 0, 0.0
    for i in np.flatnonzero(differ):  # films on which either side's ratio is not its own masks' one
        owns = [float("nan") if np.isnan(logit) else ctr_reference(m)
                for m, logit in zip((masks_a[i], masks_b[i]), (logits[0][i], logits[1][i]))]
        not_own += any(not ((np.isnan(own) and np.isnan(ctr))
                            or abs(own - ctr) <= CTR_SAME_MASKS_TOLERANCE * max(1.0, own))
                       for own, ctr in zip(owns, (a[i], b[i])))
        if not np.isnan(a[i]) and not np.isnan(b[i]) and not (mask_flags(masks_a[i], float(a[i]))
                                                              or mask_flags(masks_b[i], float(b[i]))):
            plausible_diff = max(plausible_diff, float(abs(a[i] - b[i])))
    return {"masks_max_film_disagreement": float(flips.max()) if flips.size else 0.0,
            "ctr_max_rel_diff_same_masks": float(rel.max()) if rel.size else 0.0,
            "ctr_nan_disagree_same_masks": int((~differ & (np.isnan(a) != np.isnan(b))).sum()),
            "ctr_images_masks_differ": int(differ.sum()), "ctr_not_its_masks_ratio": not_own,
            "ctr_max_abs_diff_plausible": plausible_diff}


def batch_invariance(session, images: np.ndarray, sizes: Sequence[int] = BATCH_SIZES) -> dict[str, Any]:
    """Max |prob alone - prob in a batch of b| for each b; images are repeated to fill the batches."""
    alone = np.concatenate([run_ort(session, images[i:i + 1], 1)[1] for i in range(images.shape[0])])
    result: dict[str, Any] = {}
    for b in sizes:
        n = -(-max(images.shape[0], b) // b) * b  # a whole number of full batches covering every image
        idx = np.resize(np.arange(images.shape[0]), n)
        batched = run_ort(session, images[idx], b)[1]
        result[str(b)] = max_abs_diff(batched, alone[idx])
    result["max"] = max(result[str(b)] for b in sizes)
    return result


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, where NaN in both (a CTR-based probability that cannot be measured) agrees and NaN in one is
    infinitely far."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    if (np.isnan(a) != np.isnan(b)).any():
        return float("inf")
    both = ~np.isnan(a)
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0


def scorer_check(model_path: Path, images: np.ndarray, expected: np.ndarray) -> float:
    """Max |prob from cxr.runtime.scoring.Scorer - expected|; the Scorer also checks the card on load."""
    from cxr.runtime.scoring import Scorer

    scorer = Scorer(model_path, device="cpu")
    probs = np.asarray(scorer(images), np.float32).reshape(-1)
    if probs.shape != expected.shape:
        raise ExportError(f"{model_path}: the runtime Scorer returned {probs.shape[0]} values for "
                          f"{expected.shape[0]} images")
    return max_abs_diff(probs, expected)


def _check(report: dict, name: str, fn: Callable[[], Any]) -> Any:
    """Run one check, record passed/failed and its figures; raise ExportError on failure."""
    try:
        value = fn()
    except ExportError as exc:
        report["checks"][name] = {"passed": False, "error": str(exc)}
        report["passed"] = False
        raise
    report["checks"][name] = {"passed": True, **(value if isinstance(value, dict) else {"value": value})}
    return value


def _within(name: str, value: float, tolerance: float, path: Path) -> dict[str, float]:
    if not np.isfinite(value) or value > tolerance:
        raise ExportError(f"{path}: {name} {value:.3g} exceeds the tolerance {tolerance:g}")
    return {"max_abs_diff": float(value), "tolerance": tolerance}


def validate_structure(model_path: Path, opset: int, size: int, report: dict) -> None:
    """The checks that need no images: checker, single file, opset, BN mode, I/O contract."""
    _check(report, "onnx_checker", lambda: check_model_file(model_path))
    _check(report, "opset", lambda: {"expected": opset, "found": check_opset(model_path, opset)})
    _check(report, "batchnorm_eval_mode", lambda: {"batchnorm_nodes": check_batchnorm_eval(model_path)})
    _check(report, "io_contract", lambda: check_io(model_path, size))


def _extra_within(extra: dict[str, Any], path: Path) -> dict[str, Any]:
    limits = {"cam_max_rel_diff": CAM_TOLERANCE, "masks_disagreement": MASK_DISAGREEMENT_TOLERANCE,
              "masks_max_film_disagreement": MASK_FILM_DISAGREEMENT_TOLERANCE}
    if "ctr_max_rel_diff_same_masks" in extra:  # masks to judge the CTR by: see CTR_SAME_MASKS_TOLERANCE
        limits.update(ctr_max_rel_diff_same_masks=CTR_SAME_MASKS_TOLERANCE, ctr_max_abs_diff_plausible=CTR_TOLERANCE)
    elif "ctr_max_abs_diff" in extra:
        limits["ctr_max_abs_diff"] = CTR_TOLERANCE

    def within(keys) -> None:
        for key in keys:
            if key in extra and not extra[key] <= limits[key]:
                raise ExportError(f"{path}: {key} {extra[key]:.3g} is more than {limits[key]:g} (ONNX Runtime vs "
                                  "PyTorch)")

    within([k for k in limits if not k.startswith("ctr")])  # the masks first: a wrong ratio follows from them
    if extra.get("ctr_not_its_masks_ratio"):
        raise ExportError(f"{path}: on {extra['ctr_not_its_masks_ratio']} image(s) whose ONNX Runtime and PyTorch "
                          "masks differ, a CTR is not the ratio of its own masks (ONNX Runtime vs PyTorch)")
    within([k for k in limits if k.startswith("ctr")])
    if "ctr_nan_disagree_same_masks" in extra:  # a flipped pixel may empty a structure: there NaN is its masks' ratio
        nan_disagree = extra["ctr_nan_disagree_same_masks"] > 0
    else:
        nan_disagree = extra.get("ctr_nan_agree") is False
    if nan_disagree:
        raise ExportError(f"{path}: ONNX Runtime and PyTorch disagree on which images have a measurable CTR")
    return {**extra, "tolerances": {k: v for k, v in limits.items() if k in extra}}


def validate_export(model_path: Path, model, images: np.ndarray, opset: int, size: int, *,
                    parity_tolerance: float = PARITY_TOLERANCE, batch_tolerance: float = BATCH_TOLERANCE,
                    batch_sizes: Sequence[int] = BATCH_SIZES, decision=None) -> dict[str, Any]:
    """All checks on an exported fp32 file against its PyTorch `model`. Returns the report; raises ExportError
    (the report, with the failed check, is attached as `exc.report`) on the first failure."""
    report: dict[str, Any] = {"model": str(model_path), "passed": True, "n_images": int(images.shape[0]),
                              "checks": {}}
    try:
        validate_structure(model_path, opset, size, report)
        session = ort_session(model_path)
        ort_all = run_ort_all(session, images)
        ref_all = run_torch_all(model, images, decision=decision)
        ort_probs, torch_probs = ort_all["probability"], ref_all["probability"]
        extra = extra_parity(ort_all, ref_all)
        same = extra.pop("ctr_equal", np.ones(ort_probs.shape, bool))
        diff = np.abs(ort_probs - torch_probs)[same]
        nan_mismatch = bool((np.isnan(ort_probs) != np.isnan(torch_probs))[same].any())
        parity = float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else 0.0
        parity = float("nan") if nan_mismatch else parity
        _check(report, "parity_torch_vs_ort", lambda: _within("max |prob ORT - prob torch|", parity,
                                                              parity_tolerance, model_path))
        if extra:
            _check(report, "parity_extra_outputs", lambda: _extra_within(extra, model_path))
        inv = batch_invariance(session, images, batch_sizes)
        _check(report, "batch_invariance", lambda: {**_within("max |prob alone - prob batched|", inv["max"],
                                                              batch_tolerance, model_path), "per_batch_size": inv})
        report["ort_probabilities"] = ort_probs
    except ExportError as exc:
        exc.report = report
        raise
    return report


def check_scorer(model_path: Path, images: np.ndarray, ort_probs: np.ndarray, report: dict,
                 tolerance: float = SCORER_TOLERANCE) -> None:
    """The runtime's Scorer loads the final file (card included) and reproduces ONNX Runtime's probabilities."""
    def run() -> dict:
        try:
            diff = scorer_check(model_path, images, ort_probs)
        except ExportError:
            raise
        except Exception as exc:  # the runtime refusing the file (bad card, bad I/O) is a failed check
            raise ExportError(f"{model_path}: the runtime Scorer cannot use the file: "
                              f"{type(exc).__name__}: {exc}") from None
        return _within("max |prob Scorer - prob ORT|", diff, tolerance, model_path)

    try:
        _check(report, "runtime_scorer", run)
    except ExportError as exc:
        exc.report = report
        raise


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write a JSON report atomically (NaN/inf become null; numpy arrays are left out)."""
    path = Path(path)
    clean = jsonable(report, drop_arrays=True)
    return write_text_atomic(path, json.dumps(clean, indent=2, sort_keys=True, allow_nan=False) + "\n")
