"""cxr.train.external refuses a 'left-out' source that shares images with the run's own splits."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from cxr.train.external import main, overlap_with_run
from tests.export.conftest import write_images, write_run


def _labels(folder: Path, items: list[tuple[Path, int]]) -> Path:
    out = folder / "labels.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cardiomegaly", "patient_id"])
        for i, (p, label) in enumerate(items):
            w.writerow([p.relative_to(folder).as_posix(), label, f"p{i}"])
    return out


def test_same_file_and_byte_identical_copy_are_found_and_new_images_are_not(tmp_path):
    run = write_run(tmp_path / "run")
    val = sorted((run / "images" / "val").glob("*.png"))
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copyfile(val[3], copy)
    fresh = [p for p, _ in write_images(tmp_path / "fresh", 3, seed=99)]
    found = overlap_with_run(run, [val[0], copy, *fresh])
    assert [(p, split) for p, split in found] == [(val[0], "val"), (copy, "val")]
    assert overlap_with_run(run, fresh) == []


def test_external_cli_refuses_an_overlapping_source_naming_count_and_example(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    folder = tmp_path / "src"
    items = write_images(folder, 4, seed=50)
    shutil.copyfile(sorted((run / "images" / "train").glob("*.png"))[1], folder / "dup.png")
    labels = _labels(folder, items + [(folder / "dup.png", 1)])
    rc = main([str(run), f"csv:{folder};csv={labels};name=src"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "1 of 5 images are also in the run's own splits" in err and "dup.png (train)" in err
    assert "--drop-overlap" in err
