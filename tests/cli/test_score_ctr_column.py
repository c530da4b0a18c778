"""cxr-score --labels L --ctr-column C: the model's ctr column against manual cardiothoracic ratios on the labelled
films (what a site checks before trusting the ratio), in the summary and the manifest; usage errors before anything
is written where it cannot be done."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime import metrics  # noqa: E402
from tests.runtime.test_overlay_fixtures import chest_like, maps_model  # noqa: E402

MANUAL = {"a.png": "0.36", "b.png": "0.30", "sub/c.png": "0.41", "d.png": "", "e.png": "n/a", "f.png": "0.52"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def site(tmp_path) -> tuple[Path, Path, Path]:
    """(the maps model: one ctr, 0.3542, for every film; a folder of six films; their labels with manual ratios)."""
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    for i, rel in enumerate(MANUAL):
        assert cv2.imwrite(str(folder / rel), chest_like(bright=i % 2 == 0))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "ctr_manual"])
        w.writerows((rel, i % 2, ratio) for i, (rel, ratio) in enumerate(MANUAL.items()))
    return maps_model(tmp_path / "maps.onnx"), folder, labels


def test_the_ctr_column_is_compared_with_the_manual_ratios(site, tmp_path):
    model, folder, labels = site
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", model, "--labels", labels, "--ctr-column", "ctr_manual")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    usable = {rel: float(v) for rel, v in MANUAL.items() if v not in ("", "n/a")}
    measured = [float(rows[rel]["ctr"]) for rel in usable]
    assert len(set(measured)) == 1  # the fixture measures one heart for every film
    a = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]["ctr_agreement"]
    err = [abs(m - r) for m, r in zip(measured, usable.values())]
    assert (a["column"], a["n"], a["manual_ratios"], a["blank_lines"], a["ignored_lines"], a["not_measured"],
            a["not_scored"]) == ("ctr_manual", 4, 4, 1, 1, 0, 0)
    assert a["mae"] == pytest.approx(sum(err) / 4, abs=1e-4)
    assert a["within_close"] == pytest.approx(sum(e <= 0.03 for e in err) / 4)
    assert a["bias"] == pytest.approx(sum(m - r for m, r in zip(measured, usable.values())) / 4, abs=1e-4)
    assert a["unflagged"]["n"] == 4 and a["slope"] == pytest.approx(0.0, abs=1e-6) and a["follows"] is False
    assert f"ctr vs manual ratios ('ctr_manual') on 4 films: mean absolute error {a['mae']:.4f}" in result.stderr
    assert "; 1 labelled without a manual ratio; 1 with an unreadable ratio" in result.stderr
    # the typical-heart failure is said aloud and kept in the manifest
    assert "does not follow the manual ratios" in result.stderr
    assert "the model gives about the same ratio to every film here" in result.stderr
    warnings = json.loads((tmp_path / "r.manifest.json").read_text())["warnings"]
    assert any("does not follow the manual ratios" in str(w) for w in warnings)


def test_the_report_shows_the_comparison_with_the_column_name_as_text(site, tmp_path):
    model, folder, labels = site
    column = "<b>ctr</b>"
    labels.write_text(labels.read_text().replace("ctr_manual", column))
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels, "--ctr-column", column,
                 "--report", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    a = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]["ctr_agreement"]
    assert f"4 films: mean absolute error {a['mae']:.3f}" in page and "do not use it at this site" in page
    assert "<b>ctr</b>" not in page and "&lt;b&gt;ctr&lt;/b&gt;" in page


def test_without_the_option_nothing_is_compared(site, tmp_path):
    model, folder, labels = site
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels)
    assert result.exit_code == 0, result.output
    assert "ctr_agreement" not in json.loads((tmp_path / "r.manifest.json").read_text())["labels"]
    assert "manual ratios" not in result.stderr


@pytest.mark.parametrize("case, message", [
    ("no labels", "--ctr-column names a column of the --labels file"),
    ("no ctr output", "has no ctr output to compare with the manual ratios"),
    ("no such column", "missing column 'ratio' (the manual cardiothoracic ratio)"),
    ("no usable ratio", "no usable manual ratio in column 'ctr_manual': 1 labelled line(s) blank, 2 unreadable, "
                        "such as 'x', '2'"),
    ("no ratio on a scored film", "none of the 1 manual ratio(s) in column 'ctr_manual' is on a labelled path "
                                  "that matches an image"),
    ("the label column", "'label' is the label column, not one of the manual cardiothoracic ratios"),
])
def test_what_cannot_be_compared_is_a_usage_error(site, tmp_path, case, message):
    model, folder, labels = site
    args = [folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels, "--ctr-column", "ctr_manual"]
    if case == "no labels":
        args = args[:5] + args[7:]
    elif case == "no ctr output":
        args[4] = maps_model(tmp_path / "cam_only.onnx", outputs=("cam",))
    elif case == "no such column":
        args[-1] = "ratio"
    elif case == "the label column":
        args[-1] = "label"
    elif case == "no ratio on a scored film":
        labels.write_text("path,label,ctr_manual\na.png,1,\nghost.png,0,0.45\n")
    else:
        labels.write_text("path,label,ctr_manual\na.png,1,\nb.png,0,x\nd.png,1,2\n")
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.manifest.json").exists()


def test_a_ratio_that_follows_is_not_warned_about_and_ratios_match_like_labels(tmp_path):
    """A model whose ctr differs between films, manual ratios 0.01 below it, written as bare file names and as
    paths relative to the labels file's folder: all compared, no warning."""
    folder = tmp_path / "data" / "images"
    (folder / "sub").mkdir(parents=True)
    names = ["a.png", "b.png", "sub/c.png", "sub/d.png", "e.png"]
    for i, rel in enumerate(names):  # a bright band over a growing share of the rows: equalized, brighter films
        img = np.full((96, 80), 50, np.uint8)
        img[: 12 * (i + 1)] = 220
        img[:, :4] = 120
        assert cv2.imwrite(str(folder / rel), img)
    model = maps_model(tmp_path / "follows.onnx", ctr_follows_brightness=True)
    first = tmp_path / "first.csv"
    assert run(folder, "--out", first, "--model", model).exit_code == 0
    with open(first, newline="") as fh:
        ctr = {r["path"]: float(r["ctr"]) for r in csv.DictReader(fh)}
    assert len(set(ctr.values())) == len(names)
    labels = tmp_path / "data" / "labels.csv"
    written = {"a.png": "a.png", "b.png": "images/b.png", "sub/c.png": "images/sub/c.png", "sub/d.png": "d.png",
               "e.png": "e.png"}
    labels.write_text("path,label,ctr_manual\n" + "".join(f"{written[rel]},{i % 2},{ctr[rel] - 0.01:.4f}\n"
                                                          for i, rel in enumerate(names)))
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", model, "--labels", labels, "--ctr-column", "ctr_manual")
    assert result.exit_code == 0, result.output
    a = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]["ctr_agreement"]
    assert a["n"] == 5 and a["follows"] is True and a["slope"] == pytest.approx(1.0, abs=0.01)
    assert a["mae"] == pytest.approx(0.01, abs=1e-4) and a["bias"] == pytest.approx(0.01, abs=1e-4)
    assert "does not follow" not in result.stderr and "ctr vs manual ratios ('ctr_manual') on 5 films" in result.stderr
    assert metrics.ratio_follows(a) is True
