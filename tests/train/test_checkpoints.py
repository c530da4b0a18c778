"""Checkpoints load with weights_only=True, are validated, and refuse what is not a cxr checkpoint with the reason.

Mechanics only, so the small DenseNet ("densenet_tiny") stands in for DenseNet-121.
"""

from __future__ import annotations

import pickle

import pytest

torch = pytest.importorskip("torch")

from cxr.runtime.preprocess import Normalization, PreprocessConfig  # noqa: E402
from cxr.train.checkpoints import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from cxr.train.model import CardiomegalyNet, build_model  # noqa: E402


def _payload(model: CardiomegalyNet, arch: str = "densenet_tiny", **extra) -> dict:
    return {"kind": "best", "model": {"arch": arch, "dropout": 0.2}, "model_state": model.state_dict(),
            "preprocess": PreprocessConfig(size=64).to_dict(), "normalization": Normalization().to_dict(),
            "threshold": {"value": 0.4, "method": "youden_j", "detail": "val"}, **extra}


def test_round_trip_restores_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("densenet_tiny").eval()
    save_checkpoint(_payload(model, rng={"torch": torch.get_rng_state()}), tmp_path / "best.pt")
    data = load_checkpoint(tmp_path)  # a run directory means its best.pt
    x = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    restored = model_from_checkpoint(data)
    assert not restored.training
    torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    assert data["threshold"]["value"] == 0.4


@pytest.mark.parametrize("content,message", [
    (b"", "cannot be read"),
    (b"\x00garbage" * 100, "cannot be read"),
])
def test_corrupt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(_payload(build_model("densenet_tiny")), tmp_path / "best.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        torch.save({"format": "cxr-checkpoint", "x": Evil()}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model("densenet_tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match="not a cxr checkpoint"):
        load_checkpoint(path)


def test_architecture_mismatch_names_the_file_and_arch(tmp_path):
    path = save_checkpoint(_payload(build_model("densenet_tiny"), arch="densenet121"), tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="do not match architecture 'densenet121'") as info:
        model_from_checkpoint(load_checkpoint(path))
    assert str(path) in str(info.value)


def test_missing_path_and_run_dir_without_best(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="without best.pt"):
        load_checkpoint(tmp_path)


def test_invalid_threshold_in_checkpoint_is_refused(tmp_path):
    payload = _payload(build_model("densenet_tiny"))
    payload["threshold"] = {"value": 2.0, "method": "youden_j"}
    path = save_checkpoint(payload, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="threshold"):
        load_checkpoint(path)


def test_init_from_rgb_densenet_sums_conv0_and_matches_grey_copied_to_rgb(tmp_path):
    """--init PATH with a 3-channel torchvision DenseNet: conv0's RGB weights are summed, which must equal feeding
    the grey image as three identical channels to the original network."""
    from torchvision.models import DenseNet

    torch.manual_seed(1)
    rgb = DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2).eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    model = build_model("densenet_tiny", init=str(tmp_path / "rgb.pth")).eval()
    assert model.features.conv0.in_channels == 1
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model.features(x), rgb.features(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
