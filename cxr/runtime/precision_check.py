"""`cxr-score --labels` with a reduced precision (bf16, int8): the same labelled images scored again in fp32.

A precision's gate is measured once (cxr-bench --labels, on that benchmark's images); the images a user scores may
be another population. When a bf16 or int8 run has labels, `compare_with_fp32` re-scores the labelled images it
scored with an fp32 session of the same model on the same provider and reports, on exactly those images, what
cxr.runtime.precision_gate.accuracy reports for a measurement: the AUROC change with its paired bootstrap interval,
the decisions that flip at the run's threshold, and whether the change is beyond the precision's gate. The cost (one
fp32 pass over the labelled images only) is paid only when --labels meets a reduced precision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr.runtime.errors import CxrError
from cxr.runtime.precision import GATES


def fp32_source(plan, card) -> tuple[Path | None, str]:
    """(the fp32 model to compare with, how it was found), or (None, why there is none).

    With --precision int8/bf16/auto the plan names it (--model); a reduced copy given as --model itself names the fp32
    file it was made from in its card (export.validation.fp32_source, beside it)."""
    if plan.requested != "default":
        return Path(plan.source_model), "--model"
    validation = (card.export or {}).get("validation")
    name = validation.get("fp32_source") if isinstance(validation, dict) else None
    if not name:
        return None, f"{plan.model_path} names no fp32 source in its card"
    path = Path(plan.model_path).with_name(str(name))
    if not path.is_file():
        return None, f"{path}, the fp32 source named in {Path(plan.model_path).name}'s card, does not exist"
    return path, f"the fp32 source named in {Path(plan.model_path).name}'s card"


def compare_with_fp32(*, plan, scorer, folder: Path, paths: Sequence[str], y: Sequence[int], p: Sequence[float],
                      threshold: float, batch_size: int, workers: int, threads: int | None, forced: bool = False,
                      n_boot: int = 1000) -> dict[str, Any] | None:
    """The manifest's `precision_check` for a run at `plan.precision` (None for fp32 and precisions without a gate).

    `paths`, `y`, `p`: the labelled rows scored ok (relative paths under `folder`, labels, the run's probabilities).
    The fp32 reference is a new session of the fp32 file on the run's provider (`scorer.device`). `forced`: the user
    passed --force-precision (a drop beyond the gate is then recorded as accepted, not warned about)."""
    from cxr.runtime.precision_gate import accuracy
    from cxr.runtime.scoring import Scorer, score_folder

    precision = plan.precision
    if precision not in GATES:
        return None
    out: dict[str, Any] = {"precision": precision, "device": scorer.device, "labelled_images": len(paths),
                           "gate_max_auroc_drop": GATES[precision], "forced": bool(forced or plan.forced)}
    source, how = fp32_source(plan, scorer.card)
    if source is None:
        return {**out, "compared": False, "why": f"no fp32 reference: {how}"}
    start = time.perf_counter()
    try:
        reference = Scorer(source, device=scorer.device, threads=threads, precision="fp32",
                           batch_size=scorer.batch_size)
    except CxrError as exc:
        return {**out, "compared": False, "why": f"the fp32 reference {source} cannot be loaded: {exc}"}
    ref_p = {row.path: row.probability for row in score_folder(folder, reference, batch_size=batch_size,
                                                                 workers=workers, threshold=threshold,
                                                                 files=[Path(x) for x in paths]) if row.ok}
    keep = [i for i, path in enumerate(paths) if path in ref_p]
    y_arr = np.asarray([y[i] for i in keep], np.int64)
    p_run = np.asarray([p[i] for i in keep], np.float64)
    p_ref = np.asarray([ref_p[paths[i]] for i in keep], np.float64)
    figures = accuracy(y_arr, p_ref, p_run, threshold, GATES[precision], n_boot=n_boot)
    exceeded = figures.get("auroc_change") is not None and not figures["passed"]
    out.update(compared=True, images_compared=int(figures["n"]), reference_failed=len(paths) - len(keep),
               reference={"model": str(source), "found_by": how, "sha256": reference.model_sha256,
                          "providers": list(reference.providers), "precision": "fp32"},
               seconds=round(time.perf_counter() - start, 3), **figures, exceeds_gate=bool(exceeded))
    return out


def summary_line(check: dict[str, Any]) -> str:
    """One line for cxr-score's summary."""
    name = check["precision"]
    if not check.get("compared"):
        return f"{name} vs fp32 on the labelled images: not compared ({check['why']})"
    return (f"{name} vs fp32 on {check['images_compared']} labelled image(s), same provider: {check['verdict']}"
            + (" (forced: --force-precision)" if check["forced"] and check["exceeds_gate"] else ""))


def gate_warning(check: dict[str, Any] | None) -> str | None:
    """The warning for a check whose AUROC drop is beyond the gate (None when within it, not compared, or accepted
    beforehand with --force-precision, which the manifest and summary record instead)."""
    if not check or not check.get("exceeds_gate") or check["forced"]:
        return None
    name, gate = check["precision"], check["gate_max_auroc_drop"]
    tail = ("these results may be less accurate than fp32's: score again with --precision fp32 (or auto after "
            "cxr-bench --labels), or pass --force-precision to accept it")
    return (f"{name} lost more AUROC than its {gate} gate allows on these labelled images "
            f"({check['auroc_fp32']:.4f} in fp32 -> {check['auroc']:.4f}, change {check['auroc_change']:+.4f}, "
            f"{check['decision_flips']} decision(s) flipped); {tail}")
