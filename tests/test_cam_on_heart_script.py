"""scripts/cam_on_heart.py: the activation map against the model's own heart mask, per class, from labelled images."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cam_on_heart.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("cam_on_heart", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _heart(side: int = 10) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    mask[4:7, 4:7] = 1  # 9 pixels; widened by 1 (10% of 10) on every side: rows/cols 3..7, 25 pixels
    return mask


def test_a_map_peaking_on_the_heart(script):
    cam = np.zeros((10, 10), np.float32)
    cam[5, 5], cam[0, 9] = 3.0, 1.0
    m = script.heart_measures(cam, _heart(), 10)
    assert m == pytest.approx({"mass_in_heart": 0.75, "heart_area": 0.09, "mass_in_box": 0.75, "box_area": 0.25,
                               "peak_in_box": 1.0})


def test_a_map_peaking_off_the_heart(script):
    cam = np.zeros((10, 10), np.float32)
    cam[3, 3], cam[0, 0] = 1.0, 2.0  # in the widened box (not the mask), and the peak in the corner
    m = script.heart_measures(cam, _heart(), 10)
    assert m["mass_in_heart"] == 0 and m["mass_in_box"] == pytest.approx(1 / 3) and m["peak_in_box"] == 0


def test_images_with_nothing_to_measure_are_counted_apart(script):
    assert script.heart_measures(np.ones((10, 10)), np.zeros((10, 10)), 10) == "no_heart"
    assert script.heart_measures(-np.ones((10, 10)), _heart(), 10) == "zero_map"  # ReLU'd: no positive evidence
    s = script.summarize(["no_heart", "zero_map", {"mass_in_heart": 0.2, "heart_area": 0.1, "mass_in_box": 0.5,
                                                   "box_area": 0.3, "peak_in_box": 1.0}])
    assert s["n"] == 3 and s["measured"] == 1 and s["no_heart"] == 1 and s["zero_map"] == 1
    assert s["mass_in_heart_median"] == 0.2 and s["peak_in_box_mean"] == 1.0 and s["peak_in_box_of_all"] == 1 / 3


def test_the_script_on_a_model_with_maps_and_masks(tmp_path):
    """End to end on the test maps model (fixed heart mask: rows 32-51, cols 24-40 of 64): labels given with a
    prefix (`jsrt/png/a.png`) match the scored images; the figures come per class, in text and JSON."""
    pytest.importorskip("onnx")
    from tests.runtime.test_overlay_fixtures import chest_like, maps_model

    model = maps_model(tmp_path / "maps.onnx")
    folder = tmp_path / "png"
    folder.mkdir()
    labels = ["path,cardiomegaly_mask_ctr"]
    for k in range(5):
        cv2.imwrite(str(folder / f"x{k}.png"), chest_like(bright=k % 2 == 0))
        labels.append(f"jsrt/png/x{k}.png,{int(k < 2)}")
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(model), str(folder), str(tmp_path / "labels.csv"),
                          "--label-column", "cardiomegaly_mask_ctr", "--json", str(tmp_path / "f.json")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "f.json").read_text())
    pos, neg = result["positives"], result["negatives"]
    assert (pos["n"], pos["measured"], neg["n"], neg["measured"]) == (2, 2, 3, 3)
    assert pos["heart_area_mean"] == pytest.approx(20 * 17 / 64**2)
    assert pos["box_area_mean"] == pytest.approx(32 * 29 / 64**2)  # widened by round(6.4) = 6 pixels
    assert 0 < pos["mass_in_heart_mean"] < pos["mass_in_box_mean"] < 1
    assert "positives: n=2, measured 2" in out.stdout and "map peak in the heart box" in out.stdout


def test_a_model_without_maps_is_refused_with_the_reason(tmp_path, tiny_model):
    (tmp_path / "l.csv").write_text("path,label\na.png,1\n")
    out = subprocess.run([sys.executable, str(SCRIPT), str(tiny_model), str(tmp_path), str(tmp_path / "l.csv")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "has no cam or masks output" in out.stderr
