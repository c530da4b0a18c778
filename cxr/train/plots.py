"""PNG plots of a run: loss curves, validation AUROC, learning rate, and the test ROC curve (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """loss.png (train and validation loss), val_auroc.png, lr.png; the best epoch marked on each."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    epochs = [r["epoch"] for r in history]
    best = [r["epoch"] for r in history if r.get("is_best")]
    paths = []
    for name, series, ylabel, log_y in (
        ("loss.png", (("train_loss", "train"), ("val_loss", "validation")), "BCE loss", False),
        ("val_auroc.png", (("val_auroc", "validation AUROC"),), "AUROC", False),
        ("lr.png", (("lr", "learning rate"),), "learning rate", True),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key, label in series:
            ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
        if best:
            ax.axvline(best[-1], color="grey", linestyle="--", label=f"best epoch {best[-1]}")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def plot_roc(labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path, title: str) -> Path:
    """ROC curve with the operating point at `threshold` marked."""
    from cxr.runtime.metrics import binary_metrics, roc_auc, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, probabilities)
    at = binary_metrics(labels, probabilities, threshold)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(fpr, tpr, label=f"AUROC {roc_auc(labels, probabilities):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.scatter([1 - at["specificity"]], [at["sensitivity"]], color="red", zorder=3,
               label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
