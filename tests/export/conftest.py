"""Fixtures for export tests: a tiny trained-looking cxr-train run directory (densenet_tiny, S=64).

The run has best.pt saved with save_checkpoint, BatchNorm running statistics moved away from their defaults (so eval
and training mode give different outputs), and a splits.csv whose validation images are synthetic chest phantoms
written with cv2 (a bright thorax, dark lungs, a heart whose width sets the label).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

SIZE = 64
THRESHOLD = {"value": 0.42, "method": "youden_j", "detail": "Youden's J on the validation split (n=12)"}


def phantom(rng: np.random.Generator, ratio: float, shape=(120, 100)) -> np.ndarray:
    """A grey chest-like image whose heart width / thorax width is `ratio`."""
    h, w = shape
    img = np.full(shape, 40, np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (int(w * 0.42), int(h * 0.42)), 0, 0, 360, 170, -1)
    for side in (-1, 1):
        cv2.ellipse(img, (w // 2 + side * int(w * 0.2), int(h * 0.45)), (int(w * 0.15), int(h * 0.3)), 0, 0, 360,
                    70, -1)
    cv2.ellipse(img, (w // 2 + 4, int(h * 0.62)), (int(w * 0.84 * ratio / 2), int(h * 0.14)), 0, 0, 360, 200, -1)
    noise = rng.normal(0, 6, shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_images(directory: Path, n: int, seed: int, ext: str = ".png") -> list[tuple[Path, int]]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ratio = 0.38 + 0.24 * (i % 6) / 5  # 0.38..0.62, both labels
        path = directory / f"img{i:02d}{ext}"
        cv2.imwrite(str(path), phantom(rng, ratio, shape=(110 + 7 * (i % 3), 96 + 5 * (i % 4))))
        out.append((path, int(ratio > 0.5)))
    return out


def tiny_model(seed: int = 0, arch: str = "densenet_tiny"):
    """CardiomegalyNet with random weights and perturbed BN running statistics (eval != train detectably)."""
    import torch

    from cxr.train.model import CardiomegalyNet

    torch.manual_seed(seed)
    model = CardiomegalyNet(arch)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
        model.head[1].bias.fill_(0.3)
    return model.eval()


def write_run(run_dir: Path, model=None, arch: str = "densenet_tiny", n_val: int = 12, seed: int = 0) -> Path:
    """A cxr-train-like run directory: best.pt + splits.csv + images/ (absolute paths in splits.csv)."""
    from cxr.train.checkpoints import save_checkpoint

    run_dir.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else tiny_model(seed)
    val = write_images(run_dir / "images" / "val", n_val, seed=seed + 1)
    train = write_images(run_dir / "images" / "train", 4, seed=seed + 2)
    with open(run_dir / "splits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "split", "source"])
        for split, items in (("train", train), ("val", val)):
            for i, (path, label) in enumerate(items):
                writer.writerow([str(path), label, f"{split}-p{i}", split, "phantom"])
    payload = {
        "kind": "best",
        "model": {"arch": arch, "dropout": 0.2},
        "model_state": model.state_dict(),
        "preprocess": {"size": SIZE},
        "normalization": {"mean": 0.4920, "std": 0.2943},
        "threshold": dict(THRESHOLD),
        "metrics": {"val": {"auroc": 0.81, "auprc": math.nan, "n": n_val}},
        "config": {"arch": arch, "lr": 1e-4, "batch_size": 8, "size": SIZE, "betas": (0.9, 0.999)},
        "data": {"kind": "phantom", "source": "tests", "n_train": 4, "n_val": n_val, "n_test": 0,
                 "unreadable": [{"path": "/site/images/00000001_000.png", "code": "truncated"}]},
        "epoch": 3,
        "versions": {"cxr": "0.1.0"},
    }
    save_checkpoint(payload, run_dir / "best.pt")
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported once at opset 17 (shared by read-only tests)."""
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_onnx(tiny_run, out, ExportOptions(opset=17))
