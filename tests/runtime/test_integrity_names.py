"""Any file name round-trips through results.csv (escape_path / unescape_path): no control character
breaks a row or reaches a formula or the terminal, and two different names never give the same path cell."""

from __future__ import annotations

import csv
import io
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cxr.runtime.results import ResultsWriter, escape_path, escape_text, unescape_path  # noqa: E402
from cxr.runtime.scoring import ScoreRow  # noqa: E402

FORMULA = ("=", "+", "-", "@", "\t", "\r")

# Names as Linux gives them to Python: any bytes but NUL and '/' per component, decoded by os.fsdecode
# (undecodable bytes become surrogates). Plus arbitrary text, and the hostile characters weighted up.
HOSTILE = st.sampled_from(list("=+-@'\\\t\r\n\x1b\x00\x7f\x85\u202e\u2028\ufeff,\"x") + ["\\x1b", "\\\\", "''"])
BYTE_NAMES = st.binary(min_size=1, max_size=24).map(lambda b: os.fsdecode(b.replace(b"\x00", b"")) or "a")
TEXT_NAMES = st.lists(st.one_of(HOSTILE, st.characters(), st.text(max_size=3)), min_size=1, max_size=12).map("".join)
NAMES = st.one_of(BYTE_NAMES, TEXT_NAMES)


@settings(max_examples=800, deadline=None)
@given(NAMES)
def test_round_trip_and_safe_cell(name):
    cell = escape_path(name)
    assert unescape_path(cell) == name
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in cell)
    assert not cell.startswith(FORMULA) or cell.startswith("'")
    cell.encode("utf-8")  # strict: every cell is valid UTF-8


@settings(max_examples=400, deadline=None)
@given(NAMES, NAMES)
def test_different_names_never_share_a_cell(a, b):
    if a != b:
        assert escape_path(a) != escape_path(b)


@pytest.mark.parametrize("a, b", [
    ("=a.png", "'=a.png"),
    (os.fsdecode(b"scan\xff.png"), "scan\\xff.png"),
    (os.fsdecode(b"scan\xff.png"), "scan\\udcff.png"),
    (os.fsdecode(b"a\x85.png"), "a\x85.png"),  # the raw byte 0x85 vs the character U+0085 (UTF-8 c2 85)
    ("'", "''"),
    ("a\tb", "a\\tb"),
])
def test_names_that_used_to_collide_do_not(a, b):
    assert escape_path(a) != escape_path(b)
    assert unescape_path(escape_path(a)) == a and unescape_path(escape_path(b)) == b


@settings(max_examples=200, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=6, unique=True))
def test_every_row_stays_one_record_in_a_real_csv_file(tmp_path_factory, names):
    out = tmp_path_factory.mktemp("csv") / "results.csv"
    with ResultsWriter(out) as writer:
        for i, name in enumerate(names):
            if i % 2:
                writer.write(ScoreRow(name, "error", error_code="unreadable", error_message=f"{name}: gone\r\n=1+1"))
            else:
                writer.write(ScoreRow(name, "ok", probability=0.5, logit=0.0, label_pred=1))
        writer.commit()
    raw = out.read_bytes()
    assert raw.count(b"\n") == len(names) + 1 and b"\r" not in raw and b"\x1b" not in raw  # one line per row
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    assert [unescape_path(r[0]) for r in rows] == names
    for row in rows:
        assert not any(cell.startswith(FORMULA) for cell in row), row


def test_the_issue_example_cannot_compute():
    cell = escape_path("x\r=2+3*4.png")
    assert cell == "x\\x0d=2+3*4.png"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([cell, "0.5"])
    assert buf.getvalue() == "x\\x0d=2+3*4.png,0.5\n"


@pytest.mark.parametrize("cell", ["a\\", "a\\q", "a\\x1", "a\\xZZ", "a\\u12", "a\\U0011ffff", "a\\X41"])
def test_cells_no_writer_makes_are_refused(cell):
    with pytest.raises(ValueError, match="not a cxr path cell"):
        unescape_path(cell)


def test_terminal_text_has_no_escape_sequences():
    shown = escape_text("a\x1b[2K\rcxr-score: error: forged\n.png")
    assert "\x1b" not in shown and "\r" not in shown and "\n" not in shown and "forged" in shown
