"""results.csv format, spreadsheet-formula quoting, atomic publishing and .partial on crash; the manifest; labels."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from cxr.runtime import metrics
from cxr.runtime.labels import LabelMatcher, LabelsError, read_labels
from cxr.runtime.results import (
    COLUMNS,
    ResultsWriter,
    csv_cells,
    manifest_path,
    partial_path,
    safe_cell,
    write_json_atomic,
)
from cxr.runtime.scoring import ScoreRow


def ok(path: str, prob: float, label: int) -> ScoreRow:
    return ScoreRow(path, "ok", probability=prob, logit=0.0, label_pred=label)


def err(path: str, code: str = "truncated", message: str = "file ends early") -> ScoreRow:
    return ScoreRow(path, "error", error_code=code, error_message=message)


def test_csv_columns_and_cell_format_exactly(tmp_path):
    out = tmp_path / "results.csv"
    with ResultsWriter(out) as writer:
        writer.write(ok("a/b.png", 0.123456789, 0))
        writer.write(ok("c.dcm", 1.0, 1))
        writer.write(err("d.jpg"))
        writer.commit()
    assert out.read_text() == (
        "path,prob_cardiomegaly,cardiomegaly,status,error\n"
        "a/b.png,0.123457,0,ok,\n"
        "c.dcm,1.000000,1,ok,\n"
        "d.jpg,,,error,truncated: file ends early\n")
    assert tuple(next(csv.reader(out.open()))) == COLUMNS
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary file left behind


@pytest.mark.parametrize("text, expected", [
    ("=cmd|' /C calc'!A0.png", "'=cmd|' /C calc'!A0.png"),
    ("+1.png", "'+1.png"),
    ("-2.png", "'-2.png"),
    ("@SUM(A1).png", "'@SUM(A1).png"),
    ("\tx.png", "'\tx.png"),
    ("\rx.png", "'\rx.png"),
    ("normal/a-b=c.png", "normal/a-b=c.png"),
    ("", ""),
])
def test_formula_cells_are_quoted(text, expected):
    assert safe_cell(text) == expected


def test_formula_quoting_applies_to_the_path_cell_and_csv_quoting_to_commas(tmp_path):
    out = tmp_path / "r.csv"
    with ResultsWriter(out) as writer:
        writer.write(ok("=HYPERLINK(x).png", 0.5, 1))
        writer.write(err("a,b\nc.png", "unreadable", "Permission denied"))
        writer.commit()
    rows = list(csv.reader(out.open(newline="")))
    assert rows[1][0] == "'=HYPERLINK(x).png"
    assert rows[2][0] == "a,b\\x0ac.png" and rows[2][4] == "unreadable: Permission denied"  # escaped: no new row


def test_file_names_that_are_not_utf8_are_escaped_not_fatal(tmp_path):
    name = os.fsdecode(b"scan\xff.png")  # a byte that no UTF-8 text has, as Linux file names may contain
    out = tmp_path / "r.csv"
    with ResultsWriter(out) as writer:
        writer.write(ok(name, 0.5, 1))
        writer.commit()
    assert out.read_text(encoding="utf-8").splitlines()[1] == "scan\\xff.png,0.500000,1,ok,"  # escaped byte


@pytest.mark.parametrize("crash", [KeyboardInterrupt, RuntimeError])
def test_crash_keeps_partial_and_never_touches_the_final_name(tmp_path, crash):
    out = tmp_path / "results.csv"
    out.write_text("previous results\n")
    with pytest.raises(crash):
        with ResultsWriter(out) as writer:
            writer.write(ok("1.png", 0.25, 0))
            writer.write(err("2.png"))
            raise crash()
    assert out.read_text() == "previous results\n"
    partial = partial_path(out)
    assert partial.name == "results.csv.partial"
    assert partial.read_text().splitlines() == [",".join(COLUMNS), "1.png,0.250000,0,ok,",
                                                "2.png,,,error,truncated: file ends early"]
    assert writer.partial == partial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.partial"]


def test_a_second_interrupted_run_keeps_the_first_ones_rows_and_a_complete_run_removes_both(tmp_path):
    out = tmp_path / "results [v2].csv"  # glob characters in the name must not hide its partials
    same = {"folder": "/scans", "model_sha256": "ab" * 32}  # the same run's identity each time
    for rows in (["1.png", "2.png", "3.png"], ["1.png"]):
        with pytest.raises(KeyboardInterrupt):
            with ResultsWriter(out, identity=same) as writer:
                for name in rows:
                    writer.write(ok(name, 0.25, 0))
                raise KeyboardInterrupt
    assert writer.partial == partial_path(out, 2) and writer.partial.name == "results [v2].csv.partial.2"
    assert len(partial_path(out).read_text().splitlines()) == 4  # the longer, earlier run: not overwritten
    assert len(partial_path(out, 2).read_text().splitlines()) == 2
    with ResultsWriter(out, identity=same) as again:
        again.write(ok("1.png", 0.25, 0))
        again.write(ok("2.png", 0.75, 1))
        again.commit()
    assert again.removed_partials == [partial_path(out), partial_path(out, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results [v2].csv"]
    assert len(out.read_text().splitlines()) == 3
    with ResultsWriter(out) as third:  # nothing stale: nothing removed
        third.commit()
    assert third.removed_partials == [] and out.read_text().splitlines() == [",".join(COLUMNS)]


def test_crash_before_any_row_leaves_nothing(tmp_path):
    out = tmp_path / "results.csv"
    with pytest.raises(KeyboardInterrupt):
        with ResultsWriter(out):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_rows_are_on_disk_while_the_run_goes_on(tmp_path):
    out = tmp_path / "results.csv"
    writer = ResultsWriter(out)
    writer.write(ok("1.png", 0.5, 1))
    assert writer.tmp.read_text().splitlines()[1] == "1.png,0.500000,1,ok,"  # flushed, not buffered
    assert not out.exists()
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_results_get_ordinary_file_permissions(tmp_path):
    out = tmp_path / "results.csv"
    writer = ResultsWriter(out)
    writer.commit()
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("setup, error", [
    (lambda d: d / "missing" / "r.csv", FileNotFoundError),
    (lambda d: (d / "adir").mkdir() or d / "adir", IsADirectoryError),
])
def test_unwritable_locations_fail_before_any_row(tmp_path, setup, error):
    with pytest.raises(error):
        ResultsWriter(setup(tmp_path))


@pytest.mark.parametrize("out, expected", [
    ("results.csv", "results.manifest.json"),
    ("run.CSV", "run.manifest.json"),
    ("scores", "scores.manifest.json"),
    ("a.b.csv", "a.b.manifest.json"),
])
def test_manifest_name(out, expected):
    assert manifest_path(Path("/x") / out) == Path("/x") / expected


def test_json_is_atomic_and_nan_becomes_null(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"auroc": math.nan, "ci": [0.5, math.inf], "n": 3})
    assert json.loads(path.read_text()) == {"auroc": None, "ci": [0.5, None], "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_csv_cells_of_error_rows_are_empty_where_unknown():
    assert csv_cells(err("x.png", "blank", "every pixel is 7")) == ["x.png", "", "", "error", "blank: every pixel is 7"]


# ---- labels ----------------------------------------------------------------------------------------------------

def test_labels_are_read_normalized_and_bad_values_ignored(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("path,label,extra\n./a.png,1,x\nsub\\b.png,0,y\nc.png,,z\nd.png,maybe,w\ne.png, 1 ,v\n")
    table = read_labels(path)
    assert table.labels == {"a.png": 1, "sub/b.png": 0, "e.png": 1}
    assert table.ignored == 2


def test_cardiomegaly_column_is_accepted_as_the_label(tmp_path):
    """cxr-phantom's and ../shared/data's labels.csv name the label column `cardiomegaly`; `label` wins if both."""
    path = tmp_path / "labels.csv"
    path.write_text("path,cardiomegaly,ctr\na.png,1,0.55\nb.png,0,0.41\nc.png,,\n")
    assert read_labels(path).labels == {"a.png": 1, "b.png": 0}
    path.write_text("path,cardiomegaly,label\na.png,1,0\n")
    assert read_labels(path).labels == {"a.png": 0}


@pytest.mark.parametrize("text, match", [
    ("file,label\na.png,1\n", "missing column.*path"),
    ("path,finding\na.png,1\n", "missing column.*label"),
    ("", "missing column"),
    ("path,label\na.png,1\na.png,0\n", "labelled both 0 and 1"),
])
def test_unusable_labels_files_are_refused(tmp_path, text, match):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelsError, match=match):
        read_labels(path)


def test_label_matching_counts_and_metrics(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("path,label\na.png,1\nb.png,0\nc.png,1\nd.png,0\nfailed.png,1\nmissing.png,0\n")
    matcher = LabelMatcher(read_labels(path))
    rows = [ok("a.png", 0.9, 1), ok("b.png", 0.2, 0), ok("c.png", 0.4, 0), ok("d.png", 0.6, 1),
            err("failed.png"), ok("nolabel.png", 0.5, 1)]
    for row in rows:
        matcher.add(row)
    report = matcher.report(0.5, n_boot=200)
    assert {k: report[k] for k in ("labelled", "matched", "labelled_not_found", "labelled_not_scored",
                                   "scored_without_label")} == {"labelled": 6, "matched": 4, "labelled_not_found": 1,
                                                                "labelled_not_scored": 1, "scored_without_label": 1}
    assert report["metrics"] == metrics.summarize([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], 0.5, n_boot=200)
    assert report["metrics"]["auroc"] == 0.75
