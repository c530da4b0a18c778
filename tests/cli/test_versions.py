"""Every command answers --version quickly (the installed package's version) and -h."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

import cxr


@pytest.mark.parametrize("command", ["score", "train", "export", "phantom", "bench"])
def test_every_command_has_version_and_help(command):
    main = importlib.import_module(f"cxr.cli.{command}").main
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"cxr-{command}, version {cxr.__version__}"
    assert CliRunner().invoke(main, ["-h"]).exit_code == 0
