"""find_images: sorted, recursive, hidden and non-image files skipped, loops and unreadable folders reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr.runtime.walk import find_images


def by_suffix(path: Path) -> bool:
    return path.suffix.lower() in {".png", ".jpg", ".dcm"}


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def posix(result) -> list[str]:
    return [p.as_posix() for p in result.files]


def test_sorted_by_relative_posix_path_across_nested_folders(tmp_path):
    touch(tmp_path, "b.png", "a/z.png", "a.png", "a/b/c.dcm", "A.jpg", "a0.png", "c/d/e/f.png")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["A.jpg", "a.png", "a/b/c.dcm", "a/z.png", "a0.png", "b.png", "c/d/e/f.png"]
    assert all(not p.is_absolute() for p in result.files)
    assert result.problems == []


def test_hidden_files_and_folders_are_skipped(tmp_path):
    touch(tmp_path, "keep.png", ".hidden.png", ".git/objects/x.png", "sub/.DS_Store", "sub/ok.png")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["keep.png", "sub/ok.png"]
    assert result.skipped_hidden == 3
    assert result.skipped_non_images == 0


def test_non_images_are_skipped_and_counted(tmp_path):
    touch(tmp_path, "x.png", "README.txt", "labels.csv", "sub/notes.md", "sub/y.dcm")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["sub/y.dcm", "x.png"]
    assert result.skipped_non_images == 3


def test_default_candidate_rule_skips_readme_and_labels(tmp_path):
    from tests.badfiles import write_good_files

    good = write_good_files(tmp_path)
    (tmp_path / "README.txt").write_text("about these images\n")
    (tmp_path / "labels.csv").write_text("path,label\n")
    result = find_images(tmp_path)
    assert posix(result) == sorted(good)
    assert result.skipped_non_images == 2


def test_symlink_loop_is_reported_not_followed_forever(tmp_path):
    touch(tmp_path, "a/x.png", "a/b/y.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "back")  # a/b/back -> a : a loop
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["a/b/y.png", "a/x.png"]
    assert len(result.problems) == 1
    assert "a/b/back" in result.problems[0] and "loop" in result.problems[0]


def test_symlinked_folder_outside_is_followed(tmp_path):
    outside = tmp_path / "outside"
    touch(outside, "p.png")
    root = tmp_path / "root"
    touch(root, "q.png")
    os.symlink(outside, root / "linked")
    result = find_images(root, by_suffix)
    assert posix(result) == ["linked/p.png", "q.png"]
    assert result.problems == []


def test_dangling_symlink_to_an_image_stays_a_file(tmp_path):
    touch(tmp_path, "ok.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["dangling.png", "ok.png"]  # it will become an 'unreadable' row, not vanish


def test_fifo_is_reported_not_opened(tmp_path):
    touch(tmp_path, "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    result = find_images(tmp_path, by_suffix)  # a FIFO named like an image would block any reader forever
    assert posix(result) == ["ok.png"]
    assert any("pipe.png" in p and "regular" in p for p in result.problems)


def test_unreadable_folder_is_reported(tmp_path):
    touch(tmp_path, "ok.png", "locked/secret.png")
    locked = tmp_path / "locked"
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running with privileges that read a chmod 000 folder (root)")
        result = find_images(tmp_path, by_suffix)
    finally:
        locked.chmod(0o755)
    assert posix(result) == ["ok.png"]
    assert len(result.problems) == 1 and result.problems[0].startswith("locked: cannot list folder")


def test_folder_that_cannot_be_listed_is_reported_even_as_root(tmp_path, monkeypatch):
    touch(tmp_path, "ok.png", "locked/secret.png", "locked2/x/deep.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name in ("locked", "x"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["ok.png"]
    assert result.problems == ["locked: cannot list folder: Permission denied",
                               "locked2/x: cannot list folder: Permission denied"]


@pytest.mark.parametrize("make, error", [
    (lambda p: p / "missing", FileNotFoundError),
    (lambda p: (p / "file.png").write_bytes(b"x") and p / "file.png", NotADirectoryError),
])
def test_root_must_be_an_existing_folder(tmp_path, make, error):
    with pytest.raises(error, match="folder"):
        find_images(make(tmp_path), by_suffix)


def test_symlink_dag_lists_each_real_file_once(tmp_path):
    """12 levels, each holding two links to the next: 4,096 paths to one image, which must be one row."""
    levels = [tmp_path / f"level{k:02d}" for k in range(13)]
    for level in levels:
        level.mkdir()
    touch(levels[-1], "x.png")
    for here, below in zip(levels, levels[1:]):
        os.symlink(below, here / "a")
        os.symlink(below, here / "b")
    result = find_images(levels[0], by_suffix)
    assert posix(result) == ["a/" * 12 + "x.png"]
    assert len(result.problems) == 12
    assert all("same folder as" in p and "not walked twice" in p for p in result.problems)


def test_real_path_is_kept_over_a_symlink_that_sorts_first(tmp_path):
    touch(tmp_path, "real/x.png", "z.png")
    os.symlink(tmp_path / "real", tmp_path / "alias")  # 'alias' sorts before 'real'
    os.symlink(tmp_path / "z.png", tmp_path / "a.png")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["real/x.png", "z.png"]
    assert sorted(result.problems) == ["a.png: same file as z.png, listed once",
                                       "alias: same folder as real (reached again through a symlink), not walked twice"]


def test_hard_links_are_one_file(tmp_path):
    touch(tmp_path, "b/x.png")
    os.link(tmp_path / "b" / "x.png", tmp_path / "a.png")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["a.png"]
    assert result.problems == ["b/x.png: same file as a.png, listed once"]


def test_symlink_to_the_root_is_not_walked_again(tmp_path):
    touch(tmp_path, "x.png", "sub/y.png")
    os.symlink(tmp_path, tmp_path / "sub" / "up")
    result = find_images(tmp_path, by_suffix)
    assert posix(result) == ["sub/y.png", "x.png"]
    assert len(result.problems) == 1 and result.problems[0].startswith("sub/up: symlink loop")
