"""End to end: hostile file names give one row each in results.csv, round-trip through
unescape_path, match their labels by the real name, and never reach stderr raw."""

from __future__ import annotations

import csv
import os

import cv2
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from cxr.runtime.results import unescape_path  # noqa: E402
from tests.badfiles import chest_like  # noqa: E402

NAMES = ["x\r=2+3*4.png", "e\x1b[31mred\x1b[0m.png", "line\nbreak.png", "tab\tname.png", "=a.png", "'=a.png",
         os.fsdecode(b"scan\xff.png"), "scan\\xff.png", "bidi\u202egnp.png", "ok.png"]


def test_hostile_names_round_trip_and_stay_off_the_terminal(tmp_path, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    png = cv2.imencode(".png", chest_like(96, 96))[1].tobytes()
    for name in NAMES:
        (folder / name).write_bytes(png)
    os.mkfifo(folder / "fifo\x1b]0;evil\x07\x1b[2K\rcxr-score: error: forged.png")  # a walk warning names it
    labels = tmp_path / "labels.csv"
    # a labels file is UTF-8 text, and its backslashes are read as '/' (Windows-style paths)
    labelled = [n for n in NAMES if "\udcff" not in n and "\\" not in n]
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["path", "label"], *[[n, NAMES.index(n) % 2] for n in labelled]])
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(main, [str(folder), "--out", str(out), "--model", str(tiny_model), "--labels",
                                       str(labels)], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # the FIFO is a walk problem
    assert "\x1b" not in result.stderr and "\r" not in result.stderr and "\x07" not in result.stderr
    assert "cxr-score: error: forged" not in result.stderr.splitlines()[0]
    assert not any(line.startswith("cxr-score: error: forged") for line in result.stderr.splitlines())
    assert "fifo\\x1b]0;evil\\x07\\x1b[2K\\x0dcxr-score: error: forged.png" in result.stderr
    raw = out.read_bytes()
    assert raw.count(b"\n") == len(NAMES) + 1 and b"\r" not in raw and b"\x1b" not in raw
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {unescape_path(r["path"]): r for r in rows}
    assert sorted(by_name) == sorted(NAMES) and len(rows) == len(NAMES)
    for i, name in enumerate(NAMES):
        assert by_name[name]["status"] == "ok", name
        assert by_name[name]["label"] == (str(i % 2) if name in labelled else ""), name
    assert by_name["=a.png"] is not by_name["'=a.png"]
