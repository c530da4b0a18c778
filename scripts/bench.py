"""`make bench`: run the pytest-benchmark suites once and write BENCHMARKS.md from that one run's JSON.

    python scripts/bench.py                      # pytest benchmarks/ -> .benchmarks/latest.json -> BENCHMARKS.md
    python scripts/bench.py --render-only FILE   # re-render BENCHMARKS.md from an existing JSON, no benchmarks run

The int8 accuracy row needs a trained model: unless --no-demo, a run first makes sure `make demo`'s training run and
held-out cohort exist (scripts/demo.py, which reuses whatever is already done; about 10 minutes on a fresh clone).
The memory row scores a 10,000-file folder with DenseNet-121 (about 10 minutes here); CXR_BENCH_MEMORY_FILES=N runs
fewer files for a quick try, and the report then says the 10,000-file target was not measured.

This script is the only source of BENCHMARKS.md: every number in it comes from the JSON, and the machine facts from
what each benchmark recorded in extra_info (so re-rendering elsewhere does not mix in the other machine's facts).
After a run the JSON is also kept beside the report (BENCHMARKS.json, committed with it), so anyone can check a figure
against the raw rounds or re-render without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.runtime.bench import densenet121_gflops, isa_summary, peak_gflops  # noqa: E402

DEFAULT_JSON = REPO / ".benchmarks" / "latest.json"
TARGETS = {"ort_vs_torch_b1": 1.8, "e2e_share": 0.85, "int8_speedup": 1.6, "int8_auroc_drop": 0.01, "rss_mb": 500}
MODEL_FILES = 10_000


def run_benchmarks(json_path: Path, extra_args: list[str], demo_out: Path) -> int:
    """pytest benchmarks/ with the interpreter running this script (the venv's under `make bench`)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-o", "python_files=bench_*.py", "-p", "no:cacheprovider",
           f"--benchmark-json={json_path}", "-q", *extra_args]
    print("running:", " ".join(cmd), file=sys.stderr)
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "CXR_BENCH_TRAINED": str(demo_out)}).returncode
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        data["cxr_run"] = {"command": " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - start, 1),
                           "pytest_exit_code": rc}
        json_path.write_text(json.dumps(data, indent=1))
    return rc


# ---------------------------------------------------------------- reading the JSON

def _index(benchmarks: list[dict]) -> dict[tuple, dict]:
    """(group, key...) lookups used by the ratios below."""
    out = {}
    for b in benchmarks:
        e, g = b.get("extra_info", {}), b.get("group") or ""
        if g.startswith("inference-"):
            out[("inf", e.get("engine"), e.get("precision"), e.get("batch"))] = b
        elif g.startswith("in-turn-"):
            out[("turn", e.get("batch"))] = b
        elif g == "end-to-end":
            out[("e2e", e.get("mode"))] = b
        elif g == "int8-trained":
            out[("int8t",)] = b
        elif g.startswith("equalize-"):
            out[("eq", e.get("size"), e.get("method"))] = b
        elif g == "memory":
            out[("mem", e.get("model"), e.get("files"))] = b
    return out


def _median(b: dict | None) -> float | None:
    return None if b is None else b["stats"]["median"]


def _paired_median(b: dict | None, key: str) -> float | None:
    """Median of the per-round times a benchmark recorded in extra_info[key] (its paired, untimed-setup rounds)."""
    values = None if b is None else b.get("extra_info", {}).get(key)
    return float(statistics.median(values)) if values else None


def _paired(b: dict | None) -> dict[str, list[float]] | None:
    """The per-round seconds of `test_engines_in_turn` (PyTorch, int8, fp32 on one batch, back to back)."""
    rounds = None if b is None else b.get("extra_info", {}).get("paired_rounds")
    return rounds if rounds and all(rounds.get(k) for k in ("fp32_s", "pytorch_s", "int8_s")) else None


def _median_ratio(num: list[float], den: list[float]) -> float | None:
    """The median over rounds of each round's own ratio num/den (rounds taken in turn share the machine's load)."""
    pairs = [a / b for a, b in zip(num, den) if b > 0]
    return float(statistics.median(pairs)) if pairs else None


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _fmt(value, spec: str = ".2f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**PASS**" if ok else "**MISS**")


# ---------------------------------------------------------------- sections

def machine_section(data: dict) -> tuple[list[str], float | None]:
    first = next((b.get("extra_info", {}) for b in data["benchmarks"] if "cpu_model" in b.get("extra_info", {})), {})
    info = {"model": first.get("cpu_model", "unknown"), "logical_cores": first.get("cores_logical"),
            "physical_cores": first.get("cores_physical"), "flags": first.get("isa", {}),
            "max_mhz": first.get("max_mhz"), "clock_source": first.get("clock_source")}
    peak, how = peak_gflops(info)
    mi = data.get("machine_info", {})
    run = data.get("cxr_run", {})
    threads = sorted({str(b.get("extra_info", {}).get("threads")) for b in data["benchmarks"]
                      if b.get("group", "").startswith("inference-")})
    lines = [
        "## Machine",
        "",
        f"- CPU: {info['model']} ({info['logical_cores']} logical / {info['physical_cores'] or '?'} physical cores), "
        f"ISA: {isa_summary(info)}; AVX-512: {'yes' if info['flags'].get('avx512f') else 'no'}, "
        f"VNNI: {'yes' if info['flags'].get('avx512_vnni') or info['flags'].get('avx_vnni') else 'no'}",
        f"- Clock: {_fmt(info['max_mhz'], '.0f')} MHz ({info['clock_source'] or 'source unknown'})",
        f"- Peak fp32: {_fmt(peak, '.1f')} GFLOP/s = {how}",
        f"- Intra-op threads for ONNX Runtime and PyTorch: {', '.join(threads) or 'n/a'}",
        f"- Python {mi.get('python_version', '?')}, run {data.get('datetime', '?')}"
        + (f", wall time {run['wall_s']:.0f} s" if run.get("wall_s") else ""),
        "",
    ]
    return lines, peak


def table_section(data: dict) -> list[str]:
    lines = ["## Every benchmark", "",
             "Median and IQR over rounds (one call per round); per image = median / images in the call.", "",
             "| group | benchmark | rounds | median ms | IQR ms | stddev ms | images | ms / image | images/s | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for b in sorted(data["benchmarks"], key=lambda b: (b.get("group") or "", b["name"])):
        s, e = b["stats"], b.get("extra_info", {})
        n = e.get("images") or e.get("samples") or 1
        med_ms = s["median"] * 1000
        notes = []
        for key in ("providers", "format", "file_bytes", "model_bytes", "peak_rss_mb", "mode", "model"):
            if key in e and e[key] not in (None, "n/a") and not isinstance(e[key], dict):
                val = e[key]
                val = ",".join(v.replace("ExecutionProvider", "") for v in val) if isinstance(val, list) else val
                notes.append(f"{key}={val}")
        lines.append(f"| {b.get('group')} | `{b['name']}` | {s['rounds']} | {med_ms:.2f} | {s['iqr'] * 1000:.2f} | "
                     f"{s['stddev'] * 1000:.2f} | {n} | {med_ms / n:.2f} | {n / s['median']:.1f} | "
                     f"{'; '.join(notes)} |")
    return lines + [""]


def ratios_section(data: dict, idx: dict, peak: float | None) -> tuple[list[str], dict]:
    found: dict = {}
    lines = ["## Ratios", "", "| batch | ORT fp32 ms/img | PyTorch ms/img | ORT fp32 / PyTorch speed-up "
             "| ORT int8 ms/img | int8 / fp32 speed-up | fp32 % of peak |", "|---:|---:|---:|---:|---:|---:|---:|"]
    gflop = densenet121_gflops(224)
    in_turn = []
    for batch in (1, 8, 32):
        paired = _paired(idx.get(("turn", batch)))
        if paired is not None:  # rounds taken in turn: medians of each engine's calls, ratios per round
            in_turn.append(batch)
            f32, i8, pt = (float(statistics.median(paired[k])) for k in ("fp32_s", "int8_s", "pytorch_s"))
            ort_vs_torch = _median_ratio(paired["pytorch_s"], paired["fp32_s"])
            int8_speedup = _median_ratio(paired["fp32_s"], paired["int8_s"])
        else:  # an older JSON without them: the separate benchmarks' medians
            f32, i8, pt = (_median(idx.get(("inf", eng, prec, batch)))
                           for eng, prec in (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("pytorch", "fp32")))
            ort_vs_torch, int8_speedup = _ratio(pt, f32), _ratio(f32, i8)
        per = lambda m: None if m is None else m * 1000 / batch  # noqa: E731, B023 (only called in this iteration)
        pct = None if f32 is None or not peak else 100 * gflop * batch / f32 / peak
        found[batch] = {"ort_vs_torch": ort_vs_torch, "int8_speedup": int8_speedup, "pct_peak": pct,
                        "fp32_ms": per(f32)}
        lines.append(f"| {batch} | {_fmt(per(f32))} | {_fmt(per(pt))} | {_fmt(ort_vs_torch, '.2f')}x | "
                     f"{_fmt(per(i8))} | {_fmt(int8_speedup)}x | {_fmt(pct, '.1f')}% |")
    best = min((b for b in found if found[b]["fp32_ms"] is not None), key=lambda b: found[b]["fp32_ms"], default=None)
    sizes = {}
    for prec in ("fp32", "int8"):
        b = next((b for b in data["benchmarks"] if b.get("extra_info", {}).get("precision") == prec
                  and (b.get("group") or "").startswith("inference-") and "model_bytes" in b.get("extra_info", {})),
                 None)
        sizes[prec] = b["extra_info"]["model_bytes"] if b else None
    folder_run = idx.get(("e2e", "score_folder"))
    e2e = _ratio(_paired_median(folder_run, "model_only_round_s"), _median(folder_run))
    found.update(best=best, e2e=e2e, size_ratio=_ratio(sizes["fp32"], sizes["int8"]))
    lines += ["",
              (f"- Batches {', '.join(map(str, in_turn))}: rounds taken in turn (PyTorch, ONNX Runtime int8 and fp32 "
               "on the same batch, one after the other with a 0.1 s pause between engines so that one engine's "
               "spinning threads do not slow the next; `test_engines_in_turn`); ms/img are the medians of each "
               "engine's calls, and each speed-up is the median over rounds of that round's own ratio, so load from "
               "other tenants of the machine falls on both sides of it." if in_turn else
               "- Ratios from the separate benchmarks' medians (this run has no rounds taken in turn)."),
              f"- DenseNet-121 at 224 (one grey channel in, one logit out): {gflop:.2f} GFLOP per image "
              f"(2 x {gflop / 2:.3f} GMACs, counted analytically over every convolution and the linear layer by "
              "`cxr.runtime.bench.densenet121_macs`, checked against a layer-by-layer count of the PyTorch model in "
              "tests; batch norm, ReLU and pooling not counted).",
              f"- Percent of peak = GFLOP per image x images / median seconds / peak: batch 1 "
              f"{_fmt(found[1]['pct_peak'], '.1f')}%, best batch ({best}) "
              f"{_fmt(found.get(best, {}).get('pct_peak'), '.1f')}%"
              " (ONNX Runtime fp32). The peak is at the nominal clock; a boost clock makes the true share lower.",
              f"- int8 model size: {_fmt(sizes['int8'] and sizes['int8'] / 1e6)} MB vs fp32 "
              f"{_fmt(sizes['fp32'] and sizes['fp32'] / 1e6)} MB ({_fmt(found['size_ratio'])}x smaller).",
              f"- End to end / model only (throughput, 64 PNGs of 1024x1024, batch 8, rounds taken in turn): "
              f"{_pct(e2e)}" + ("" if folder_run is None else
              f" (score_folder {_median(folder_run):.2f} s, model alone "
              f"{_fmt(_paired_median(folder_run, 'model_only_round_s'))} s per round)") + ".",
              ]
    t8 = idx.get(("int8t",))
    if t8 is not None:
        e = t8["extra_info"]
        fp32_s = _paired_median(t8, "fp32_round_s")
        found["int8_trained_speedup"] = _ratio(fp32_s, _median(t8))
        lo, hi = e["auroc_change_ci95"]
        lines.append(
            f"- int8 on the trained `make demo` model ({e['size']} px, {e['images']} held-out images, batch "
            f"{e['batch']}, rounds taken in turn): {_fmt(found['int8_trained_speedup'])}x fp32's speed; AUROC "
            f"{e['auroc_fp32']:.4f} -> {e['auroc_int8']:.4f} (change {e['auroc_change']:+.4f}, paired bootstrap 95% "
            f"CI {lo:+.4f} to {hi:+.4f}); |probability change| max {e['max_abs_prob_diff']:.3f}, mean "
            f"{e['mean_abs_prob_diff']:.4f}; {e['decisions_flipped']} of {e['images']} decisions flip at the card's "
            f"threshold {e['threshold']:.3f}. Kept float: {'; '.join(e.get('kept_float') or []) or 'nothing'}.")
    for size in (224, 1024):
        vec, loop = _median(idx.get(("eq", size, "equalize_batch"))), _median(idx.get(("eq", size, "cv2_loop")))
        if vec and loop:
            faster = "faster" if vec < loop else "slower"
            lines.append(f"- equalize_batch vs cv2.equalizeHist loop, 32 images at {size}: {vec * 1000:.2f} ms vs "
                         f"{loop * 1000:.2f} ms: the vectorized form is "
                         f"{max(vec, loop) / min(vec, loop):.2f}x {faster}.")
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if (b.get("group") or "").startswith("train") and e.get("images"):
            lines.append(f"- Training ({b['name']}, group {b['group']}): {e['images'] / b['stats']['median']:.2f} "
                         f"images/s ({b['stats']['median'] / e['images']:.3f} s per image, "
                         f"batch {e.get('batch', '?')}).")
    return lines + [""], found


def memory_facts(idx: dict) -> dict:
    """The largest DenseNet memory run: files, peak RSS (MB), seconds."""
    runs = [(k[2], v) for k, v in idx.items() if k[0] == "mem" and str(k[1]).startswith("densenet")]
    if not runs:
        return {"files": None, "rss": None, "seconds": None}
    files, b = max(runs, key=lambda r: r[0])
    return {"files": files, "rss": b["extra_info"]["peak_rss_mb"], "seconds": b["stats"]["median"],
            "pixels": b["extra_info"].get("pixels", "")}


def targets_section(found: dict, idx: dict) -> list[str]:
    b1 = found.get(1, {})
    r = b1.get("ort_vs_torch")
    spd = [found[b]["int8_speedup"] for b in (1, 8, 32) if found.get(b, {}).get("int8_speedup") is not None]
    t8 = idx.get(("int8t",))
    speed_ok = None if not spd else min(spd) >= TARGETS["int8_speedup"]
    if t8 is not None:
        e = t8["extra_info"]
        lo, hi = e["auroc_change_ci95"]
        int8_auroc_text = (f"AUROC change {e['auroc_change']:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}; "
                           f"{e['auroc_fp32']:.4f} -> {e['auroc_int8']:.4f}) on the trained demo model's "
                           f"{e['images']} held-out images; "
                           f"{_fmt(found.get('int8_trained_speedup'))}x on that model at {e['size']} px")
        auroc_ok = -e["auroc_change"] <= TARGETS["int8_auroc_drop"]
        int8_ok = False if not auroc_ok else speed_ok  # an AUROC loss past the limit is a MISS with or without speed
    else:
        int8_auroc_text = "AUROC loss not measured (no trained demo run: `make bench` makes one; --no-demo skips it)"
        int8_ok = speed_ok
    mem = memory_facts(idx)
    if mem["files"] is None:
        mem_text, mem_ok = "not measured", None
    else:
        mem_text = (f"{mem['rss']:.0f} MB peak RSS: DenseNet-121 fp32 at 224 on {mem['files']:,} files, "
                    f"{mem['pixels']}, in {mem['seconds'] / 60:.1f} min")
        mem_ok = mem["rss"] < TARGETS["rss_mb"] if mem["files"] >= MODEL_FILES else None
        if mem_ok is None:
            mem_text += f"; the {MODEL_FILES:,}-file target needs a run on {MODEL_FILES:,} files"
    e2e = found.get("e2e")
    return ["## Targets (reported, not asserted)", "",
            "| target | measured | status |", "|---|---|---|",
            f"| ORT fp32 >= {TARGETS['ort_vs_torch_b1']}x PyTorch eager at batch 1 | {_fmt(r)}x "
            f"(batch 8: {_fmt(found.get(8, {}).get('ort_vs_torch'))}x, "
            f"32: {_fmt(found.get(32, {}).get('ort_vs_torch'))}x) "
            f"| {_verdict(None if r is None else r >= TARGETS['ort_vs_torch_b1'])} |",
            f"| end to end >= {TARGETS['e2e_share']:.0%} of model-only on 1024x1024 PNG folders | "
            f"{_pct(e2e)} | {_verdict(None if e2e is None else e2e >= TARGETS['e2e_share'])} |",
            f"| int8 >= {TARGETS['int8_speedup']}x fp32 (every batch size) with AUROC loss <= "
            f"{TARGETS['int8_auroc_drop']} | speed-up {', '.join(f'{s:.2f}x' for s in spd) or 'n/a'} (batch 1, 8, 32 "
            f"at 224); {int8_auroc_text} | {_verdict(int8_ok)}{'' if t8 is not None else ' (speed only)'} |",
            f"| cxr-score peak memory < {TARGETS['rss_mb']} MB on a {MODEL_FILES:,}-file folder | {mem_text} | "
            f"{_verdict(mem_ok)} |",
            "",
            "Peak RSS is cxr-score's ru_maxrss, read by a small launcher process (RUSAGE_CHILDREN) so that pytest's "
            "own memory does not leak into it.", ""]


def cuda_section(data: dict) -> list[str]:
    """Batch 64, fp32 and fp16, ONNX Runtime CUDA EP (I/O binding) against PyTorch eager, card named."""
    rows = {(b["extra_info"].get("engine"), b["extra_info"].get("precision")): b for b in data["benchmarks"]
            if (b.get("group") or "").startswith("cuda-b")}
    if not rows:
        return ["## CUDA", "",
                "No CUDA device in this run. On a GPU machine, `make bench` adds batch-64 fp32/fp16 rows "
                "for ONNX Runtime's CUDA execution provider (onnxruntime-gpu, I/O binding) and PyTorch eager on the "
                "same card (benchmarks/bench_cuda.py); `cxr-bench --model model.onnx --device cuda --batch-sizes "
                "1,8,64 --json cuda.json` times any exported model there.", ""]
    gpus = sorted({b["extra_info"].get("gpu", "unknown GPU") for b in rows.values()})
    batch = next(iter(rows.values()))["extra_info"].get("batch", "?")
    lines = ["## CUDA", "",
             f"Card: {', '.join(gpus)}. Batch {batch}, input already on the GPU, every call synchronized.",
             "", "| engine | precision | median ms per batch | IQR ms | ms / image | images/s |",
             "|---|---|---:|---:|---:|---:|"]
    for (engine, precision), b in sorted(rows.items()):
        med, n = b["stats"]["median"], b["extra_info"].get("images") or 1
        label = "ONNX Runtime CUDA EP (I/O binding)" if engine == "onnxruntime" else "PyTorch eager"
        lines.append(f"| {label} | {precision} | {med * 1000:.2f} | {b['stats']['iqr'] * 1000:.2f} | "
                     f"{med * 1000 / n:.3f} | {n / med:.0f} |")
    lines.append("")
    for precision in ("fp32", "fp16"):
        ort_b, pt_b = rows.get(("onnxruntime", precision)), rows.get(("pytorch", precision))
        if ort_b and pt_b:
            lines.append(f"- ONNX Runtime / PyTorch at {precision}: {_ratio(_median(pt_b), _median(ort_b)):.2f}x "
                         "the throughput.")
    for engine in ("onnxruntime", "pytorch"):
        f32, f16 = rows.get((engine, "fp32")), rows.get((engine, "fp16"))
        if f32 and f16:
            lines.append(f"- fp16 / fp32 with {engine}: {_ratio(_median(f32), _median(f16)):.2f}x the throughput.")
    for engine, why in (("onnxruntime", "no CUDAExecutionProvider: onnxruntime-gpu is not installed"),
                        ("pytorch", "torch saw no CUDA device")):
        if not any(e == engine for e, _ in rows):
            lines.append(f"- No {engine} rows: {why}.")
    return lines + [""]


OV_ENGINES = [("cpu-fp32", "ORT CPU EP fp32"), ("cpu-int8", "ORT CPU EP int8 (`model.int8.onnx`)"),
              ("openvino-fp32", "ORT OpenVINO EP fp32 (hint f32)"),
              ("openvino-bf16", "ORT OpenVINO EP bf16 (hint bf16)"),
              ("openvino-bf16-dynamic", "ORT OpenVINO EP bf16, dynamic batch (before: not compiled per batch)"),
              ("openvino-int8", "ORT OpenVINO EP int8 (same int8 file)")]


def openvino_section(data: dict) -> list[str]:
    """Issue 16: the OpenVINO provider's precisions against the CPU provider, rounds in turn (bench_openvino.py)."""
    b = next((b for b in data["benchmarks"] if b.get("group") == "openvino"), None)
    lines = ["## OpenVINO execution provider (issue 16)", ""]
    if b is None:
        return lines + ["No OpenVINO benchmark in this run (benchmarks/bench_openvino.py was not collected).", ""]
    e = b.get("extra_info", {})
    if e.get("skipped"):
        return lines + [f"Skipped: {e['skipped']}.", ""]
    seconds, engines = e.get("seconds", {}), e.get("engines", {})
    batches = sorted(seconds, key=int)
    ort = e.get("onnxruntime", {})
    lines += [f"CPU flags: {' '.join(e.get('cpu_flags', [])) or 'none'}; {ort.get('distribution')} "
              f"{ort.get('version')} (its own CPU provider is the baseline here); intra-op threads {e.get('threads')}; "
              "rounds taken in turn (every engine once per round, 0.1 s pause between engines), so each ratio is the "
              "median of per-round ratios against CPU fp32 on the same batch.", "",
              "| engine / precision | " + " | ".join(f"batch {b} ms/img" for b in batches) + " | "
              + " | ".join(f"vs CPU EP fp32 (b{b})" for b in batches) + " | max prob diff vs CPU fp32 |",
              "|---|" + "---:|" * (2 * len(batches) + 1)]
    diffs = e.get("max_abs_prob_diff_vs_cpu_fp32", {})
    for key, label in OV_ENGINES:
        if key not in engines:
            lines.append(f"| {label} | " + " | ".join("not run" for _ in range(2 * len(batches))) + " | n/a |")
            continue
        ms = [1000 * statistics.median(seconds[b][key]) / int(b) for b in batches]
        ratios = [_median_ratio(seconds[b]["cpu-fp32"], seconds[b][key]) for b in batches]
        lines.append(f"| {label} | " + " | ".join(f"{m:.2f}" for m in ms) + " | "
                     + " | ".join(f"{_fmt(r)}x" for r in ratios) + f" | {diffs.get(key, float('nan')):.1e} |")
    lines += ["", "- Random weights: the prob diffs show the arithmetic, not accuracy on patients; each precision's "
              "AUROC change on labelled images is what `cxr-bench --labels ... --device openvino` measures and "
              "`--precision auto` reads (README).",
              "- The OpenVINO rows run as `cxr-score --batch-size B` does: the graph compiled for that batch (a fixed "
              "input shape), except the dynamic-batch row, which shows what that gives.",
              "- bf16 runs only where the CPU has avx512_bf16 or amx_bf16 (else refused); int8 speed depends on "
              "VNNI/AMX-INT8.", ""]
    return lines


def render(data: dict) -> str:
    idx = _index(data["benchmarks"])
    machine, peak = machine_section(data)
    ratios, found = ratios_section(data, idx, peak)
    run = data.get("cxr_run", {})
    head = ["# Benchmarks", "",
            f"Generated by `scripts/bench.py` (`make bench`) from one pytest-benchmark run "
            f"({data.get('datetime', '?')}); do not edit by hand. That run's pytest-benchmark JSON is "
            "[BENCHMARKS.json](BENCHMARKS.json); re-render with "
            "`python scripts/bench.py --render-only BENCHMARKS.json`.",
            "",
            "> Noise: these are shared 2-core machines, so figures vary between runs; IQR shows the spread, and "
            "ratios come from one run, side by side. A ratio past 100% (end to end faster than model-only) or batch 8 "
            "slower per image than batches 1 and 32 is such noise, not a property of the code. "
            "Latency rows use DenseNet-121 at 224 with random weights (latency does not depend on weight values); "
            "int8 accuracy uses the trained `make demo` model, since a random model's AUROC means nothing.", ""]
    if run.get("pytest_exit_code"):
        head += [f"> pytest exited {run['pytest_exit_code']}: some benchmarks failed and are missing below.", ""]
    return "\n".join(head + machine + targets_section(found, idx) + ratios + openvino_section(data)
                     + table_section(data) + cuda_section(data))


def ensure_demo_run(demo_out: Path) -> int:
    """Run scripts/demo.py unless `demo_out` already holds a finished training run and the held-out cohort."""
    if (demo_out / "run" / "metrics.json").is_file() and (demo_out / "phantom_holdout" / "labels.csv").is_file():
        print(f"bench: reusing the trained demo run in {demo_out}", file=sys.stderr)
        return 0
    print(f"bench: the int8 accuracy row needs a trained model; running scripts/demo.py into {demo_out} first",
          file=sys.stderr)
    return subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(demo_out)],
                          cwd=REPO).returncode


def _kept_sections(path: Path) -> str:
    """Sections other scripts write into BENCHMARKS.md between their markers (benchmarks/many_files.py,
    scripts/bench_ray.py): kept as they are, in the order they stand."""
    text = path.read_text() if path.is_file() else ""
    kept = []
    for begin, end in (("<!-- many-files:begin -->", "<!-- many-files:end -->"),
                       ("<!-- ray-engine:start -->", "<!-- ray-engine:end -->")):
        if begin in text and end in text:
            kept.append((text.index(begin), begin + text.split(begin, 1)[1].split(end, 1)[0] + end))
    return "".join("\n\n" + section for _, section in sorted(kept))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-only", type=Path, metavar="JSON", help="render from this JSON; run nothing")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where pytest-benchmark writes its JSON")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--demo-out", type=Path, default=REPO / "demo_out",
                        help="make demo's output folder: its training run and held-out cohort give the int8 accuracy")
    parser.add_argument("--no-demo", action="store_true", help="do not run the demo first (no int8 accuracy row "
                        "unless --demo-out already holds a trained run)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -- -k read")
    args = parser.parse_args(argv)
    rc = 0
    source = args.render_only
    if source is None:
        if not args.no_demo and ensure_demo_run(args.demo_out) != 0:
            print("bench: the demo run failed; benchmarking without the int8 accuracy row", file=sys.stderr)
        rc = run_benchmarks(args.json, args.pytest_args, args.demo_out)
        source = args.json
    if not source.is_file():
        print(f"bench: {source}: no benchmark JSON to render", file=sys.stderr)
        return rc or 1
    data = json.loads(source.read_text())
    if not data.get("benchmarks"):
        print(f"bench: {source}: the JSON holds no benchmarks", file=sys.stderr)
        return rc or 1
    args.out.write_text(render(data) + _kept_sections(args.out) + "\n")
    if args.render_only is None:  # keep the run's raw data beside the report it produced
        shutil.copyfile(source, args.out.with_suffix(".json"))
    print(f"bench: wrote {args.out} from {source} ({len(data['benchmarks'])} benchmarks, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
