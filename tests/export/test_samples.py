"""cxr.export.samples: `--sample DIR` with a labels file reads it as cxr-score --labels does, keeps the CSV's order
and its unlabelled rows, and refuses a label it cannot trust, naming the file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.export.errors import ExportError
from cxr.export.samples import images_from_dir, read_labels
from cxr.runtime.preprocess import PreprocessConfig

from .conftest import write_images


def _csv(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize("bom", [False, True])  # a spreadsheet's "CSV UTF-8" starts with a byte-order mark
def test_labels_keep_csv_order_unknowns_and_normalized_paths(tmp_path, bom):
    labels = _csv(tmp_path / "labels.csv", "path , cardiomegaly,ctr\n./b.png,1,0.6\nsub\\a.png,0,0.4\nc.png,,\n,,\n",
                  bom=bom)  # the last, blank row is skipped as cxr-score skips it
    assert list(read_labels(labels, tmp_path).items()) == [
        (tmp_path / "b.png", 1), (tmp_path / "sub" / "a.png", 0), (tmp_path / "c.png", -1)]


@pytest.mark.parametrize("text, needle", [
    ("path,label\na.png,2\n", "line 2: label '2' for 'a.png' is not 1/0, true/false"),
    ("path,label\na.png,1\nb.png,0\n./a.png,0\n", "line 4: 'a.png' is listed with two different labels"),
    ("path,label\n,1\n", "line 2: a label without a path"),
    ("file,label\na.png,1\n", "missing column(s) 'path'"),
    ("path,label\n", "no files listed"),
])
def test_bad_labels_name_the_file_and_line(tmp_path, text, needle):
    labels = _csv(tmp_path / "labels.csv", text)
    with pytest.raises(ExportError) as info:
        read_labels(labels, tmp_path)
    assert str(labels) in str(info.value) and needle in str(info.value)


def test_a_labels_file_defines_the_sample_set(tmp_path):
    written = write_images(tmp_path, 4, seed=5)
    (tmp_path / "mask.png").write_bytes(written[0][0].read_bytes())  # an image beside the X-rays, not listed
    _csv(tmp_path / "labels.csv", "path,label\n" + "".join(f"{p.name},{y}\n" for p, y in reversed(written[1:])))
    images = images_from_dir(tmp_path, PreprocessConfig(size=32))
    assert images.paths == [p.name for p, _ in reversed(written[1:])]
    assert images.labels.tolist() == [y for _, y in reversed(written[1:])]
    assert images.images.shape == (3, 1, 32, 32) and images.images.dtype == np.uint8
    # without a labels file every image candidate is a sample, sorted, with unknown labels
    (tmp_path / "labels.csv").unlink()
    unlabelled = images_from_dir(tmp_path, PreprocessConfig(size=32))
    assert unlabelled.paths == sorted([p.name for p, _ in written] + ["mask.png"])
    assert unlabelled.labels.tolist() == [-1] * 5
