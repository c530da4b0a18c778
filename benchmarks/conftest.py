"""Shared fixtures of the latency benchmarks: machine facts, a realistic chest image, DenseNet-121 ONNX models.

The models are a DenseNet-121 with random weights (fixed seed) at 224, saved as a cxr checkpoint and exported with
`cxr.export.onnx_export.export_onnx` (fp32, and int8 with calibration on 16 phantom images) into benchmarks/.cache,
rebuilt only when the recipe below changes. Latency does not depend on the weights' values.
Run through scripts/bench.py (it passes `-o python_files=bench_*.py`); not collected by the default test run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime.bench import cpu_info

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CXR_BENCH_CACHE", REPO / "benchmarks" / ".cache"))
SHARED_DATA = REPO.parent / "shared" / "data"
SEED = 0
SIZE = 224
MODEL_RECIPE = {"arch": "densenet121", "seed": SEED, "size": SIZE, "opset": 17, "calibration": "phantom n=16 seed=0",
                "recipe_version": 2}  # 2: int8 keeps the stem Conv and the classifier float

CPU = cpu_info()
THREADS = int(os.environ.get("CXR_BENCH_THREADS") or CPU["physical_cores"] or CPU["logical_cores"] or 1)
"""Intra-op threads for ONNX Runtime and PyTorch alike (default: one per physical core)."""


ENGINE_PAUSE_S = 0.1
"""Pause between two different engines' calls in rounds taken in turn. ONNX Runtime's and PyTorch's worker threads
spin for a while after a call; on 2 cores they take the cores from the next engine's call. Measured here at batch 1:
back to back, ONNX Runtime fp32 took 92 ms and PyTorch 187 ms; with a 50 ms pause 52 and 125; alone 48 and 118."""


def settle() -> None:
    """Let the previous engine's worker threads stop spinning before the next engine is timed (untimed)."""
    time.sleep(ENGINE_PAUSE_S)


def machine_extra(providers: list[str] | str = "n/a", threads: int | str = THREADS) -> dict:
    """The facts every benchmark records in extra_info: providers, intra-op threads, CPU model, cores, ISA flags."""
    return {"providers": providers, "threads": threads, "cpu_model": CPU["model"],
            "cores_logical": CPU["logical_cores"], "cores_physical": CPU["physical_cores"],
            "isa": {k: v for k, v in CPU["flags"].items()}, "max_mhz": CPU["max_mhz"],
            "clock_source": CPU["clock_source"]}


@pytest.fixture()
def annotate(benchmark):
    """annotate(images=N, providers=[...], **more): machine facts plus what this benchmark measured."""

    def record(providers: list[str] | str = "n/a", threads: int | str = THREADS, **extra) -> None:
        benchmark.extra_info.update(machine_extra(providers, threads))
        benchmark.extra_info.update(extra)

    return record


def _real_chest() -> np.ndarray | None:
    folder = SHARED_DATA / "ctr_wingspan_jsrt" / "jsrt" / "png"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        return None
    image = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    return image if image is not None and image.size else None


@pytest.fixture(scope="session")
def chest_1024() -> tuple[np.ndarray, str]:
    """(uint8 [1024, 1024], where it came from): a real JSRT radiograph resized up, else a synthetic gradient."""
    real = _real_chest()
    if real is not None:
        return cv2.resize(real, (1024, 1024), interpolation=cv2.INTER_CUBIC), "real JSRT radiograph resized to 1024"
    yy, xx = np.mgrid[0:1024, 0:1024].astype(np.float32) / 1023.0
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2)) + \
        np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2))
    noise = np.random.default_rng(SEED).normal(0, 6, (1024, 1024))
    image = 200 - 120 * lungs + 30 * yy + noise
    return image.clip(0, 255).astype(np.uint8), "synthetic gradient with two dark lung fields (no real data found)"


def write_png_folder(folder: Path, image: np.ndarray, n: int, distinct: int | None = None) -> Path:
    """n PNGs of `image` shifted a little each (so files differ); beyond `distinct` files, byte copies of earlier ones
    (copies, not hard links: cxr-score lists a hard-linked file once and calls the others a walk problem, exit 3)."""
    folder.mkdir(parents=True, exist_ok=True)
    distinct = n if distinct is None else min(distinct, n)
    for i in range(n):
        path = folder / f"img_{i:05d}.png"
        if i < distinct:
            cv2.imwrite(str(path), np.roll(image, (i * 7) % 61, axis=1))
        else:
            shutil.copyfile(folder / f"img_{i % distinct:05d}.png", path)
    return folder


def _stamp_ok(stamp: Path, files: list[Path]) -> bool:
    try:
        return json.loads(stamp.read_text()) == MODEL_RECIPE and all(f.is_file() for f in files)
    except (OSError, ValueError):
        return False


def _build_checkpoint(path: Path) -> Path:
    import torch

    from cxr.runtime.preprocess import Normalization, PreprocessConfig
    from cxr.train.checkpoints import save_checkpoint
    from cxr.train.model import CardiomegalyNet

    torch.manual_seed(SEED)
    model = CardiomegalyNet("densenet121").eval()
    return save_checkpoint({
        "kind": "best", "model": {"arch": "densenet121", "dropout": 0.2}, "model_state": model.state_dict(),
        "preprocess": PreprocessConfig(size=SIZE).to_dict(), "normalization": Normalization().to_dict(),
        "threshold": {"value": 0.5, "method": "fixed", "detail": "benchmark model: random weights"},
        "metrics": {}, "config": {"note": "random init, seed 0: for latency benchmarks only"},
        "data": {"kind": "none", "source": "benchmarks/conftest.py"}, "epoch": 0,
        "versions": {"torch": str(torch.__version__)},
    }, path)


@pytest.fixture(scope="session")
def densenet() -> dict:
    """{'checkpoint', 'fp32', 'int8': Path, 'variants': the export's int8 report}; built once into CACHE."""
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": CACHE / "densenet121_random.pt", "fp32": CACHE / "model.onnx",
             "int8": CACHE / "model.int8.onnx"}
    stamp, info = CACHE / "model.recipe.json", CACHE / "model.variants.json"
    if _stamp_ok(stamp, [*paths.values(), info]):
        return {**paths, "variants": json.loads(info.read_text())}
    stamp.unlink(missing_ok=True)
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions
    from cxr.train.phantom import make_phantom

    samples = CACHE / "samples"
    make_phantom(samples, n=16, seed=SEED, size=256)
    _build_checkpoint(paths["checkpoint"])
    # force=True: random weights have a meaningless AUROC, so the int8 AUROC check must not stop the benchmark file.
    report = export_onnx(paths["checkpoint"], paths["fp32"], ExportOptions(opset=17, sample_dir=samples, validate=True,
                         quantize="int8", calibration_dir=samples, labels=samples / "labels.csv", max_samples=16,
                         force=True))
    variants = {k: {kk: (str(vv) if isinstance(vv, Path) else vv) for kk, vv in v.items()}
                for k, v in report.variants.items()}
    if not variants.get("int8", {}).get("path") or not paths["int8"].is_file():
        raise RuntimeError("export_onnx wrote no int8 model: "
                           f"{variants.get('int8', {}).get('reason', 'no reason given')}")
    variants["fp32"] = {"path": str(paths["fp32"]), "size_bytes": paths["fp32"].stat().st_size}
    info.write_text(json.dumps(variants, indent=2, default=str) + "\n")
    stamp.write_text(json.dumps(MODEL_RECIPE))
    return {**paths, "variants": variants}


@pytest.fixture(scope="session")
def scorers(densenet) -> dict:
    """ONNX Runtime CPU sessions (the Scorer's) for 'fp32' and 'int8' at THREADS intra-op threads."""
    from cxr.runtime.scoring import Scorer

    return {name: Scorer(densenet[name], device="cpu", threads=THREADS) for name in ("fp32", "int8")}


@pytest.fixture(scope="session")
def torch_model(densenet):
    """The same weights in PyTorch eager mode (eval), with torch's intra-op threads set to THREADS."""
    import torch

    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(THREADS)
    return model_from_checkpoint(load_checkpoint(densenet["checkpoint"]))
