"""End to end against model only, per precision: how much of a precision's model throughput cxr-score keeps.

For fp32 and the precision `--precision auto` picks for MODEL on this host (from MODEL.precision.json, written by
cxr-bench --labels or cxr-export), each round times in turn, on the same PNG folder and the same session:
  model     the session alone on the images already read and preprocessed (in memory), batches of --batch
  e2e-wN    cxr.runtime.scoring.score_folder with N reader threads (read, preprocess, batch, score: the rows)
  cxr-score the command itself (CSV, journal, manifest), timed by its manifest's scoring_s (the session's start-up,
            the same for every folder size, is left out and printed apart)
and reports ms per image (median over rounds) and the ratio e2e/model of throughput (median of per-round ratios).
Noise on a shared machine comes in bursts; taking the modes in turn shares them, so the ratios carry where the
absolute figures do not. Run it with the python of the environment whose provider is measured (OpenVINO: the
onnxruntime-openvino one), torch-free:

    python benchmarks/e2e_precision.py MODEL.onnx FOLDER [--images 300] [--rounds 3] [--workers 1,2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.runtime.precision import Host, expected_device, plan_precision  # noqa: E402
from cxr.runtime.scoring import Scorer, score_folder  # noqa: E402

PAUSE_S = 0.1  # between modes: a session's spinning worker threads would slow the next one


def _images(folder: Path, n: int) -> list[Path]:
    from cxr.runtime.walk import find_images

    files = find_images(folder).files
    if len(files) < n:
        raise SystemExit(f"{folder}: {len(files)} image(s), fewer than --images {n}")
    return files[:n]


def _folder_of(folder: Path, files: list[Path], tmp: Path) -> Path:
    """A folder holding exactly `files` (hard links, else symbolic links), for the cxr-score command."""
    out = tmp / "images"
    for rel in files:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(folder / rel, target)
        except OSError:
            target.symlink_to((folder / rel).resolve())
    return out


def _cli(model: Path, folder: Path, device: str, precision: str, batch: int, workers: int, out: Path) -> dict:
    code = "import sys; from cxr.cli.score import main; sys.argv[0] = 'cxr-score'; main()"
    args = [sys.executable, "-c", code, str(folder), "--out", str(out), "--model", str(model), "--device", device,
            "--precision", precision, "--batch-size", str(batch), "--workers", str(workers), "--quiet"]
    ran = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if ran.returncode != 0:
        raise SystemExit(f"cxr-score failed ({ran.returncode}): {ran.stderr[-500:]}")
    return json.loads(out.with_name(out.stem + ".manifest.json").read_text())["timings"]


def measure(model: Path, folder: Path, n: int, rounds: int, batch: int, workers: list[int], device: str,
            threads: int | None) -> dict:
    host = Host.detect()
    device = expected_device(device, host)
    auto = plan_precision(model, device, "auto", batch_size=batch, host=host)
    precisions = ["fp32"] + ([auto.precision] if auto.precision != "fp32" else [])
    files = _images(folder, n)
    scorers = {p: Scorer(auto.model_path if p == auto.precision else model, device=device, threads=threads,
                         precision="bf16" if p == "bf16" else "fp32", batch_size=batch) for p in precisions}
    some = next(iter(scorers.values()))
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import preprocess_batch

    x = np.stack([preprocess_batch([read_image(folder / f)], some.card.preprocess)[0] for f in files])
    for scorer in scorers.values():  # warm-up
        scorer.predict(x[:batch])
    modes = ["model"] + [f"e2e-w{w}" for w in workers] + ["cxr-score"]
    ms: dict[str, dict[str, list[float]]] = {p: {m: [] for m in modes} for p in precisions}
    startup: dict[str, list[float]] = {p: [] for p in precisions}
    with tempfile.TemporaryDirectory(prefix="cxr-e2e-") as tmp:
        linked = _folder_of(folder, files, Path(tmp))
        for r in range(rounds):
            for p, scorer in scorers.items():
                for mode in modes:
                    time.sleep(PAUSE_S)
                    if mode == "cxr-score":
                        t = _cli(model, linked, device, p, batch, max(workers), Path(tmp) / f"r{r}-{p}.csv")
                        ms[p][mode].append(1000.0 * t["scoring_s"] / n)
                        startup[p].append(t["total_s"] - t["scoring_s"])
                        continue
                    start = time.perf_counter()
                    if mode == "model":
                        for i in range(0, n, batch):
                            scorer.predict(x[i:i + batch])
                    else:
                        rows = list(score_folder(folder, scorer, batch_size=batch, workers=int(mode[5:]),
                                                 files=files))
                        assert len(rows) == n and all(row.ok for row in rows)
                    ms[p][mode].append(1000.0 * (time.perf_counter() - start) / n)
                print(f"round {r + 1}/{rounds} {p}: " + ", ".join(f"{m} {ms[p][m][-1]:.2f}" for m in modes)
                      + " ms/img", file=sys.stderr)
    result = {"model": str(model), "folder": str(folder), "images": n, "batch": batch, "rounds": rounds,
              "device": device, "threads": threads, "cpu_model": host.cpu_model, "cpu_flags": host.present(),
              "onnxruntime": dict(host.ort), "auto": {"precision": auto.precision, "why": auto.why},
              "ms_per_image": ms, "startup_s": startup, "summary": {}}
    for p in precisions:
        model_ms = ms[p]["model"]
        result["summary"][p] = {m: {"median_ms_per_image": statistics.median(v),
                                    "throughput_vs_model": statistics.median(a / b for a, b in zip(model_ms, v))}
                                for m, v in ms[p].items()}
    return result


def render(result: dict) -> str:
    lines = [f"End to end vs model only, {result['images']} PNGs from {result['folder']}, batch {result['batch']}, "
             f"{result['device']} ({result['onnxruntime']['distribution']} {result['onnxruntime']['version']}), "
             f"{result['rounds']} rounds in turn; CPU {result['cpu_model']}, flags "
             f"{' '.join(result['cpu_flags']) or 'none'}; auto picked {result['auto']['precision']}",
             "", "| precision | mode | ms/img (median) | throughput vs model only |", "|---|---|---:|---:|"]
    for p, modes in result["summary"].items():
        for mode, s in modes.items():
            lines.append(f"| {p} | {mode} | {s['median_ms_per_image']:.2f} | {s['throughput_vs_model']:.0%} |")
    for p, v in result["startup_s"].items():
        lines.append(f"\ncxr-score start-up at {p} (not in its row): median {statistics.median(v):.2f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "openvino"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.model, args.folder, args.images, args.rounds, args.batch,
                     [int(w) for w in args.workers.split(",")], args.device, args.threads)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
