"""Torch-free helpers for latency benchmarks: percentiles, what CPU we ran on, its peak FLOP/s, and model FLOPs.

Used by `cxr-bench`, the pytest-benchmark suites under benchmarks/ and scripts/bench.py, so every number in
BENCHMARKS.md is computed and explained the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "avx512_bf16", "amx_bf16", "amx_int8")
"""Named in every benchmark: fp32 width (avx2, avx512f, fma), int8 dot products (vnni, amx_int8), bf16."""
FMA_UNITS_ASSUMED = 2  # FMA pipes per core: true of AVX2 server cores (Zen 2-4, Skylake-SP and later); an assumption


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    """n, min, p50, p90, p99, max, mean and stddev of latency samples (linear interpolation, so p50<=p90<=p99)."""
    arr = np.asarray(list(samples), dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentiles of an empty sample: run at least once")
    if not np.all(np.isfinite(arr)):
        raise ValueError("percentiles: samples contain NaN or infinity")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"n": int(arr.size), "min": float(arr.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(arr.max()), "mean": float(arr.mean()), "stddev": float(arr.std(ddof=1) if arr.size > 1 else 0)}


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _lscpu() -> str | None:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_info(cpuinfo_text: str | None = None, lscpu_text: str | None = None,
             sys_max_khz: str | None = None) -> dict[str, Any]:
    """Model name, logical and physical cores, ISA flags and clock of this CPU.

    Reads /proc/cpuinfo, `lscpu` and /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq unless texts are given
    (tests pass fixed texts). The clock is the max MHz when some source states it ("clock_source" says which);
    otherwise /proc/cpuinfo's current "cpu MHz", which on VMs is usually the nominal clock, not the boost clock.
    """
    if cpuinfo_text is None:
        cpuinfo_text = _read_text("/proc/cpuinfo") or ""
        if lscpu_text is None:
            lscpu_text = _lscpu()
        if sys_max_khz is None:
            sys_max_khz = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    lscpu_text = lscpu_text or ""

    def field(text: str, key: str) -> list[str]:
        return [m.group(1).strip() for m in re.finditer(rf"^{re.escape(key)}\s*:\s*(.*)$", text, re.MULTILINE)]

    models = field(cpuinfo_text, "model name") or field(lscpu_text, "Model name")
    processors = field(cpuinfo_text, "processor")
    logical = len(processors) or (os.cpu_count() or 0)
    flags_line = (field(cpuinfo_text, "flags") or field(lscpu_text, "Flags") or [""])[0]
    flags = set(flags_line.split())
    physical = None
    core_ids = {(p, c) for p, c in zip(field(cpuinfo_text, "physical id"), field(cpuinfo_text, "core id"))}
    if core_ids:
        physical = len(core_ids)
    else:
        cps, sockets = field(lscpu_text, "Core(s) per socket"), field(lscpu_text, "Socket(s)")
        if cps and sockets and cps[0].isdigit() and sockets[0].isdigit():
            physical = int(cps[0]) * int(sockets[0])
    mhz, source = None, None
    if sys_max_khz and sys_max_khz.strip().isdigit():
        mhz, source = int(sys_max_khz.strip()) / 1000.0, "cpufreq cpuinfo_max_freq"
    elif field(lscpu_text, "CPU max MHz"):
        mhz, source = float(field(lscpu_text, "CPU max MHz")[0].replace(",", ".")), "lscpu CPU max MHz"
    elif field(cpuinfo_text, "cpu MHz"):
        mhz, source = (max(float(v) for v in field(cpuinfo_text, "cpu MHz")),
                       "/proc/cpuinfo cpu MHz (nominal, not boost)")
    return {
        "model": models[0] if models else "unknown",
        "logical_cores": logical,
        "physical_cores": physical,
        "flags": {name: name in flags for name in ISA_FLAGS},
        "max_mhz": mhz,
        "clock_source": source,
    }


def isa_summary(info: Mapping[str, Any]) -> str:
    """'avx2 fma' style list of the ISA flags present, or 'none of avx2/avx512f/...'."""
    present = [k for k, v in info.get("flags", {}).items() if v]
    return " ".join(present) if present else "none of " + "/".join(ISA_FLAGS)


def peak_gflops(info: Mapping[str, Any], cores: int | None = None) -> tuple[float | None, str]:
    """Theoretical fp32 peak GFLOP/s: cores x FMA units x SIMD lanes x 2 (an FMA is 2 FLOPs) x clock (GHz).

    FMA units per core are assumed to be 2 (AVX2 server cores); lanes are 16 with AVX-512F, 8 with AVX2, 4 otherwise;
    without the FMA flag a core is counted as one multiply and one add pipe (same FLOPs per cycle). Returns
    (None, reason) when the clock is unknown.
    """
    if cores is None:
        cores = info.get("physical_cores") or info.get("logical_cores")
    if not cores or cores < 1:
        return None, "peak unknown: the number of cores is unknown"
    mhz = info.get("max_mhz")
    if not mhz:
        return None, "peak unknown: no clock frequency found in /sys, lscpu or /proc/cpuinfo"
    flags = info.get("flags", {})
    lanes, isa = (16, "AVX-512") if flags.get("avx512f") else (8, "AVX2") if flags.get("avx2") else (4, "SSE")
    ghz = mhz / 1000.0
    value = cores * FMA_UNITS_ASSUMED * lanes * 2 * ghz
    how = (f"{cores} cores x {FMA_UNITS_ASSUMED} FMA units per core (assumed, as on AVX2 server cores) x {lanes} fp32 "
           f"lanes ({isa}) x 2 FLOPs per FMA x {ghz:.3f} GHz ({info.get('clock_source') or 'clock'}) "
           f"= {value:.1f} GFLOP/s")
    return value, how


def densenet121_macs(size: int = 224, in_channels: int = 1, num_outputs: int = 1) -> int:
    """Multiply-accumulates of DenseNet-121 (torchvision layout) for one image, counted analytically.

    Counts convolutions and the final linear layer only (batch norm, ReLU and pooling are < 1% and not MACs).
    cxr's model takes one grey channel (conv0 summed over RGB) and has one output, so in_channels=1, num_outputs=1;
    torchvision's ImageNet model is in_channels=3, num_outputs=1000 (about 2.87 GMACs at 224).
    """
    if size < 32:
        raise ValueError(f"DenseNet-121 needs an input of at least 32 px, got {size}")

    def out(h: int, k: int, s: int, p: int) -> int:
        return (h + 2 * p - k) // s + 1

    h = out(size, 7, 2, 3)
    macs = h * h * 64 * in_channels * 49  # conv0
    h = out(h, 3, 2, 1)  # max pool
    c = 64
    for i, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):
            macs += h * h * c * 128  # 1x1 bottleneck to bn_size * growth = 128
            macs += h * h * 128 * 32 * 9  # 3x3 to growth = 32
            c += 32
        if i < 3:
            macs += h * h * c * (c // 2)  # transition 1x1
            c //= 2
            h = out(h, 2, 2, 0)  # average pool
    return macs + c * num_outputs


def densenet121_gflops(size: int = 224) -> float:
    """GFLOPs (2 x MACs) of cxr's DenseNet-121 (one grey channel in, one logit out) for one image."""
    return 2 * densenet121_macs(size) / 1e9
