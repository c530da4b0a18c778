"""ExportOptions refuses what cxr-export cannot do, before any checkpoint is read."""

from __future__ import annotations

import pytest

from cxr.export.options import SUPPORTED_OPSETS, ExportOptions


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": SUPPORTED_OPSETS.stop}, "opset 21 is not supported: choose 13..20"),
    ({"opset": True}, "opset True is not supported"),
    ({"quantize": "int4"}, "quantize must be one of ('int8',), got 'int4'"),
    ({"max_samples": 0}, "max_samples must be a whole number of at least 1, got 0"),
    ({"max_auroc_drop": float("nan")}, "max_auroc_drop must be a finite number, got nan"),
])
def test_bad_options_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError) as info:
        ExportOptions(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs, int8, reduced", [({}, False, False), ({"quantize": "int8"}, True, True),
                                                   ({"fp16": True}, False, True)])
def test_what_the_options_ask_for(kwargs, int8, reduced):
    options = ExportOptions(**kwargs)
    assert (options.int8, options.reduced_precision) == (int8, reduced)
