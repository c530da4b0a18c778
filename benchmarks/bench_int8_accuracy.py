"""int8 against fp32 on a trained model: `make demo`'s DenseNet-121 (128 px, phantom cohort).

A random-weight model says nothing about the AUROC an int8 copy loses, so this benchmark takes the demo's finished
training run (scripts/bench.py runs `make demo`'s script first; it reuses whatever is already done), exports it again
here with `export_onnx(..., ExportOptions(quantize="int8", force=True))` (the code `cxr-export --quantize int8`
runs; force so that a refused copy is still measured), and scores the demo's held-out cohort (300 images never seen
in training, calibration or threshold choice) with both files. Timed: int8 over the cohort at batch 8; the fp32 file
is timed between rounds (pedantic's untimed setup), so the speed-up is paired round by round.

Recorded: AUROC of both, the change with a paired bootstrap 95% interval, max and mean |probability change|, and
how many decisions flip at the card's threshold.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, THREADS, settle

TRAINED = Path(os.environ.get("CXR_BENCH_TRAINED", REPO / "demo_out"))
BATCH = 8


def _predict(scorer, images: np.ndarray) -> np.ndarray:
    return np.concatenate([scorer.predict(images[i:i + BATCH])[1] for i in range(0, len(images), BATCH)])


@pytest.fixture(scope="module")
def trained_int8(tmp_path_factory) -> dict:
    run_dir, holdout = TRAINED / "run", TRAINED / "phantom_holdout"
    if not (run_dir / "best.pt").is_file() or not (holdout / "labels.csv").is_file():
        pytest.skip(f"no trained demo run under {TRAINED} (run `make demo` first; `make bench` does)")
    from cxr.export.artifacts import side_path
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions
    from cxr.export.samples import images_from_dir
    from cxr.runtime.scoring import Scorer

    out = tmp_path_factory.mktemp("int8acc") / "model.onnx"
    report = export_onnx(run_dir, out, ExportOptions(opset=17, quantize="int8", force=True))
    variant = report.variants["int8"]
    scorers = {"fp32": Scorer(out, device="cpu", threads=THREADS),
               "int8": Scorer(side_path(out, "int8.onnx"), device="cpu", threads=THREADS)}
    cohort = images_from_dir(holdout, scorers["fp32"].card.preprocess)
    return {"scorers": scorers, "cohort": cohort, "variant": variant,
            "paths": {"fp32": out, "int8": side_path(out, "int8.onnx")}}


def test_int8_vs_fp32_trained(benchmark, annotate, trained_int8):
    from cxr.runtime.metrics import bootstrap_auroc_change_ci, roc_auc

    scorers, cohort, variant = trained_int8["scorers"], trained_int8["cohort"], trained_int8["variant"]
    idx, y = cohort.labelled()
    images = cohort.images[idx]
    fp32_times: list[float] = []

    def time_fp32():
        settle()
        start = time.perf_counter()
        _predict(scorers["fp32"], images)
        fp32_times.append(time.perf_counter() - start)
        settle()

    benchmark.group = "int8-trained"
    p_int8 = benchmark.pedantic(_predict, args=(scorers["int8"], images), setup=time_fp32, rounds=3,
                                warmup_rounds=1)
    p_fp32 = _predict(scorers["fp32"], images)
    a32, a8 = roc_auc(y, p_fp32), roc_auc(y, p_int8)
    lo, hi = bootstrap_auroc_change_ci(y, p_fp32, p_int8, n_boot=1000, seed=0)
    threshold = scorers["fp32"].card.threshold.value
    diff = np.abs(p_int8 - p_fp32)
    annotate(providers=scorers["int8"].providers, images=int(len(y)), batch=BATCH, engine="onnxruntime",
             precision="int8", model="make demo DenseNet-121 (trained)", size=int(images.shape[-1]),
             cohort=str(cohort.source), n_positive=int(y.sum()), auroc_fp32=a32, auroc_int8=a8,
             auroc_change=a8 - a32, auroc_change_ci95=[lo, hi], max_abs_prob_diff=float(diff.max()),
             mean_abs_prob_diff=float(diff.mean()), threshold=threshold,
             decisions_flipped=int(np.sum((p_int8 >= threshold) != (p_fp32 >= threshold))),
             fp32_round_s=fp32_times[1:],  # the first setup call precedes the warm-up round
             kept_float=variant["settings"].get("kept_float"),
             export_guard={"written": variant["written"], "reason": variant.get("reason"),
                           "val_auroc_change": variant.get("auroc_change")},
             model_bytes={k: p.stat().st_size for k, p in trained_int8["paths"].items()})
    assert p_int8.shape == p_fp32.shape == (len(y),) and np.isfinite(p_int8).all()
