"""cxr-bench --labels: accuracy and speed of every precision this host can run on one provider, kept for
`--precision auto` in MODEL.precision.json (cxr.runtime.precision_gate)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _line(name: str, entry: dict, fp32_ms: dict) -> str:
    speeds = ", ".join(f"b{b} {ms:.2f} ms/img ({fp32_ms[b] / ms:.2f}x fp32)" if ms > 0 else f"b{b} n/a"
                       for b, ms in entry["ms_per_image"].items())
    verdict = entry.get("verdict", "")
    state = "reference" if name == "fp32" else ("PASS" if entry.get("passed") else "FAIL")
    return f"{name:>5}  {state:<9}  {speeds}" + ("" if name == "fp32" else f"\n       {verdict}")


def measure_command(model: Path, device: str, labels: Path, images: Path | None, batch_sizes: list[int],
                    seconds: float, warmup: int, threads: int | None, *, quiet: bool = False) -> dict:
    """Measure, print, save; returns the record (for --json). Exits 2 for a device or labels that cannot be used.
    quiet: the table only (stdout), no notes on stderr."""
    from cxr.runtime.errors import CxrError
    from cxr.runtime.labels import LabelsError
    from cxr.runtime.precision import Host, PrecisionError, int8_path, refuse_unrunnable
    from cxr.runtime.precision_gate import labelled_images, measure_precisions, runnable, save_measurement
    from cxr.runtime.scoring import Scorer

    if device not in ("cpu", "openvino"):
        raise click.BadParameter("--labels measures the CPU precisions (fp32, bf16, int8): use --device cpu or "
                                 "openvino", param_hint="--device")
    host = Host.detect()
    try:
        refuse_unrunnable("fp32", device, model, host)
    except PrecisionError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    try:
        reference = Scorer(model, device=device, threads=threads)
        x, y, source = labelled_images(labels, images, reference.card.preprocess)
        del reference
        precisions = runnable(device, model, host)
        if not quiet:
            click.echo(f"cxr-bench: measuring {', '.join(precisions)} of {model} on {device} with {source} "
                       f"(CPU flags: {' '.join(host.present()) or 'none'}; onnxruntime {host.ort['version']}, "
                       f"{host.ort['distribution']})", err=True)
        record, _ = measure_precisions(model, device, x, y, source, batch_sizes=batch_sizes, seconds=seconds,
                                       warmup=warmup, threads=threads, host=host)
        path = save_measurement(model, record)
    except LabelsError as exc:
        raise click.BadParameter(str(exc), param_hint="--labels") from None
    except (CxrError, OSError, ValueError) as exc:
        click.echo(f"cxr-bench: error: {exc}", err=True)
        sys.exit(1)
    fp32_ms = record["precisions"]["fp32"]["ms_per_image"]
    for name, entry in record["precisions"].items():
        click.echo(_line(name, entry, fp32_ms))
    skipped = [p for p in ("bf16", "int8") if p not in record["precisions"]]
    for name in skipped:
        why = ("--device openvino (bf16 runs on the OpenVINO provider only)" if device != "openvino" else
               "a CPU with avx512_bf16 or amx_bf16") if name == "bf16" else f"{int8_path(model).name} beside it"
        click.echo(f"{name:>5}  not measured: needs {why}")
    if not quiet:
        click.echo(f"cxr-bench: kept in {path} for --precision auto", err=True)
    return record
