"""cxr.runtime.labels: the one label parser (cxr-train, cxr-score, cxr-export) and matching labelled paths to the
scored images however the labels file writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.export.samples import read_labels as export_labels
from cxr.runtime.labels import LabelsError, match_labels, parse_label, read_labels
from cxr.train import datasets

VALUES = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "False": 0, "YES": 1, "no": 0, "positive": 1,
          "negative": 0, "y": 1, "n": 0, "t": 1, "f": 0, "Cardiomegaly": 1, "normal": 0, " 1 ": 1, "": None,
          "maybe": None, "2": None, "-1": None}


@pytest.mark.parametrize("value, expected", VALUES.items())
def test_one_parser_for_every_command(value, expected):
    assert parse_label(value) == expected
    assert datasets.parse_label is parse_label  # cxr-train's CSV datasets read labels with the same function


def test_class_names_are_configurable():
    assert parse_label("effusion", ("Effusion", "Clear")) == 1 and parse_label("clear", ("Effusion", "Clear")) == 0
    assert parse_label("Cardiomegaly", ("Effusion", "Clear")) is None


def test_score_and_export_read_class_names_and_true_false(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,Cardiomegaly\nb.png,Normal\nc.png,true\nd.png,false\ne.png,maybe\n")
    table = read_labels(labels)
    assert table.labels == {"a.png": 1, "b.png": 0, "c.png": 1, "d.png": 0}
    assert (table.ignored, table.bad_values) == (1, ["maybe"])
    labels.write_text("path,label\na.png,Cardiomegaly\nb.png,Normal\nc.png,true\nd.png,\n")
    assert list(export_labels(labels, tmp_path).values()) == [1, 0, 1, -1]


def test_columns_can_be_named_and_missing_ones_are_named(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("image,finding\na.png,1\n")
    assert read_labels(labels, path_column="image", label_column="finding").labels == {"a.png": 1}
    with pytest.raises(LabelsError, match=r"missing column\(s\) 'path' \(the image path\), 'label' or "
                                          r"'cardiomegaly' \(the label\); the CSV has \['image', 'finding'\]"):
        read_labels(labels)


def _match(tmp_path: Path, rows: list[str], files: list[str], folder: str = "data/images"):
    root = tmp_path / folder
    labels = tmp_path / "data" / "labels.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("path,label\n" + "".join(f"{r},1\n" for r in rows))
    return match_labels(read_labels(labels), root, [Path(f) for f in files])


def test_paths_match_relative_absolute_labels_dir_and_unique_names(tmp_path):
    root = tmp_path / "data" / "images"
    rows = ["a.png", f"{root}/sub/b.png", "images/sub/c.png", "d.png", "./sub/e.png"]
    files = ["a.png", "sub/b.png", "sub/c.png", "other/d.png", "sub/e.png"]
    match = _match(tmp_path, rows, files)
    assert match.by_file == {f: 1 for f in files}
    assert dict(match.how) == {"relative": 2, "absolute": 1, "labels_dir": 1, "name": 1}
    assert match.unmatched == [] and match.ambiguous == []


def test_absolute_paths_through_a_symlinked_folder_match(tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{real}/sub/a.png,0\n")
    assert match_labels(read_labels(labels), tmp_path / "link", [Path("sub/a.png")]).by_file == {"sub/a.png": 0}


def test_ambiguous_names_and_strangers_do_not_match_and_are_described(tmp_path):
    match = _match(tmp_path, ["a.png", "/elsewhere/x.png", "zzz/y.png"], ["p1/a.png", "p2/a.png"])
    assert match.by_file == {} and match.ambiguous == ["a.png"] and match.unmatched == ["/elsewhere/x.png",
                                                                                        "zzz/y.png"]
    text = match.describe(read_labels(tmp_path / "data" / "labels.csv"), [Path("p1/a.png"), Path("p2/a.png")])
    assert "0 of 2 scored image(s) have a label" in text and "'/elsewhere/x.png'" in text
    assert "'p1/a.png'" in text and "relative to the scored folder" in text and "bare file name" in text


def test_two_spellings_of_one_image_with_different_labels_are_refused(tmp_path):
    root = tmp_path / "data" / "images"
    labels = tmp_path / "data" / "labels.csv"
    labels.parent.mkdir(parents=True)
    labels.write_text(f"path,label\na.png,1\n{root}/a.png,0\n")
    with pytest.raises(LabelsError, match="same image 'a.png' with different labels"):
        match_labels(read_labels(labels), root, [Path("a.png")])


def test_manual_ratios_are_read_beside_the_labels(tmp_path):
    """--ctr-column: a number in (0, 1] per labelled line; blank or anything else ignored and counted, never
    guessed; unlabelled lines give no ratio; a second, different ratio for one path is refused."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,ctr_manual\na.png,1,0.55\nb.png,0, 0.42 \nc.png,0,\nd.png,1,abc\ne.png,1,1.5\n"
                      "f.png,0,0\ng.png,0,nan\nh.png,,0.47\ni.png,1,1\n")
    table = read_labels(labels, ratio_column="ctr_manual")
    assert table.ratios == {"a.png": 0.55, "b.png": 0.42, "i.png": 1.0}
    assert (table.ratio_blank, table.ratio_ignored) == (1, 4) and table.ratio_bad_values == ["abc", "1.5", "0", "nan"]
    assert "h.png" not in table.labels and table.ignored == 1
    assert read_labels(labels).ratios == {} and read_labels(labels).ratio_column is None
    with pytest.raises(LabelsError, match=r"missing column 'ratio' \(the manual cardiothoracic ratio\)"):
        read_labels(labels, ratio_column="ratio")
    labels.write_text("path,label,ctr\na.png,1,0.55\na.png,1,0.56\n")
    with pytest.raises(LabelsError, match=r"line 3: 'a.png' is given two manual ratios, 0.55 and 0.56"):
        read_labels(labels, ratio_column="ctr")


def test_manual_ratios_follow_the_matched_paths(tmp_path):
    labels = tmp_path / "data" / "labels.csv"
    labels.parent.mkdir(parents=True)
    labels.write_text("path,label,ctr\nimages/a.png,1,0.55\nb.png,0,0.40\n")
    match = match_labels(read_labels(labels, ratio_column="ctr"), tmp_path / "data" / "images",
                         [Path("a.png"), Path("sub/b.png")])
    assert match.ratio_by_file == {"a.png": 0.55, "sub/b.png": 0.40}
    labels.write_text("path,label,ctr\nimages/a.png,1,0.55\na.png,1,0.60\n")
    with pytest.raises(LabelsError, match="same image 'a.png' with different manual ratios"):
        match_labels(read_labels(labels, ratio_column="ctr"), tmp_path / "data" / "images", [Path("a.png")])


def test_every_film_with_a_manual_ratio_is_counted_once(tmp_path):
    """Compared (flagged or not), not measurable (ok without a ctr, or no_anatomy), or failed: none lost."""
    from cxr.runtime import labels as labels_module
    from cxr.runtime.labels import LabelMatcher
    from cxr.runtime.scoring import NO_ANATOMY, ScoreRow

    assert labels_module.NO_ANATOMY == NO_ANATOMY
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,ctr\n" + "".join(f"{n}.png,{i % 2},0.{40 + i}\n" for i, n in enumerate("abcdef")))
    table = read_labels(csv_path, ratio_column="ctr")
    matcher = LabelMatcher(table, match_labels(table, tmp_path, [Path(f"{n}.png") for n in "abcdef"]))
    for row in (ScoreRow("a.png", "ok", 0.2, ctr=0.41), ScoreRow("b.png", "ok", 0.7, ctr=0.51),
                ScoreRow("c.png", "ok", 0.9, ctr=0.92, ctr_flag="lungs_cut_by_edge"),
                ScoreRow("d.png", "ok", 0.4, ctr=None, ctr_flag="no_heart"),
                ScoreRow("e.png", "error", error_code=NO_ANATOMY), ScoreRow("f.png", "error", error_code="truncated")):
        matcher.add(row)
    a = matcher.report(0.5, n_boot=50)["ctr_agreement"]
    assert (a["n"], a["not_measured"], a["not_scored"], a["matched_ratios"]) == (3, 2, 1, 6)
    assert a["mae"] == pytest.approx((0.01 + 0.10 + 0.50) / 3)
    assert a["unflagged"]["n"] == 2 and a["unflagged"]["mae"] == pytest.approx(0.055)


def test_groups_are_read_beside_the_labels_and_follow_the_matched_paths(tmp_path):
    """--group-column: each labelled line's group as written (stripped; blank is a group of its own); one path in
    two groups is refused, in the file and after matching; a missing column is named."""
    from cxr.runtime.labels import BLANK_GROUP, GroupsError

    labels = tmp_path / "data" / "labels.csv"
    labels.parent.mkdir(parents=True)
    labels.write_text("path,label,view\nimages/a.png,1, AP \nb.png,0,PA\nc.png,1,\nd.png,,AP\n")
    table = read_labels(labels, group_column="view")
    assert table.groups == {"images/a.png": "AP", "b.png": "PA", "c.png": BLANK_GROUP}  # d.png has no label
    assert read_labels(labels).groups == {} and read_labels(labels).group_column is None
    match = match_labels(table, tmp_path / "data" / "images", [Path("a.png"), Path("sub/b.png"), Path("c.png")])
    assert match.group_by_file == {"a.png": "AP", "sub/b.png": "PA", "c.png": BLANK_GROUP}
    with pytest.raises(GroupsError, match=r"missing column 'site' \(the groups to report the metrics by\)"):
        read_labels(labels, group_column="site")
    with pytest.raises(GroupsError, match="'label' is the label column"):
        read_labels(labels, group_column="label")
    labels.write_text("path,label,view,ctr\na.png,1,AP,0.5\n")
    with pytest.raises(GroupsError, match="'ctr' is the column of manual cardiothoracic ratios"):
        read_labels(labels, ratio_column="ctr", group_column="ctr")
    labels.write_text("path,label,view\na.png,1,AP\na.png,1,PA\n")
    with pytest.raises(GroupsError, match=r"line 3: 'a.png' is given two 'view' values, 'AP' and 'PA'"):
        read_labels(labels, group_column="view")
    labels.write_text("path,label,view\nimages/a.png,1,AP\na.png,1,PA\n")
    with pytest.raises(GroupsError, match="same image 'a.png' in different 'view' groups"):
        match_labels(read_labels(labels, group_column="view"), tmp_path / "data" / "images", [Path("a.png")])


def test_group_report_is_each_groups_own_summary(tmp_path):
    """Per group exactly what `metrics.summarize` gives on that group's scored, labelled films (failed and unlabelled
    rows in no group), groups sorted with the blank one first; a one-class group has no AUROC."""
    import json
    import math

    from cxr.runtime import metrics
    from cxr.runtime.labels import LabelMatcher
    from cxr.runtime.scoring import ScoreRow

    rows = [("a", 1, "PA", 0.9), ("b", 0, "PA", 0.2), ("c", 1, "PA", 0.4), ("d", 0, "PA", 0.6), ("e", 1, "AP", 0.8),
            ("f", 0, "AP", 0.7), ("g", 0, "AP", 0.3), ("h", 1, "", 0.5), ("i", 0, "", 0.1), ("j", 1, "lat", 0.3)]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,view\n" + "".join(f"{n}.png,{y},{g}\n" for n, y, g, _ in rows)
                        + "k.png,1,AP\nm.png,0,CT\n")
    table = read_labels(csv_path, group_column="view")
    files = [Path(f"{n}.png") for n in "abcdefghijklm"]
    matcher = LabelMatcher(table, match_labels(table, tmp_path, files))
    assert matcher.groups_matched() == ["", "AP", "CT", "PA", "lat"]
    for n, _, _, p in rows:
        matcher.add(ScoreRow(f"{n}.png", "ok", p))
    matcher.add(ScoreRow("k.png", "error", error_code="truncated"))  # labelled AP, failed: in no group's figures
    matcher.add(ScoreRow("l.png", "ok", 0.99))  # scored without a label
    matcher.add(ScoreRow("m.png", "error", error_code="truncated"))  # the only CT film: the group is still reported
    report = matcher.report(0.5, n_boot=200)["groups"]
    assert report["column"] == "view" and [g["group"] for g in report["groups"]] == ["", "AP", "CT", "PA", "lat"]
    by = {g["group"]: g for g in report["groups"]}
    assert {k: by["CT"][k] for k in ("labelled", "failed", "not_reached", "n")} == {
        "labelled": 1, "failed": 1, "not_reached": 0, "n": 0}
    assert math.isnan(by["CT"]["auroc"]) and math.isnan(by["CT"]["sensitivity"])
    assert (by["AP"]["labelled"], by["AP"]["failed"], by["PA"]["failed"]) == (4, 1, 0)
    for g in report["groups"]:
        if g["group"] == "CT":
            continue
        ys = [y for _, y, grp, _ in rows if grp == g["group"]]
        ps = [p for _, _, grp, p in rows if grp == g["group"]]
        expected = metrics.summarize(ys, ps, 0.5, n_boot=200)
        got = {k: v for k, v in g.items() if k not in ("group", "labelled", "failed", "not_reached")}
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN too
    assert (by["AP"]["n"], by["AP"]["n_positive"], by["AP"]["auroc"]) == (3, 1, 1.0)
    assert by["PA"]["auroc"] == pytest.approx(0.75) and by["PA"]["sensitivity"] == pytest.approx(0.5)
    assert math.isnan(by["lat"]["auroc"]) and by["lat"]["sensitivity"] == 0.0
    assert "groups" not in LabelMatcher(read_labels(csv_path)).report(0.5, n_boot=10)
    # a run cut short: the films of a group not reached yet are counted as such
    cut = LabelMatcher(table, match_labels(table, tmp_path, files))
    cut.add(ScoreRow("a.png", "ok", 0.9))
    pa = {g["group"]: g for g in cut.report(0.5, n_boot=10)["groups"]["groups"]}["PA"]
    assert (pa["labelled"], pa["n"], pa["failed"], pa["not_reached"]) == (4, 1, 0, 3)
