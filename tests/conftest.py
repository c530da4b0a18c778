"""Shared fixtures: where the real images live, and small contract-honouring ONNX models."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data with real chest X-rays; tests that need it skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not available: {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture()
def tiny_model(tmp_path) -> Path:
    """A mean-brightness ONNX model at S=64 with a valid card (threshold 0.5)."""
    pytest.importorskip("onnx")
    from tests.onnx_fixtures import mean_brightness_model

    return mean_brightness_model(tmp_path / "tiny.onnx", size=64)
