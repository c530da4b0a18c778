"""The error cxr-export raises when an export cannot be produced or does not pass its own checks."""

from __future__ import annotations

from cxr.runtime.errors import CxrError


class ExportError(CxrError):
    """The export failed or was refused (failed validation, no images to validate on, unsupported opset...)."""
