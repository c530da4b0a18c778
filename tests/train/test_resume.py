"""--resume: an interrupted run ends exactly where an uninterrupted one would.

Mechanics only: densenet_tiny at 64 px on 60 phantom images (see train_fixtures), with rotation augmentation, dropout
and one DataLoader worker, so the shuffling, augmentation and dropout RNG all have to resume correctly.
"""

from __future__ import annotations

import pytest

from cxr.train.checkpoints import load_checkpoint
from cxr.train.loop import train
from cxr.train.rundir import read_history
from tests.train.train_fixtures import state_equal, tiny_config


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    cfg = tiny_config(phantom, max_epochs=3, num_workers=1, rotation_degrees=5.0)
    train(cfg, base / "whole")
    train(cfg.replace(max_epochs=2), base / "parts")  # "interrupted" after epoch 2
    summary = train(cfg, base / "parts", resume=True)
    return base / "whole", base / "parts", summary


def test_resumed_history_matches_uninterrupted(runs):
    whole, parts, summary = runs
    a, b = read_history(whole / "history.csv"), read_history(parts / "history.csv")
    assert [r["epoch"] for r in b] == [1, 2, 3] and summary["epochs_run"] == 3
    for ra, rb in zip(a, b):
        for key in ra:
            if key != "seconds":
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9, nan_ok=True), (ra["epoch"], key)


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_resumed_weights_match_uninterrupted(runs, name):
    whole, parts, _ = runs
    a, b = load_checkpoint(whole / name), load_checkpoint(parts / name)
    assert a["epoch"] == b["epoch"]
    assert state_equal(a["model_state"], b["model_state"])
    assert a["threshold"] == b["threshold"]


def test_last_checkpoint_holds_resume_state(runs):
    _, parts, _ = runs
    last = load_checkpoint(parts / "last.pt")  # weights_only=True
    for key in ("optimizer_state", "scheduler_state", "early_stopping", "rng", "history", "sampler"):
        assert key in last, key
    assert set(last["rng"]) >= {"torch", "numpy", "python"}
    assert len(last["history"]) == 3


def test_config_json_records_the_longer_run(runs):
    """A finished 2-epoch run continued with max_epochs 3: config.json says what ran (3), like the checkpoint."""
    import json

    whole, parts, _ = runs
    saved = json.loads((parts / "config.json").read_text())
    assert saved["max_epochs"] == 3 == load_checkpoint(parts / "last.pt")["config"]["max_epochs"]
    assert saved == json.loads((whole / "config.json").read_text())


@pytest.mark.parametrize("change, message", [
    ({"lr": 0.5}, "different lr"),
    ({"image_size": 96}, "different image_size"),
])
def test_resume_refuses_a_changed_recipe(phantom, runs, change, message):
    _, parts, _ = runs
    cfg = tiny_config(phantom, max_epochs=4, num_workers=1, rotation_degrees=5.0, **change)
    with pytest.raises(ValueError, match=message):
        train(cfg, parts, resume=True)


def test_resume_without_last_checkpoint_is_an_error(phantom, tmp_path):
    with pytest.raises(ValueError, match="no last.pt"):
        train(tiny_config(phantom), tmp_path, resume=True)


def test_run_records_where_it_trained(runs):
    """metrics.json, both checkpoints and the card say on which CPU (model, ISA flags), device and torch the run
    trained; a resume on the same kind of machine adds no second entry."""
    import json

    import torch

    from cxr.export.artifacts import build_card
    from cxr.train.loop import machine_record

    here = {**machine_record("cpu"), "from_epoch": 1}
    whole, parts, _ = runs
    for run in (whole, parts):
        summary = json.loads((run / "metrics.json").read_text())
        assert summary["machines"] == [here]
        assert summary["versions"]["torch"] == str(torch.__version__)
        for name in ("best.pt", "last.pt"):
            assert load_checkpoint(run / name)["machines"] == [here]
    card = build_card(load_checkpoint(whole / "best.pt"), {})
    assert card.training["machines"] == [here]
    assert card.training["machines"][0]["cpu_model"] and card.training["machines"][0]["torch_threads"] >= 1


def test_resume_on_another_kind_of_machine_is_recorded_and_said(phantom, tmp_path, monkeypatch, caplog):
    import json
    import logging

    from cxr.train import loop

    cfg = tiny_config(phantom, max_epochs=1)
    train(cfg, tmp_path)
    first = loop.machine_record("cpu")
    other = {**first, "cpu_model": "Another CPU", "cpu_flags": ["avx2"]}
    monkeypatch.setattr(loop, "machine_record", lambda device="cpu": dict(other))
    with caplog.at_level(logging.WARNING, logger=loop.log.name):
        train(cfg.replace(max_epochs=2), tmp_path, resume=True)
    machines = json.loads((tmp_path / "metrics.json").read_text())["machines"]
    assert machines == [{**first, "from_epoch": 1}, {**other, "from_epoch": 2}]
    said = [r.getMessage() for r in caplog.records if "another kind of machine" in r.getMessage()]
    assert len(said) == 1 and "Another CPU" in said[0] and str(first["cpu_model"]) in said[0]
