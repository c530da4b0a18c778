"""Small ONNX models that honour the model I/O contract, built with onnx.helper (no torch).

The "mean brightness" model: logit = gain * (mean(image) / 255 - 0.5); probability = sigmoid(logit).
Its outputs are known in closed form, so runtime tests can assert exact values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.runtime.card import CARD_KEY, ModelCard, Threshold
from cxr.runtime.preprocess import Normalization, PreprocessConfig


def default_card(size: int = 64, threshold: float = 0.5, **overrides) -> ModelCard:
    card = ModelCard(
        preprocess=PreprocessConfig(size=size),
        normalization=Normalization(),
        threshold=Threshold(value=threshold, method="fixed", detail="test fixture"),
        training={"data": "fixture"},
        export={"opset": 17},
    )
    for key, value in overrides.items():
        object.__setattr__(card, key, value)
    return card


def expected_probability(batch_u8: np.ndarray, gain: float = 8.0) -> np.ndarray:
    """What the mean-brightness model returns for uint8 [N, 1, S, S]."""
    m = batch_u8.reshape(batch_u8.shape[0], -1).astype(np.float64).mean(axis=1)
    return 1.0 / (1.0 + np.exp(-gain * (m / 255.0 - 0.5)))


def mean_brightness_model(path: Path, size: int = 64, card: ModelCard | None = None, card_json: str | None = None,
                          opset: int = 17, gain: float = 8.0, with_card: bool = True,
                          input_dtype: str = "uint8") -> Path:
    """Write the mean-brightness model to `path`, with `card` (or raw `card_json`) under the cxr.card key."""
    import onnx
    from onnx import TensorProto, helper

    elem = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}[input_dtype]
    inp = helper.make_tensor_value_info("image", elem, ["N", 1, size, size])
    logit = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])
    prob = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"])
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [gain / 255.0]),
        helper.make_tensor("shift", TensorProto.FLOAT, [], [gain * 0.5]),
    ]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT)]
    if opset >= 18:
        inits.append(helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]))
        nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0))
    nodes += [
        helper.make_node("Mul", ["m", "scale"], ["ms"]),
        helper.make_node("Sub", ["ms", "shift"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(nodes, "mean_brightness", [inp], [logit, prob], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cxr-tests")
    model.ir_version = 8
    if with_card:
        text = card_json if card_json is not None else (card or default_card(size)).to_json()
        helper.set_model_props(model, {CARD_KEY: text})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path
