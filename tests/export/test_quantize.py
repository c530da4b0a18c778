"""cxr.export.quantize: int8/fp16 copies are smaller, measured against fp32, and refused when AUROC drops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from cxr.export.onnx_export import export_onnx, side_path  # noqa: E402
from cxr.runtime.card import ModelCard  # noqa: E402


def _card(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)


@pytest.fixture(scope="module")
def int8_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    return export_onnx(tiny_run, out, quantize="int8", max_auroc_drop=1.0)


def test_int8_written_smaller_with_figures(int8_export):
    v = int8_export.variants["int8"]
    assert v["written"] is True
    path = side_path(int8_export.path, "int8.onnx")
    assert v["path"] == str(path) and path.is_file()
    assert v["size_bytes"] < v["fp32_size_bytes"] == int8_export.size_bytes
    for key in ("speedup", "size_ratio", "latency_ms_per_image", "fp32_latency_ms_per_image",
                "max_abs_prob_diff_vs_fp32", "auroc", "auroc_fp32", "auroc_change"):
        assert math.isfinite(v[key]), key
    assert v["n_labelled"] == 12
    report = json.loads(side_path(int8_export.path, "validation.json").read_text())
    assert report["variants"]["int8"]["speedup"] == pytest.approx(v["speedup"])


def test_int8_keeps_io_contract_and_own_card(int8_export):
    session, card = _card(side_path(int8_export.path, "int8.onnx"))
    assert [(i.name, i.type) for i in session.get_inputs()] == [("image", "tensor(uint8)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("logit", "tensor(float)"),
                                                                  ("probability", "tensor(float)")]
    assert card.export["precision"] == "int8" and card.export["opset"] == 17
    assert card.export["reduced_precision"]["format"] == "QDQ"
    assert card.threshold.value == pytest.approx(0.42)
    ops = {n.op_type for n in onnx.load(str(side_path(int8_export.path, "int8.onnx"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Cast"} <= ops
    _, fp32_card = _card(int8_export.path)
    assert fp32_card.export["precision"] == "fp32"


@pytest.mark.parametrize("force", [False, True])
def test_auroc_guard_refuses_unless_forced(tiny_run, tmp_path, force):
    # a negative allowance makes any change (even none) a refusal
    report = export_onnx(tiny_run, tmp_path / "model.onnx", quantize="int8", max_auroc_drop=-1.0, force=force)
    v = report.variants["int8"]
    assert "more than --max-auroc-drop -1.0" in v["reason"]
    assert side_path(report.path, "int8.onnx").exists() is force
    assert v["written"] is force
    assert report.path.is_file()  # the fp32 model is unaffected


def test_no_labels_refuses_int8(tiny_run, tmp_path):
    from tests.export.conftest import write_images

    sample = tmp_path / "unlabelled"
    write_images(sample, 4, seed=3)
    report = export_onnx(tiny_run, tmp_path / "model.onnx", sample_dir=sample, quantize="int8")
    assert report.variants["int8"]["written"] is False
    assert "no labelled set" in report.variants["int8"]["reason"]


def test_fp16_copy(tiny_run, tmp_path):
    report = export_onnx(tiny_run, tmp_path / "model.onnx", fp16=True, max_auroc_drop=1.0)
    v = report.variants["fp16"]
    assert v["written"] and v["size_bytes"] < v["fp32_size_bytes"]
    assert v["max_abs_prob_diff_vs_fp32"] < 1e-2
    session, card = _card(side_path(report.path, "fp16.onnx"))
    assert card.export["precision"] == "fp16"
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)"]
    assert {o.type for o in session.get_outputs()} == {"tensor(float)"}
    prob = session.run(["probability"], {"image": np.zeros((3, 1, 64, 64), np.uint8)})[0]
    assert prob.shape == (3,) and prob.dtype == np.float32
