"""cxr-score --labels L --group-column G: the metrics per group (site, scanner, view position) beside the overall
ones, in the summary, the manifest and the report; usage errors before anything is written where it cannot be done;
the group's text inert in the terminal and the HTML page."""

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
from tests.runtime.test_overlay_fixtures import maps_model  # noqa: E402

# (file, label, group, blob size): the maps model's probability grows with the bright blob's size
FILMS = [("pa1.png", 1, "PA", 0.95), ("pa2.png", 0, "PA", 0.30), ("pa3.png", 1, "PA", 0.55), ("pa4.png", 0, "PA", 0.70),
         ("ap1.png", 1, "AP", 0.85), ("ap2.png", 0, "AP", 0.80), ("ap3.png", 0, "AP", 0.35), ("x1.png", 1, "", 0.60),
         ("x2.png", 0, "", 0.25), ("lat.png", 1, "LL", 0.45)]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def film(size: float, h: int = 120, w: int = 100) -> np.ndarray:
    img = np.full((h, w), 60, np.uint8)
    cv2.ellipse(img, (w // 2, h * 3 // 5), (max(2, int(w * 0.45 * size)), max(2, int(h * 0.4 * size))), 0, 0, 360,
                230, -1)
    return img


@pytest.fixture()
def site(tmp_path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "site"
    folder.mkdir()
    for name, _, _, size in FILMS:
        assert cv2.imwrite(str(folder / name), film(size))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "View Position"])
        w.writerows((name, y, g) for name, y, g, _ in FILMS)
    return maps_model(tmp_path / "maps.onnx"), folder, labels


def test_metrics_are_reported_per_group(site, tmp_path):
    model, folder, labels = site
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", model, "--labels", labels, "--group-column", "View Position")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        prob = {r["path"]: float(r["prob_cardiomegaly"]) for r in csv.DictReader(fh)}
    assert len(set(prob.values())) == len(FILMS)  # the films differ, so each group's AUROC means something
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    thr = manifest["threshold"]["value"] if isinstance(manifest["threshold"], dict) else manifest["threshold"]
    groups = manifest["labels"]["groups"]
    assert groups["column"] == "View Position"
    assert [g["group"] for g in groups["groups"]] == ["", "AP", "LL", "PA"]
    for g in groups["groups"]:
        mine = [(y, round(prob[name], 6)) for name, y, grp, _ in FILMS if grp == g["group"]]
        expected = metrics.summarize([y for y, _ in mine], [p for _, p in mine], thr)
        assert (g["n"], g["n_positive"], g["tp"], g["fp"], g["tn"], g["fn"]) == (
            expected["n"], expected["n_positive"], expected["tp"], expected["fp"], expected["tn"], expected["fn"])
        if expected["auroc"] != expected["auroc"]:  # one class: NaN, written as null
            assert g["auroc"] is None
        else:
            assert g["auroc"] == pytest.approx(expected["auroc"], abs=1e-9)
        for key in ("sensitivity", "specificity"):  # NaN (undefined) is written as null
            assert g[key] == (None if expected[key] != expected[key] else pytest.approx(expected[key]))
        assert (g["labelled"], g["failed"], g["not_reached"]) == (g["n"], 0, 0)
    by = {g["group"]: g for g in groups["groups"]}
    assert by["PA"]["auroc"] == pytest.approx(0.75) and by["AP"]["auroc"] == pytest.approx(1.0)
    assert by["LL"]["auroc"] is None  # one class: no AUROC
    # the overall figure is unchanged by grouping
    assert manifest["labels"]["metrics"]["n"] == len(FILMS)
    err = result.stderr
    assert "cxr-score: by 'View Position' (4 group(s)):" in err
    pa = by["PA"]
    assert (f"cxr-score:   'PA': n=4 (2 positive), AUROC {pa['auroc']:.4f} (95% CI {pa['auroc_ci95'][0]:.4f}-"
            f"{pa['auroc_ci95'][1]:.4f}); at {thr:g}: sensitivity {pa['sensitivity']:.4f}, specificity "
            f"{pa['specificity']:.4f}") in err
    assert "cxr-score:   '' (blank): n=2 (1 positive)" in err
    assert "cxr-score:   'LL': n=1 (1 positive), AUROC n/a (one class)" in err


def test_a_group_whose_films_all_failed_is_reported_not_dropped(site, tmp_path):
    """A scanner whose every film is unreadable is what grouping should show: its group is listed with n 0 and
    its failed films counted, in the summary, the manifest and the report."""
    model, folder, labels = site
    for name in ("ct1.png", "ct2.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    labels.write_text(labels.read_text() + "ct1.png,1,CT\nct2.png,0,CT\n")
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels, "--group-column",
                 "View Position", "--report", tmp_path / "report.html")
    assert result.exit_code == 3, result.output  # some files failed
    groups = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]["groups"]["groups"]
    ct = {g["group"]: g for g in groups}["CT"]
    assert (ct["labelled"], ct["n"], ct["failed"], ct["not_reached"], ct["auroc"]) == (2, 0, 2, 0, None)
    assert "cxr-score:   'CT': no labelled film scored (2 labelled; 2 failed to score)" in result.stderr
    assert "<td>CT</td><td>0 (0); 2 failed</td>" in (tmp_path / "report.html").read_text()


def test_without_the_option_nothing_is_grouped(site, tmp_path):
    model, folder, labels = site
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels)
    assert result.exit_code == 0, result.output
    assert "groups" not in json.loads((tmp_path / "r.manifest.json").read_text())["labels"]
    assert "by View Position" not in result.stderr


@pytest.mark.parametrize("case", ["no_labels", "missing", "label_column", "two_groups", "ctr_column", "too_many"])
def test_a_group_column_that_cannot_be_used_is_a_usage_error_before_anything_is_written(site, tmp_path, case,
                                                                                          monkeypatch):
    model, folder, labels = site
    args = [folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels, "--group-column",
            "View Position"]
    expected = "--group-column"
    if case == "no_labels":
        args = args[:5] + ["--group-column", "site"]
        expected = "--group-column names a column of the --labels file: give --labels too"
    elif case == "missing":
        args[-1] = "site"
        expected = "missing column 'site' (the groups to report the metrics by)"
    elif case == "label_column":
        args[-1] = "label"
        expected = "'label' is the label column"
    elif case == "two_groups":
        labels.write_text(labels.read_text() + "pa1.png,1,AP\n")
        expected = "'pa1.png' is given two 'View Position' values, 'PA' and 'AP'"
    elif case == "ctr_column":
        labels.write_text(labels.read_text().replace("View Position", "ctr"))
        args = args[:-2] + ["--ctr-column", "ctr", "--group-column", "ctr"]
        expected = "'ctr' is the column of manual cardiothoracic ratios (--ctr-column)"
    else:
        monkeypatch.setattr("cxr.runtime.labels.MAX_GROUPS", 3)
        expected = "column 'View Position' has 4 different values among the 10 labelled images that match"
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.manifest.json").exists()


def test_group_names_are_inert_in_the_terminal_and_the_report(site, tmp_path):
    model, folder, labels = site
    hostile = "<script>alert(1)</script>\x1b[2J\rcxr-score: error: forged"
    text = labels.read_text().replace(",PA", ",PA" + hostile.replace("\r", "").replace("\x1b", "")).replace(
        ",AP\n", ',"' + hostile + '"\n')
    labels.write_text(text)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels, "--group-column",
                 "View Position", "--report", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert not any(line.startswith("cxr-score: error: forged") for line in result.stderr.splitlines())
    # shown quoted and escaped on its own group line, never as a line of its own
    assert any(line.startswith("cxr-score:   '<script>alert(1)</script>\\") and line.endswith("forged': n=3 (1 "
               "positive), AUROC 1.0000 (95% CI 1.0000-1.0000); at 0.5: sensitivity 0.0000, specificity 1.0000")
               for line in result.stderr.splitlines()), result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h3>By View Position</h3>" in page
    groups = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]["groups"]["groups"]
    assert hostile in [g["group"] for g in groups]  # kept exactly in the manifest (JSON escapes it)


def test_the_ratio_is_compared_per_group_too(site, tmp_path):
    """With --ctr-column, each group also gets the ctr column's agreement with the manual ratios on its own films
    (what the hospital left out of training gets is not what the others get)."""
    _, folder, labels = site
    model = maps_model(tmp_path / "ctr.onnx", ctr_follows_brightness=True)
    manual = {name: f"{0.38 + 0.02 * i:.2f}" for i, (name, *_) in enumerate(FILMS)}
    manual["ap3.png"] = ""  # not measured: in no group's comparison
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "site", "ctr_manual"])
        w.writerows((name, y, "A" if i % 2 else "B", manual[name]) for i, (name, y, _, _) in enumerate(FILMS))
    out = tmp_path / "r.csv"
    result = run(folder, "--out", out, "--model", model, "--labels", labels, "--ctr-column", "ctr_manual",
                 "--group-column", "site", "--report", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    groups = json.loads((tmp_path / "r.manifest.json").read_text())["labels"]["groups"]["groups"]
    assert [g["group"] for g in groups] == ["A", "B"]
    for g in groups:
        mine = [i for i, (name, *_) in enumerate(FILMS) if ("A" if i % 2 else "B") == g["group"] and manual[name]]
        measured = [float(rows[FILMS[i][0]]["ctr"]) for i in mine]
        expected = metrics.ratio_agreement(measured, [float(manual[FILMS[i][0]]) for i in mine])
        a = g["ctr_agreement"]
        # results.csv rounds ctr to 4 decimals
        assert a["n"] == len(mine) and a["mae"] == pytest.approx(expected["mae"], abs=1e-4)
        assert a["bias"] == pytest.approx(expected["bias"], abs=1e-4)
        assert f"'{g['group']}': n={g['n']} ({g['n_positive']} positive)" in result.stderr
        assert f"; ctr vs manual on {a['n']} films: mean absolute error {a['mae']:.4f}" in result.stderr
    assert [g["ctr_agreement"]["n"] for g in groups] == [5, 4]  # ap3.png (group B) has no manual ratio
    assert "<th>ctr error vs manual</th>" in (tmp_path / "report.html").read_text()


def test_a_hostile_column_name_is_inert_too(site, tmp_path):
    model, folder, labels = site
    column = "<b>view</b>\x1b[31m"
    labels.write_text(labels.read_text().replace("View Position", column))
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--labels", labels, "--group-column", column,
                 "--report", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stderr and "cxr-score: by '<b>view</b>\\" in result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "<b>view</b>" not in page and "<h3>By &lt;b&gt;view&lt;/b&gt;" in page
