"""Path lists (cxr-score LIST): what each kind of list yields, and the errors that name the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr.runtime.pathlist import PathListError, is_path_list, read_path_list


def test_a_txt_list_skips_comments_and_blanks_resolves_relative_entries_and_keeps_odd_names(tmp_path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "scans.txt"
    odd = b"caf\xe9 \xff.png"  # not UTF-8: decoded like os.fsdecode, so the real file can be opened
    listing.write_bytes(b"# archive 2026\n\na.png\r\n../b.png\n/abs/c.dcm\n" + odd + b"\na.png\n")
    assert read_path_list(listing) == [tmp_path / "sub" / "a.png", tmp_path / "b.png", Path("/abs/c.dcm"),
                                       tmp_path / "sub" / os.fsdecode(odd)]


def test_a_csv_list_reads_its_path_column(tmp_path):
    listing = tmp_path / "scans.csv"
    listing.write_text("id,path\n1,x/a.png\n2,\"b, c.png\"\n3,\n")
    assert read_path_list(listing) == [tmp_path / "x" / "a.png", tmp_path / "b, c.png"]


@pytest.mark.parametrize("name, content, message", [
    ("scans.csv", "file,label\na.png,1\n", "scans.csv: the path list has no 'path' column (header: file, label)"),
    ("scans.csv", "", "scans.csv: the path list has no 'path' column (header: none)"),
    ("scans.txt", "# nothing\n\n", "scans.txt: the path list names no file"),
    ("scans.csv", b"path\n\xff.png\n", "scans.csv: the path list is not UTF-8 text (byte 5)"),
    ("scans.parquet", b"not parquet at all", "scans.parquet: not a readable Parquet file"),
])
def test_unusable_lists_say_which_file_and_why(tmp_path, name, content, message):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    listing = tmp_path / name
    listing.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PathListError) as info:
        read_path_list(listing)
    assert message in str(info.value)


def test_a_parquet_list_without_a_path_column_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    listing = tmp_path / "scans.parquet"
    pq.write_table(pa.table({"file": ["a.png"]}), listing)
    with pytest.raises(PathListError, match="has no 'path' column \\(columns: file\\)"):
        read_path_list(listing)
    pq.write_table(pa.table({"path": ["a.png", None, "b.png"]}), listing)
    assert read_path_list(listing) == [tmp_path / "a.png", tmp_path / "b.png"]


def test_only_existing_txt_csv_parquet_files_are_lists(tmp_path):
    for name in ("a.txt", "a.CSV", "a.parquet", "a.png"):
        (tmp_path / name).write_text("x")
    assert [is_path_list(tmp_path / n) for n in ("a.txt", "a.CSV", "a.parquet", "a.png", "gone.txt")] == [
        True, True, True, False, False]


def test_cxr_score_refuses_a_bad_list_as_a_usage_error(tmp_path, tiny_model):
    from click.testing import CliRunner

    from cxr.cli.score import main

    listing = tmp_path / "scans.csv"
    listing.write_text("file\na.png\n")
    result = CliRunner().invoke(main, [str(listing), "--out", str(tmp_path / "r.csv"), "--model", str(tiny_model)])
    assert result.exit_code == 2 and "has no 'path' column" in result.output
    assert not (tmp_path / "r.csv").exists()
