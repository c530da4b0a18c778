"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

from tests.train.train_fixtures import make_small_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The small phantom set (train_fixtures), written once per test module."""
    return make_small_phantom(tmp_path_factory.mktemp("phantom"))
