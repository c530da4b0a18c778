"""The training loop's wiring: plateau scheduler, early stopping, best weights, unreadable images, pos_weight.

Mechanics only: densenet_tiny at 64 px on 60 phantom images (see train_fixtures). The validation loss is scripted by
wrapping the real evaluation, so the scheduler and early stopping inside `train` are driven exactly.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from cxr.train import loop
from cxr.train.checkpoints import load_checkpoint
from cxr.train.data import CxrDataset, rotation_angle
from cxr.train.loop import train
from cxr.train.rundir import HISTORY_COLUMNS, read_history
from tests.train.train_fixtures import state_equal, tiny_config

LR = 1e-3
SCRIPT = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]  # best at epoch 2, then never better


@pytest.fixture(scope="module")
def scripted_run(phantom, tmp_path_factory):
    """A run whose per-epoch validation loss follows SCRIPT; records the weights seen at each validation."""
    real = loop.evaluate_split
    seen: list[dict] = []

    def scripted(model, *args, **kwargs):
        ev = real(model, *args, **kwargs)
        if len(seen) < len(SCRIPT):
            ev.loss = SCRIPT[len(seen)]
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return ev

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "evaluate_split", scripted)
    run_dir = tmp_path_factory.mktemp("scripted") / "run"
    try:
        summary = train(tiny_config(phantom, max_epochs=len(SCRIPT), lr=LR), run_dir)
    finally:
        mp.undo()
    return summary, run_dir, seen


def test_lr_drops_tenfold_after_patience_epochs_without_improvement(scripted_run):
    """PyTorch semantics with patience 2: epochs 3, 4 are tolerated, epoch 5 is the third without improvement, so
    the lr used from epoch 6 on is a tenth."""
    _, run_dir, _ = scripted_run
    lrs = [row["lr"] for row in read_history(run_dir / "history.csv")]
    assert lrs == pytest.approx([LR] * 5 + [LR / 10])


def test_early_stopping_fires_after_four_epochs_and_keeps_best_weights(scripted_run):
    summary, run_dir, seen = scripted_run
    history = read_history(run_dir / "history.csv")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]  # epochs 3-6 without improvement, then stop
    assert [r["is_best"] for r in history] == [1, 1, 0, 0, 0, 0]
    assert summary["stopped_early"] and summary["best_epoch"] == 2
    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == 2
    assert state_equal(best["model_state"], seen[1])  # the weights validated in epoch 2
    assert not state_equal(best["model_state"], seen[5])
    last = load_checkpoint(run_dir / "last.pt")
    assert state_equal(last["model_state"], seen[5])
    assert last["early_stopping"] == {"best_val_loss": 0.9, "best_epoch": 2, "bad_epochs": 4, "stopped": True}


def test_run_dir_files_and_history_columns(scripted_run):
    summary, run_dir, _ = scripted_run
    for name in ("config.json", "splits.csv", "history.csv", "best.pt", "last.pt", "metrics.json", "loss.png",
                 "val_auroc.png", "summary.png", "lr.png", "test_roc.png"):
        assert (run_dir / name).is_file(), name
    header = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert header == list(HISTORY_COLUMNS)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["metrics"]["test"]
    assert test["n"] == summary["data"]["n_test"] and len(test["auroc_ci95"]) == 2
    best = load_checkpoint(run_dir / "best.pt")
    assert best["threshold"]["method"] == "youden_j" and 0.0 <= best["threshold"]["value"] <= 1.0
    assert set(best["metrics"]) == {"val", "test", "decision", "decision_candidates"}
    assert best["decision"]["mode"] == "classifier" and best["model"]["seg_head"] is False
    assert not list(run_dir.glob(".*tmp*"))


@pytest.mark.parametrize("cache", ["on", "off"])
def test_unreadable_image_is_reported_not_fatal(phantom, tmp_path, cache, caplog):
    bad = phantom / "images" / "P00000_0.png"
    original = bad.read_bytes()
    bad.write_bytes(b"not a png at all")
    try:
        with caplog.at_level(logging.WARNING):
            summary = train(tiny_config(phantom, max_epochs=1, cache_images=cache), tmp_path / "run")
    finally:
        bad.write_bytes(original)
    assert "P00000_0.png" in caplog.text
    if cache == "on":  # dropped up front and listed in the run record
        assert [u["path"] for u in summary["data"]["unreadable"]] == [str(bad)]
    assert summary["epochs_run"] == 1


def test_pos_weight_auto_is_negatives_over_positives_on_train(phantom, tmp_path):
    summary = train(tiny_config(phantom, max_epochs=1, pos_weight="auto"), tmp_path / "run")
    data = summary["data"]
    assert summary["pos_weight"] == pytest.approx(data["negatives"]["train"] / data["positives"]["train"])


def test_existing_run_dir_is_refused(phantom, tmp_path, scripted_run):
    _, run_dir, _ = scripted_run
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(phantom), run_dir)


def test_rotation_is_seeded_per_epoch_and_index(phantom):
    from cxr.train.datasets import load_dataset

    samples = load_dataset("phantom", phantom).samples[:3]
    cfg = tiny_config(phantom)
    ds = CxrDataset(samples, cfg.preprocess, train=True, rotation_degrees=5.0, seed=0)
    plain = CxrDataset(samples, cfg.preprocess)
    image, label, ok, index = ds[1]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (1, 64, 64) and bool(ok) and int(index) == 1
    assert label.dtype == torch.float32 and float(label) == samples[1].label
    assert torch.equal(ds[1][0], image)  # same epoch, same angle
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], image)
    assert not torch.equal(plain[1][0], image)
    angles = [rotation_angle(0, e, i, 5.0) for e in range(20) for i in range(20)]
    assert max(np.abs(angles)) <= 5.0 and len(set(angles)) == len(angles)


def test_per_image_splits_that_split_a_patient_stop_before_any_image_is_read(tmp_path, monkeypatch):
    """The original recipe's train/val/test folders were split per image: NIH names show one patient in two splits.
    The run must stop at once, before preloading every image, and say how to let cxr split by patient."""
    import cv2

    import cxr.train.prepare as prepare

    image = np.full((40, 40), 90, np.uint8)
    image[10:30, 10:30] = 200
    for split, patients in [("train", ["00000001", "00000002"]), ("val", ["00000001", "00000003"])]:
        for cls, follow_up in (("Cardiomegaly", 0), ("Normal", 1)):
            for pid in patients:  # patient 00000001 has images in train and in val
                path = tmp_path / "data" / split / cls / f"{pid}_{follow_up}{split == 'val':d}0.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(path), image)

    def never(*args, **kwargs):
        raise AssertionError("images were read before the split check")

    monkeypatch.setattr(prepare, "preload", never)
    with pytest.raises(ValueError) as info:
        train(tiny_config(tmp_path / "data", dataset="folder", cache_images="on"), tmp_path / "run")
    message = str(info.value)
    assert "1 patient(s) are in more than one split: 00000001 (train/val)" in message
    assert "ROOT/<positive class>/" in message


def test_missing_patient_ids_are_warned_about(tmp_path, caplog):
    import cv2

    from cxr.train.prepare import _index

    image = np.full((40, 40), 90, np.uint8)
    image[10:30, 10:30] = 200
    for cls in ("Cardiomegaly", "Normal"):
        for i in range(3):
            (tmp_path / cls).mkdir(exist_ok=True)
            assert cv2.imwrite(str(tmp_path / cls / f"scan{i}.png"), image)
    with caplog.at_level(logging.WARNING, logger="cxr.train.prepare"):
        samples, summary = _index(tiny_config(tmp_path, dataset="folder"))
    assert summary["patient_ids_known"] is False and len(samples) == 6
    assert "patient ids are not known for every image" in caplog.text


def test_an_unreadable_validation_split_stops_with_the_files_named(tmp_path):
    """Image cache off: unreadable validation images only show at evaluation. One epoch, then a clear error naming
    them, not epochs of NaN losses and a traceback at the end."""
    import csv

    import cv2

    rows = []
    for i in range(8):
        path = tmp_path / f"train{i}.png"
        image = np.full((48, 48), 60 + 20 * i, np.uint8)
        image[8:40, 8:40] = 230 - 20 * i
        assert cv2.imwrite(str(path), image)
        rows.append([path.name, i % 2, f"t{i}", "train"])
    for i in range(4):
        (tmp_path / f"val{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        rows.append([f"val{i}.png", i % 2, f"v{i}", "val"])
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "cardiomegaly", "patient_id", "split"], *rows])
    config = tiny_config(tmp_path, dataset="csv", cache_images="off", test_fraction=0.0, max_epochs=2)
    with pytest.raises(ValueError) as info:
        train(config, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("none of the validation images could be read (0 readable, 4 unreadable: ")
    assert str(tmp_path / "val0.png") in message and "and 1 more" in message


def test_diverged_weights_stop_training_with_the_way_out(phantom, tmp_path, monkeypatch):
    """Real divergence: NaN weights give NaN outputs. The run stops after that epoch saying so, not with a metrics
    error about NaN scores or a traceback at the end."""
    real = loop._train_epoch

    def diverging(net, *args, **kwargs):
        out = real(net, *args, **kwargs)
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.fill_(float("nan"))
        return out

    monkeypatch.setattr(loop, "_train_epoch", diverging)
    with pytest.raises(ValueError, match=r"epoch 1: the model's validation outputs are not finite .*training "
                                         r"diverged; lower --lr \(now 0.001\)"):
        train(tiny_config(phantom, max_epochs=2), tmp_path / "run")
