"""The errors training raises on purpose, under the package's one root (cxr.runtime.errors.CxrError).

Each also subclasses ValueError, as the plain ValueErrors they replace did, so callers that caught ValueError keep
working; cxr-train itself catches CxrError only, so an unexpected ValueError (a bug) shows its traceback.
"""

from __future__ import annotations

from cxr.runtime.errors import CxrError


class TrainError(CxrError, ValueError):
    """A run that cannot start or go on for a reason the user can fix: data that cannot be indexed or split, a
    split without both classes, a run folder that cannot be resumed, a device that is not there."""


class ConfigError(TrainError):
    """A training configuration with an impossible value or combination of values."""
