"""Benchmark helpers on fixed inputs: percentiles, CPU facts parsed from known texts, peak FLOP/s, DenseNet FLOPs."""

from __future__ import annotations

import pytest

from cxr.runtime.bench import cpu_info, densenet121_gflops, densenet121_macs, isa_summary, peak_gflops, percentiles

CPUINFO_2CORE_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2445.404
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2445.404
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx fma avx2 bmi2
"""

# 4 logical CPUs on 2 cores (hyper-threads), AVX-512 with VNNI, no core ids: physical cores come from lscpu.
CPUINFO_HT_AVX512 = "".join(
    f"processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Platinum 8375C\ncpu MHz\t\t: 2900.000\n"
    "flags\t\t: avx fma avx2 avx512f avx512_vnni\n\n" for i in range(4))
LSCPU_HT = ("Model name:  Intel(R) Xeon(R) Platinum 8375C\nCore(s) per socket:  2\nSocket(s):  1\n"
            "CPU max MHz:  3500.0000\n")


@pytest.mark.parametrize("samples, expected", [
    ([5.0], {"n": 1, "p50": 5.0, "p90": 5.0, "p99": 5.0, "min": 5.0, "max": 5.0, "stddev": 0.0}),
    ([1, 2, 3, 4], {"n": 4, "p50": 2.5, "p90": 3.7, "p99": 3.97, "mean": 2.5}),
    (list(range(101)), {"p50": 50.0, "p90": 90.0, "p99": 99.0, "min": 0.0, "max": 100.0}),
])
def test_percentiles_of_known_samples(samples, expected):
    got = percentiles(samples)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


@pytest.mark.parametrize("samples", [[], [1.0, float("nan")], [float("inf")]])
def test_percentiles_refuse_empty_or_non_finite(samples):
    with pytest.raises(ValueError, match="empty|NaN"):
        percentiles(samples)


def test_cpu_info_from_proc_cpuinfo():
    info = cpu_info(CPUINFO_2CORE_AVX2, lscpu_text="", sys_max_khz=None)
    assert info["model"] == "AMD EPYC 7B13"
    assert (info["logical_cores"], info["physical_cores"]) == (2, 2)
    assert info["flags"] == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "fma": True,
                             "avx512_bf16": False, "amx_bf16": False, "amx_int8": False}
    assert info["max_mhz"] == pytest.approx(2445.404)
    assert "nominal" in info["clock_source"]
    assert isa_summary(info) == "avx2 fma"


@pytest.mark.parametrize("sys_khz, mhz, source", [(None, 3500.0, "lscpu"), ("3700000\n", 3700.0, "cpufreq")])
def test_cpu_info_prefers_max_clock_and_lscpu_cores(sys_khz, mhz, source):
    info = cpu_info(CPUINFO_HT_AVX512, lscpu_text=LSCPU_HT, sys_max_khz=sys_khz)
    assert (info["logical_cores"], info["physical_cores"]) == (4, 2)
    assert info["flags"]["avx512f"] and info["flags"]["avx512_vnni"] and not info["flags"]["avx_vnni"]
    assert info["max_mhz"] == pytest.approx(mhz)
    assert source in info["clock_source"]


@pytest.mark.parametrize("text, lscpu, cores, expected", [
    (CPUINFO_2CORE_AVX2, "", None, 2 * 2 * 8 * 2 * 2.445404),  # AVX2: 8 lanes
    (CPUINFO_HT_AVX512, LSCPU_HT, None, 2 * 2 * 16 * 2 * 3.5),  # AVX-512: 16 lanes, physical cores not threads
    (CPUINFO_HT_AVX512, LSCPU_HT, 1, 1 * 2 * 16 * 2 * 3.5),
])
def test_peak_gflops_formula_and_explanation(text, lscpu, cores, expected):
    value, how = peak_gflops(cpu_info(text, lscpu_text=lscpu, sys_max_khz=None), cores=cores)
    assert value == pytest.approx(expected)
    assert "FMA units per core (assumed" in how and f"= {expected:.1f} GFLOP/s" in how


def test_peak_gflops_unknown_clock_says_why():
    info = cpu_info("processor\t: 0\nflags\t\t: avx2 fma\n", lscpu_text="", sys_max_khz=None)
    value, how = peak_gflops(info)
    assert value is None and "clock" in how


def test_densenet121_macs_match_torchvision_imagenet_figure():
    # torchvision documents DenseNet-121 (3 channels, 1000 classes) at 224 as 2.83 GFLOPS (multiply-adds).
    assert densenet121_macs(224, in_channels=3, num_outputs=1000) / 1e9 == pytest.approx(2.834, abs=0.001)
    assert densenet121_gflops(224) == pytest.approx(2 * densenet121_macs(224) / 1e9)


@pytest.mark.parametrize("size", [64, 97, 224])
def test_densenet121_macs_equal_a_layer_by_layer_count_of_cxr_model(size):
    torch = pytest.importorskip("torch")
    from cxr.train.model import CardiomegalyNet

    model = CardiomegalyNet().eval()
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            total[0] += out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total[0] += mod.in_features * mod.out_features

    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(hook)
    with torch.inference_mode():
        model(torch.zeros(1, 1, size, size, dtype=torch.uint8))
    assert densenet121_macs(size) == total[0]


def test_densenet121_macs_refuse_tiny_inputs():
    with pytest.raises(ValueError, match="at least 32"):
        densenet121_macs(16)
