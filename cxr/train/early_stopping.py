"""Early stopping on the validation (selection) loss: remember the best epoch, count the epochs since it, stop after
`patience` of them. Kept in last.pt as a plain dict (`state_dict`) so a resumed run continues the same count."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxr.train.errors import TrainError

_KEYS = ("best_val_loss", "best_epoch", "bad_epochs", "stopped")


@dataclass
class EarlyStopping:
    """`update` once per epoch with its validation loss; `due` says whether patience has run out. `stopped` is set
    by the loop (under torchrun from rank 0's decision, so every rank stops after the same epoch)."""

    patience: int
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, loss: float, epoch: int) -> bool:
        """Record one epoch's loss; True when it is strictly lower than the best so far (a new best epoch)."""
        improved = loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def due(self) -> bool:
        """Patience has run out: `patience` epochs in a row without a lower loss."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The dict last.pt keeps (the same keys runs have always saved)."""
        return {"best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped}

    @classmethod
    def from_state(cls, state: dict[str, Any], patience: int, source: str = "last.pt") -> EarlyStopping:
        """Back from last.pt's dict (`source` names the file in the error when a key is missing)."""
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise TrainError(f"{source}: its early-stopping state lacks {', '.join(missing)}; it was not written by "
                             "this training loop, so the run cannot be resumed from it")
        return cls(patience=patience, best_val_loss=float(state["best_val_loss"]), best_epoch=int(state["best_epoch"]),
                   bad_epochs=int(state["bad_epochs"]), stopped=bool(state["stopped"]))
