"""The model card: round trip, and refusal with a reason for every way a card can be missing or wrong."""

from __future__ import annotations

import json

import pytest

from cxr.runtime.card import CARD_KEY, ModelCard, Threshold
from cxr.runtime.errors import ModelCardError
from cxr.runtime.preprocess import Normalization, PreprocessConfig


def _card() -> ModelCard:
    return ModelCard(preprocess=PreprocessConfig(size=128), normalization=Normalization(),
                     threshold=Threshold(0.42, "youden_j", "validation n=50"),
                     training={"data": "phantom", "val": {"auroc": 0.97}}, export={"opset": 17})


def test_round_trip_through_json():
    card = _card()
    back = ModelCard.from_json(card.to_json())
    assert back == card
    data = json.loads(card.to_json())
    assert data["input"] == {"name": "image", "dtype": "uint8", "shape": ["N", 1, 128, 128]}
    assert data["normalization"] == {"mean": 0.4920, "std": 0.2943}
    assert data["threshold"]["value"] == 0.42 and data["threshold"]["method"] == "youden_j"
    assert ModelCard.from_metadata({CARD_KEY: card.to_json()}).threshold.value == 0.42


def _mutated(**changes) -> str:
    data = json.loads(_card().to_json())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("text,message", [
    (None, "no 'cxr.card' metadata"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (_mutated(threshold=None), "missing required field(s): threshold"),
    (_mutated(preprocess=None, normalization=None), "preprocess, normalization"),
    (_mutated(schema_version=99), "schema_version 99 is not supported"),
    (_mutated(task="pneumonia"), "task is 'pneumonia'"),
    (_mutated(threshold={"value": 1.5, "method": "youden_j"}), "probability in [0, 1]"),
    (_mutated(threshold={"value": 0.5, "method": "guess"}), "threshold method"),
    (_mutated(threshold={"value": 0.5}), "'value' and 'method'"),
    (_mutated(preprocess={"size": 128, "equalize": "clahe"}), "equalize"),
    (_mutated(input_size=224), "disagrees with preprocess.size 128"),
    (_mutated(outputs=["prob"]), "differ from the contract"),
    (_mutated(outputs=5), "outputs must be a list of names"),
    (_mutated(outputs=[None, None]), "outputs must be a list of names"),
    (_mutated(outputs="logit"), "outputs must be a list of names"),
    (_mutated(outputs=None).replace("{", '{"outputs": null, ', 1), "outputs must be a list of names"),
    (_mutated(threshold={"value": True, "method": "youden_j"}), "probability in [0, 1], got True"),
    (_mutated(normalization={"mean": 0.5, "std": 0}), "std must be positive"),
])
def test_invalid_cards_are_refused_with_the_reason(text, message):
    with pytest.raises(ModelCardError) as info:
        ModelCard.from_json(text)
    assert message in str(info.value)
