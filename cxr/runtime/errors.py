"""Typed errors. Every failure a user can cause carries a short code and a message naming the file."""

from __future__ import annotations

from pathlib import Path

# Codes for images that cannot be scored. They appear in results.csv as "code: message".
UNREADABLE = "unreadable"  # the file cannot be opened or read (permissions, I/O error, vanished)
NOT_AN_IMAGE = "not_an_image"  # the bytes are no supported image format
TRUNCATED = "truncated"  # the file ends before the image data does
TOO_SMALL = "too_small"  # fewer pixels on a side than a chest X-ray can have
TOO_LARGE = "too_large"  # the header claims more pixels than we are willing to allocate
BLANK = "blank"  # every pixel has the same value
DICOM_NO_PIXELS = "dicom_no_pixels"  # a DICOM file without PixelData
DICOM_UNSUPPORTED = "dicom_unsupported"  # multi-frame, colour, or a transfer syntax we cannot decode
UNSUPPORTED = "unsupported"  # a readable image of a kind we refuse (e.g. float images, 12-bit JPEG)
CORRUPT = "corrupt"  # the file is complete but its structure or coded data is invalid
TOO_SLOW = "too_slow"  # decoding would take (or took) longer than the per-file bound
BAD_DICOM = "bad_dicom"  # a DICOM attribute needed to read the pixels has an invalid value (named in the message)

IMAGE_ERROR_CODES = (
    UNREADABLE, NOT_AN_IMAGE, TRUNCATED, TOO_SMALL, TOO_LARGE, BLANK, DICOM_NO_PIXELS, DICOM_UNSUPPORTED, UNSUPPORTED,
    CORRUPT, TOO_SLOW, BAD_DICOM,
)


class CxrError(Exception):
    """Base class of the errors cxr raises on purpose."""


class ImageError(CxrError):
    """An image that cannot be turned into model input. `code` is one of IMAGE_ERROR_CODES."""

    def __init__(self, code: str, path: str | Path, message: str):
        self.code = code
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message} [{code}]")


class ModelCardError(CxrError):
    """The ONNX file has no valid model card, or the card does not match the model."""


class ModelLoadError(CxrError):
    """The model file cannot be loaded (missing, not ONNX, wrong inputs or outputs)."""


class ProviderError(CxrError):
    """The requested execution device cannot be used (for example --device cuda without a working CUDA provider)."""
