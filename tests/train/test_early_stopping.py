"""EarlyStopping: a new best resets the count, ties are not improvements, patience decides, and the state last.pt
keeps round-trips (with the keys runs have always saved)."""

from __future__ import annotations

import math

import pytest

from cxr.train.early_stopping import EarlyStopping
from cxr.train.errors import TrainError


def test_strictly_lower_loss_is_a_new_best_and_resets_the_count():
    stop = EarlyStopping(patience=2)
    assert stop.best_val_loss == math.inf and not stop.due
    assert stop.update(1.0, 1) is True
    assert stop.update(1.0, 2) is False  # a tie is not an improvement
    assert (stop.best_epoch, stop.bad_epochs, stop.due) == (1, 1, False)
    assert stop.update(0.5, 3) is True
    assert (stop.best_val_loss, stop.best_epoch, stop.bad_epochs) == (0.5, 3, 0)


def test_due_after_patience_epochs_without_improvement():
    stop = EarlyStopping(patience=3)
    losses = [1.0, 0.9, 0.95, 0.91, 0.9]
    due = []
    for epoch, loss in enumerate(losses, start=1):
        stop.update(loss, epoch)
        due.append(stop.due)
    assert due == [False, False, False, False, True]
    assert (stop.best_epoch, stop.bad_epochs) == (2, 3)
    assert not stop.stopped  # the loop sets it (from rank 0's decision under torchrun)


def test_state_round_trips_with_the_checkpoint_keys():
    stop = EarlyStopping(patience=4)
    for epoch, loss in enumerate([1.0, 0.9, 1.1], start=1):
        stop.update(loss, epoch)
    stop.stopped = True
    state = stop.state_dict()
    assert state == {"best_val_loss": 0.9, "best_epoch": 2, "bad_epochs": 1, "stopped": True}
    back = EarlyStopping.from_state(state, patience=4)
    assert back == stop
    assert EarlyStopping(patience=1).state_dict() == {"best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
                                                       "stopped": False}


def test_a_state_without_its_keys_is_refused_naming_the_file():
    with pytest.raises(TrainError, match=r"run/last.pt: its early-stopping state lacks bad_epochs, stopped"):
        EarlyStopping.from_state({"best_val_loss": 1.0, "best_epoch": 1}, patience=2, source="run/last.pt")
