"""cxr.runtime.precision and precision_gate: what may run, the refusals and their ways out, the gate, auto's pick.

The host (CPU flags, onnxruntime build) is a fixed `Host` here, so these run the same on any machine; the OpenVINO
provider itself is exercised in tests/cli/test_openvino.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.runtime.precision import (
    AUTO_MIN_SPEEDUP,
    GATES,
    PRECISION_FLAGS,
    Host,
    PrecisionError,
    lookup,
    measurement_path,
    openvino_providers,
    plan_precision,
    settle,
    speed_at,
)
from cxr.runtime.precision_gate import accuracy, save_measurement
from cxr.runtime.serialization import sha256_file
from tests.onnx_fixtures import default_card

ALL_FLAGS = {name: True for name in PRECISION_FLAGS}
AVX2_ONLY = {name: name == "avx2" for name in PRECISION_FLAGS}
OV_BUILD = {"version": "1.24.1", "distribution": "onnxruntime-openvino",
            "providers": ["OpenVINOExecutionProvider", "CPUExecutionProvider"]}
CPU_BUILD = {"version": "1.32.0", "distribution": "onnxruntime", "providers": ["CPUExecutionProvider"]}
GPU_BUILD = {"version": "1.32.0", "distribution": "onnxruntime-gpu",
             "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def host(flags=ALL_FLAGS, ort=OV_BUILD) -> Host:
    return Host("Test CPU", dict(flags), dict(ort))


@pytest.fixture()
def model(tmp_path):
    pytest.importorskip("onnx")
    from tests.onnx_fixtures import mean_brightness_model

    return mean_brightness_model(tmp_path / "model.onnx", size=64)


@pytest.fixture()
def with_int8(model):
    """A stand-in model.int8.onnx beside the model (its card says int8)."""
    from tests.onnx_fixtures import mean_brightness_model

    card = default_card(64, export={"opset": 17, "precision": "int8"})
    mean_brightness_model(model.with_name("model.int8.onnx"), size=64, card=card)
    return model


def _record(model, h: Host, provider="openvino", fp32_ms=10.0, bf16=(5.0, True), int8=(4.0, True)):
    """A measurement as cxr-bench --labels writes it, with chosen timings and gate outcomes."""
    int8_file = model.with_name("model.int8.onnx")
    precisions = {"fp32": {"ms_per_image": {"1": fp32_ms * 1.2, "8": fp32_ms}, "passed": True,
                           "verdict": "the reference", "file_sha256": sha256_file(model)}}
    for name, spec in (("bf16", bf16), ("int8", int8)):
        if spec is None:
            continue
        ms, ok = spec
        precisions[name] = {"ms_per_image": {"1": ms * 1.2, "8": ms}, "passed": ok,
                            "verdict": f"{name} verdict {'ok' if ok else 'bad'}",
                            "file_sha256": sha256_file(int8_file if name == "int8" else model)}
    return {"key": h.key(provider, sha256_file(model)), "measured": "2026-12-01T00:00:00+00:00",
            "precisions": precisions}


@pytest.mark.parametrize("device, precision, flags, build, needs", [
    ("openvino", "fp32", ALL_FLAGS, CPU_BUILD, "pip install 'cxr[openvino]' in its own virtual environment"),
    ("cpu", "bf16", ALL_FLAGS, OV_BUILD, "pass --device openvino"),
    ("openvino", "bf16", AVX2_ONLY, OV_BUILD, "neither avx512_bf16 nor amx_bf16"),
    ("openvino", "int8", ALL_FLAGS, OV_BUILD, "cxr-export RUN --out"),
    ("cuda", "int8", ALL_FLAGS, GPU_BUILD, "on --device cuda use --precision fp32"),
])
def test_refusals_name_the_way_out(model, device, precision, flags, build, needs):
    with pytest.raises(PrecisionError) as info:
        plan_precision(model, device, precision, host=host(flags, build))
    assert needs in str(info.value)


def test_int8_runs_the_int8_file(with_int8):
    plan = plan_precision(with_int8, "cpu", "int8", host=host())
    assert plan.model_path == with_int8.with_name("model.int8.onnx") and plan.precision == "int8"
    assert "not measured" in plan.why and plan.gate is None


def test_auto_device_prefers_cuda_then_openvino_then_cpu(model):
    assert plan_precision(model, "auto", "fp32", host=host(ort=GPU_BUILD)).device == "cuda"
    assert plan_precision(model, "auto", "fp32", host=host(ort=OV_BUILD)).device == "openvino"
    assert plan_precision(model, "auto", "fp32", host=host(ort=CPU_BUILD)).device == "cpu"


def test_auto_without_measurement_is_fp32_and_says_how_to_measure(model):
    plan = plan_precision(model, "openvino", "auto", host=host())
    assert plan.precision == "fp32" and plan.model_path == model
    assert "no accuracy measurement" in plan.why and "cxr-bench --model" in plan.why and "--labels" in plan.why


@pytest.mark.parametrize("bf16, int8, expected", [
    ((5.0, True), (4.0, True), "int8"),  # fastest passing
    ((5.0, True), (4.0, False), "bf16"),  # int8 failed its gate
    ((5.0, False), (4.0, False), "fp32"),  # both failed
    ((9.5, True), None, "fp32"),  # bf16 passed but not AUTO_MIN_SPEEDUP faster
])
def test_auto_picks_the_fastest_passing_precision(with_int8, bf16, int8, expected):
    h = host()
    save_measurement(with_int8, _record(with_int8, h, bf16=bf16, int8=int8))
    plan = plan_precision(with_int8, "openvino", "auto", batch_size=8, host=h)
    assert plan.precision == expected and plan.why.startswith("auto:")
    assert plan.model_path.name == ("model.int8.onnx" if expected == "int8" else "model.onnx")
    if int8 is not None and not int8[1]:
        assert "int8 failed its gate" in plan.why
    if bf16 == (9.5, True):
        assert f"{AUTO_MIN_SPEEDUP}x" in plan.why


def test_auto_ignores_a_measurement_of_another_host_or_build(with_int8):
    save_measurement(with_int8, _record(with_int8, host()))
    other_cpu = plan_precision(with_int8, "openvino", "auto", host=host(flags={**ALL_FLAGS, "amx_bf16": False}))
    other_ort = plan_precision(with_int8, "openvino", "auto", host=host(ort={**OV_BUILD, "version": "1.25.0"}))
    assert other_cpu.precision == other_ort.precision == "fp32"
    assert "no accuracy measurement" in other_cpu.why


def test_auto_skips_an_int8_file_changed_since_it_was_measured(with_int8):
    h = host()
    save_measurement(with_int8, _record(with_int8, h, bf16=None))
    from tests.onnx_fixtures import mean_brightness_model

    mean_brightness_model(with_int8.with_name("model.int8.onnx"), size=64, gain=4.0,
                          card=default_card(64, export={"opset": 17, "precision": "int8"}))
    plan = plan_precision(with_int8, "openvino", "auto", host=h)
    assert plan.precision == "fp32" and "missing or changed since it was measured" in plan.why


@pytest.mark.parametrize("force", [False, True])
def test_a_failed_gate_is_refused_unless_forced(with_int8, force):
    h = host()
    save_measurement(with_int8, _record(with_int8, h, int8=(4.0, False)))
    if not force:
        with pytest.raises(PrecisionError, match="failed its accuracy gate.*--force-precision"):
            plan_precision(with_int8, "openvino", "int8", host=h)
        return
    plan = plan_precision(with_int8, "openvino", "int8", force=True, host=h)
    assert plan.forced and plan.precision == "int8" and "FAILED" in plan.why
    assert plan.facts()["accuracy_gate"]["passed"] is False


def test_settle_runs_a_reduced_copy_as_what_its_card_says(with_int8):
    int8_file = with_int8.with_name("model.int8.onnx")
    card = default_card(64, export={"opset": 17, "precision": "int8"})
    plan = plan_precision(int8_file, "cpu", None, host=host())
    settle(plan, card)
    assert plan.precision == "int8" and "int8, per its card" in plan.why
    asked = plan_precision(int8_file, "openvino", "bf16", host=host())
    with pytest.raises(PrecisionError, match="is the int8 copy"):
        settle(asked, card)


def test_plan_facts_name_provider_precision_flags_and_build(model):
    facts = plan_precision(model, "openvino", "bf16", host=host()).facts()
    assert facts["used"] == "bf16" and facts["device"] == "openvino"
    assert facts["openvino_inference_precision_hint"] == "bf16"
    assert facts["cpu_flags"]["amx_bf16"] is True and facts["onnxruntime"]["distribution"] == "onnxruntime-openvino"


@pytest.mark.parametrize("precision, hint", [("fp32", "f32"), ("bf16", "bf16"), ("int8", "f32")])
def test_openvino_hint_is_always_explicit(precision, hint):
    """OpenVINO's own default on AMX CPUs is bf16: an fp32 run must say f32, or it would silently run bf16."""
    (name, options), fallback = openvino_providers(OV_BUILD["providers"], precision, threads=2)
    assert name == "OpenVINOExecutionProvider" and fallback == "CPUExecutionProvider"
    assert json.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": hint}}
    assert options["num_of_threads"] == "2"


def test_accuracy_gate_flips_and_interval():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ref = np.array([.1, .2, .3, .45, .55, .7, .8, .9])
    same = accuracy(y, ref, ref + 0.001, threshold=0.5, gate=GATES["bf16"])
    assert same["passed"] and same["auroc_change"] == 0.0 and same["decision_flips"] == 0
    assert same["max_abs_prob_diff"] == pytest.approx(0.001)
    worse = ref.copy()
    worse[[3, 4]] = [0.6, 0.4]  # one negative above one positive, both across 0.5
    bad = accuracy(y, ref, worse, threshold=0.5, gate=GATES["int8"])
    assert bad["auroc_change"] == pytest.approx(-1 / 16) and not bad["passed"] and bad["decision_flips"] == 2
    lo, hi = bad["auroc_change_ci95"]
    assert lo <= bad["auroc_change"] <= hi <= 0
    assert "a drop beyond the 0.01 gate" in bad["verdict"]


def test_accuracy_without_both_classes_fails_the_gate():
    out = accuracy(np.zeros(4, int), np.full(4, .3), np.full(4, .3), threshold=0.5, gate=0.01)
    assert out["passed"] is False and "without both classes" in out["verdict"]


def test_speed_at_takes_the_nearest_batch():
    entry = {"ms_per_image": {"1": 3.0, "8": 2.0, "32": 1.5}}
    assert speed_at(entry, 8) == (2.0, 8) and speed_at(entry, 20) == (2.0, 8) and speed_at(entry, 64) == (1.5, 32)


def test_measurements_are_kept_per_key(model):
    a, b = host(), host(flags=AVX2_ONLY)
    save_measurement(model, _record(model, a, bf16=None, int8=None))
    save_measurement(model, _record(model, b, bf16=None, int8=None))
    save_measurement(model, _record(model, a, fp32_ms=20.0, bf16=None, int8=None))  # replaces a's
    entries = json.loads(measurement_path(model).read_text())["entries"]
    assert len(entries) == 2
    assert lookup(model, "openvino", a)["precisions"]["fp32"]["ms_per_image"]["8"] == 20.0
    assert lookup(model, "cpu", a) is None


def test_a_foreign_measurement_file_is_an_error_naming_it(model):
    measurement_path(model).write_text("[1, 2]")
    with pytest.raises(ValueError, match="model.precision.json: not a cxr precision measurement"):
        lookup(model, "openvino", host())
