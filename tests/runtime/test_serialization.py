"""One strict-JSON converter and one file digest serve the manifest, the run directory and the export report."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from cxr.runtime.serialization import jsonable, sha256_file


def test_jsonable_gives_strict_json_and_never_a_made_up_number():
    data = {"auroc": float("nan"), "inf": math.inf, "n": np.int64(3), "f": np.float32(0.5), "ok": np.bool_(True),
            "ci": (0.1, np.float64(0.9)), "path": Path("a/b.png"), 7: None, "probs": np.array([0.2, 0.8])}
    out = jsonable(data)
    assert out == {"auroc": None, "inf": None, "n": 3, "f": 0.5, "ok": True, "ci": [0.1, 0.9], "path": "a/b.png",
                   "7": None, "probs": [0.2, 0.8]}
    json.dumps(out, allow_nan=False)  # would raise on NaN
    assert "probs" not in jsonable(data, drop_arrays=True) and jsonable(data, drop_arrays=True)["n"] == 3


def test_sha256_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x" * (3 << 20) + b"tail")
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
