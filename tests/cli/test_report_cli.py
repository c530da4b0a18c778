"""cxr-score --overlays DIR --report FILE.html (--labels): files written, only where named, for a folder with good,
broken and hostile-named images; usage errors for outputs that would land in the scored folder; old models."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.results import escape_path  # noqa: E402
from tests.runtime.test_overlay_fixtures import HOSTILE_NAMES, maps_model, review  # noqa: E402,F401


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def write_labels(path: Path, labels: dict[str, int]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(labels.items())
    return path


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def report_data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="cxr-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(block)


@pytest.fixture()
def scored(review, tmp_path):
    """One full run: (tmp_path, folder, names, result)."""
    model, folder, names = review
    ok = names["good"] + names["hostile"]
    labels = write_labels(tmp_path / "labels.csv", {rel: i % 2 for i, rel in enumerate(ok)})
    before = files_under(folder)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--device", "cpu", "--labels", labels,
                 "--overlays", tmp_path / "o", "--report", tmp_path / "report.html", "--batch-size", "3")
    assert files_under(folder) == before, "nothing is written into the scored folder"
    return tmp_path, folder, names, result


def test_overlays_one_png_per_scored_image_at_its_relative_path(scored):
    tmp_path, folder, names, result = scored
    assert result.exit_code == 3, result.output  # the broken files are error rows
    ok = names["good"] + names["hostile"]
    assert files_under(tmp_path / "o") == sorted(ok), "no overlay for error rows, none elsewhere"
    import cv2

    for rel in ok:
        drawing = cv2.imread(str(tmp_path / "o" / rel))
        source = cv2.imread(str(folder / rel), cv2.IMREAD_UNCHANGED)
        assert drawing.shape[:2] == source.shape[:2] and drawing.ndim == 3
    manifest = json.loads((tmp_path / "r.manifest.json").read_text())
    assert manifest["outputs"]["overlays"]["written"] == len(ok)
    assert manifest["outputs"]["overlays"]["failed"] == 0
    assert f"overlays: {len(ok)} PNG(s) in {tmp_path / 'o'}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "maps.onnx", "o", "r.csv",
                                                          "r.manifest.json", "report.html", "report_thumbs", "xrays"]


def test_results_gain_label_and_ctr_columns(scored):
    tmp_path, folder, names, _ = scored
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert header == ["path", "prob_cardiomegaly", "cardiomegaly", "status", "error", "ctr", "ctr_flag", "label"]
    rows = read_rows(tmp_path / "r.csv")
    ok = names["good"] + names["hostile"]
    for i, rel in enumerate(ok):
        key = escape_path(rel)  # the cell; the label was matched on the real name
        assert rows[key]["label"] == str(i % 2) and rows[key]["ctr"] == "0.3542"
    for rel in names["bad"]:
        assert rows[rel]["label"] == "" and rows[rel]["status"] == "error"


def test_report_is_self_contained_and_names_are_inert(scored):
    tmp_path, folder, names, _ = scored
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp and "http" not in csp
    assert len(re.findall(r"<script", page)) == 2 and len(re.findall(r"</script>", page)) == 2
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "nothing from the network"
    for name in HOSTILE_NAMES:
        for piece in re.findall(r"<[a-z/][^ ]*", name):  # tags from names appear nowhere as markup
            assert piece not in page, piece
    data = report_data(page)
    ok = names["good"] + names["hostile"]
    assert sorted(r["p"] for r in data["rows"]) == sorted(ok + names["bad"])
    assert data["labels"] is True and data["ctr"] is True
    thumbs = tmp_path / "report_thumbs"
    assert data["thumbs"] == "report_thumbs"
    assert len(list(thumbs.glob("*.jpg"))) == 2 * len(ok)
    by_path = {r["p"]: r for r in data["rows"]}
    for rel in ok:
        row = by_path[rel]
        assert row["img"] == 1 and (thumbs / f"{row['i']:06d}o.jpg").is_file()
        assert row["o"].startswith("./o/") and ":" not in row["o"] and "<" not in row["o"]
    for rel in names["bad"]:
        assert by_path[rel]["img"] == 0 and by_path[rel]["s"] == "error" and by_path[rel]["e"]
    assert "Against the labels" in page and "<svg class=\"roc\"" in page and "Wilson" in page


def test_report_size_grows_with_rows_not_images(review, tmp_path):
    model, folder, names = review
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--report", tmp_path / "r.html",
                 "--quiet", "--device", "cpu")
    assert result.exit_code == 3
    size = (tmp_path / "r.html").stat().st_size
    n = len(names["good"] + names["hostile"] + names["bad"])
    assert size < 30_000 + 600 * n, size  # template + ~a few hundred bytes per row; no embedded pixels
    assert not (tmp_path / "o").exists()


def test_an_old_model_without_maps_gets_radiograph_overlays_and_a_note(tiny_model, tmp_path):
    from tests.badfiles import write_good_files

    folder = tmp_path / "good"
    good = write_good_files(folder)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", tiny_model, "--overlays", tmp_path / "o",
                 "--report", tmp_path / "r.html", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "no activation map (cam) output" in result.stderr
    assert len(files_under(tmp_path / "o")) == len(good)
    page = (tmp_path / "r.html").read_text()
    assert "no activation map output" in page and report_data(page)["ctr"] is False


@pytest.mark.parametrize("where, message", [
    ("overlays_in_folder", "overlaps the scored folder"),
    ("folder_in_overlays", "overlaps the scored folder"),
    ("report_in_folder", "would lie in the scored folder"),
    ("report_not_html", "must end in .html"),
    ("report_is_out", "would overwrite the --out file"),
])
def test_outputs_that_would_land_on_inputs_are_usage_errors(review, tmp_path, where, message):
    model, folder, _ = review
    args = {"overlays_in_folder": ["--overlays", folder / "o"], "folder_in_overlays": ["--overlays", tmp_path],
            "report_in_folder": ["--report", folder / "r.html"], "report_not_html": ["--report", tmp_path / "r.csv2"],
            "report_is_out": ["--report", tmp_path / "r.html"]}[where]
    out = tmp_path / ("r.html" if where == "report_is_out" else "r.csv")
    before = files_under(tmp_path)
    result = run(folder, "--out", out, "--model", model, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert files_under(tmp_path) == before


def test_an_overlay_name_that_links_to_an_input_replaces_the_link_not_the_input(review, tmp_path):
    model, folder, names = review
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    victim = folder / "dark.png"
    original = victim.read_bytes()
    (out_dir / "bright.png").symlink_to(victim)
    result = run(folder, "--out", tmp_path / "r.csv", "--model", model, "--overlays", out_dir, "--quiet")
    assert result.exit_code == 3
    assert victim.read_bytes() == original
    assert not (out_dir / "bright.png").is_symlink() and (out_dir / "bright.png").stat().st_size > 0
