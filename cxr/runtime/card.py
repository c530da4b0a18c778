"""The model card: what a model needs to be used correctly, stored as JSON under the ONNX metadata key `cxr.card`.

The runtime refuses a model without a valid card, so preprocessing, threshold and labels never have to be guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from cxr.runtime.errors import ModelCardError
from cxr.runtime.preprocess import Normalization, PreprocessConfig

CARD_KEY = "cxr.card"
SCHEMA_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("logit", "probability")
OPTIONAL_OUTPUTS = ("cam", "ctr", "masks")
"""Outputs a model may add after OUTPUT_NAMES, in this order: cam float32 [N, h, w] (class activation map), ctr
float32 [N] (cardiothoracic ratio on the model's masks; NaN when not measurable), masks uint8 [N, 3, S, S] (heart,
left lung, right lung; models exported since the CTR is measured on main parts give each structure's main part, older
ones every pixel at probability 0.5). A runtime uses those a model has and never requires them."""
DECISION_MODES = ("classifier", "ctr", "fusion")
TASK = "cardiomegaly"
MAX_CARD_BYTES = 4_000_000
"""A card is a few kB (the training summary included); more is refused before parsing."""
MAX_DEPTH = 32
"""JSON nesting a card may have (it needs about 5); deeper is refused before parsing (no RecursionError)."""
MAX_INT_DIGITS = 19
"""Integers longer than this (beyond int64) are refused: no field of a card needs them."""
THRESHOLD_METHODS = ("youden_j", "target_sensitivity", "fixed")


@dataclass(frozen=True)
class Threshold:
    """The operating point: probability >= value means cardiomegaly. `method` says how it was chosen."""

    value: float
    method: str
    detail: str = ""
    """Free text, e.g. 'Youden's J on the validation split (n=86)' or 'target sensitivity 0.90 on validation'."""

    def __post_init__(self) -> None:
        if (isinstance(self.value, bool) or not isinstance(self.value, (int, float))
                or not 0.0 <= float(self.value) <= 1.0):
            raise ValueError(f"threshold value must be a probability in [0, 1], got {self.value!r}")
        if self.method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}, got {self.method!r}")


@dataclass(frozen=True)
class ModelCard:
    """Everything a user of an exported model relies on. The model I/O contract: uint8 [N, 1, S, S] in; logit,
    probability (and cam, ctr, masks where the card lists them) out."""

    preprocess: PreprocessConfig
    normalization: Normalization
    threshold: Threshold
    training: dict[str, Any] = field(default_factory=dict)
    """Data, split sizes, validation/test metrics, the recipe (config)."""
    export: dict[str, Any] = field(default_factory=dict)
    """Opset, library versions, validation figures (parity error), precision."""
    task: str = TASK
    positive_label: str = "Cardiomegaly"
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = OUTPUT_NAMES
    schema_version: int = SCHEMA_VERSION
    decision: dict[str, Any] = field(default_factory=lambda: {"mode": "classifier"})
    """Where `probability` comes from: mode classifier|ctr|fusion, its coefficients, and the validation AUROC of
    every candidate (cxr.train.decision)."""

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """The optional outputs this model has (a subset of OPTIONAL_OUTPUTS)."""
        return tuple(o for o in self.output_names if o in OPTIONAL_OUTPUTS)

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "positive_label": self.positive_label,
            "input": {"name": self.input_name, "dtype": "uint8", "shape": ["N", 1, self.input_size, self.input_size]},
            "outputs": list(self.output_names),
            "input_size": self.input_size,
            "preprocess": self.preprocess.to_dict(),
            "normalization": self.normalization.to_dict(),
            "threshold": {"value": float(self.threshold.value), "method": self.threshold.method,
                          "detail": self.threshold.detail},
            "decision": self.decision,
            "training": self.training,
            "export": self.export,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelCard":
        """Validate and build a card; raises ModelCardError (one line) saying exactly what is wrong or missing."""
        try:
            return cls._from_dict(data)
        except ModelCardError as exc:
            raise ModelCardError(_one_line(str(exc))) from None
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            raise ModelCardError(_one_line(f"model card is invalid: {exc}")) from None

    @classmethod
    def _from_dict(cls, data: Any) -> "ModelCard":
        if not isinstance(data, Mapping):
            raise ModelCardError(f"model card must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("schema_version", "task", "preprocess", "normalization", "threshold") if k not in data]
        if missing:
            raise ModelCardError(f"model card is missing required field(s): {', '.join(missing)}")
        if type(data["schema_version"]) is not int or data["schema_version"] != SCHEMA_VERSION:
            raise ModelCardError(f"model card schema_version {_short(data['schema_version'])} is not supported "
                                 f"(this cxr reads {SCHEMA_VERSION})")
        if data["task"] != TASK:
            raise ModelCardError(f"model card task is {_short(data['task'])}, expected {TASK!r}")
        _expect(data, "positive_label", str)
        _expect(data, "input", Mapping)
        _expect(data.get("input", {}), "name", str, "input.name")
        for key in ("training", "export"):
            _expect(data, key, Mapping)
        try:
            preprocess = PreprocessConfig.from_dict(data["preprocess"])
            normalization = Normalization.from_dict(data["normalization"])
            th = data["threshold"]
            if not isinstance(th, Mapping) or "value" not in th or "method" not in th:
                raise ValueError("threshold must be an object with 'value' and 'method'")
            _expect(th, "detail", str, "threshold.detail")
            threshold = Threshold(value=th["value"], method=th["method"], detail=th.get("detail", ""))
        except (TypeError, ValueError) as exc:
            raise ModelCardError(f"model card is invalid: {exc}") from None
        if "input_size" in data and (type(data["input_size"]) is not int or data["input_size"] != preprocess.size):
            raise ModelCardError(
                f"model card input_size {_short(data['input_size'])} disagrees with preprocess.size {preprocess.size}")
        raw_outputs = data.get("outputs", list(OUTPUT_NAMES))
        if not isinstance(raw_outputs, (list, tuple)) or not all(isinstance(o, str) for o in raw_outputs):
            raise ModelCardError(f"model card outputs must be a list of names {list(OUTPUT_NAMES)}, "
                                 f"got {_short(raw_outputs)}")
        outputs = tuple(raw_outputs)
        extras = outputs[len(OUTPUT_NAMES):]
        if outputs[:len(OUTPUT_NAMES)] != OUTPUT_NAMES or list(extras) != [o for o in OPTIONAL_OUTPUTS if o in extras]:
            raise ModelCardError(f"model card outputs {_short(list(outputs))} differ from the contract: "
                                 f"{list(OUTPUT_NAMES)} then any of {list(OPTIONAL_OUTPUTS)} in that order")
        decision = data.get("decision", {"mode": "classifier"})
        if not isinstance(decision, Mapping) or not isinstance(decision.get("mode"), str) \
                or decision["mode"] not in DECISION_MODES:
            raise ModelCardError(f"model card decision must be an object with mode one of {DECISION_MODES}, "
                                 f"got {_short(decision)}")
        return cls(
            preprocess=preprocess,
            normalization=normalization,
            threshold=threshold,
            training=dict(data.get("training", {})),
            export=dict(data.get("export", {})),
            task=data["task"],
            positive_label=data.get("positive_label", "Cardiomegaly"),
            input_name=data.get("input", {}).get("name", INPUT_NAME),
            output_names=outputs,
            schema_version=data["schema_version"],
            decision=dict(decision),
        )

    @classmethod
    def from_json(cls, text: str | None) -> "ModelCard":
        """Parse and validate the card's JSON. Strict JSON: NaN/Infinity literals, numbers that overflow a float or
        run past MAX_INT_DIGITS digits, nesting deeper than MAX_DEPTH and text over MAX_CARD_BYTES are card errors."""
        if text is None:
            raise ModelCardError(
                f"the model has no '{CARD_KEY}' metadata: it was not exported by cxr-export, so its preprocessing "
                "and threshold are unknown and it will not be used")
        if not isinstance(text, str):
            raise ModelCardError(f"the '{CARD_KEY}' metadata is not text")
        if len(text) > MAX_CARD_BYTES:
            raise ModelCardError(f"the '{CARD_KEY}' metadata is {len(text)} characters, over the {MAX_CARD_BYTES} "
                                 "a card may have")
        depth = _nesting(text)
        if depth > MAX_DEPTH:
            raise ModelCardError(f"the '{CARD_KEY}' metadata nests {depth} levels deep (a card needs a few; at most "
                                 f"{MAX_DEPTH})")
        try:
            data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"the '{CARD_KEY}' metadata is not valid JSON: {exc}") from None
        except (ValueError, RecursionError) as exc:  # the hooks' refusals; int digit limits
            raise ModelCardError(_one_line(f"the '{CARD_KEY}' metadata is not valid JSON for a card: {exc}")) from None
        return cls.from_dict(data)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "ModelCard":
        """From an ONNX metadata map (onnxruntime's `session.get_modelmeta().custom_metadata_map`)."""
        return cls.from_json(metadata.get(CARD_KEY))


def _one_line(message: str, limit: int = 400) -> str:
    """A message on one line of bounded length (values from a hostile card can hold newlines or megabytes)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _expect(data: Mapping[str, Any], key: str, kind: type, name: str | None = None) -> None:
    """An optional field, when present, must be of `kind` (a card with the wrong type is refused, never coerced)."""
    if key in data and not isinstance(data[key], kind):
        raise ModelCardError(f"model card field {name or key!r} must be {_KIND_NAMES.get(kind, kind.__name__)}, "
                             f"got {type(data[key]).__name__}")


_KIND_NAMES = {str: "a string", Mapping: "a JSON object"}


def _nesting(text: str) -> int:
    """The deepest [ / { nesting of JSON text, counted outside strings (a cheap bound before json.loads)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (cards hold finite numbers only)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"the integer {text[:40]}{'...' if len(text) > 40 else ''} has {len(text.lstrip('-'))} "
                         f"digits (at most {MAX_INT_DIGITS})")
    return int(text)
