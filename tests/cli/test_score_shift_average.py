"""cxr-score --shift-average PIXELS: each film's probability is the mean over nine moves of it, the manifest says
so, and what it cannot do is a usage error before anything is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.imaging import read_image  # noqa: E402
from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch  # noqa: E402
from cxr.runtime.shifts import shift_grid, shifted  # noqa: E402
from tests.badfiles import write_bad_files, write_good_files  # noqa: E402
from tests.onnx_fixtures import default_card, expected_probability, mean_brightness_model  # noqa: E402
from tests.runtime.test_shifts import AVERAGED  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def averaged(path: Path, pixels: int) -> float:
    film = preprocess_batch([read_image(path)], PreprocessConfig(size=64))
    return float(np.mean([expected_probability(shifted(film, dy, dx)[0]) for dy, dx in shift_grid(pixels)]))


def test_each_row_holds_the_mean_over_the_moves_and_the_manifest_says_so(tiny_model, tmp_path):
    folder = tmp_path / "films"
    names = write_good_files(folder)
    bad = write_bad_files(folder / "broken")
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", tiny_model, "--shift-average", "3", "--report", tmp_path / "r.html")
    assert result.exit_code == 3, result.output  # the broken files are error rows; the run goes on
    assert "--shift-average 3: each film scored 9 times" in result.output
    got = rows(out)
    assert len(got) == len(names) + len(bad)
    for name in names:
        want = averaged(folder / name, 3)
        assert float(got[name]["prob_cardiomegaly"]) == pytest.approx(want, abs=2e-6)
        assert got[name]["cardiomegaly"] == str(int(want >= 0.5))
    assert all(got[f"broken/{k}"]["status"] == "error" for k in bad)
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["shift_average"] == {"pixels": 3, "drawings": 9, "input_size": 64, "averaged": AVERAGED}

    assert "mean of 9 drawings, the film moved by 3 px (--shift-average)" in (tmp_path / "r.html").read_text()

    plain = tmp_path / "plain.csv"
    assert run(folder, "--out", plain, "--model", tiny_model).exit_code == 3
    assert json.loads((tmp_path / "plain.manifest.json").read_text())["shift_average"] is None
    assert any(rows(plain)[n]["prob_cardiomegaly"] != got[n]["prob_cardiomegaly"] for n in names)


@pytest.mark.parametrize("extra,message", [
    (["--shift-average", "16"], "give 1 to 15 for this model (its input is 64x64)"),
    (["--shift-average", "2", "--engine", "ray"], "--shift-average is not available with --engine ray"),
    (["--shift-average", "2", "--precision", "int8"], "it is not combined with --precision int8"),
])
def test_what_it_cannot_do_is_a_usage_error_and_nothing_is_written(tiny_model, tmp_path, extra, message):
    folder = tmp_path / "films"
    write_good_files(folder)
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", tiny_model, *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists() and not (tmp_path / "r.manifest.json").exists()


def test_the_int8_file_is_refused_with_the_way_out(tmp_path):
    model = mean_brightness_model(tmp_path / "model.int8.onnx", size=64,
                                  card=default_card(64, export={"opset": 17, "precision": "int8"}))
    folder = tmp_path / "films"
    write_good_files(folder)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--shift-average", "2")
    assert result.exit_code == 2, result.output
    assert "give the fp32 model file, with --precision fp32 or none" in " ".join(result.output.split())
    assert not (tmp_path / "r.csv").exists()


def test_precision_auto_that_settles_on_fp32_averages(tiny_model, tmp_path):
    folder = tmp_path / "films"
    write_good_files(folder)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model, "--precision", "auto",
                 "--device", "cpu", "--shift-average", "2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.manifest.json").read_text())["shift_average"]["pixels"] == 2
