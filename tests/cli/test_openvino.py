"""The OpenVINO execution provider, end to end: cxr-score and cxr-bench run by the interpreter of a separate
environment with onnxruntime-openvino (it replaces the onnxruntime module, so it cannot live in the test run's own).

`make test` creates that environment (.venv-ov); elsewhere CXR_OV_PYTHON names its python. Each test skips, saying
why, when it is absent, when its onnxruntime offers no OpenVINO provider, or (bf16) when this CPU has no bf16.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime.precision import BF16_FLAGS, cpu_flags

REPO = Path(__file__).resolve().parents[2]
OV_PYTHON = Path(os.environ.get("CXR_OV_PYTHON") or REPO / ".venv-ov" / "bin" / "python")
BF16_TOLERANCE = 0.02
"""Largest |probability bf16 - fp32| accepted on the tiny DenseNet (bf16 keeps 8 bits of mantissa; measured here
5e-4 on it, 2e-3 on DenseNet-121 at 224)."""

_PROBE = ("import onnxruntime, cxr.runtime.precision as p; "
          "print('OpenVINOExecutionProvider' in onnxruntime.get_available_providers())")


@pytest.fixture(scope="module")
def ov_python() -> Path:
    if not OV_PYTHON.is_file():
        pytest.skip(f"no onnxruntime-openvino environment at {OV_PYTHON} (make test creates .venv-ov; or set "
                    "CXR_OV_PYTHON)")
    probe = subprocess.run([str(OV_PYTHON), "-c", _PROBE], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        pytest.skip(f"{OV_PYTHON} has no OpenVINO provider or no cxr: {(probe.stderr or probe.stdout)[-300:]}")
    return OV_PYTHON


def _cli(python: Path, command: str, *args) -> subprocess.CompletedProcess:
    code = f"import sys; from cxr.cli.{command} import main; sys.argv[0] = 'cxr-{command}'; main()"
    return subprocess.run([str(python), "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)


def _probs(out: Path) -> dict[str, float]:
    with open(out, newline="") as fh:
        return {r["path"]: float(r["prob_cardiomegaly"]) for r in csv.DictReader(fh) if r["status"] == "ok"}


def _manifest(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".manifest.json").read_text())


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """Grey images and the mean-brightness model (S=64)."""
    pytest.importorskip("onnx")
    from tests.onnx_fixtures import mean_brightness_model

    root = tmp_path_factory.mktemp("ov-grey")
    (root / "imgs").mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        cv2.imwrite(str(root / "imgs" / f"g{i}.png"),
                    np.clip(rng.normal(60 + 25 * i, 40, (70, 70)), 0, 255).astype(np.uint8))
    return root / "imgs", mean_brightness_model(root / "model.onnx", size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny trained-looking DenseNet run (tests/export/conftest.py) exported with its int8 copy, and a labels.csv
    for its 24 validation phantoms."""
    pytest.importorskip("torch")
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions
    from tests.export.conftest import write_run

    root = tmp_path_factory.mktemp("ov-trained")
    run = write_run(root / "run", n_val=24)
    model = root / "model.onnx"
    export_onnx(run, model, ExportOptions(opset=17, quantize="int8", max_auroc_drop=1.0))
    folder = run / "images" / "val"
    with open(run / "splits.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    (folder / "labels.csv").write_text("path,label\n" + "".join(f"{Path(r['path']).name},{r['label']}\n"
                                                                for r in rows))
    return folder, model


def test_openvino_fp32_matches_the_cpu_provider_and_the_manifest_says_what_ran(ov_python, grey, tmp_path):
    folder, model = grey
    ov, cpu = tmp_path / "ov.csv", tmp_path / "cpu.csv"
    ran = _cli(ov_python, "score", folder, "--out", ov, "--model", model, "--device", "openvino",
               "--precision", "fp32", "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert _cli(ov_python, "score", folder, "--out", cpu, "--model", model, "--device", "cpu",
                "--quiet").returncode == 0
    p_ov, p_cpu = _probs(ov), _probs(cpu)
    assert p_ov.keys() == p_cpu.keys() and len(p_ov) == 6
    assert max(abs(p_ov[k] - p_cpu[k]) for k in p_ov) <= 2e-6  # 6 decimals in the CSV
    m = _manifest(ov)
    assert m["device"]["providers"][0] == "OpenVINOExecutionProvider" and m["device"]["used"] == "openvino"
    assert m["precision"]["used"] == "fp32" and m["precision"]["openvino_inference_precision_hint"] == "f32"
    assert m["precision"]["onnxruntime"]["distribution"] == "onnxruntime-openvino"


def test_openvino_int8_without_its_file_is_exit_2(ov_python, grey, tmp_path):
    folder, model = grey
    out = tmp_path / "r.csv"
    ran = _cli(ov_python, "score", folder, "--out", out, "--model", model, "--device", "openvino",
               "--precision", "int8")
    assert ran.returncode == 2 and "model.int8.onnx beside" in ran.stderr and not out.exists()


def test_bf16_parity_within_tolerance(ov_python, trained, tmp_path):
    if not any(cpu_flags()[f] for f in BF16_FLAGS):
        pytest.skip(f"this CPU has none of {', '.join(BF16_FLAGS)}: bf16 is refused here (tested in test_precision)")
    folder, model = trained
    fp32, bf16 = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    for out, precision in ((fp32, "fp32"), (bf16, "bf16")):
        ran = _cli(ov_python, "score", folder, "--out", out, "--model", model, "--device", "openvino",
                   "--precision", precision, "--quiet")
        assert ran.returncode == 0, ran.stderr
    a, b = _probs(fp32), _probs(bf16)
    diff = max(abs(a[k] - b[k]) for k in a)
    assert len(a) == 24 and 0 < diff <= BF16_TOLERANCE  # > 0: the bf16 hint really took effect
    assert _manifest(bf16)["precision"]["openvino_inference_precision_hint"] == "bf16"


def test_measured_gates_then_auto_runs_the_fastest_passing_precision(ov_python, trained, tmp_path):
    folder, model = trained
    measured = _cli(ov_python, "bench", "--model", model, "--device", "openvino", "--labels", folder / "labels.csv",
                    "--batch-sizes", "1,8", "--seconds", 0.2, "--warmup", 1)
    assert measured.returncode == 0, measured.stderr
    record = json.loads(model.with_name("model.precision.json").read_text())["entries"][-1]
    assert record["key"]["provider"] == "openvino" and record["key"]["distribution"] == "onnxruntime-openvino"
    # timed as cxr-score runs them: each batch size on sessions compiled for it
    assert all(e["compiled_for_batch"] is True and set(e["ms_per_image"]) == {"1", "8"}
               for e in record["precisions"].values())
    for name, entry in record["precisions"].items():
        if name != "fp32":
            assert entry["passed"] == (-entry["auroc_change"] <= {"bf16": 0.005, "int8": 0.01}[name])
            lo, hi = entry["auroc_change_ci95"]
            assert lo <= entry["auroc_change"] <= hi and entry["n"] == 24
    out = tmp_path / "auto.csv"
    ran = _cli(ov_python, "score", folder, "--out", out, "--model", model, "--device", "openvino",
               "--precision", "auto", "--batch-size", 8, "--quiet")
    assert ran.returncode == 0, ran.stderr
    p = _manifest(out)["precision"]
    passing = {n for n, e in record["precisions"].items() if e["passed"]}
    assert p["requested"] == "auto" and p["used"] in passing and p["why"].startswith("auto:")
    assert "cxr-score:" not in ran.stderr  # --quiet: what auto picked, and why, is in the manifest only
    if p["used"] != "fp32":
        assert p["accuracy_gate"] == record["precisions"][p["used"]]
        fp32_ms = record["precisions"]["fp32"]["ms_per_image"]["8"]
        assert record["precisions"][p["used"]]["ms_per_image"]["8"] * 1.1 <= fp32_ms


def test_bf16_with_labels_is_compared_with_openvino_fp32_on_the_same_images(ov_python, trained, tmp_path):
    if not any(cpu_flags()[f] for f in BF16_FLAGS):
        pytest.skip(f"this CPU has none of {', '.join(BF16_FLAGS)}: bf16 is refused here (tested in test_precision)")
    folder, model = trained
    fp32, bf16 = tmp_path / "fp32.csv", tmp_path / "bf16.csv"
    common = ["--model", model, "--device", "openvino", "--labels", folder / "labels.csv"]
    assert _cli(ov_python, "score", folder, "--out", fp32, *common, "--precision", "fp32", "--quiet").returncode == 0
    ran = _cli(ov_python, "score", folder, "--out", bf16, *common, "--precision", "bf16", "--force-precision")
    assert ran.returncode == 0, ran.stderr
    check = _manifest(bf16)["precision_check"]
    assert check["compared"] is True and check["precision"] == "bf16" and check["device"] == "openvino"
    assert check["reference"]["providers"][0] == "OpenVINOExecutionProvider" and check["images_compared"] == 24
    a, b = _probs(fp32), _probs(bf16)
    threshold = check["threshold"]
    assert check["decision_flips"] == sum((a[k] >= threshold) != (b[k] >= threshold) for k in a)
    assert 0 < check["max_abs_prob_diff"] <= BF16_TOLERANCE and check["gate_max_auroc_drop"] == 0.005
    lo, hi = check["auroc_change_ci95"]
    assert lo <= check["auroc_change"] <= hi and check["forced"] is True
    assert "bf16 vs fp32 on 24 labelled image(s), same provider: AUROC change" in ran.stderr


_MEASURE = """
import json, sys
from pathlib import Path
from cxr.runtime.precision_gate import labelled_images, openvino_lines, openvino_precisions
from cxr.runtime.scoring import Scorer
model, labels, folder = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
x, y, source = labelled_images(labels, folder, Scorer(model, device="cpu").card.preprocess)
report = openvino_precisions(model, x, y, source, batch_sizes=(1, 4), seconds=0.05)
print(json.dumps({"report": report, "lines": openvino_lines(report), "torch": "torch" in sys.modules}))
"""


def test_openvino_precisions_for_the_export_report_measure_and_keep_every_runnable_precision(ov_python, trained,
                                                                                             tmp_path):
    import shutil

    folder, model = trained
    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copy(model.with_name(name), tmp_path / name)
    ran = subprocess.run([str(ov_python), "-c", _MEASURE, tmp_path / "model.onnx", folder / "labels.csv", folder],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    report, lines = out["report"], out["lines"]
    assert out["torch"] is False and report["measured"] is True and report["n_images"] == 24
    bf16 = any(cpu_flags()[f] for f in BF16_FLAGS)
    assert set(report["precisions"]) == {"fp32", "int8"} | ({"bf16"} if bf16 else set())
    assert set(report["not_measured"]) == (set() if bf16 else {"bf16"})
    for name, entry in report["precisions"].items():
        assert set(entry["ms_per_image"]) == {"1", "4"}
        if name != "fp32":
            assert entry["passed"] == (-entry["auroc_change"] <= {"bf16": 0.005, "int8": 0.01}[name])
            assert f"  {name} {'PASS' if entry['passed'] else 'FAIL'} (" in "\n".join(lines)
    kept = json.loads((tmp_path / "model.precision.json").read_text())["entries"]
    assert report["kept_in"] == str(tmp_path / "model.precision.json") and len(kept) == 1
    assert kept[0]["key"]["provider"] == "openvino" and kept[0]["n_images"] == 24
    assert lines[0].startswith("OpenVINO precisions on 24 labelled image(s) (CPU flags ")


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    """A tiny DenseNet with the segmentation head, exported with its cam, ctr and masks outputs (64 px)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions
    from cxr.train.loop import train
    from tests.train.masked_fixtures import MASK_COLUMNS, make_masked_set
    from tests.train.train_fixtures import make_small_phantom, tiny_config

    root = tmp_path_factory.mktemp("ov-seg")
    masked = make_masked_set(root / "masked", n=24, masked=24)
    config = tiny_config(masked.parent, dataset="csv", data_root=str(masked.parent), csv_path=str(masked),
                         mask_columns=",".join(MASK_COLUMNS), ctr_column="ctr", source_name="masked",
                         extra_sources=({"kind": "phantom", "data_root": str(make_small_phantom(root / "ph")),
                                         "name": "ph"},), max_epochs=1)
    train(config, root / "run")
    out = root / "model.onnx"
    export_onnx(root / "run", out, ExportOptions(opset=17))
    return out


_STATIC = """
import json, sys
import numpy as np
from cxr.runtime.scoring import Scorer
model = sys.argv[1]
cpu, fixed, dynamic = (Scorer(model, device="cpu", batch_size=4), Scorer(model, device="openvino", batch_size=4),
                       Scorer(model, device="openvino"))
s, extras = cpu.input_size, sorted(cpu.extra_outputs)
x = np.random.default_rng(0).integers(0, 256, (9, 1, s, s), dtype=np.uint8)
out = {"batch": [cpu.static_batch, fixed.static_batch, dynamic.static_batch], "extras": extras,
       "shapes": [list(c._session.get_inputs()[0].shape)[:1] for c in (cpu, fixed, dynamic)], "n": {}}
for n in (1, 3, 4, 5, 9):
    a, b = cpu.run(x[:n], extras), fixed.run(x[:n], extras)
    out["n"][n] = {k: {"shape": [list(a[k].shape), list(b[k].shape)],
                       "diff": float(np.nanmax(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)),
                                               initial=0.0)),
                       "nan_diff": int(np.sum(np.isnan(a[k].astype(np.float64)) != np.isnan(b[k].astype(np.float64)))),
                       "differ": float(np.mean(a[k] != b[k]))} for k in a}
alone, padded = fixed.run(x[:3], extras), fixed.run(x[:4], extras)  # blank padding vs a real 4th image
out["padding"] = max(float(np.max(np.abs(alone[k].astype(np.float64) - padded[k][:3]))) for k in alone)
out["predict"] = [len(fixed.predict(x[:n])[1]) for n in (0, 2, 7)]
print(json.dumps(out))
"""


def test_openvino_compiles_for_the_batch_and_pads_or_splits_others(ov_python, seg_model):
    """On OpenVINO the graph is compiled for --batch-size (a fixed input shape runs faster there); a smaller batch
    is padded with blank images and a larger one split, and every output (cam, ctr, masks too) comes back per image,
    equal to ONNX Runtime's CPU provider on the same images; the CPU provider and a session without a batch size
    stay dynamic."""
    ran = subprocess.run([str(ov_python), "-c", _STATIC, seg_model], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout.strip().splitlines()[-1])
    assert out["batch"] == [None, 4, None] and out["shapes"] == [["N"], [4], ["N"]]
    assert out["extras"] == ["cam", "ctr", "masks"]
    for n, outputs in out["n"].items():
        assert set(outputs) == {"logit", "probability", "cam", "ctr", "masks"}
        for name, got in outputs.items():
            assert got["shape"][0] == got["shape"][1] and got["shape"][0][0] == int(n), (n, name, got)
            if name == "masks":
                assert got["differ"] <= 1e-3, (n, got)  # a pixel at exactly 0.5 may round either way
            else:  # ctr: NaN on both sides where no heart was found (nan_diff counts the disagreements)
                assert got["diff"] <= 1e-4 and got["nan_diff"] == 0, (n, name, got)
    assert out["padding"] <= 1e-5 and out["predict"] == [0, 2, 7]


def test_cxr_score_on_openvino_records_the_compiled_batch_and_keeps_every_row(ov_python, grey, tmp_path):
    """6 images at --batch-size 4 (the last batch padded), and cxr-bench timing batch sizes the session was not
    compiled for."""
    folder, model = grey
    out, cpu = tmp_path / "ov.csv", tmp_path / "cpu.csv"
    ran = _cli(ov_python, "score", folder, "--out", out, "--model", model, "--device", "openvino",
               "--batch-size", 4, "--quiet")
    assert ran.returncode == 0, ran.stderr
    assert _cli(ov_python, "score", folder, "--out", cpu, "--model", model, "--device", "cpu",
                "--batch-size", 4, "--quiet").returncode == 0
    p_ov, p_cpu = _probs(out), _probs(cpu)
    assert len(p_ov) == 6 and p_ov.keys() == p_cpu.keys()
    assert max(abs(p_ov[k] - p_cpu[k]) for k in p_ov) <= 2e-6
    assert _manifest(out)["precision"]["static_batch"] == 4 and _manifest(cpu)["precision"]["static_batch"] is None
    bench = tmp_path / "bench.json"
    ran = _cli(ov_python, "bench", "--model", model, "--device", "openvino", "--batch-sizes", "1,3",
               "--seconds", 0.05, "--warmup", 1, "--json", bench)
    assert ran.returncode == 0, ran.stderr
    facts = json.loads(bench.read_text())
    assert facts["compiled_for_batch"] is True and [r["batch_size"] for r in facts["results"]] == [1, 3]
    assert all(r["runs"] >= 3 for r in facts["results"])
