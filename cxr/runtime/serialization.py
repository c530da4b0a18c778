"""Small helpers every layer needs to write honest files: strict JSON values and file digests."""

from __future__ import annotations

import hashlib
import math
from pathlib import PurePath
from typing import Any, Mapping


def jsonable(value: Any, drop_arrays: bool = False) -> Any:
    """Plain, strict-JSON values: NaN/inf become null (never a made-up number), numpy scalars and tensors become Python
    numbers or lists, tuples become lists, paths become strings. With `drop_arrays`, multi-element arrays inside
    mappings are left out (validation reports keep figures, not raw predictions)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, drop_arrays) for k, v in value.items()
                if not (drop_arrays and getattr(v, "ndim", 0) > 0)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, drop_arrays) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays, torch tensors
        return jsonable(value.tolist(), drop_arrays)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    return str(value)


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
