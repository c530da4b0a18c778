"""The resume journal's lines are whole or ignored, its identity decides whether a run may continue it, and a
journaled file is reused only while it is unchanged (cxr.runtime.journal)."""

from __future__ import annotations

import os

import pytest

from cxr.runtime.journal import Journal, JournalMismatch, decode_line, encode_line, read_journal
from cxr.runtime.scoring import ScoreRow

IDENTITY = {"folder": "/scans", "model_sha256": "ab" * 32, "threshold": 0.5}


def test_a_line_round_trips_names_any_bytes_allow():
    obj = {"row": {"path": "a\r\x1b=\udcff.png"}, "n": 1}  # control characters and an undecodable byte
    line = encode_line(obj)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line) == obj


@pytest.mark.parametrize("damage", [
    lambda line: line[:-1],  # torn before its newline
    lambda line: line[: len(line) // 2] + b"\n",  # cut, then another line's newline
    lambda line: line.replace(b"0.25", b"0.75"),  # a changed digit: the checksum fails
    lambda line: b"\x00" * len(line),  # zeros a filesystem left after a power loss
    lambda line: b"zzzzzzzz " + line[9:],  # not a checksum
])
def test_a_damaged_line_is_not_trusted(damage):
    line = encode_line({"row": {"probability": 0.25}})
    assert decode_line(damage(line)) is None


def _journal_with_rows(tmp_path, n=3):
    folder = tmp_path / "scans"
    folder.mkdir(exist_ok=True)
    path = tmp_path / "r.csv.journal"
    journal = Journal.start(path, IDENTITY)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(b"x" * (i + 1))
        journal.record(folder, ScoreRow(f"{i}.png", "ok", probability=0.1 * i + 0.05, logit=-1.5, label_pred=0))
    journal.close()
    return folder, path


def test_resume_takes_the_whole_lines_and_rewrites_the_journal_without_the_torn_one(tmp_path):
    folder, path = _journal_with_rows(tmp_path)
    with open(path, "ab") as fh:
        fh.write(encode_line({"file": [1, 2], "row": {}})[:20])  # a torn last line
    assert read_journal(path).ignored == 1
    journal = Journal.resume(path, IDENTITY)
    assert journal.ignored == 1 and sorted(journal.reused) == ["0.png", "1.png", "2.png"]
    assert journal.reused["1.png"][1].probability == 0.1 * 1 + 0.05  # the float exactly as it was
    journal.close()
    again = read_journal(path)
    assert again.ignored == 0 and len(again.rows) == 3  # the torn line is gone; new lines follow whole ones


def test_resume_refuses_another_identity_and_leaves_the_journal(tmp_path):
    _, path = _journal_with_rows(tmp_path)
    before = path.read_bytes()
    with pytest.raises(JournalMismatch, match=r"model_sha256 \"cd"):
        Journal.resume(path, {**IDENTITY, "model_sha256": "cd" * 32})
    assert path.read_bytes() == before


def test_only_unchanged_files_are_reused(tmp_path):
    folder, path = _journal_with_rows(tmp_path)
    (folder / "1.png").write_bytes(b"longer now")  # size changed
    st = os.stat(folder / "2.png")
    os.utime(folder / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # mtime changed
    (folder / "3.png").write_bytes(b"new")
    journal = Journal.resume(path, IDENTITY)
    files = [folder.joinpath(f"{i}.png").relative_to(folder) for i in range(4)]
    todo = journal.todo(folder, files)
    assert [p.as_posix() for p in todo] == ["1.png", "2.png", "3.png"]
    scored = iter([ScoreRow(p.as_posix(), "error", error_code="x", error_message="y") for p in todo])
    rows = list(journal.rows_for(files, scored))
    assert [r.path for r in rows] == ["0.png", "1.png", "2.png", "3.png"]
    assert rows[0].ok and not rows[1].ok and journal.resumed == 1
    journal.close()


def test_start_replaces_an_earlier_journal_and_says_how_much_it_held(tmp_path):
    _, path = _journal_with_rows(tmp_path)
    journal = Journal.start(path, IDENTITY)
    journal.close()
    assert journal.replaced == 3 and read_journal(path).rows == {}


def test_the_precision_is_part_of_the_identity_and_fp32_journals_keep_theirs(tmp_path):
    """bf16 runs the fp32 file (same sha256) with other probabilities: resuming one with the other would mix rows."""
    from cxr.runtime.journal import run_identity

    base = {"folder": tmp_path, "model_sha256": "ab" * 32, "threshold": 0.5, "device": "openvino"}
    fp32, bf16 = run_identity(**base), run_identity(**base, precision="bf16")
    assert "precision" not in fp32  # journals written before the field still belong to fp32 runs
    assert bf16 == {**fp32, "precision": "bf16"}
    _, path = _journal_with_rows(tmp_path)
    Journal.resume(path, IDENTITY)  # the same identity continues
    with pytest.raises(JournalMismatch, match=r"precision \"bf16\" here, null there"):
        Journal.resume(path, {**IDENTITY, "precision": "bf16"})
