"""cxr-score over a very large folder (issue 12 item 18): a benchmark, not a test.

    python benchmarks/many_files.py --files 100000          # writes the section into BENCHMARKS.md
    python benchmarks/many_files.py --files 5000 --no-write # a quick look

Generates N small PNGs (64x64, 8-bit, 256 distinct contents), scores them with a tiny mean-brightness model (the
contract's I/O at S=64, from tests/onnx_fixtures.py, so that the pipeline and not the model is measured) in a real
`cxr-score` process, and samples that process every 0.1 s: its resident memory (VmRSS) and its rows, counted from the
journal it appends to. Reports peak memory and memory at 10/50/90% of the rows (flat means a large folder costs no
more than a small one), the throughput of the first and the last 10% of the rows, and checks one row per file.
The result replaces the section between the markers in BENCHMARKS.md (scripts/bench.py keeps that section).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BEGIN, END = "<!-- many-files:begin -->", "<!-- many-files:end -->"


def make_folder(folder: Path, n: int) -> None:
    """n 64x64 PNGs in folders of 1,000 (a flat folder of 100,000 is its own, filesystem, benchmark)."""
    yy, xx = np.mgrid[0:64, 0:64]
    variants = []
    for k in range(256):
        image = ((xx * 3 + yy * 2 + k) % 256).astype(np.uint8)
        variants.append(cv2.imencode(".png", image)[1].tobytes())
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:06d}.png").write_bytes(variants[i % 256])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB of a live process, (0, 0) once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return (int(fields.get("VmRSS", "0 kB").split()[0]), int(fields.get("VmHWM", "0 kB").split()[0]))


def run(folder: Path, out: Path, model: Path, n: int, batch_size: int, workers: int) -> dict:
    journal = out.with_name(out.name + ".journal")
    command = [sys.executable, "-m", "cxr.cli.score", str(folder), "--out", str(out), "--model", str(model),
               "--quiet", "--batch-size", str(batch_size), "--workers", str(workers), "--threads", "1"]
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    samples = []  # (seconds, rows, rss_kb, cpu seconds)
    rows, fh, peak = 0, None, 0
    while proc.poll() is None:
        if fh is None and journal.exists():
            fh = open(journal, "rb")
        if fh is not None:
            rows += fh.read().count(b"\n")
        rss, hwm = rss_kb(proc.pid)
        cpu = cpu_s(proc.pid)
        peak = max(peak, hwm)
        if rss:
            samples.append((time.monotonic() - start, max(rows - 1, 0), rss, cpu))  # the header is not a row
        time.sleep(0.1)
    total_s = time.monotonic() - start
    if fh is not None:
        fh.close()
    return {"rc": proc.returncode, "samples": samples, "peak_kb": peak, "total_s": total_s}


def at_rows(samples, target: int):
    """The first sample with at least `target` rows done."""
    return next((s for s in samples if s[1] >= target), None)


def summarize(result: dict, n: int, out: Path) -> dict:
    samples = result["samples"]
    with open(out, newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    tenth = n // 10
    first_a, first_b = at_rows(samples, 1), at_rows(samples, tenth)
    last_a, last_b = at_rows(samples, n - tenth), at_rows(samples, n)
    rate = lambda a, b: (b[1] - a[1]) / (b[0] - a[0]) if a and b and b[0] > a[0] else float("nan")  # noqa: E731
    cpu_ms = lambda a, b: 1000 * (b[3] - a[3]) / (b[1] - a[1]) if a and b and b[1] > a[1] else float("nan")  # noqa
    mem = {p: at_rows(samples, n * p // 100) for p in (10, 50, 90)}
    return {"rows": len(paths), "unique": len(set(paths)), "sorted": paths == sorted(paths),
            "first_rate": rate(first_a, first_b), "last_rate": rate(last_a, last_b),
            "first_cpu_ms": cpu_ms(first_a, first_b), "last_cpu_ms": cpu_ms(last_a, last_b),
            "mem_mb": {p: (s[2] / 1024 if s else float("nan")) for p, s in mem.items()},
            "peak_mb": result["peak_kb"] / 1024, "total_s": result["total_s"],
            "last_sampled_rows": samples[-1][1] if samples else 0}


def render(s: dict, n: int, args, cpu: str, gen_s: float) -> str:
    ratio = s["last_rate"] / s["first_rate"] if s["first_rate"] else float("nan")
    return "\n".join([
        BEGIN,
        "## cxr-score on a very large folder (issue 12 item 18)",
        "",
        f"Written by `python benchmarks/many_files.py --files {n}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC); not part of `make bench`'s JSON. "
        f"{n:,} generated 64x64 8-bit PNGs (256 distinct contents, folders of 1,000), a tiny mean-brightness model "
        f"at S=64 (the pipeline, not the model, is measured), `--batch-size {args.batch_size} --workers "
        f"{args.workers} --threads 1`, one `cxr-score` process sampled every 0.1 s (VmRSS; rows counted in its "
        "journal). Machine: " + cpu + ". Shared and noisy: the ratio below is from one run.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| rows in the CSV / files | {s['rows']:,} / {n:,} ({s['unique']:,} distinct paths, "
        f"{'sorted' if s['sorted'] else 'NOT sorted'}) |",
        f"| generation / scoring wall time | {gen_s:.0f} s / {s['total_s']:.0f} s (start-up and walk included) |",
        f"| throughput, first 10% of rows | {s['first_rate']:.0f} rows/s |",
        f"| throughput, last 10% of rows | {s['last_rate']:.0f} rows/s ({ratio:.2f}x the first 10%) |",
        f"| CPU time per row (all threads), first / last 10% | {s['first_cpu_ms']:.2f} / {s['last_cpu_ms']:.2f} ms "
        f"({s['last_cpu_ms'] / s['first_cpu_ms']:.2f}x; less sensitive than wall time to other work on the "
        "machine) |",
        f"| resident memory at 10% / 50% / 90% of rows | {s['mem_mb'][10]:.0f} / {s['mem_mb'][50]:.0f} / "
        f"{s['mem_mb'][90]:.0f} MB |",
        f"| peak resident memory (VmHWM) | {s['peak_mb']:.0f} MB |",
        END,
    ])


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated files (default: a "
                        "temporary one, removed afterwards)")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    from cxr.runtime.bench import cpu_info, isa_summary
    from tests.onnx_fixtures import mean_brightness_model

    info = cpu_info()
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    more = [f for f in ("avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8") if f in flags]
    cpu = (f"{info.get('model')} ({info.get('logical_cores')} logical / {info.get('physical_cores')} physical "
           f"cores), ISA flags: {' '.join([isa_summary(info), *more])}")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        make_folder(tmp / "scans", args.files)
        gen_s = time.monotonic() - t0
        model = mean_brightness_model(tmp / "tiny.onnx", size=64)
        result = run(tmp / "scans", tmp / "r.csv", model, args.files, args.batch_size, args.workers)
        if result["rc"] != 0:
            print(f"many_files: cxr-score exited {result['rc']}", file=sys.stderr)
            return 1
        summary = summarize(result, args.files, tmp / "r.csv")
    section = render(summary, args.files, args, cpu, gen_s)
    print(section)
    if not args.no_write:
        write_section(REPO / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
