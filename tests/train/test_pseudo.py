"""python -m cxr.train.pseudo: a teacher model's masks written for a source without them, read back by cxr-train as
that source's masks. The teacher here is the maps model (fixed heart and lung masks, onnx.helper, no training)."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")

from cxr.runtime.anatomy import ctr_reference  # noqa: E402
from cxr.train import pseudo  # noqa: E402
from tests.onnx_fixtures import expected_probability  # noqa: E402
from tests.runtime import test_overlay_fixtures as overlay  # noqa: E402

FILMS = {"a.png": (1, "p1", ""), "b.png": (0, "p1", ""), "c.png": (0, "p2", "test"), "sub/d.png": (1, "p3", ""),
         "e.png": (0, "p4", ""), "bad.png": (1, "p5", "")}


@pytest.fixture()
def site(tmp_path):
    """(a csv source spec of five readable films and one broken file, its folder)."""
    folder = tmp_path / "site"
    (folder / "sub").mkdir(parents=True)
    for i, rel in enumerate(FILMS):
        if rel == "bad.png":
            (folder / rel).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        else:
            assert cv2.imwrite(str(folder / rel), overlay.chest_like(bright=i % 2 == 0))
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cardiomegaly", "patient_id", "split"])
        w.writerows((rel, *values) for rel, values in FILMS.items())
    return f"csv:{folder};csv={folder / 'labels.csv'};name=site", folder


def _rows(out):
    with open(out / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _preprocessed(path, size=64):
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch

    return preprocess_batch([read_image(path)], PreprocessConfig(size=size))


def test_each_readable_film_gets_the_teachers_masks(site, tmp_path):
    spec, folder = site
    teacher = overlay.maps_model(tmp_path / "teacher.onnx")
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(teacher, spec, out, log=lambda *_: None)
    rows = _rows(out)
    assert [r["path"] for r in rows] == [str((folder / rel).resolve()) for rel in FILMS]
    assert [(int(r["cardiomegaly"]), r["patient_id"], r["split"]) for r in rows] == list(FILMS.values())
    fixed = overlay.fixed_masks(64)
    for r in rows[:5]:
        for column, plane in zip(pseudo.MASK_COLUMNS, fixed):
            written = cv2.imread(str(out / r[column]), cv2.IMREAD_UNCHANGED)
            assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
            np.testing.assert_array_equal(written, plane * 255)
        assert float(r["teacher_ctr"]) == pytest.approx(ctr_reference(fixed), abs=1e-6)
        assert float(r["teacher_probability"]) == pytest.approx(
            float(expected_probability(_preprocessed(r["path"]))[0]), abs=1e-5)
        assert r["teacher_flag"] == ""
    bad = rows[5]
    assert [bad[c] for c in pseudo.MASK_COLUMNS] == ["", "", ""] and bad["teacher_ctr"] == ""
    assert bad["teacher_flag"].startswith("unreadable: ")
    assert (report["n_images"], report["n_with_masks"], report["n_without_masks"]) == (6, 5, 1)
    assert report["flags"] == {"unreadable": 1} and report["mask_size"] == 64
    saved = json.loads((out / "pseudo.json").read_text())
    assert saved["teacher"]["sha256"] == report["teacher"]["sha256"] and len(saved["teacher"]["sha256"]) == 64
    assert saved["source"] == spec


def test_cxr_train_reads_them_as_the_sources_masks_with_the_same_split(site, tmp_path):
    from cxr.train.data import load_masks
    from cxr.train.splits import assign_splits

    spec, _ = site
    out = tmp_path / "pseudo"
    pseudo.pseudo_label(overlay.maps_model(tmp_path / "teacher.onnx"), spec, out, log=lambda *_: None)
    before, _ = pseudo.load_source(spec)
    after, _ = pseudo.load_source(pseudo.data_spec(out, "site"))

    def key(samples):
        return [(s.path, s.label, s.patient_id, s.split) for s in samples]

    assert key(after) == key(before)
    assert key(assign_splits(after, seed=3)) == key(assign_splits(before, seed=3))
    assert [s.masks is not None for s in after] == [True] * 5 + [False]
    np.testing.assert_array_equal(load_masks(after[0].masks, 64), overlay.fixed_masks(64))
    at_32 = load_masks(after[0].masks, 32)  # another --image-size: resized like the image
    assert at_32.shape == (3, 32, 32) and abs(ctr_reference(at_32) - ctr_reference(overlay.fixed_masks(64))) < 0.05


def test_masks_that_do_not_look_like_a_chest_are_not_taught(site, tmp_path, monkeypatch):
    spec, _ = site

    def cut(size):
        m = np.zeros((3, size, size), np.uint8)
        m[0, size // 2: size * 3 // 4, size // 3: size * 2 // 3] = 1
        m[1, size // 8: size * 7 // 8, 0: size // 3] = 1  # the left lung runs off the image's edge
        m[2, size // 8: size * 7 // 8, size * 2 // 3: size * 7 // 8] = 1
        return m

    monkeypatch.setattr(overlay, "fixed_masks", cut)
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(overlay.maps_model(tmp_path / "teacher.onnx"), spec, out, log=lambda *_: None)
    rows = _rows(out)
    assert all(r["mask_heart"] == "" for r in rows)
    assert [r["teacher_flag"] for r in rows[:5]] == ["lungs_cut_by_edge"] * 5
    assert not math.isnan(float(rows[0]["teacher_ctr"]))  # the ratio is still recorded, only not taught
    assert report["flags"] == {"lungs_cut_by_edge": 5, "unreadable": 1} and report["n_with_masks"] == 0
    assert not any((out / "masks" / "heart").iterdir())


def test_a_teacher_without_masks_is_refused_and_nothing_is_written(site, tmp_path, capsys):
    spec, _ = site
    teacher = overlay.maps_model(tmp_path / "plain.onnx", outputs=("cam",))
    out = tmp_path / "pseudo"
    assert pseudo.main([str(teacher), spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(teacher) in err and "no masks/ctr outputs" in err
    assert not out.exists()


def test_an_output_folder_already_used_is_refused_untouched(site, tmp_path, capsys):
    spec, _ = site
    out = tmp_path / "pseudo"
    out.mkdir()
    (out / "labels.csv").write_text("earlier work\n")
    assert pseudo.main([str(overlay.maps_model(tmp_path / "t.onnx")), spec, "--out", str(out)]) == 2
    assert "already holds pseudo-labels" in capsys.readouterr().err
    assert (out / "labels.csv").read_text() == "earlier work\n" and sorted(p.name for p in out.iterdir()) == [
        "labels.csv"]


def test_the_command_line_writes_and_says_how_to_train_on_them(site, tmp_path, capsys):
    spec, _ = site
    out = tmp_path / "pseudo"
    assert pseudo.main([str(overlay.maps_model(tmp_path / "t.onnx")), spec, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 of 6 images got the teacher's masks" in printed and "unreadable 1" in printed
    assert f"--data '{pseudo.data_spec(out, 'NAME')}'" in printed
