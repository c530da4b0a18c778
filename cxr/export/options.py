"""What cxr-export is asked to do, as one validated object, and the constants its options are checked against.
Light on purpose (no torch, no onnx): cxr-export's option parsing imports it before the training extra is checked."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_OPSETS = range(13, 21)
"""13..20: each exports DenseNet-121 with the TorchScript exporter and runs in ONNX Runtime here. 21+ is not
supported by torch.onnx's TorchScript exporter (it warns and falls back); <13 lacks per-channel QDQ for int8."""
QUANTIZE_MODES = ("int8",)
DEFAULT_OPSET = 17
DEFAULT_MAX_AUROC_DROP = 0.01
DEFAULT_MAX_SAMPLES = 32


def check_opset_supported(opset: int) -> int:
    """Raise ValueError for an opset outside SUPPORTED_OPSETS (checked before anything is loaded)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset!r} is not supported: choose {SUPPORTED_OPSETS.start}.."
                         f"{SUPPORTED_OPSETS.stop - 1} (the range the TorchScript exporter handles for DenseNet)")
    return opset


@dataclass(frozen=True)
class ExportOptions:
    """Everything but the checkpoint and the output file; each field is the cxr-export option of the same name."""

    opset: int = DEFAULT_OPSET
    sample_dir: Path | None = None
    """Real images for validation (default: the run's validation split)."""
    labels: Path | None = None
    """CSV labelling the sample_dir images (for the reduced-precision AUROC change)."""
    validate: bool = True
    quantize: str | None = None
    """'int8' also writes MODEL.int8.onnx."""
    calibration_dir: Path | None = None
    """int8 calibration images (default: the run's training split)."""
    fp16: bool = False
    max_auroc_drop: float = DEFAULT_MAX_AUROC_DROP
    force: bool = False
    """Write reduced-precision copies even when the AUROC guard refuses them."""
    max_samples: int = DEFAULT_MAX_SAMPLES

    def __post_init__(self) -> None:
        check_opset_supported(self.opset)
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {self.quantize!r}")
        if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 1:
            raise ValueError(f"max_samples must be a whole number of at least 1, got {self.max_samples!r}")
        if not math.isfinite(self.max_auroc_drop):
            raise ValueError(f"max_auroc_drop must be a finite number, got {self.max_auroc_drop!r}")

    @property
    def int8(self) -> bool:
        return self.quantize == "int8"

    @property
    def reduced_precision(self) -> bool:
        return self.int8 or self.fp16
