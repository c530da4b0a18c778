"""--ema-halflife: validate, select and save a moving average of the weights without changing what is trained.

Mechanics only (densenet_tiny at 64 px on phantom images, see train_fixtures).
"""

from __future__ import annotations

import math

import pytest
import torch

from cxr.train.checkpoints import load_checkpoint
from cxr.train.config import ConfigError, TrainConfig
from cxr.train.loop import _weight_average, train
from cxr.train.rundir import read_history
from tests.train.train_fixtures import state_equal, tiny_config


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory):
    base = tmp_path_factory.mktemp("ema")
    plain = tiny_config(phantom, max_epochs=2, rotation_degrees=5.0)
    ema = plain.replace(ema_halflife=0.5)
    train(plain, base / "plain")
    train(ema, base / "ema")
    train(ema.replace(max_epochs=1), base / "parts")  # "interrupted" after epoch 1
    train(ema, base / "parts", resume=True)
    return base


def test_half_life_is_counted_in_epochs():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    avg = _weight_average(net, TrainConfig(ema_halflife=2.0), steps_per_epoch=5)
    avg.update_parameters(net)  # the first update copies the weights
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(10):  # two epochs of 5 steps: one half-life of 2 epochs
        avg.update_parameters(net)
    assert float(avg.module.weight.detach()) == pytest.approx(0.5, abs=1e-6)
    assert _weight_average(net, TrainConfig(), steps_per_epoch=5) is None


def test_the_average_does_not_change_what_is_trained(runs):
    plain, ema = load_checkpoint(runs / "plain" / "last.pt"), load_checkpoint(runs / "ema" / "last.pt")
    # same seed, same steps: the trained weights are identical; the saved (validated, exported) weights are the average
    assert state_equal(plain["model_state"], ema["train_state"])
    assert not state_equal(ema["model_state"], ema["train_state"])
    n_train = len([r for r in open(runs / "ema" / "splits.csv") if ",train," in r])
    assert ema["ema_averaged"] == 2 * math.ceil(n_train / 8)  # every optimizer step of both epochs
    # BatchNorm statistics are averaged with the weights; its step counter is the trained model's
    stats = [k for k in ema["model_state"] if k.endswith("running_mean")]
    assert stats and all(not torch.equal(ema["model_state"][k], ema["train_state"][k]) for k in stats)
    counters = [k for k in ema["model_state"] if k.endswith("num_batches_tracked")]
    assert counters and all(int(ema["model_state"][k]) == int(ema["train_state"][k]) == ema["ema_averaged"]
                            for k in counters)


def test_validation_and_best_weights_come_from_the_average(runs):
    plain, ema = read_history(runs / "plain" / "history.csv"), read_history(runs / "ema" / "history.csv")
    assert [r["train_loss"] for r in plain] == pytest.approx([r["train_loss"] for r in ema], rel=1e-6)
    assert [r["val_loss"] for r in plain] != pytest.approx([r["val_loss"] for r in ema], rel=1e-6)
    best, last = load_checkpoint(runs / "ema" / "best.pt"), load_checkpoint(runs / "ema" / "last.pt")
    if best["epoch"] == last["epoch"]:
        assert state_equal(best["model_state"], last["model_state"])
    assert "train_state" not in best and "ema_averaged" not in best  # best.pt is what export reads: one set


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_resume_continues_the_average(runs, name):
    a, b = load_checkpoint(runs / "ema" / name), load_checkpoint(runs / "parts" / name)
    assert a["epoch"] == b["epoch"]
    assert state_equal(a["model_state"], b["model_state"])
    if name == "last.pt":
        assert a["ema_averaged"] == b["ema_averaged"] and state_equal(a["train_state"], b["train_state"])


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_half_life_is_refused(value):
    with pytest.raises(ConfigError, match="ema_halflife"):
        TrainConfig(ema_halflife=value)


def test_resume_refuses_a_changed_half_life(phantom, runs):
    with pytest.raises(ValueError, match="different ema_halflife"):
        train(tiny_config(phantom, max_epochs=3, rotation_degrees=5.0, ema_halflife=1.0), runs / "parts", resume=True)


def test_the_decoder_is_averaged_and_exported_with_the_rest(tmp_path):
    from tests.train.masked_fixtures import MASK_COLUMNS, make_masked_set

    labels = make_masked_set(tmp_path / "masked", n=32)
    cfg = tiny_config(labels.parent, dataset="csv", csv_path=str(labels), mask_columns=",".join(MASK_COLUMNS),
                      ctr_column="ctr", seg_lr=3e-3, max_epochs=1, ema_halflife=0.5)
    summary = train(cfg, tmp_path / "run")
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    decoder = [k for k in last["model_state"] if k.startswith("decoder.") and k.endswith("weight")]
    assert decoder and all(not torch.equal(last["model_state"][k], last["train_state"][k]) for k in decoder)
    assert summary["metrics"]["val"]["anatomy"]["dice_heart"] is not None  # validated with the averaged decoder
