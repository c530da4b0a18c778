"""--precision and --force-precision, shared by cxr-score and cxr-bench, and the Scorer they build from the plan.

What cannot or must not run (cxr.runtime.precision.PrecisionError) is a usage error, exit 2, whose message names the
way out; what was picked, and why, is said on stderr and kept in the manifest / bench JSON (`scorer.precision_facts`).
"""

from __future__ import annotations

from pathlib import Path

import click

DEVICE_HELP = ("auto: CUDA if onnxruntime-gpu has a GPU, else OpenVINO if onnxruntime-openvino is installed, else "
               "ONNX Runtime's CPU provider (said on stderr and in the manifest). openvino: the OpenVINO execution "
               "provider on this CPU (pip install 'cxr[openvino]', in its own environment). cuda and openvino fail "
               "rather than silently running elsewhere.")
PRECISION_HELP = ("fp32; bf16 (OpenVINO only, on CPUs with avx512_bf16 or amx_bf16); int8 (runs MODEL.int8.onnx "
                  "beside MODEL, from cxr-export --quantize int8); auto: the fastest precision whose accuracy gate "
                  "passed for this model on this host (measured by cxr-bench --labels; fp32 without a measurement). "
                  "Default: the file as given.")


def precision_options(func):
    """Add --precision and --force-precision to a click command."""
    func = click.option("--force-precision", is_flag=True,
                        help="Run a --precision whose measured accuracy gate failed (recorded in the manifest).")(func)
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "int8", "auto"]), default=None,
                        help=PRECISION_HELP)(func)


def build_scorer(model: Path, device: str, precision: str | None, force: bool, threads: int | None,
                 batch_size: int = 8):
    """(Scorer, PrecisionPlan). PrecisionError -> click.BadParameter (exit 2); load errors propagate (CxrError)."""
    from cxr.runtime.errors import CxrError
    from cxr.runtime.precision import PrecisionError, plan_precision, settle
    from cxr.runtime.scoring import Scorer

    try:
        plan = plan_precision(model, device, precision, batch_size=batch_size, force=force)
    except (PrecisionError, ValueError) as exc:
        hint = "--device" if "--device openvino needs" in str(exc) else "--precision"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    scorer = Scorer(plan.model_path, device=device, threads=threads,
                    precision="bf16" if plan.precision == "bf16" else "fp32", batch_size=batch_size)
    try:
        settle(plan, scorer.card)
    except PrecisionError as exc:
        raise click.BadParameter(str(exc), param_hint="--precision") from None
    if plan.device != scorer.device and plan.precision != "fp32":  # e.g. auto expected OpenVINO, got the CPU EP
        raise CxrError(f"{plan.precision} was planned for {plan.device} but the session runs on {scorer.device}")
    plan.device = scorer.device
    scorer.precision_facts = {**plan.facts(), "static_batch": scorer.static_batch}
    return scorer, plan


def precision_check(run, matcher, echo, warn) -> dict | None:
    """cxr-score --labels at bf16/int8 (local engine): the labelled images scored again in fp32 on the same provider
    (cxr.runtime.precision_check); says what it does unless --quiet, warns when the AUROC drop is beyond the gate
    (unless forced). The manifest's `precision_check`, or None when there is nothing to compare."""
    from cxr.runtime.precision import GATES
    from cxr.runtime.precision_check import compare_with_fp32, gate_warning

    req = run.req
    if matcher is None or not matcher.paths or run.ray_run is not None or run.plan.precision not in GATES:
        return None
    if not req.quiet:
        echo(f"cxr-score: comparing {run.plan.precision} with fp32 on the {len(matcher.paths)} labelled image(s) "
             f"scored (an fp32 pass on {run.scorer.device})")
    check = compare_with_fp32(plan=run.plan, scorer=run.scorer, folder=req.folder, paths=matcher.paths,
                              y=matcher.y, p=matcher.p, threshold=run.thr, batch_size=req.batch_size,
                              workers=req.workers, threads=req.threads, forced=req.force_precision)
    warning = gate_warning(check)
    if warning:
        warn(warning)  # printed unless --quiet, and listed in the manifest's warnings
    return check
