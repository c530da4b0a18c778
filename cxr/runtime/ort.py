"""The one way cxr imports onnxruntime: with its telemetry off, for every session cxr creates.

onnxruntime 1.32's Linux wheels carry a 1DS telemetry client that, on the first session, writes a device id and a
queue of events (model paths, errors, host facts) under ~/.cache/Microsoft/DeveloperTools/.onnxruntime/. Verified on
1.32.0 (cxr's tests check it, tests/runtime/test_integrity_telemetry.py): `onnxruntime.disable_telemetry_events()`
alone does NOT stop those files being written; ORT_DISABLE_TELEMETRY=1 in the environment before onnxruntime is
first imported does. So `import_ort()` sets the variable, imports, and then also calls the API where it exists
(older and Windows builds honour only the call). An application that imported onnxruntime before cxr keeps whatever
its import decided; the call is still made.
"""

from __future__ import annotations

import os
from types import ModuleType

TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def import_ort() -> ModuleType:
    """onnxruntime, imported with ORT_DISABLE_TELEMETRY=1 and telemetry events disabled."""
    os.environ[TELEMETRY_ENV] = "1"  # read when onnxruntime is loaded: must precede the first import
    import onnxruntime

    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    return onnxruntime
