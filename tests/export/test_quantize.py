"""cxr.export.quantize: int8/fp16 copies are smaller, measured against fp32, and refused when AUROC drops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from cxr.export.artifacts import side_path  # noqa: E402
from cxr.export.onnx_export import export_onnx  # noqa: E402
from cxr.export.options import ExportOptions  # noqa: E402
from cxr.runtime.card import ModelCard  # noqa: E402


def _card(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)


@pytest.fixture(scope="module")
def int8_export(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model.onnx"
    return export_onnx(tiny_run, out, ExportOptions(quantize="int8", max_auroc_drop=1.0))


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
                                                                  ("probability", "tensor(float)"),
                                                                  ("cam", "tensor(float)")]
    assert card.output_names == ("logit", "probability", "cam")
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
    options = ExportOptions(quantize="int8", max_auroc_drop=-1.0, force=force)
    report = export_onnx(tiny_run, tmp_path / "model.onnx", options)
    v = report.variants["int8"]
    assert "more than --max-auroc-drop -1.0" in v["reason"]
    assert side_path(report.path, "int8.onnx").exists() is force
    assert v["written"] is force
    assert report.path.is_file()  # the fp32 model is unaffected


def test_no_labels_refuses_int8(tiny_run, tmp_path):
    from tests.export.conftest import write_images

    sample = tmp_path / "unlabelled"
    write_images(sample, 4, seed=3)
    report = export_onnx(tiny_run, tmp_path / "model.onnx", ExportOptions(sample_dir=sample, quantize="int8"))
    assert report.variants["int8"]["written"] is False
    assert "no labelled set" in report.variants["int8"]["reason"]


def test_fp16_copy(tiny_run, tmp_path):
    report = export_onnx(tiny_run, tmp_path / "model.onnx", ExportOptions(fp16=True, max_auroc_drop=1.0))
    v = report.variants["fp16"]
    assert v["written"] and v["size_bytes"] < v["fp32_size_bytes"]
    assert v["max_abs_prob_diff_vs_fp32"] < 1e-2
    session, card = _card(side_path(report.path, "fp16.onnx"))
    assert card.export["precision"] == "fp16"
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)"]
    assert {o.type for o in session.get_outputs()} == {"tensor(float)"}
    prob = session.run(["probability"], {"image": np.zeros((3, 1, 64, 64), np.uint8)})[0]
    assert prob.shape == (3,) and prob.dtype == np.float32


def test_int8_keeps_stem_and_classifier_float(int8_export):
    """The stem Conv reads the equalized image (flat 0..255 histogram), where uint8 x int8 kernels without VNNI
    saturate; it and the classifier stay float, every other Conv is quantized."""
    fp32 = onnx.load(str(int8_export.path))
    int8 = onnx.load(str(side_path(int8_export.path, "int8.onnx")))
    produced_by = {out: node.op_type for node in int8.graph.node for out in node.output}
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    assert len(convs) == sum(n.op_type == "Conv" for n in fp32.graph.node) >= 3
    weight_from_dq = [produced_by.get(n.input[1]) == "DequantizeLinear" for n in convs]
    assert weight_from_dq[0] is False and all(weight_from_dq[1:])
    assert produced_by.get(convs[0].input[0]) != "DequantizeLinear"  # float activations into the stem
    gemm = [n for n in int8.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1 and produced_by.get(gemm[0].input[1]) != "DequantizeLinear"
    kept = int8_export.variants["int8"]["settings"]["kept_float"]
    assert len(kept) == 2 and "stem Conv" in kept[0] and "classifier Gemm" in kept[1]
    session, card = _card(side_path(int8_export.path, "int8.onnx"))
    assert card.export["reduced_precision"]["kept_float"] == kept


def test_float_nodes_names_unnamed_nodes():
    from onnx import TensorProto, helper

    from cxr.export.quantize import float_nodes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    wg = helper.make_tensor("wg", TensorProto.FLOAT, [2, 16], [0.1] * 32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["b"], name="n0"),
             helper.make_node("Flatten", ["b"], ["f"]), helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1)]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w1, w2, wg]))
    names, why = float_nodes(proto)
    # the stem had no name; "n0" is taken by the second Conv, which must not be excluded with it
    assert names == ["n0_1", "n3"] and proto.graph.node[0].name == "n0_1" and proto.graph.node[1].name == "n0"
    assert "stem Conv" in why[0] and "classifier Gemm" in why[1]


def test_int8_is_calibrated_on_the_training_split_not_on_the_images_it_is_judged_on(int8_export, tiny_run):
    v = int8_export.variants["int8"]
    assert v["calibration"] == f"train split of {tiny_run / 'splits.csv'}"
    assert v["settings"]["n_calibration_images"] == 4  # the run's 4 training images
    assert v["images"] != v["calibration"] and v["images"].startswith("val split of")


def test_int8_without_a_training_split_says_its_calibration_is_the_evaluation_set(tiny_run, tmp_path, caplog):
    import logging
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "best.pt", run / "best.pt")
    lines = (tiny_run / "splits.csv").read_text().splitlines()
    (run / "splits.csv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ",val," in ln]) + "\n")
    with caplog.at_level(logging.WARNING, logger="cxr.export.quantize"):
        report = export_onnx(run, tmp_path / "model.onnx", ExportOptions(quantize="int8", max_auroc_drop=1.0))
    assert report.variants["int8"]["calibration"].endswith("(the evaluation images: no training split)")
    assert "the same images its AUROC change is measured on" in caplog.text


def test_a_variant_without_images_writes_nothing_at_all(tiny_run, tmp_path):
    """No splits.csv and no --sample: the int8 copy has nothing to be judged on. That is found before the fp32 file
    is written, so the error's 'nothing written' is true."""
    import shutil

    from cxr.export.errors import ExportError

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny_run / "best.pt", lone / "best.pt")
    with pytest.raises(ExportError, match="no real images for evaluating reduced precision"):
        export_onnx(lone / "best.pt", lone / "m.onnx", ExportOptions(validate=False, quantize="int8"))
    assert sorted(p.name for p in lone.iterdir()) == ["best.pt"]


def test_a_variant_whose_output_depends_on_its_batch_is_refused_even_forced(tiny_run, tmp_path, monkeypatch):
    import cxr.export.validate as validate

    monkeypatch.setattr(validate, "batch_invariance", lambda session, images: {"1": 0.0, "max": 3e-3})
    report = export_onnx(tiny_run, tmp_path / "model.onnx", ExportOptions(fp16=True, max_auroc_drop=1.0, force=True,
                         validate=False))
    v = report.variants["fp16"]
    assert v["written"] is False and "changes with the other images in its batch by 3.00e-03" in v["reason"]
    assert "model.fp16.onnx" in v["reason"] and ".tmp-" not in v["reason"]
    assert not side_path(report.path, "fp16.onnx").exists()
    assert v["rejected_path"] == str(side_path(report.path, "fp16.rejected.onnx")) and report.path.is_file()


def test_the_report_says_openvino_precisions_were_not_measured_where_the_provider_is_absent(int8_export):
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the OpenVINO provider (measured there: tests/cli/test_openvino.py)")
    model = int8_export.path
    reason = (f"onnxruntime-openvino not installed here; run `cxr-bench --model {model} --device openvino "
              "--labels LABELS` where it is")
    assert int8_export.openvino == {"measured": False, "reason": reason}
    assert f"OpenVINO precisions: not measured ({reason})" in int8_export.summary_lines()
    report = json.loads(side_path(model, "validation.json").read_text())
    assert report["openvino_precisions"]["measured"] is False and "variants" in report
    assert not side_path(model, "precision.json").exists()
