"""Any malformed card is a ModelCardError of one line: never a traceback, never a silent choice."""

from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cxr.runtime.card import CARD_KEY, MAX_DEPTH, ModelCard  # noqa: E402
from cxr.runtime.errors import ModelCardError  # noqa: E402
from tests.onnx_fixtures import default_card  # noqa: E402

GOOD = json.loads(default_card(64).to_json())


def _with(path: tuple, value) -> str:
    data = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(data)


def _refused(text) -> str:
    with pytest.raises(ModelCardError) as info:
        ModelCard.from_json(text)
    message = str(info.value)
    assert "\n" not in message and len(message) <= 400, message
    return message


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nests 100000 levels"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "nests 5000 levels"),
    (_with(("training",), {"x": "DEEP"}).replace('"DEEP"', "[" * 40 + "1" + "]" * 40), "nests 42 levels"),
    (_with(("threshold", "value"), 0.5).replace("0.5", "1e999"), "too large for a float"),
    (_with(("threshold", "value"), 0.5).replace("0.5", "NaN"), "NaN is not a JSON number"),
    (_with(("training",), {"x": 1}).replace('"x": 1', '"x": Infinity'), "Infinity is not a JSON number"),
    (_with(("training",), {"x": 1}).replace('"x": 1', '"x": -Infinity'), "-Infinity is not a JSON number"),
    (_with(("training",), {"x": 1}).replace('"x": 1', '"x": ' + "9" * 5000), "5000 digits"),
    (_with(("schema_version",), 1).replace('"schema_version": 1', '"schema_version": ' + "1" * 30), "30 digits"),
    (_with(("schema_version",), 1.0), "schema_version 1.0 is not supported"),
    (_with(("schema_version",), True), "schema_version True is not supported"),
    (_with(("positive_label",), {"a": 1}), "'positive_label' must be a string"),
    (_with(("input",), [1]), "'input' must be a JSON object"),
    (_with(("input", "name"), 5), "'input.name' must be a string"),
    (_with(("input_size",), "64"), "input_size '64' disagrees"),
    (_with(("input_size",), 64.0), "input_size 64.0 disagrees"),
    (_with(("threshold", "detail"), ["x"]), "'threshold.detail' must be a string"),
    (_with(("threshold", "method"), ["youden_j"]), "threshold method"),
    (_with(("decision",), {"mode": ["ctr"]}), "decision must be an object with mode"),
    (_with(("decision",), "ctr"), "decision must be an object with mode"),
    (_with(("normalization", "mean"), "0.5"), "mean must be a finite number"),
    (_with(("normalization", "std"), True), "std must be a finite number"),
    (_with(("normalization", "std"), 1e308).replace("1e+308", "1e400"), "too large"),
    (_with(("preprocess", "size"), True), "size must be an integer"),
    (_with(("preprocess", "equalize"), {"a": 1}), "equalize"),
    (_with(("preprocess", "resize"), ["squash"]), "resize"),
    (_with(("training",), [1, 2]), "'training' must be a JSON object"),
    (_with(("outputs",), ["logit", "probability", "x" * 10_000]), "differ from the contract"),
    ("x" * 5_000_000, "over the"),
    (b"{}", "not text"),
])
def test_malformed_cards_are_one_line_card_errors(text, message):
    assert message in _refused(text)


def test_good_card_still_reads():
    assert ModelCard.from_json(json.dumps(GOOD)).input_size == 64


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=4), max_leaves=20)
PATHS = [(), ("threshold",), ("threshold", "value"), ("threshold", "method"), ("preprocess",), ("preprocess", "size"),
         ("normalization",), ("normalization", "std"), ("outputs",), ("decision",), ("decision", "mode"),
         ("input",), ("input", "name"), ("input_size",), ("training",), ("export",), ("task",), ("schema_version",)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=JSON)
def test_any_value_anywhere_is_a_card_or_a_card_error(path, value):
    text = json.dumps(value) if not path else _with(path, value)
    try:
        card = ModelCard.from_json(text)
    except ModelCardError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= 400
        return
    assert isinstance(card.positive_label, str) and isinstance(card.input_name, str)


def test_nesting_limit_is_what_the_card_says():
    assert MAX_DEPTH >= 8  # a real card nests ~5 levels (training.data.data_sources[i])


def test_two_card_entries_in_one_model_are_refused(tmp_path):
    """onnxruntime's metadata map keeps one value per key: the file itself is read to count the cards."""
    onnx = pytest.importorskip("onnx")
    from cxr.runtime.scoring import Scorer
    from tests.onnx_fixtures import mean_brightness_model

    path = mean_brightness_model(tmp_path / "two.onnx")
    model = onnx.load(str(path))
    other = default_card(64, threshold=0.01).to_json()
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, other
    onnx.save(model, str(path))
    with pytest.raises(ModelCardError, match=r"2 'cxr.card' metadata entries") as info:
        Scorer(path, device="cpu")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [{"data_sources": 5}, {"data_sources": "ab"}, {"data_sources": [1, {"name": 2}]}])
def test_report_reads_free_form_training_data_of_any_shape(data):
    from cxr.runtime.report import _training_data

    assert isinstance(_training_data(data), str)
