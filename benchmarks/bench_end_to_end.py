"""End to end: score_folder on 64 PNGs of 1024x1024 against model-only time for the same images at the same batch
size; and peak memory (max RSS) of the cxr-score command on folders of 50 to 10,000 files.

The memory runs start cxr-score under a small launcher process that reports its child's peak RSS (see LAUNCHER).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import write_png_folder
from cxr.runtime.imaging import read_image
from cxr.runtime.preprocess import preprocess_batch
from cxr.runtime.scoring import score_folder

N_IMAGES = 64
BATCH = 8  # cxr-score's default batch size
WORKERS = 2


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, chest_1024) -> Path:
    return write_png_folder(tmp_path_factory.mktemp("e2e") / "pngs", chest_1024[0], N_IMAGES)


def test_score_folder(benchmark, annotate, scorers, png_folder):
    scorer = scorers["fp32"]
    benchmark.group = "end-to-end"
    annotate(providers=scorer.providers, images=N_IMAGES, batch=BATCH, workers=WORKERS, mode="score_folder",
             pixels="1024x1024 8-bit PNG")
    rows = benchmark.pedantic(lambda: list(score_folder(png_folder, scorer, batch_size=BATCH, workers=WORKERS)),
                              rounds=3, warmup_rounds=1)
    assert len(rows) == N_IMAGES and all(r.ok for r in rows)


def test_model_only(benchmark, annotate, scorers, png_folder):
    scorer = scorers["fp32"]
    images = preprocess_batch([read_image(p) for p in sorted(png_folder.glob("*.png"))], scorer.card.preprocess)

    def run():
        return [scorer.predict(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]

    benchmark.group = "end-to-end"
    annotate(providers=scorer.providers, images=N_IMAGES, batch=BATCH, mode="model_only",
             pixels="preprocessed uint8 224x224 in memory")
    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert sum(len(p) for _, p in out) == N_IMAGES


@pytest.fixture(scope="module")
def tiny_224(tmp_path_factory) -> Path:
    """The tests' mean-brightness model at S=224: same reading and preprocessing as DenseNet, almost no model."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.onnx_fixtures import mean_brightness_model

    return mean_brightness_model(tmp_path_factory.mktemp("tiny") / "tiny224.onnx", size=224)


# A small launcher runs cxr-score and reports RUSAGE_CHILDREN. Measuring the child straight from pytest is wrong:
# subprocess uses vfork, and at exec Linux folds the parent's RSS high-water mark into the child's ru_maxrss, so every
# run would report pytest's own peak. The launcher's peak (about 10 MB) is the most that can leak in this way.
LAUNCHER = """import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_of_cxr_score(folder: Path, model: Path, out: Path) -> tuple[int, float]:
    """(exit code, peak RSS in MB) of `cxr-score folder --out out --model model --device cpu --quiet`."""
    cmd = [sys.executable, "-c", "from cxr.cli.score import main; main()", str(folder), "--out", str(out),
           "--model", str(model), "--device", "cpu", "--quiet", "--batch-size", str(BATCH), "--workers", str(WORKERS)]
    with open(out.with_suffix(".stderr"), "w") as err:
        done = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], stdout=subprocess.PIPE, stderr=err, text=True,
                              check=True)
    rc, kib = done.stdout.split()[-2:]
    return int(rc), int(kib) / 1024.0  # Linux reports KiB


@pytest.mark.parametrize("model_name, n_files", [("densenet121-fp32", 50), ("densenet121-fp32", 200),
                                                 ("mean-brightness", 1000), ("mean-brightness", 10000)])
def test_cxr_score_peak_memory(benchmark, annotate, tmp_path_factory, chest_1024, densenet, tiny_224,
                               model_name, n_files):
    model = densenet["fp32"] if model_name.startswith("densenet") else tiny_224
    small = cv2.resize(chest_1024[0], (256, 256), interpolation=cv2.INTER_AREA)
    work = tmp_path_factory.mktemp(f"mem{n_files}")
    folder = write_png_folder(work / "pngs", small, n_files, distinct=100)
    result = {}

    def run():
        result["rc"], result["rss"] = peak_rss_of_cxr_score(folder, model, work / "results.csv")

    benchmark.group = "memory"
    benchmark.pedantic(run, rounds=1, iterations=1)
    annotate(providers=["CPUExecutionProvider"], threads="onnxruntime default", images=n_files, files=n_files,
             model=model_name, peak_rss_mb=round(result["rss"], 1), batch=BATCH, workers=WORKERS,
             pixels="256x256 8-bit PNG (100 distinct files, the rest hard links)")
    assert result["rc"] == 0, (work / "results.stderr").read_text()
    assert sum(1 for _ in open(work / "results.csv")) == n_files + 1
