"""The run plots a user shows: read back from the matplotlib figure objects (limits, ticks, titles, legends)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cxr.runtime.metrics import summarize
from cxr.train.plots import RocData, history_figures, roc_band, roc_figure, summary_figure, write_run_plots

pytest.importorskip("matplotlib")


def _history(aurocs=(0.71, 0.83, 0.86, 0.85, 0.84)):
    return [{"epoch": i + 1, "lr": 1e-5 if i < 3 else 1e-6, "train_loss": 0.7 - 0.1 * i, "val_loss": 0.6 - 0.05 * i,
             "val_auroc": a, "is_best": int(i == 2)} for i, a in enumerate(aurocs)]


def _roc(n=120, seed=3, split="test"):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(np.int64)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
    return RocData(split, y, p, threshold=0.5, n_boot=200, seed=0)


def _ticks_in_view(ax):
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


@pytest.mark.parametrize("name", ["loss.png", "val_auroc.png", "lr.png"])
def test_epoch_ticks_are_whole_numbers_and_titles_name_the_run(name):
    fig = history_figures(_history(), "run-42")[name]
    ax = fig.axes[0]
    ticks = _ticks_in_view(ax)
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_title().startswith("run-42: ")
    assert ax.get_xlabel() == "epoch"
    assert any("best epoch 3" == t.get_text() for t in ax.get_legend().get_texts())


def test_auroc_axis_runs_from_chance_to_one_with_the_chance_line():
    ax = history_figures(_history(), "r")["val_auroc.png"].axes[0]
    assert ax.get_ylim() == pytest.approx((0.5, 1.0))
    flat = [line for line in ax.get_lines() if np.allclose(line.get_ydata(), 0.5)]
    assert flat, "no chance line at AUROC 0.5"
    assert "chance (0.5)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_auroc_axis_extends_below_chance_only_when_an_epoch_fell_there():
    ax = history_figures(_history((0.42, 0.61, 0.7)), "r")["val_auroc.png"].axes[0]
    assert ax.get_ylim() == pytest.approx((0.4, 1.0))


def test_roc_legend_carries_the_same_interval_as_metrics_json():
    roc = _roc()
    ax = roc_figure(roc, "run-7").axes[0]
    reported = summarize(roc.labels, roc.probabilities, roc.threshold, n_boot=roc.n_boot, seed=roc.seed)
    lo, hi = reported["auroc_ci95"]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"AUROC {reported['auroc']:.3f} (95% CI {lo:.3f}-{hi:.3f})" in texts
    assert "95% bootstrap band" in texts
    assert ax.get_title() == "run-7: test ROC (n=120, 40 positive)"
    assert ax.get_xlim() == pytest.approx((0, 1)) and ax.get_ylim() == pytest.approx((0, 1))


def test_roc_band_surrounds_the_curve():
    roc = _roc()
    grid, lo, hi = roc_band(roc)
    from cxr.runtime.metrics import roc_curve

    fpr, tpr, _ = roc_curve(roc.labels, roc.probabilities)
    curve = np.interp(grid, fpr, tpr)
    assert np.all(lo <= hi) and np.all(lo <= curve + 1e-9) and np.all(curve <= hi + 1e-9)
    assert (hi - lo)[1:-1].max() > 0.05  # 120 images: a band of real width, not a line


def test_summary_figure_has_loss_auroc_lr_and_roc_panels():
    fig = summary_figure(_history(), _roc(), "run-9")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["run-9: loss", "run-9: validation AUROC", "run-9: learning rate"]
    assert titles[3].startswith("run-9: test ROC")
    assert fig.get_suptitle() == "run run-9"


@pytest.mark.parametrize("test_split, roc_files, summary_split", [
    ("both", {"test_roc.png"}, "test"),
    ("absent", set(), "validation"),
    ("one class", set(), "validation"),
])
def test_write_run_plots_writes_the_files_a_run_promises(tmp_path, monkeypatch, test_split, roc_files,
                                                        summary_split):
    import cxr.train.plots as plots

    shown = []
    real = plots.summary_figure

    def spy(history, roc, run):
        shown.append(roc and roc.split)
        return real(history, roc, run)

    monkeypatch.setattr(plots, "summary_figure", spy)
    val = _roc(split="validation")
    test = {"both": _roc(), "absent": None,
            "one class": SimpleNamespace(labels=np.ones(5, np.int64), probabilities=np.full(5, 0.7))}[test_split]
    run_dir = tmp_path / "myrun"
    run_dir.mkdir()
    paths = write_run_plots(run_dir, _history(), {"test": test, "validation": val}, 0.5, n_boot=50)
    names = {p.name for p in paths}
    assert names == {"loss.png", "val_auroc.png", "lr.png", "summary.png"} | roc_files
    for p in paths:
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shown == [summary_split]


def test_summary_without_any_usable_roc_says_why(tmp_path):
    fig = summary_figure(_history(), None, "r")
    assert "no ROC" in " ".join(t.get_text() for t in fig.axes[3].texts)
