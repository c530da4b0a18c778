"""PNG plots of a run: loss curves, validation AUROC, learning rate, the ROC curve with its bootstrap band, and one
summary figure of all four (matplotlib, Agg; figures built without pyplot, so no global state and no window).

Each `*_figure` function returns a `matplotlib.figure.Figure` (what the tests read back); `plot_history`,
`plot_roc` and `plot_summary` write them as PNG files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

AUROC_FLOOR = 0.5  # chance: the AUROC axis starts here unless an epoch fell below it
FPR_GRID = np.linspace(0.0, 1.0, 101)
BAND_RESAMPLES = 200  # enough for a drawn band; 1,000 took 7.6 s against 1.1 s on a 10,000-image split


@dataclass(frozen=True)
class RocData:
    """What a ROC panel shows: the curve, its 95% bootstrap band (stratified, at most BAND_RESAMPLES resamples), the
    AUROC interval from `n_boot` resamples (the same call and seed as metrics.json, so the same numbers) and the
    operating point at the run's threshold."""

    split: str
    labels: np.ndarray
    probabilities: np.ndarray
    threshold: float
    n_boot: int = 1000
    seed: int = 0

    @cached_property
    def stats(self) -> dict[str, Any]:
        """Curve, AUROC with its interval, band and operating point, computed once for every figure that shows them."""
        from cxr.runtime.metrics import binary_metrics, bootstrap_auroc_ci, roc_auc, roc_curve

        fpr, tpr, _ = roc_curve(self.labels, self.probabilities)
        return {"fpr": fpr, "tpr": tpr, "auroc": roc_auc(self.labels, self.probabilities),
                "ci": bootstrap_auroc_ci(self.labels, self.probabilities, n_boot=self.n_boot, seed=self.seed),
                "band": roc_band(self), "at": binary_metrics(self.labels, self.probabilities, self.threshold)}


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6, 4)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _epoch_axis(ax, history: Sequence[Mapping[str, Any]]) -> None:
    """Whole-number epoch ticks (matplotlib would label 1.5, 2.5 ... on a short run), the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    best = [r["epoch"] for r in history if r.get("is_best")]
    if best:
        ax.axvline(best[-1], color="grey", linestyle="--", label=f"best epoch {best[-1]}")


def _series(ax, history, keys: Sequence[tuple[str, str]]) -> None:
    epochs = [r["epoch"] for r in history]
    for key, label in keys:
        ax.plot(epochs, [float(r[key]) for r in history], marker="o", label=label)


def _loss_panel(ax, history, run: str) -> None:
    _series(ax, history, (("train_loss", "train"), ("val_loss", "validation")))
    _epoch_axis(ax, history)
    ax.set_ylabel("BCE loss")
    ax.set_title(f"{run}: loss")
    ax.legend()


def _auroc_panel(ax, history, run: str) -> None:
    """AUROC from chance (0.5, drawn as a line) to 1; the axis goes lower only if an epoch did."""
    _series(ax, history, (("val_auroc", "validation AUROC"),))
    _epoch_axis(ax, history)
    values = np.array([float(r["val_auroc"]) for r in history], np.float64)
    low = np.nanmin(values) if np.isfinite(values).any() else AUROC_FLOOR
    bottom = AUROC_FLOOR if low >= AUROC_FLOOR else max(0.0, np.floor(low * 10) / 10)
    # at the axis floor the line would hide under the frame: drawn over it, in colour, unclipped
    ax.axhline(AUROC_FLOOR, color="firebrick", linestyle="--", linewidth=1.5, zorder=5, clip_on=False,
               label="chance (0.5)")
    ax.set_ylim(bottom, 1.0)
    ax.set_ylabel("AUROC")
    ax.set_title(f"{run}: validation AUROC")
    ax.legend(loc="lower right")


def _lr_panel(ax, history, run: str) -> None:
    _series(ax, history, (("lr", "learning rate"),))
    _epoch_axis(ax, history)
    ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{run}: learning rate")
    ax.legend()


def roc_band(roc: RocData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR grid, lower, upper): the 2.5th and 97.5th percentile sensitivity at each false-positive rate over
    stratified bootstrap resamples (positives and negatives drawn separately)."""
    from cxr.runtime.metrics import roc_curve

    y = np.asarray(roc.labels).astype(np.int64)
    p = np.asarray(roc.probabilities, np.float64)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(roc.seed)
    n_boot = min(roc.n_boot, BAND_RESAMPLES)
    tprs = np.empty((n_boot, FPR_GRID.size), np.float64)
    for i in range(n_boot):
        take = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        fpr, tpr, _ = roc_curve(y[take], p[take])
        tprs[i] = np.interp(FPR_GRID, fpr, tpr)
    lo, hi = np.quantile(tprs, [0.025, 0.975], axis=0)
    return FPR_GRID, lo, hi


def _roc_panel(ax, roc: RocData, run: str) -> None:
    st = roc.stats
    fpr, tpr, auc, (lo_auc, hi_auc), (grid, lo, hi), at = (st[k] for k in ("fpr", "tpr", "auroc", "ci", "band", "at"))
    ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.2, label="95% bootstrap band")
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUROC {auc:.3f} (95% CI {lo_auc:.3f}-{hi_auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.scatter([1 - at["specificity"]], [at["sensitivity"]], color="red", zorder=3,
               label=f"threshold {roc.threshold:.3f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    n_pos = int(np.sum(np.asarray(roc.labels) == 1))
    ax.set_title(f"{run}: {roc.split} ROC (n={len(roc.labels)}, {n_pos} positive)")
    ax.legend(loc="lower right", fontsize="small")


def history_figures(history: Sequence[Mapping[str, Any]], run: str) -> dict[str, Any]:
    """{file name: Figure} for loss.png, val_auroc.png and lr.png."""
    out = {}
    for name, panel in (("loss.png", _loss_panel), ("val_auroc.png", _auroc_panel), ("lr.png", _lr_panel)):
        fig, (ax,) = _figure()
        panel(ax, history, run)
        out[name] = fig
    return out


def roc_figure(roc: RocData, run: str):
    fig, (ax,) = _figure(size=(5.5, 5.5))
    _roc_panel(ax, roc, run)
    return fig


def summary_figure(history: Sequence[Mapping[str, Any]], roc: RocData | None, run: str):
    """One page per run: loss, validation AUROC, learning rate and the ROC (an empty panel that says why if no
    split had both classes)."""
    fig, axes = _figure(2, 2, size=(11, 9))
    _loss_panel(axes[0], history, run)
    _auroc_panel(axes[1], history, run)
    _lr_panel(axes[2], history, run)
    if roc is not None:
        _roc_panel(axes[3], roc, run)
    else:
        axes[3].axis("off")
        axes[3].text(0.5, 0.5, "no ROC: no labelled split with both classes", ha="center", va="center")
    fig.suptitle(f"run {run}")
    return fig


def plot_history(history: Sequence[Mapping[str, Any]], out_dir: Path, run: str) -> list[Path]:
    """loss.png, val_auroc.png and lr.png in `out_dir`; the best epoch marked on each."""
    return [_save(fig, Path(out_dir) / name) for name, fig in history_figures(history, run).items()]


def plot_roc(roc: RocData, path: Path, run: str) -> Path:
    """The ROC curve with its bootstrap band, the AUROC interval in the legend and the operating point marked."""
    return _save(roc_figure(roc, run), path)


def plot_summary(history: Sequence[Mapping[str, Any]], roc: RocData | None, path: Path, run: str) -> Path:
    return _save(summary_figure(history, roc, run), path)


def write_run_plots(run_dir: Path, history: Sequence[Mapping[str, Any]], evaluations: Mapping[str, Any],
                    threshold: float, *, n_boot: int = 1000, seed: int = 0) -> list[Path]:
    """Every plot cxr-train writes: loss/val_auroc/lr.png, test_roc.png (when the test split has both classes) and
    summary.png, whose ROC is the test split's, else validation's. `evaluations` maps split name to an evaluation
    with .labels and .probabilities (or None); the band and interval use metrics.json's bootstrap settings."""
    run_dir = Path(run_dir)
    run = run_dir.name
    paths = plot_history(history, run_dir, run)
    rocs = {split: RocData(split, ev.labels, ev.probabilities, threshold, n_boot, seed)
            for split, ev in evaluations.items() if ev is not None and _both_classes(ev.labels)}
    if "test" in rocs:
        paths.append(plot_roc(rocs["test"], run_dir / "test_roc.png", run))
    shown = rocs.get("test") or rocs.get("validation")
    paths.append(plot_summary(history, shown, run_dir / "summary.png", run))
    return paths


def _both_classes(labels) -> bool:
    y = np.asarray(labels)
    return bool(y.size and (y == 1).any() and (y == 0).any())
