"""cxr-bench: latency and throughput of an exported model, per batch size, with onnxruntime only (no torch).

The session is the Scorer's (same providers, threads and contract checks as cxr-score). On CUDA the input batch is
copied to the device once and bound with I/O binding, outputs stay on the device, so host-device copies are not
timed in every run; on CPU `session.run` is timed as cxr-score calls it. On OpenVINO each batch size is timed on a
session compiled for that batch, as cxr-score --batch-size compiles it (Scorer.static_batch).
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

import click

from cxr import __version__
from cxr.cli import FiniteFloat
from cxr.cli.precision_opts import precision_options
from cxr.cli.verbosity import setup_logging, verbosity, verbosity_options

log = logging.getLogger(__name__)


def _parse_batch_sizes(ctx, param, value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers like 1,8,32, got {value!r}") from None
    if not sizes or any(s < 1 or s > 4096 for s in sizes):
        raise click.BadParameter(f"batch sizes must be integers between 1 and 4096, got {value!r}")
    return sorted(set(sizes))


def _runner(scorer, batch, device: str):
    """A zero-argument callable running one batch; on CUDA through I/O binding with the input already on the GPU."""
    from cxr.runtime.card import INPUT_NAME, OUTPUT_NAMES

    session = scorer._session  # the Scorer's validated session: same providers and options as cxr-score
    if device != "cuda":
        feed = {INPUT_NAME: batch}
        return lambda: session.run(list(OUTPUT_NAMES), feed)
    return bound_runner(session, batch, "cuda")[0]


def bound_runner(session, batch, device_type: str, device_id: int = 0):
    """(run, binding): `batch` copied once to `device_type` and bound as the input, outputs bound on the same device,
    so each `run()` is one inference and a wait for it, with no host-device copy. `binding.copy_outputs_to_cpu()`
    gives the last run's outputs in OUTPUT_NAMES order. The same code binds "cpu" in the tests and "cuda" here."""
    from cxr.runtime.card import INPUT_NAME, OUTPUT_NAMES
    from cxr.runtime.ort import import_ort

    ort = import_ort()

    binding = session.io_binding()
    on_device = ort.OrtValue.ortvalue_from_numpy(batch, device_type, device_id)  # one copy, outside the timing
    binding.bind_ortvalue_input(INPUT_NAME, on_device)
    for name in OUTPUT_NAMES:
        binding.bind_output(name, device_type, device_id)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run.keep_alive = on_device  # the bound input must outlive the binding's use
    return run, binding


def measure(scorer, batch_size: int, seconds: float, warmup: int, device: str, min_runs: int = 3) -> dict:
    """Time one batch size: `warmup` untimed runs, then runs until `seconds` have passed (at least `min_runs`)."""
    import numpy as np

    from cxr.runtime.bench import percentiles

    s = scorer.input_size
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, 1, s, s), dtype=np.uint8)
    run = _runner(scorer, batch, device)
    for _ in range(warmup):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000.0)
    batch_ms = percentiles(samples)
    image_ms = {k: (v / batch_size if k not in ("n",) else v) for k, v in batch_ms.items()}
    return {"batch_size": batch_size, "runs": len(samples), "batch_ms": batch_ms, "image_ms": image_ms,
            "images_per_s": 1000.0 * batch_size / batch_ms["p50"] if batch_ms["p50"] > 0 else float("inf")}


def _facts(scorer, threads: int | None) -> dict:
    import numpy as np

    import cxr
    from cxr.runtime.bench import cpu_info
    from cxr.runtime.ort import import_ort

    ort = import_ort()

    intra = scorer._session.get_session_options().intra_op_num_threads
    return {
        "model": str(scorer.model_path), "input_size": scorer.input_size, "device": scorer.device,
        "precision": getattr(scorer, "precision_facts", None),
        "providers": list(scorer.providers),
        "compiled_for_batch": scorer.static_batch is not None,
        "threads": {"requested": threads, "intra_op": intra,
                    "note": "intra_op 0 = onnxruntime's default (one per physical core)"},
        "cpu": cpu_info(),
        "versions": {"cxr": cxr.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }


def _table(results: list[dict]) -> str:
    head = (f"{'batch':>5}  {'p50 ms':>9}  {'p90 ms':>9}  {'p99 ms':>9}  {'p50 ms/img':>10}  {'p90 ms/img':>10}  "
            f"{'p99 ms/img':>10}  {'img/s':>8}  {'runs':>5}")
    lines = [head, "-" * len(head)]
    for r in results:
        b, i = r["batch_ms"], r["image_ms"]
        lines.append(f"{r['batch_size']:>5}  {b['p50']:>9.2f}  {b['p90']:>9.2f}  {b['p99']:>9.2f}  {i['p50']:>10.2f}  "
                     f"{i['p90']:>10.2f}  {i['p99']:>10.2f}  {r['images_per_s']:>8.1f}  {r['runs']:>5}")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="An ONNX model exported by cxr-export (it must carry a model card).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "openvino"]), default="cpu", show_default=True,
              help="cuda must really run on CUDA (onnxruntime-gpu and a GPU), or cxr-bench exits 1; openvino needs "
                   "onnxruntime-openvino (pip install 'cxr[openvino]', in its own environment), or exits 2.")
@precision_options
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV path,label of labelled images: measure every precision this host can run on --device "
                   "(accuracy against fp32 and speed, in turn) and keep it in MODEL.precision.json for "
                   "--precision auto.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder the --labels paths are under (default: the labels file's folder).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_parse_batch_sizes,
              help="Comma-separated batch sizes to time.")
@click.option("--seconds", type=FiniteFloat(min=0.0, min_open=True), default=5.0, show_default=True,
              help="Timed seconds per batch size (at least 3 runs each).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime intra-op threads (default: onnxruntime's choice, one per physical core).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the results and machine facts as JSON to this file.")
@verbosity_options(quiet_help="Errors and results only: no notes on stderr, no warnings.")
@click.version_option(__version__, prog_name="cxr-bench")
def main(*, model_path: Path, device: str, batch_sizes: list[int], seconds: float, warmup: int, threads: int | None,
         json_out: Path | None, precision: str | None, force_precision: bool, labels: Path | None,
         images: Path | None, quiet: bool, verbose: bool) -> None:
    """Time MODEL at each batch size: p50/p90/p99 latency per batch and per image, and images per second."""
    if quiet or verbose:  # the default keeps Python's own logging (warnings, unprefixed) as before
        setup_logging(verbosity(quiet, verbose), "cxr-bench")
    from cxr.cli.precision_opts import build_scorer
    from cxr.runtime.errors import CxrError

    if json_out is not None and not json_out.parent.is_dir():  # found out now, not after minutes of timing
        click.echo(f"cxr-bench: error: cannot write {json_out}: folder {json_out.parent} does not exist", err=True)
        sys.exit(1)
    if labels is not None:
        if precision is not None:
            raise click.BadParameter("--labels measures every precision; leave --precision out",
                                     param_hint="--precision")
        from cxr.cli.bench_precision import measure_command

        record = measure_command(model_path, device, labels, images, batch_sizes, seconds, warmup, threads,
                                 quiet=quiet)
        _write_json(json_out, record)
        return
    try:
        scorer, _ = build_scorer(model_path, device, precision, force_precision, threads, batch_sizes[0])
    except CxrError as exc:
        click.echo(f"cxr-bench: error: {exc}", err=True)
        sys.exit(1)
    facts = _facts(scorer, threads)
    if not quiet:
        click.echo(f"cxr-bench: {model_path} on {'CUDA' if device == 'cuda' else facts['cpu']['model']} "
                   f"(providers {', '.join(scorer.providers)}; precision {scorer.precision_facts['used']}; intra-op "
                   f"threads {facts['threads']['intra_op']}; input {scorer.input_size}x{scorer.input_size})",
                   err=True)
    results = [measure(scorer.for_batch(b), b, seconds, warmup, scorer.device) for b in batch_sizes]
    click.echo(_table(results))
    payload = {**facts, "settings": {"batch_sizes": batch_sizes, "seconds": seconds, "warmup": warmup,
                                     "io_binding": scorer.device == "cuda"}, "results": results}
    _write_json(json_out, payload)


def _write_json(json_out: Path | None, payload: dict) -> None:
    if json_out is None:
        return
    try:
        from cxr.runtime.results import write_json_atomic

        write_json_atomic(json_out, payload)
    except OSError as exc:
        click.echo(f"cxr-bench: error: cannot write {json_out}: {exc.strerror or exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
