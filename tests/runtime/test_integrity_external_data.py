"""A model whose tensors keep their data in external files is refused (cxr models are one file,
and the manifest's sha256 covers only that file), found by a protobuf walk without the onnx package."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cxr.runtime.errors import ModelLoadError  # noqa: E402
from cxr.runtime.onnx_scan import MAX_DEPTH, MalformedModel, external_tensors  # noqa: E402
from cxr.runtime.scoring import Scorer  # noqa: E402
from tests.onnx_fixtures import mean_brightness_model  # noqa: E402


def _external_copy(tiny_model, tmp_path, threshold: int = 0):
    model = onnx.load(str(tiny_model))
    for i, tensor in enumerate(model.graph.initializer):  # onnx moves only tensors held as raw_data
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    out = tmp_path / "ext" / "model.onnx"
    out.parent.mkdir()
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=threshold)
    return out


def test_the_tiny_model_is_self_contained(tiny_model):
    assert external_tensors(tiny_model) == []


def test_external_data_model_is_refused(tiny_model, tmp_path):
    path = _external_copy(tiny_model, tmp_path)
    assert (path.parent / "model.onnx.data").is_file()
    assert sorted(external_tensors(path)) == ["scale", "shift"]
    with pytest.raises(ModelLoadError, match=r"2 tensor\(s\) keep their data in external files \(scale, shift\)") as e:
        Scorer(path, device="cpu")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_external_data_inside_a_subgraph_is_found(tmp_path):
    """An If node whose branch holds an external initializer: the walk goes into node attributes and subgraphs."""
    ext = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    ext.data_location = TensorProto.EXTERNAL
    entry = ext.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    del ext.float_data[:]
    then_graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "then", [],
                                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[ext])
    else_graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
        "c", TensorProto.FLOAT, [1], [0.0]))], "else", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["cond"], ["out"], then_branch=then_graph, else_branch=else_graph)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    path = tmp_path / "if.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert external_tensors(path) == ["w"]


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (protobuf itself refuses to build messages this deep)."""
    out, key, n = bytearray(), (number << 3) | 2, len(payload)
    for value in (key, n):
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def test_deep_nesting_and_garbage_are_malformed(tmp_path):
    graph = b""
    for _ in range(MAX_DEPTH + 2):  # graph.node[0].attribute[0].g = the next graph down
        graph = _field(1, _field(5, _field(6, graph)))
    deep = tmp_path / "deep.onnx"
    deep.write_bytes(_field(7, graph))
    with pytest.raises(MalformedModel, match="nested deeper"):
        external_tensors(deep)
    with pytest.raises(ModelLoadError, match="cannot be loaded as an ONNX model"):
        Scorer(deep, device="cpu")
    cut = tmp_path / "cut.onnx"
    mean_brightness_model(tmp_path / "whole.onnx")
    cut.write_bytes((tmp_path / "whole.onnx").read_bytes()[:-7])
    with pytest.raises(ModelLoadError, match="cannot be loaded as an ONNX model"):
        Scorer(cut, device="cpu")
