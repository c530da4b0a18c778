"""Accuracy and speed of each precision on one provider, measured on labelled images, kept beside the model.

`measure_precisions` scores the same labelled images with fp32 and each reduced precision the host can run on that
provider, and times them at each batch size in turn (one call of each precision per round, so a burst of load from
other tenants slows all alike). Per reduced precision it records the AUROC change against fp32 with its paired
bootstrap interval, the decisions that flip at the card's threshold, the largest probability change, and the gate
(cxr.runtime.precision.GATES): an AUROC drop above it fails, as does a set without both classes (as cxr-export's int8
guard). `save_measurement` keeps it in `<model>.precision.json` under its key (model sha256, provider, onnxruntime
build, CPU flags), which `--precision auto` and explicit requests read back through `cxr.runtime.precision.lookup`.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr.runtime.precision import BF16_FLAGS, GATES, Host, _read, int8_path, measurement_path

EVAL_BATCH = 8


def save_measurement(model: Path, record: dict[str, Any]) -> Path:
    """Add `record` to `<model>.precision.json`, replacing an earlier one with the same key (atomic write)."""
    from cxr.runtime.results import write_json_atomic

    path = measurement_path(model)
    data = _read(path)
    data["entries"] = [e for e in data["entries"] if e.get("key") != record["key"]] + [record]
    write_json_atomic(path, data)
    return path


def runnable(provider: str, model: Path, host: Host) -> list[str]:
    """The precisions this host can run for `model` on `provider` (fp32 first)."""
    out = ["fp32"]
    if provider == "openvino" and host.present(BF16_FLAGS):
        out.append("bf16")
    if provider in ("cpu", "openvino") and int8_path(model).is_file():
        out.append("int8")
    return out


def accuracy(y: np.ndarray, p_ref: np.ndarray, p: np.ndarray, threshold: float, gate: float,
             n_boot: int = 1000) -> dict[str, Any]:
    """AUROC change of `p` against `p_ref` (paired interval), decision flips at `threshold`, and the gate verdict."""
    from cxr.runtime.metrics import bootstrap_auroc_change_ci, has_both_classes, roc_auc

    keep = np.isfinite(p_ref) & np.isfinite(p)  # a CTR decision has no probability where no heart was found
    y, p_ref, p = y[keep], p_ref[keep], p[keep]
    flips = int(np.sum((p_ref >= threshold) != (p >= threshold)))
    out: dict[str, Any] = {"n": int(y.size), "n_positive": int(y.sum()), "decision_flips": flips,
                           "threshold": float(threshold), "gate_max_auroc_drop": gate,
                           "max_abs_prob_diff": float(np.max(np.abs(p - p_ref))) if y.size else None,
                           "auroc_fp32": None, "auroc": None, "auroc_change": None, "auroc_change_ci95": None}
    if not has_both_classes(y):
        out["passed"] = False
        out["verdict"] = (f"not measurable: {y.size} labelled image(s) without both classes; the gate needs "
                          "positives and negatives")
        return out
    out["auroc_fp32"], out["auroc"] = roc_auc(y, p_ref), roc_auc(y, p)
    out["auroc_change"] = out["auroc"] - out["auroc_fp32"]
    out["auroc_change_ci95"] = list(bootstrap_auroc_change_ci(y, p_ref, p, n_boot=n_boot))
    out["passed"] = bool(-out["auroc_change"] <= gate)
    lo, hi = out["auroc_change_ci95"]
    out["verdict"] = (f"AUROC change {out['auroc_change']:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}, n={y.size}), "
                      f"{'within' if out['passed'] else 'a drop beyond'} the {gate} gate; {flips} decision(s) flip "
                      f"at {threshold:g}")
    return out


def probabilities(scorer, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """The scorer's probabilities for uint8 [N, 1, S, S], in batches."""
    parts = [scorer.predict(images[i:i + batch_size])[1] for i in range(0, images.shape[0], batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def time_in_turn(scorers: dict[str, Any], batch_sizes: Sequence[int], seconds: float, warmup: int,
                 pause_s: float = 0.05) -> dict[str, dict[int, list[float]]]:
    """Per precision and batch size, the ms of each call; one call of each precision per round, in turn, for about
    `seconds` per batch size per precision (at least 3 rounds). A short pause lets the previous session's worker
    threads stop spinning before the next is timed."""
    from cxr.runtime.card import INPUT_NAME, OUTPUT_NAMES

    out: dict[str, dict[int, list[float]]] = {name: {} for name in scorers}
    for b in batch_sizes:
        some = next(iter(scorers.values()))
        s = some.input_size
        feed = {INPUT_NAME: np.random.default_rng(b).integers(0, 256, (b, 1, s, s), dtype=np.uint8)}
        for scorer in scorers.values():
            for _ in range(warmup):
                scorer._session.run(list(OUTPUT_NAMES), feed)
        samples: dict[str, list[float]] = {name: [] for name in scorers}
        deadline = time.perf_counter() + seconds * len(scorers)
        while min(len(v) for v in samples.values()) < 3 or time.perf_counter() < deadline:
            for name, scorer in scorers.items():
                time.sleep(pause_s)
                start = time.perf_counter()
                scorer._session.run(list(OUTPUT_NAMES), feed)
                samples[name].append((time.perf_counter() - start) * 1000.0)
        for name in scorers:
            out[name][b] = samples[name]
    return out


def measure_precisions(model: Path, provider: str, images: np.ndarray, y: np.ndarray, labels_source: str, *,
                       batch_sizes: Sequence[int], seconds: float, warmup: int, threads: int | None,
                       host: Host | None = None) -> tuple[dict[str, Any], dict[str, dict[int, list[float]]]]:
    """(record for save_measurement, raw per-call ms) for every precision runnable on `provider`."""
    from cxr.runtime.scoring import Scorer

    model = Path(model)
    host = host or Host.detect()
    scorers = {}
    for name in runnable(provider, model, host):
        path = int8_path(model) if name == "int8" else model
        scorers[name] = Scorer(path, device=provider, threads=threads, precision="bf16" if name == "bf16" else "fp32",
                               batch_size=EVAL_BATCH)
    fp32 = scorers["fp32"]
    threshold = fp32.threshold
    probs = {name: probabilities(scorer, images) for name, scorer in scorers.items()}
    raw: dict[str, dict[int, list[float]]] = {name: {} for name in scorers}
    for b in batch_sizes:  # each batch size timed on the sessions cxr-score --batch-size b would run
        timed = {name: scorer.for_batch(b) for name, scorer in scorers.items()}
        for name, per_batch in time_in_turn(timed, [b], seconds, warmup).items():
            raw[name].update(per_batch)
        del timed
    precisions: dict[str, Any] = {}
    for name, scorer in scorers.items():
        entry: dict[str, Any] = {"file": scorer.model_path.name, "file_sha256": scorer.model_sha256,
                                 "providers": list(scorer.providers),
                                 "compiled_for_batch": scorer.static_batch is not None,
                                 "ms_per_image": {str(b): float(np.median(v)) / b for b, v in raw[name].items()}}
        if name == "fp32":
            entry.update(passed=True, verdict="the reference")
        else:
            entry.update(accuracy(y, probs["fp32"], probs[name], threshold, GATES[name]))
        precisions[name] = entry
    record = {"key": host.key(provider, fp32.model_sha256), "cpu_model": host.cpu_model,
              "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "labels": labels_source,
              "n_images": int(images.shape[0]), "threads": threads, "pid": os.getpid(),
              "timing": f"median per call, precisions in turn, batch sizes {list(batch_sizes)}",
              "precisions": precisions}
    return record, raw


def labelled_images(labels: Path, folder: Path | None, config) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 [N, 1, S, S], labels [N], description) of the labelled images under `folder` (default: the labels
    file's folder) that match a row of `labels`; unreadable images are left out and counted in the description."""
    from cxr.runtime.imaging import read_image
    from cxr.runtime.labels import LabelsError, match_labels, read_labels
    from cxr.runtime.preprocess import preprocess_batch
    from cxr.runtime.walk import find_images

    folder = Path(folder) if folder is not None else Path(labels).parent
    table = read_labels(labels)
    files = find_images(folder).files
    match = match_labels(table, folder, files)
    if not match.by_file:
        raise LabelsError(f"{labels}: no labelled path matches an image in {folder}: {match.describe(table, files)}")
    images, y, failed = [], [], 0
    for rel, label in sorted(match.by_file.items()):
        try:
            images.append(preprocess_batch([read_image(folder / rel)], config)[0])
            y.append(label)
        except Exception:  # noqa: BLE001 - an unreadable image is left out of the measurement and counted
            failed += 1
    if not images:
        raise LabelsError(f"{labels}: none of the {len(match.by_file)} matched image(s) could be read")
    source = f"{labels} ({len(images)} image(s) in {folder}" + (f"; {failed} unreadable, left out)" if failed
                                                                  else ")")
    return np.stack(images), np.asarray(y, np.int64), source


def openvino_precisions(model: Path, images: np.ndarray, y: np.ndarray, source: str, *,
                        batch_sizes: Sequence[int] = (1, 8), seconds: float = 0.5, warmup: int = 1,
                        threads: int | None = None, host: Host | None = None) -> dict[str, Any]:
    """For an export report: where onnxruntime offers the OpenVINO provider, measure every precision it can run for
    `model` (fp32, bf16, int8 from model.int8.onnx beside it) on the labelled `images`, as cxr-bench --labels does,
    and keep the record in model.precision.json for --precision auto. Where it does not, or the images lack a class,
    say why nothing was measured. No torch: the caller passes ONNX paths and preprocessed uint8 images."""
    from cxr.runtime.metrics import has_both_classes

    model = Path(model)
    host = host or Host.detect()
    if not host.has_openvino:
        return {"measured": False,
                "reason": f"onnxruntime-openvino not installed here; run `cxr-bench --model {model} --device "
                          "openvino --labels LABELS` where it is"}
    y = np.asarray(y, np.int64)
    if not has_both_classes(y):
        return {"measured": False,
                "reason": f"{y.size} labelled image(s) in {source} without both classes; measure with `cxr-bench "
                          f"--model {model} --device openvino --labels LABELS`"}
    record, _ = measure_precisions(model, "openvino", images, y, source, batch_sizes=batch_sizes, seconds=seconds,
                                   warmup=warmup, threads=threads, host=host)
    path = save_measurement(model, record)
    keep = ("passed", "verdict", "auroc_fp32", "auroc", "auroc_change", "auroc_change_ci95", "decision_flips",
            "max_abs_prob_diff", "ms_per_image", "file")
    return {"measured": True, "kept_in": str(path), "images": source, "n_images": int(y.size),
            "cpu_flags": record["key"]["cpu_flags"],
            "not_measured": {name: ("this CPU lacks avx512_bf16/amx_bf16" if name == "bf16"
                                    else f"no {int8_path(model).name} beside the model")
                             for name in ("bf16", "int8") if name not in record["precisions"]},
            "precisions": {name: {k: entry.get(k) for k in keep} for name, entry in record["precisions"].items()}}


def openvino_lines(report: dict[str, Any]) -> list[str]:
    """The export summary's lines for `openvino_precisions`' report."""
    if not report.get("measured"):
        return [f"OpenVINO precisions: not measured ({report['reason']})"]
    lines = [f"OpenVINO precisions on {report['n_images']} labelled image(s) (CPU flags "
             f"{' '.join(report['cpu_flags']) or 'none'}), kept in {report['kept_in']} for --precision auto:"]
    fp32_ms = report["precisions"]["fp32"]["ms_per_image"]
    for name, entry in report["precisions"].items():
        speed = ", ".join(f"b{b} {fp32_ms[b] / ms:.2f}x fp32" for b, ms in entry["ms_per_image"].items() if ms > 0)
        state = "reference" if name == "fp32" else "PASS" if entry["passed"] else "FAIL"
        lines.append(f"  {name} {state} ({speed})" + ("" if name == "fp32" else f": {entry['verdict']}"))
    lines += [f"  {name} not measured: {why}" for name, why in report["not_measured"].items()]
    return lines
