"""The model card: what a model needs to be used correctly, stored as JSON under the ONNX metadata key `cxr.card`.

The runtime refuses a model without a valid card, so preprocessing, threshold and labels never have to be guessed.
"""

from __future__ import annotations

import json
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
left lung, right lung). A runtime uses those a model has and never requires them."""
DECISION_MODES = ("classifier", "ctr", "fusion")
TASK = "cardiomegaly"
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
    """Everything a user of an exported model relies on. See DESIGN.md, 'The model I/O contract'."""

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
        """Validate and build a card; raises ModelCardError saying exactly what is wrong or missing."""
        if not isinstance(data, Mapping):
            raise ModelCardError(f"model card must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("schema_version", "task", "preprocess", "normalization", "threshold") if k not in data]
        if missing:
            raise ModelCardError(f"model card is missing required field(s): {', '.join(missing)}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise ModelCardError(
                f"model card schema_version {data['schema_version']!r} is not supported "
                f"(this cxr reads {SCHEMA_VERSION})")
        if data["task"] != TASK:
            raise ModelCardError(f"model card task is {data['task']!r}, expected {TASK!r}")
        try:
            preprocess = PreprocessConfig.from_dict(data["preprocess"])
            normalization = Normalization.from_dict(data["normalization"])
            th = data["threshold"]
            if not isinstance(th, Mapping) or "value" not in th or "method" not in th:
                raise ValueError("threshold must be an object with 'value' and 'method'")
            threshold = Threshold(value=th["value"], method=th["method"], detail=str(th.get("detail", "")))
        except (TypeError, ValueError) as exc:
            raise ModelCardError(f"model card is invalid: {exc}") from None
        if "input_size" in data and data["input_size"] != preprocess.size:
            raise ModelCardError(
                f"model card input_size {data['input_size']} disagrees with preprocess.size {preprocess.size}")
        raw_outputs = data.get("outputs", list(OUTPUT_NAMES))
        if not isinstance(raw_outputs, (list, tuple)) or not all(isinstance(o, str) for o in raw_outputs):
            raise ModelCardError(f"model card outputs must be a list of names {list(OUTPUT_NAMES)}, "
                                 f"got {raw_outputs!r}")
        outputs = tuple(raw_outputs)
        extras = outputs[len(OUTPUT_NAMES):]
        if outputs[:len(OUTPUT_NAMES)] != OUTPUT_NAMES or list(extras) != [o for o in OPTIONAL_OUTPUTS if o in extras]:
            raise ModelCardError(f"model card outputs {list(outputs)} differ from the contract: {list(OUTPUT_NAMES)} "
                                 f"then any of {list(OPTIONAL_OUTPUTS)} in that order")
        decision = data.get("decision", {"mode": "classifier"})
        if not isinstance(decision, Mapping) or decision.get("mode") not in DECISION_MODES:
            raise ModelCardError(f"model card decision must be an object with mode one of {DECISION_MODES}, "
                                 f"got {decision!r}")
        for key in ("training", "export"):
            if not isinstance(data.get(key, {}), Mapping):
                raise ModelCardError(f"model card field {key!r} must be a JSON object")
        return cls(
            preprocess=preprocess,
            normalization=normalization,
            threshold=threshold,
            training=dict(data.get("training", {})),
            export=dict(data.get("export", {})),
            task=data["task"],
            positive_label=str(data.get("positive_label", "Cardiomegaly")),
            input_name=str(data.get("input", {}).get("name", INPUT_NAME)) if isinstance(data.get("input"), Mapping)
            else INPUT_NAME,
            output_names=outputs,
            schema_version=data["schema_version"],
            decision=dict(decision),
        )

    @classmethod
    def from_json(cls, text: str | None) -> "ModelCard":
        if text is None:
            raise ModelCardError(
                f"the model has no '{CARD_KEY}' metadata: it was not exported by cxr-export, so its preprocessing "
                "and threshold are unknown and it will not be used")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"the '{CARD_KEY}' metadata is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "ModelCard":
        """From an ONNX metadata map (onnxruntime's `session.get_modelmeta().custom_metadata_map`)."""
        return cls.from_json(metadata.get(CARD_KEY))
