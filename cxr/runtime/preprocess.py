"""The one preprocessing contract, shared by training, export validation and scoring.

    gray uint8|uint16 [H, W]  --to_uint8-->  uint8 [H, W]  --resize (squash)-->  uint8 [S, S]
        --global histogram equalization (bit-identical to cv2.equalizeHist)-->  uint8 [S, S]

Batches come out as uint8 [N, 1, S, S]. Scaling to [0, 1], the mean/std normalization and the grey-to-3-channel
step live inside the model (see `Normalization`), so the ONNX file takes uint8 and nothing here guesses constants.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

RECIPE_MEAN = 0.4920  # mean of histogram-equalized ChestX-ray14 images at 224 (the original recipe)
RECIPE_STD = 0.2943

RESIZE_MODES = ("squash",)
EQUALIZE_MODES = ("global", "none")
BIT_DEPTH_RULES = ("minmax",)


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter of steps 2-4 of the contract. Written into checkpoints and the ONNX model card."""

    size: int = 224
    """Output side S in pixels; the model input is uint8 [N, 1, S, S]."""
    resize: str = "squash"
    """'squash': resize to S x S without keeping the aspect ratio, as the original recipe did."""
    shrink_interpolation: str = "area"
    """OpenCV interpolation when the image is larger than S x S in area (INTER_AREA avoids aliasing)."""
    enlarge_interpolation: str = "linear"
    """OpenCV interpolation otherwise."""
    equalize: str = "global"
    """'global': cv2.equalizeHist on the resized image (the recipe); 'none': skip."""
    bit_depth_rule: str = "minmax"
    """16-bit to 8-bit: 'minmax' maps the image's own [min, max] linearly onto [0, 255], rounding to nearest."""

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 16 <= self.size <= 4096:
            raise ValueError(f"size must be an integer between 16 and 4096, got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        for name in ("shrink_interpolation", "enlarge_interpolation"):
            if getattr(self, name) not in _INTERPOLATIONS:
                raise ValueError(f"{name} must be one of {sorted(_INTERPOLATIONS)}, got {getattr(self, name)!r}")
        if self.equalize not in EQUALIZE_MODES:
            raise ValueError(f"equalize must be one of {EQUALIZE_MODES}, got {self.equalize!r}")
        if self.bit_depth_rule not in BIT_DEPTH_RULES:
            raise ValueError(f"bit_depth_rule must be one of {BIT_DEPTH_RULES}, got {self.bit_depth_rule!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessConfig":
        return dataclass_from_dict(cls, data, "preprocess")


@dataclass(frozen=True)
class Normalization:
    """Applied inside the model after scaling uint8 to [0, 1]: (x - mean) / std, then grey copied to 3 channels."""

    mean: float = RECIPE_MEAN
    std: float = RECIPE_STD

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"normalization {name} must be a finite number, got {value!r}")
        if not (0.0 <= float(self.mean) <= 1.0):
            raise ValueError(f"normalization mean must lie in [0, 1], got {self.mean!r}")
        if not float(self.std) > 0.0:
            raise ValueError(f"normalization std must be positive, got {self.std!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Normalization":
        return dataclass_from_dict(cls, data, "normalization")


def dataclass_from_dict(cls, data: Mapping[str, Any], what: str):
    """Build dataclass `cls` from JSON data; unknown keys (a file from another cxr version) are an error naming them."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what} has unknown fields {unknown}; this cxr knows {sorted(known)}")
    return cls(**dict(data))


_INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


def to_uint8(image: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Step 1's bit-depth rule: uint8 passes through; uint16 is stretched from its own [min, max] to [0, 255]."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise ValueError(f"expected uint8 or uint16 pixels, got {image.dtype}")
    lo, hi = int(image.min()), int(image.max())
    if hi == lo:
        return np.zeros(image.shape, np.uint8)
    scaled = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def resize(image: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Step 2: squash to S x S; the shrink interpolation when the image has more pixels than S x S."""
    s = config.size
    h, w = image.shape
    if (h, w) == (s, s):
        return image
    name = config.shrink_interpolation if h * w > s * s else config.enlarge_interpolation
    return cv2.resize(image, (s, s), interpolation=_INTERPOLATIONS[name])


def equalize_batch(images: np.ndarray) -> np.ndarray:
    """Global histogram equalization of uint8 [N, H, W], bit-identical to cv2.equalizeHist on each image.

    Vectorized: one combined index (image * 256 + level) serves one bincount for all histograms and one gather
    through the per-image lookup tables. OpenCV's rule (imgproc/src/histogram.cpp): with i the lowest occupied level,
    a constant image maps to i; otherwise lut[j] = round_half_even(float32(cumsum[j] - hist[i]) *
    float32(255 / (total - hist[i]))) for j > i, and 0 for j <= i.
    On a CPU, OpenCV's SIMD loop over images is still faster (BENCHMARKS.md), so `preprocess_batch` uses that; this form
    is for whole-batch array code and is the executable statement of the rule.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"equalize_batch expects uint8 [N, H, W], got {images.dtype} {images.shape}")
    n = images.shape[0]
    if n == 0:
        return images.copy()
    total = images.shape[1] * images.shape[2]
    index = images.reshape(n, -1) + (np.arange(n, dtype=np.intp) * 256)[:, None]
    hist = np.bincount(index.ravel(), minlength=n * 256).reshape(n, 256)
    first = np.argmax(hist > 0, axis=1)  # lowest occupied level of each image
    first_count = hist[np.arange(n), first]
    cum = np.cumsum(hist, axis=1) - first_count[:, None]  # running sum over levels above `first`
    scale = np.float32(255.0) / np.maximum(total - first_count, 1).astype(np.float32)
    lut = np.rint(cum.astype(np.float32) * scale[:, None])
    levels = np.arange(256)[None, :]
    lut = np.where(levels > first[:, None], np.clip(lut, 0, 255), 0).astype(np.uint8)
    constant = first_count == total
    lut[constant] = first[constant, None].astype(np.uint8)
    return np.take(lut.ravel(), index).reshape(images.shape)


def equalize(image: np.ndarray) -> np.ndarray:
    """Single-image form of `equalize_batch` (equal to cv2.equalizeHist)."""
    return equalize_batch(image[None])[0]


def preprocess_image(image: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """One grayscale image (uint8 or uint16 [H, W]) to uint8 [S, S] per the contract."""
    out = resize(to_uint8(image, config), config)
    if config.equalize == "global":
        out = cv2.equalizeHist(out)
    return out


def preprocess_batch(images: Sequence[np.ndarray] | Iterable[np.ndarray],
                     config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Grayscale images of any sizes to uint8 [N, 1, S, S]: `preprocess_image` on each, the one path that training,
    export validation and scoring share (equal to `equalize_batch` on the resized stack, bit for bit)."""
    out = [preprocess_image(np.asarray(im), config) for im in images]
    if not out:
        return np.zeros((0, 1, config.size, config.size), np.uint8)
    return np.stack(out)[:, None, :, :]
