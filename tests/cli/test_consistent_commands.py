"""The same -q/-v on cxr-train, cxr-export and cxr-phantom; --device cuda:N for training; option conflicts caught
before any image is indexed, and a failed start leaves no run folder behind."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


def _commands():
    from cxr.cli import export, phantom, train

    return {"cxr-train": train.main, "cxr-export": export.main, "cxr-phantom": phantom.main}


@pytest.mark.parametrize("command", ["cxr-train", "cxr-export", "cxr-phantom"])
def test_every_command_has_quiet_and_verbose(command):
    text = CliRunner().invoke(_commands()[command], ["--help"], terminal_width=200).output
    assert "-q, --quiet" in text and "-v, --verbose" in text


@pytest.mark.parametrize("command, args", [("cxr-train", ["--resume", "."]), ("cxr-export", [".", "--out", "m.onnx"]),
                                           ("cxr-phantom", ["out"])])
def test_quiet_and_verbose_together_are_a_usage_error(command, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_commands()[command], [*args, "-q", "-v"])
    assert result.exit_code == 2
    assert "-q/--quiet and -v/--verbose cannot be used together" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_phantom_quiet_prints_nothing_and_still_writes(tmp_path, quiet):
    from cxr.cli.phantom import main

    result = CliRunner().invoke(main, [str(tmp_path / "p"), "--n", "4", "--size", "64", *(["-q"] if quiet else [])])
    assert result.exit_code == 0
    assert (tmp_path / "p" / "labels.csv").is_file()
    assert (result.output == "") is quiet
    if not quiet:
        assert result.output.startswith("wrote 4 phantom images to ")


def test_export_calibration_help_says_what_the_code_does():
    text = " ".join(CliRunner().invoke(_commands()["cxr-export"], ["--help"], terminal_width=200).output.split())
    assert "--calibration" in text and "default: the run's training split" in text


@pytest.mark.parametrize("value, ok", [("cuda:0", True), ("cuda:12", True), ("cuda", True), ("auto", True),
                                       ("cpu", True), ("cuda:", False), ("cuda:-1", False), ("gpu", False),
                                       ("cuda:01", False)])
def test_training_device_accepts_cuda_n(value, ok):
    from cxr.train.config import TrainConfig
    from cxr.train.errors import ConfigError

    if ok:
        assert TrainConfig(data_root="x", device=value).device == value
    else:
        with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N"):
            TrainConfig(data_root="x", device=value)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """cxr-train on a tiny phantom; prepare_data (the step that indexes images) is replaced by `prepare`."""
    pytest.importorskip("torch")
    import cxr.train.loop as loop
    from cxr.cli.train import main
    from cxr.train.phantom import make_phantom

    data = tmp_path / "phantom"
    make_phantom(data, 8, seed=0, size=64)

    def invoke(*args, prepare=None, out=None):
        def indexed(*a, **k):
            raise AssertionError("images were indexed")
        monkeypatch.setattr(loop, "prepare_data", prepare or indexed)
        return CliRunner().invoke(main, ["--data", f"phantom:{data}", "--out", str(out or tmp_path / "run"),
                                         "--arch", "densenet_tiny", "--init", "random", "--image-size", "64", *args])
    return invoke


@pytest.mark.parametrize("args, message", [
    (["--amp", "on", "--device", "cpu"], "amp: on needs CUDA and --device is cpu"),
    (["--amp", "on", "--device", "auto"], "--amp on needs CUDA; this run is on cpu"),
])
def test_amp_conflicts_stop_before_any_image_is_indexed_and_leave_no_folder(cli, tmp_path, args, message):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --amp on is allowed")
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "images were indexed" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_missing_gpu_is_an_error_before_any_folder_is_made(cli, tmp_path):
    torch = pytest.importorskip("torch")
    index = torch.cuda.device_count() if torch.cuda.is_available() else 0
    result = cli("--device", f"cuda:{index}")
    assert result.exit_code == 1
    assert f"--device cuda:{index}" in result.output and "cxr-train: error:" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_start_removes_only_a_run_folder_it_made(cli, tmp_path, existed):
    from cxr.train.errors import TrainError

    out = tmp_path / "run"
    if existed:
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    def no_positives(config, run_dir, ctx, resume=False):
        (run_dir / "splits.csv").write_text("path,label\n")  # what a real start writes before it can fail
        raise TrainError("split 'val' has no positive images")

    result = cli("--device", "cpu", prepare=no_positives, out=out)
    assert result.exit_code == 1 and "split 'val' has no positive images" in result.output
    assert out.exists() is existed
    if existed:
        assert (out / "notes.txt").read_text() == "mine"


def test_quiet_training_prints_no_summary(cli, monkeypatch):
    import cxr.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: {})  # an empty summary would fail to print
    result = cli("-q", "--device", "cpu")
    assert result.exit_code == 0 and result.output == ""
