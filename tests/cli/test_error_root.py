"""One error root: every error cxr raises on purpose is a CxrError, and cxr-train reports those as one line while a
plain ValueError (a bug) keeps its traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cxr.runtime.errors import CxrError


def _classes():
    from cxr.export.errors import ExportError
    from cxr.runtime.labels import LabelsError
    from cxr.train.checkpoints import CheckpointError
    from cxr.train.errors import ConfigError, TrainError
    from cxr.train.model import InitWeightsError

    return {"CheckpointError": CheckpointError, "InitWeightsError": InitWeightsError, "LabelsError": LabelsError,
            "TrainError": TrainError, "ConfigError": ConfigError, "ExportError": ExportError}


@pytest.mark.parametrize("name", ["CheckpointError", "InitWeightsError", "LabelsError", "TrainError", "ConfigError",
                                  "ExportError"])
def test_every_deliberate_error_is_a_cxr_error(name):
    pytest.importorskip("torch")
    assert issubclass(_classes()[name], CxrError)


@pytest.fixture
def train_cli(tmp_path, monkeypatch):
    """cxr-train on a phantom folder, with train() replaced by `raising` (no image is read)."""
    pytest.importorskip("torch")
    import cxr.train.loop as loop
    from cxr.cli.train import main
    from cxr.train.phantom import make_phantom

    data = tmp_path / "phantom"
    make_phantom(data, 8, seed=0, size=64)

    def invoke(exc: BaseException):
        def raising(*args, **kwargs):
            raise exc
        monkeypatch.setattr(loop, "train", raising)
        return CliRunner().invoke(main, ["--data", f"phantom:{data}", "--out", str(tmp_path / "run"),
                                         "--arch", "densenet_tiny", "--init", "random", "--device", "cpu"])
    return invoke


def test_cxr_train_reports_its_own_errors_as_one_line(train_cli):
    from cxr.train.errors import TrainError

    result = train_cli(TrainError("split 'val' has no positive images"))
    assert result.exit_code == 1
    assert result.output.strip() == "cxr-train: error: split 'val' has no positive images"


def test_cxr_train_lets_a_bug_show_its_traceback(train_cli):
    result = train_cli(ValueError("operands could not be broadcast together"))
    assert isinstance(result.exception, ValueError)  # not swallowed into a one-line message
    assert "cxr-train: error:" not in result.output


def test_a_bad_config_json_on_resume_is_a_config_error(tmp_path):
    from cxr.train.config import TrainConfig
    from cxr.train.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown fields"):
        TrainConfig.from_dict({"data_root": "x", "no_such_option": 1})
