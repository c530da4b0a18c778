"""The model as training uses it: real DenseNet-121 steps learn, initial weights (--init) load or fail clearly.

The DenseNet-121 test runs the real architecture at 64 px (batch 4) for a few steps; the rest use densenet_tiny.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch

from cxr.train import config as C
from cxr.train.checkpoints import load_checkpoint
from cxr.train.data import CxrDataset
from cxr.train.loop import train
from cxr.train.model import InitWeightsError, build_model
from tests.train.train_fixtures import state_equal, tiny_config


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No ImageNet weights in the cache and no network: what a fresh offline machine sees."""
    import torchvision.models._api as api

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(api, "load_state_dict_from_url", refuse)


@pytest.mark.slow
def test_densenet121_steps_lower_the_training_loss(phantom):
    from cxr.train.datasets import load_dataset

    torch.manual_seed(0)
    samples = load_dataset("phantom", phantom).samples[:4]
    ds = CxrDataset(samples, C.TrainConfig(image_size=64).preprocess)
    images = torch.stack([ds[i][0] for i in range(4)])
    labels = torch.stack([ds[i][1] for i in range(4)])
    model = build_model("densenet121", dropout=0.2, init="random").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    criterion = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(6):
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_imagenet_init_offline_fails_with_the_way_out(offline):
    with pytest.raises(InitWeightsError, match="--init random") as err:
        build_model("densenet121", init="imagenet")
    assert "densenet121-a639ec97.pth" in str(err.value)


def test_imagenet_init_offline_stops_train_before_reading_data(offline, tmp_path):
    with pytest.raises(InitWeightsError, match="offline"):
        train(C.TrainConfig(dataset="folder", data_root=str(tmp_path / "absent"), init="imagenet"), tmp_path / "r")


def _published_densenet121_state() -> tuple[dict, dict]:
    """(torchvision DenseNet-121 state, the same weights named as in the published densenet121-a639ec97.pth)."""
    import re

    from torchvision.models import densenet121

    torch.manual_seed(7)
    state = densenet121(weights=None).state_dict()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}  # the 2017 file predates BatchNorm's counter
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy  # the file's old-style names
    return state, legacy


def _assert_features_are(model, state) -> None:
    got = model.features.state_dict()
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        name = key[len("features."):]
        expected = value.sum(dim=1, keepdim=True) if name == "conv0.weight" else value  # RGB summed to grey
        assert torch.equal(got[name], expected), name


def test_imagenet_init_loads_the_published_files_old_layer_names(monkeypatch):
    import torchvision.models._api as api

    state, legacy = _published_densenet121_state()
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: dict(legacy))
    _assert_features_are(build_model("densenet121", init="imagenet"), state)


def test_init_path_loads_the_published_file_as_saved(tmp_path):
    state, legacy = _published_densenet121_state()
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path)
    _assert_features_are(build_model("densenet121", init=str(path)), state)


def test_init_from_a_checkpoint_starts_from_its_weights(phantom, tmp_path):
    train(tiny_config(phantom, max_epochs=1), tmp_path / "first")
    best = tmp_path / "first" / "best.pt"
    model = build_model("densenet_tiny", init=str(best))
    assert state_equal(model.state_dict(), load_checkpoint(best)["model_state"])
    summary = train(tiny_config(phantom, max_epochs=1, init=str(best)), tmp_path / "second")
    assert summary["epochs_run"] == 1


def test_decision_choices_are_auto_and_the_decision_modes():
    assert C.DECISIONS == ("auto", "classifier", "ctr", "fusion")
    assert C.TrainConfig().nih_negatives == "no_finding"


def test_config_defaults_are_the_recipe():
    cfg = C.TrainConfig()
    assert (cfg.arch, cfg.dropout, cfg.init, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size) == (
        "densenet121", 0.2, "imagenet", "adam", 1e-5, 1e-2, 32)
    assert (cfg.max_epochs, cfg.plateau_patience, cfg.plateau_factor, cfg.early_stopping_patience) == (30, 2, 0.1, 4)
    assert (cfg.rotation_degrees, cfg.image_size, cfg.pos_weight, cfg.threshold_method) == (
        5.0, 224, None, "youden_j")
    assert C.TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("field, value, message", [
    ("lr", 0.0, "lr: must be positive"),
    ("batch_size", 0, "batch_size"),
    ("optimizer", "sgd", "optimizer"),
    ("pos_weight", "balanced", "pos_weight"),
    ("pos_weight", -1.0, "pos_weight"),
    ("threshold_method", "target_sensitivity", "target_sensitivity"),
    ("target_sensitivity", 0.9, "only used with"),
    ("val_fraction", 0.9, "val_fraction"),
    ("image_size", 8, "size"),
    ("max_train_images", 1, "max_train_images"),
    ("amp", "maybe", "amp"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        C.TrainConfig(**{field: value})


def test_a_config_saved_before_nih_negatives_existed_reads_as_what_that_run_did():
    """Runs made before the field used every non-cardiomegaly NIH image: resuming one must record (and accept) that,
    not today's default."""
    old = C.TrainConfig(dataset="nih", data_root="/data/nih").to_dict()
    del old["nih_negatives"]
    assert C.TrainConfig.from_dict(old).nih_negatives == "all"
    assert C.TrainConfig.from_dict({**old, "nih_negatives": "no_finding"}).nih_negatives == "no_finding"


def test_config_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="learning_rate"):
        C.TrainConfig.from_dict({"learning_rate": 1e-4})
