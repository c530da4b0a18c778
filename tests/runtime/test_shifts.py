"""ShiftAverage: the probability averaged over a film moved by a few pixels (cxr-score --shift-average); the row's
other values stay the film's as given."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from cxr.runtime.journal import run_identity  # noqa: E402
from cxr.runtime.scoring import Scorer  # noqa: E402
from cxr.runtime.shifts import ShiftAverage, shift_grid, shifted  # noqa: E402
from tests.onnx_fixtures import expected_probability  # noqa: E402
from tests.runtime.test_overlay_fixtures import maps_model  # noqa: E402

AVERAGED = ("probability, over the drawings the model could score (the ratio, masks and activation map are the film's "
            "as given)")


def films(n: int = 3, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(5)
    out = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    out[1, :, 10:50, 20:40] = 255  # films that differ in where their bright part lies
    return out


def test_the_probability_is_the_mean_of_the_nine_moved_films(tiny_model):
    batch = films()
    moved = [shifted(batch, dy, dx)[0] for dy, dx in shift_grid(3)]
    want = np.mean([expected_probability(m) for m in moved], axis=0)
    values = ShiftAverage(Scorer(tiny_model, device="cpu"), 3).run(batch)
    np.testing.assert_allclose(values["probability"], want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(values["logit"], np.log(want / (1 - want)), atol=1e-4, rtol=0)
    # moving a film brings black in from the border: the mean is not the film's own probability
    assert np.abs(values["probability"] - expected_probability(batch)).max() > 1e-3
    assert ShiftAverage(Scorer(tiny_model, device="cpu"), 3)(batch) == pytest.approx(want, abs=1e-6)


def test_the_ratio_masks_and_map_stay_the_films_own(tmp_path):
    model = maps_model(tmp_path / "maps.onnx", ctr_follows_brightness=True)
    batch = films()
    plain = Scorer(model, device="cpu").run(batch, ("ctr", "masks", "cam"))
    averaged = ShiftAverage(Scorer(model, device="cpu"), 2).run(batch, ("ctr", "masks", "cam"))
    for name in ("ctr", "masks", "cam"):
        np.testing.assert_array_equal(averaged[name], plain[name])
    assert not np.allclose(averaged["probability"], plain["probability"], atol=1e-4)


@pytest.mark.parametrize("pixels", [0, 16, -1, True, 2.5])
def test_a_move_of_a_quarter_of_the_film_or_more_is_refused(tiny_model, pixels):
    with pytest.raises(ValueError, match=r"give 1 to 15 for this model \(its input is 64x64\)"):
        ShiftAverage(Scorer(tiny_model, device="cpu"), pixels)


def test_the_wrapped_scorer_answers_the_rest(tiny_model):
    scorer = Scorer(tiny_model, device="cpu")
    averaged = ShiftAverage(scorer, 15)
    assert (averaged.threshold, averaged.model_sha256, averaged.card) == (scorer.threshold, scorer.model_sha256,
                                                                          scorer.card)
    assert averaged.shift_average_facts == {"pixels": 15, "drawings": 9, "input_size": 64, "averaged": AVERAGED}
    assert averaged.for_batch(8).pixels == 15


def test_a_journal_knows_whether_the_run_averaged():
    base = dict(folder="/x", model_sha256="ab", threshold=0.5, device="cpu")
    assert "shift_average" not in run_identity(**base)  # journals written before the option still match
    assert run_identity(**base, shift_average=4)["shift_average"] == 4
    assert run_identity(**base, shift_average=4) != run_identity(**base, shift_average=2)


class _RatioDecider:
    """A model that decides by its ratio: no probability (NaN) for a drawing whose top-left pixel went black."""

    class card:  # noqa: N801 (the attribute ShiftAverage reads)
        class preprocess:  # noqa: N801
            size = 64

    def run(self, batch, extras=()):
        batch = np.asarray(batch)
        p = np.where(batch[:, 0, 0, 0] > 0, batch[:, 0].mean(axis=(1, 2)) / 255.0, np.nan)
        return {"logit": p.astype(np.float32), "probability": p.astype(np.float32)}


def test_the_mean_is_over_the_drawings_the_model_could_score():
    batch = np.full((2, 1, 64, 64), 200, np.uint8)
    batch[1, 0, 0, 0] = 0  # the second film cannot be scored as given
    moved = [shifted(batch, dy, dx)[0] for dy, dx in shift_grid(2)]
    # five of the nine moves bring black into the top-left corner; the four others (and the film) can be scored
    scored = [m[0, 0].mean() / 255.0 for m in moved if m[0, 0, 0, 0] > 0]
    assert len(scored) == 4
    logit, prob = ShiftAverage(_RatioDecider(), 2).predict(batch)
    assert prob[0] == pytest.approx(np.mean(scored), abs=1e-6)
    assert np.isnan(prob[1]) and np.isnan(logit[1])  # the moves never make a probability for a film that has none
    assert logit[0] == pytest.approx(np.log(prob[0] / (1 - prob[0])), abs=1e-4)
