"""Films moved by a few pixels, and a scorer that averages its probability over such moves (test-time
augmentation, `cxr-score --shift-average PIXELS`). No torch here.

The film is scored nine times: as given and moved by PIXELS pixels (at the model's input size) up, down, left,
right and diagonally, the uncovered border black as the training's geometric augmentation fills it. The
probability is the mean of the nine (of those the model could score: a model that decides by its ratio has no
probability for a drawing whose ratio it cannot measure); the logit is that mean's logit, so the call at the
threshold follows the probability. A film the model cannot score as given keeps its NaN: the moves never make a
probability for a film that has none. Everything else a row carries (ratio, masks, activation map) is the film's as
given: the ratio measured on masks voted over the same moves did not lower its error on every model (the real-data
notes). So on a model that decides by its ratio, the call follows the nine drawings' ratios while the `ctr` column
is the film's own, and near the threshold the two can disagree.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def shift_grid(pixels: int) -> list[tuple[int, int]]:
    """The (dy, dx) shifts of a vote over `pixels`: the film itself and its eight neighbours `pixels` away."""
    return [(dy, dx) for dy in (-pixels, 0, pixels) for dx in (-pixels, 0, pixels)] if pixels else [(0, 0)]


def shifted(images: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """(images [..., H, W] with their content moved dy rows down and dx columns right, the uncovered border 0 as the
    training's geometric augmentation fills it; a [H, W] bool of where the moved content lies)."""
    h, w = images.shape[-2:]
    out = np.zeros_like(images)
    inside = np.zeros((h, w), bool)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = images[..., ys, xs]
    inside[yd, xd] = True
    return out, inside


def largest_shift(size: int) -> int:
    """The largest move allowed at an input of size x size: under a quarter of the film."""
    return size // 4 - 1


class ShiftAverage:
    """A Scorer (cxr.runtime.scoring) whose probability is the mean over `shift_grid(pixels)`: nine model calls per
    batch. Every other attribute is the wrapped scorer's. ValueError when `pixels` is not 1..largest_shift(size)."""

    def __init__(self, scorer, pixels: int):
        size = int(scorer.card.preprocess.size)
        if isinstance(pixels, bool) or not isinstance(pixels, int) or not 1 <= pixels <= largest_shift(size):
            raise ValueError(f"a shift of {pixels!r} pixels: give 1 to {largest_shift(size)} for this model (its "
                             f"input is {size}x{size})")
        self._scorer, self.pixels, self.shifts = scorer, pixels, shift_grid(pixels)

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle probes: never reach the wrapped scorer for these
            raise AttributeError(name)
        return getattr(self._scorer, name)

    def for_batch(self, batch_size: int) -> "ShiftAverage":
        inner = self._scorer.for_batch(batch_size)
        return self if inner is self._scorer else ShiftAverage(inner, self.pixels)

    def run(self, batch: np.ndarray, extras: Sequence[str] = ()) -> dict[str, np.ndarray]:
        batch = np.asarray(batch)
        values = self._scorer.run(batch, extras)  # the film as given: its extras are the row's
        values["logit"], values["probability"] = self._average(batch, values["probability"])
        return values

    def _average(self, batch: np.ndarray, as_given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = [np.asarray(as_given, np.float64)]
        for dy, dx in self.shifts:
            if (dy, dx) != (0, 0):
                probs.append(np.asarray(self._scorer.run(shifted(batch, dy, dx)[0])["probability"], np.float64))
        stack = np.stack(probs)
        finite = np.isfinite(stack)
        count = finite.sum(axis=0)
        p = np.where(finite, stack, 0.0).sum(axis=0) / np.maximum(count, 1)
        p = np.where(np.isfinite(stack[0]), p, np.nan)  # unscorable as given: stays so, whatever the moves say
        with np.errstate(invalid="ignore"):
            clipped = np.clip(p, 1e-7, 1 - 1e-7)
            logit = np.log(clipped / (1 - clipped))
        return logit.astype(np.float32), p.astype(np.float32)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logit, probability) averaged over the moves, as `run` gives them."""
        values = self.run(batch)
        return values["logit"], values["probability"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)["probability"]

    @property
    def shift_average_facts(self) -> dict:
        """What the manifest (`shift_average`) and the report record of the average."""
        return {"pixels": self.pixels, "drawings": len(self.shifts), "input_size": int(self.card.preprocess.size),
                "averaged": "probability, over the drawings the model could score (the ratio, masks and activation "
                            "map are the film's as given)"}
