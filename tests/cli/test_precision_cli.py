"""cxr-score/cxr-bench --precision on ONNX Runtime's CPU provider: refusals (exit 2, nothing written), the manifest's
precision section, and the gate measured by cxr-bench --labels refusing a precision until forced.

The int8 file here is a stand-in: the mean-brightness model with a card that says int8; with a negative gain
it ranks the images in reverse, so its AUROC is 1 - fp32's and its gate must fail.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cxr.cli.bench import main as bench_main
from cxr.cli.score import main as score_main
from tests.onnx_fixtures import default_card

pytest.importorskip("onnx")


def _score(args):
    return CliRunner().invoke(score_main, [str(a) for a in args])


def _bench(args):
    return CliRunner().invoke(bench_main, [str(a) for a in args])


@pytest.fixture()
def labelled(tmp_path):
    """12 grey images whose brightness rises with the label (the mean-brightness model separates them), and a model."""
    from tests.onnx_fixtures import mean_brightness_model

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(12):
        img = np.clip(rng.normal(40 + 15 * i, 30, (80, 80)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"i{i:02d}.png"), img)
        rows.append(f"i{i:02d}.png,{int(i >= 6)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    model = mean_brightness_model(tmp_path / "model.onnx", size=64)
    return folder, model


def _int8(model, gain: float):
    from tests.onnx_fixtures import mean_brightness_model

    card = default_card(64, export={"opset": 17, "precision": "int8"})
    return mean_brightness_model(model.with_name("model.int8.onnx"), size=64, gain=gain, card=card)


def test_openvino_without_the_extra_is_exit_2_with_the_way_out(labelled, tmp_path):
    from cxr.runtime.precision import ort_build

    if "OpenVINOExecutionProvider" in ort_build()["providers"]:
        pytest.skip("this environment has onnxruntime-openvino")
    folder, model = labelled
    result = _score([folder, "--out", tmp_path / "out" / "r.csv", "--model", model, "--device", "openvino"])
    assert result.exit_code == 2
    assert "pip install 'cxr[openvino]' in its own virtual environment" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8"], "model.int8.onnx beside"),
    (["--precision", "bf16", "--device", "cpu"], "pass --device openvino"),
])
def test_refused_precisions_write_nothing(labelled, tmp_path, args, message):
    folder, model = labelled
    out = tmp_path / "r.csv"
    result = _score([folder, "--out", out, "--model", model, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


def test_int8_runs_the_int8_file_and_the_manifest_says_so(labelled, tmp_path):
    folder, model = labelled
    int8 = _int8(model, gain=8.0)
    out = tmp_path / "r.csv"
    result = _score([folder, "--out", out, "--model", model, "--device", "cpu", "--precision", "int8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet: errors only; that the precision is unchecked is in the manifest
    manifest = json.loads(out.with_name("r.manifest.json").read_text())
    p = manifest["precision"]
    assert "not measured for this model on this host" in p["why"]
    assert manifest["warnings"] == [f"precision int8: {p['why']}"]  # the warning --quiet did not print
    assert (p["requested"], p["used"], p["device"]) == ("int8", "int8", "cpu")
    assert p["model_file"] == str(int8) and manifest["model"]["path"] == str(int8)
    assert p["accuracy_gate"] is None and p["openvino_inference_precision_hint"] is None
    assert set(p["cpu_flags"]) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"}
    assert p["onnxruntime"]["version"] and manifest["device"]["providers"] == ["CPUExecutionProvider"]


def test_default_precision_runs_the_file_as_its_card_says(labelled, tmp_path):
    folder, model = labelled
    int8 = _int8(model, gain=8.0)
    out = tmp_path / "r.csv"
    assert _score([folder, "--out", out, "--model", int8, "--device", "cpu", "--quiet"]).exit_code == 0
    p = json.loads(out.with_name("r.manifest.json").read_text())["precision"]
    assert (p["requested"], p["used"]) == ("default", "int8")


def test_a_gate_measured_as_failed_refuses_until_forced_and_auto_passes_it_by(labelled, tmp_path):
    folder, model = labelled
    _int8(model, gain=-8.0)  # inverted: AUROC 1 -> 0
    measured = _bench(["--model", model, "--device", "cpu", "--labels", folder / "labels.csv", "--batch-sizes", "1,4",
                       "--seconds", 0.05, "--warmup", 1, "--json", tmp_path / "m.json"])
    assert measured.exit_code == 0, measured.output
    assert "int8  FAIL" in measured.output and "bf16  not measured: needs --device openvino" in measured.output
    record = json.loads((tmp_path / "model.precision.json").read_text())["entries"][0]
    int8 = record["precisions"]["int8"]
    assert int8["auroc_fp32"] > 0.5 and int8["auroc"] == pytest.approx(1 - int8["auroc_fp32"])
    assert int8["auroc_change"] == pytest.approx(1 - 2 * int8["auroc_fp32"])
    lo, hi = int8["auroc_change_ci95"]
    assert lo <= int8["auroc_change"] <= hi
    assert int8["decision_flips"] > 0 and int8["passed"] is False and int8["n"] == 12
    assert record["key"]["provider"] == "cpu" and set(record["precisions"]) == {"fp32", "int8"}

    out = tmp_path / "r.csv"
    refused = _score([folder, "--out", out, "--model", model, "--device", "cpu", "--precision", "int8"])
    assert refused.exit_code == 2 and "failed its accuracy gate" in refused.output
    assert "--force-precision" in refused.output and not out.exists()

    forced = _score([folder, "--out", out, "--model", model, "--device", "cpu", "--precision", "int8",
                     "--force-precision", "--quiet"])
    assert forced.exit_code == 0, forced.output
    p = json.loads(out.with_name("r.manifest.json").read_text())["precision"]
    assert p["forced"] is True and p["accuracy_gate"]["auroc_change"] == int8["auroc_change"]

    auto = _score([folder, "--out", out, "--model", model, "--device", "cpu", "--precision", "auto", "--quiet"])
    assert auto.exit_code == 0, auto.output
    p = json.loads(out.with_name("r.manifest.json").read_text())["precision"]
    assert p["used"] == "fp32" and "int8 failed its gate" in p["why"]
    assert auto.output == ""  # --quiet: errors only; what auto picked, and why, is the manifest's


def test_bench_json_names_the_precision(labelled, tmp_path):
    _, model = labelled
    out = tmp_path / "b.json"
    result = _bench(["--model", model, "--batch-sizes", "1", "--seconds", 0.05, "--json", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["precision"]["used"] == "fp32" and data["precision"]["device"] == "cpu"


def _decisions(csv_path):
    import csv

    with open(csv_path, newline="") as fh:
        return {row["path"]: row["cardiomegaly"] for row in csv.DictReader(fh)}


def test_labels_with_int8_compare_with_fp32_on_the_same_images(labelled, tmp_path):
    """A copy that ranks the images as fp32 does (AUROC unchanged) but whose probabilities sit lower: at a threshold
    between the two, some decisions flip, and the check counts exactly the rows whose call differs from fp32's."""
    folder, model = labelled
    _int8(model, gain=4.0)  # same order as fp32's gain 8, probabilities nearer 0.5
    common = ["--labels", folder / "labels.csv", "--device", "cpu", "--threshold", "0.516"]
    ref = _score([folder, "--out", tmp_path / "fp32.csv", "--model", model, *common, "--quiet"])
    assert ref.exit_code == 0, ref.output
    assert "precision_check" not in json.loads((tmp_path / "fp32.manifest.json").read_text())  # nothing to compare
    result = _score([folder, "--out", tmp_path / "int8.csv", "--model", model, *common, "--precision", "int8"])
    assert result.exit_code == 0, result.output
    fp32_calls, int8_calls = _decisions(tmp_path / "fp32.csv"), _decisions(tmp_path / "int8.csv")
    flips = sum(fp32_calls[p] != int8_calls[p] for p in fp32_calls)
    assert 0 < flips < 12  # the constructed case: some calls flip, not all
    check = json.loads((tmp_path / "int8.manifest.json").read_text())["precision_check"]
    assert check["compared"] is True and check["precision"] == "int8" and check["device"] == "cpu"
    assert check["decision_flips"] == flips and check["threshold"] == 0.516
    assert check["labelled_images"] == check["images_compared"] == check["n"] == 12 and check["n_positive"] == 6
    assert check["reference"]["model"] == str(model) and check["reference"]["precision"] == "fp32"
    assert check["auroc_change"] == pytest.approx(0.0, abs=1e-12) and check["auroc"] == check["auroc_fp32"]
    lo, hi = check["auroc_change_ci95"]
    assert lo <= 0.0 <= hi and 0 < check["max_abs_prob_diff"] < 0.02
    assert check["passed"] is True and check["exceeds_gate"] is False and check["gate_max_auroc_drop"] == 0.01
    assert "comparing int8 with fp32 on the 12 labelled image(s)" in result.output
    assert "int8 vs fp32 on 12 labelled image(s), same provider: AUROC change +0.0000" in result.output
    assert f"{flips} decision(s) flip at 0.516" in result.output and "lost more AUROC" not in result.output


def test_labels_with_an_int8_beyond_its_gate_warn_unless_forced(labelled, tmp_path):
    folder, model = labelled
    _int8(model, gain=-8.0)  # reversed order: AUROC 1 - fp32's, every call flips at 0.5
    common = [folder, "--model", model, "--labels", folder / "labels.csv", "--device", "cpu", "--precision", "int8"]
    warned = _score([*common, "--out", tmp_path / "w.csv"])
    assert warned.exit_code == 0, warned.output
    check = json.loads((tmp_path / "w.manifest.json").read_text())["precision_check"]
    assert check["exceeds_gate"] is True and check["passed"] is False and check["forced"] is False
    assert check["auroc"] == pytest.approx(1 - check["auroc_fp32"]) and check["decision_flips"] == 12
    assert "cxr-score: warning: int8 lost more AUROC than its 0.01 gate allows on these labelled images" in (
        warned.output)
    assert "12 decision(s) flipped" in warned.output and "--precision fp32" in warned.output
    warnings = json.loads((tmp_path / "w.manifest.json").read_text())["warnings"]
    assert any(w.startswith("int8 lost more AUROC than its 0.01 gate") for w in warnings)  # kept for -q runs too

    forced = _score([*common, "--out", tmp_path / "f.csv", "--force-precision"])
    assert forced.exit_code == 0, forced.output
    check = json.loads((tmp_path / "f.manifest.json").read_text())["precision_check"]
    assert check["exceeds_gate"] is True and check["forced"] is True
    assert "lost more AUROC" not in forced.output and "(forced: --force-precision)" in forced.output


def test_a_reduced_copy_given_as_model_is_compared_with_the_fp32_file_its_card_names(labelled, tmp_path):
    from tests.onnx_fixtures import mean_brightness_model

    folder, model = labelled
    card = default_card(64, export={"opset": 17, "precision": "int8", "validation": {"fp32_source": model.name}})
    int8 = mean_brightness_model(tmp_path / "copy.int8.onnx", size=64, gain=4.0, card=card)
    args = [folder, "--model", int8, "--labels", folder / "labels.csv", "--device", "cpu", "--quiet"]
    assert _score([*args, "--out", tmp_path / "a.csv"]).exit_code == 0
    check = json.loads((tmp_path / "a.manifest.json").read_text())["precision_check"]
    assert check["compared"] is True and check["reference"]["model"] == str(model)
    assert check["reference"]["found_by"] == "the fp32 source named in copy.int8.onnx's card"

    model.unlink()
    assert _score([*args, "--out", tmp_path / "b.csv"]).exit_code == 0
    check = json.loads((tmp_path / "b.manifest.json").read_text())["precision_check"]
    assert check["compared"] is False and "model.onnx, the fp32 source named in copy.int8.onnx's card, does not" \
        " exist" in check["why"]


def test_ctrl_c_during_the_fp32_comparison_keeps_the_results_and_writes_the_manifest(labelled, tmp_path, monkeypatch):
    import cxr.runtime.precision_check as pc

    folder, model = labelled
    _int8(model, gain=4.0)

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(pc, "compare_with_fp32", interrupted)
    out = tmp_path / "int8.csv"
    result = _score([folder, "--out", out, "--model", model, "--labels", folder / "labels.csv", "--device", "cpu",
                     "--precision", "int8"])
    assert result.exit_code == 130, result.output
    assert "interrupted during the comparison with fp32" in result.output and "are complete" in result.output
    assert len(_decisions(out)) == 12  # every row is there
    manifest = json.loads((tmp_path / "int8.manifest.json").read_text())
    assert manifest["precision_check"] == {"compared": False, "why": "cut short by Ctrl-C during the fp32 pass"}
    assert manifest["counts"]["ok"] == 12
