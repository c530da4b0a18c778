"""python -m cxr.train.pseudo: a teacher model's masks written for a source without them, read back by cxr-train as
that source's masks. The teachers are built with onnx.helper (no training): the maps model (fixed masks), and a
"bright" model whose three masks are the preprocessed image above 128, so every film gets its own masks (a film bright
up to its edge gets masks that run off the image and are flagged)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")

from cxr.runtime.anatomy import ctr_reference, mask_flags  # noqa: E402
from cxr.train import pseudo  # noqa: E402
from tests.onnx_fixtures import default_card, expected_probability  # noqa: E402
from tests.runtime import test_overlay_fixtures as overlay  # noqa: E402

FILMS = {"bad.png": (1, "p5", ""), "a.png": (1, "p1", ""), "b.png": (0, "p1", ""), "c.png": (0, "p2", "test"),
         "sub/d.png": (1, "p3", ""), "e.png": (0, "p4", "")}
SIZE = 64


def bright_model(path: Path, size: int = SIZE, half_masks: bool = False) -> Path:
    """probability as the mean-brightness model; masks: three copies of (image > 128) (`half_masks`: at half the
    input's size, 2x2 max-pooled); ctr 0.3 + 0.4 x brightness."""
    import onnx
    from onnx import TensorProto, helper

    from cxr.runtime.card import CARD_KEY

    f = TensorProto.FLOAT
    inits = [helper.make_tensor(n, f, [], [v]) for n, v in
             (("scale", 8.0 / 255), ("shift", 4.0), ("c128", 128.0), ("g", 0.4 / 255), ("b", 0.3))]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=f),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["m", "scale"], ["ms"]), helper.make_node("Sub", ["ms", "shift"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"]),
             helper.make_node("Greater", ["x", "c128"], ["on"]),
             helper.make_node("Cast", ["on"], ["onf"], to=f),
             helper.make_node("MaxPool", ["onf"], ["onp"], kernel_shape=[2, 2], strides=[2, 2]) if half_masks else
             helper.make_node("Identity", ["onf"], ["onp"]),
             helper.make_node("Cast", ["onp"], ["on8"], to=TensorProto.UINT8),
             helper.make_node("Concat", ["on8", "on8", "on8"], ["masks"], axis=1),
             helper.make_node("Mul", ["m", "g"], ["mg"]), helper.make_node("Add", ["mg", "b"], ["ctr"])]
    outs = [helper.make_tensor_value_info("logit", f, ["N"]), helper.make_tensor_value_info("probability", f, ["N"]),
            helper.make_tensor_value_info("ctr", f, ["N"]),
            helper.make_tensor_value_info("masks", TensorProto.UINT8,
                                          ["N", 3] + [size // 2 if half_masks else size] * 2)]
    graph = helper.make_graph(nodes, "bright", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                              ["N", 1, size, size])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cxr-tests")
    model.ir_version = 8
    card = default_card(size)
    object.__setattr__(card, "output_names", ("logit", "probability", "ctr", "masks"))
    helper.set_model_props(model, {CARD_KEY: card.to_json()})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _write_source(folder: Path, films=FILMS, patient=None) -> str:
    (folder / "sub").mkdir(parents=True)
    for i, rel in enumerate(films):
        if rel == "bad.png":
            (folder / rel).write_bytes(b"\x89PNG\r\n\x1a\n not really")
        else:
            image = overlay.chest_like(bright=i % 2 == 1)
            if rel == "e.png":
                image[:, :12] = 230  # bright to the image's edge: masks that run off it
            assert cv2.imwrite(str(folder / rel), image)
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cardiomegaly", "patient_id", "split"])
        w.writerows((rel, y, patient or pid, split) for rel, (y, pid, split) in films.items())
    return f"csv:{folder};csv={folder / 'labels.csv'};name=site"


@pytest.fixture()
def site(tmp_path):
    """(a csv source spec of five readable films, bright and dark, one bright to its edge, and a broken file first;
    its folder)."""
    return _write_source(tmp_path / "site"), tmp_path / "site"


def _rows(out):
    with open(out / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _preprocessed(path):
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch

    return preprocess_batch([read_image(path)], PreprocessConfig(size=SIZE))


def _quiet(*_):
    return None


def test_each_film_gets_its_own_masks_in_its_own_row(site, tmp_path):
    spec, folder = site
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(bright_model(tmp_path / "t.onnx"), spec, out, batch_size=2, log=_quiet)
    rows = _rows(out)
    assert [r["path"] for r in rows] == [str((folder / rel).resolve()) for rel in FILMS]
    assert [(int(r["cardiomegaly"]), r["patient_id"], r["split"]) for r in rows] == list(FILMS.values())
    bad, *films = rows
    assert [bad[c] for c in pseudo.MASK_COLUMNS] == ["", "", ""] and bad["teacher_ctr"] == ""
    assert bad["teacher_flag"] == "truncated: PNG ends (or is corrupt) before its IHDR header"  # cxr-score's code
    kinds = set()
    for r in films:
        image = _preprocessed(r["path"])
        expected = np.repeat((image[0] > 128).astype(np.uint8), 3, axis=0)
        ctr = 0.3 + 0.4 * float(image.mean()) / 255
        assert float(r["teacher_ctr"]) == pytest.approx(ctr, abs=1e-5)
        assert float(r["teacher_probability"]) == pytest.approx(float(expected_probability(image)[0]), abs=1e-5)
        flag = mask_flags(expected, ctr)
        assert r["teacher_flag"] == flag
        kinds.add(flag)
        if flag:
            assert [r[c] for c in pseudo.MASK_COLUMNS] == ["", "", ""]
            continue
        for column, plane in zip(pseudo.MASK_COLUMNS, expected):
            written = cv2.imread(str(out / r[column]), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(written, plane * 255)
    assert kinds == {"", "lungs_cut_by_edge"}  # both kinds happen: the films taught, and e.png not
    taught = sum(not r["teacher_flag"] for r in films)
    assert (report["n_images"], report["n_with_masks"], report["n_without_masks"]) == (6, taught, 6 - taught)
    assert report["flags"] == {"lungs_cut_by_edge": 5 - taught, "truncated": 1} and report["mask_size"] == SIZE
    saved = json.loads((out / "pseudo.json").read_text())
    assert saved["teacher"]["sha256"] == report["teacher"]["sha256"] and len(saved["teacher"]["sha256"]) == 64
    import hashlib

    assert saved["source"] == spec and saved["labels_sha256"] == hashlib.sha256(
        (out / "labels.csv").read_bytes()).hexdigest()
    assert not (out / ".partial").exists()


def test_cxr_train_reads_them_as_the_sources_masks_with_the_same_split(site, tmp_path):
    from cxr.train.data import load_masks
    from cxr.train.splits import assign_splits

    spec, _ = site
    out = tmp_path / "pseudo"
    pseudo.pseudo_label(overlay.maps_model(tmp_path / "teacher.onnx"), spec, out, log=_quiet)
    before, _ = pseudo.load_source(spec)
    after, _ = pseudo.load_source(pseudo.data_spec(out, "site"))

    def key(samples):
        return [(s.path, s.label, s.patient_id, s.split, s.source) for s in samples]

    assert key(after) == key(before)
    assert key(assign_splits(after, seed=3)) == key(assign_splits(before, seed=3))
    assert [s.masks is not None for s in after] == [False] + [True] * 5
    np.testing.assert_array_equal(load_masks(after[1].masks, SIZE), overlay.fixed_masks(SIZE))
    at_32 = load_masks(after[1].masks, 32)  # another --image-size: resized like the image
    assert at_32.shape == (3, 32, 32) and abs(ctr_reference(at_32) - ctr_reference(overlay.fixed_masks(SIZE))) < 0.05


def test_an_nih_source_keeps_its_patients_split_and_name(tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    entries = [("00000013_000.png", "Cardiomegaly", "13"), ("00000013_001.png", "No Finding", "13"),
               ("00000020_000.png", "No Finding", "20"), ("00000031_000.png", "Cardiomegaly|Mass", "31"),
               ("00000040_000.png", "Effusion", "40")]
    for i, (name, _, _) in enumerate(entries):
        assert cv2.imwrite(str(root / "images" / name), overlay.chest_like(bright=i % 2 == 0))
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Patient ID"])
        w.writerows(entries)
    (root / "test_list.txt").write_text("00000020_000.png\n")
    (root / "train_val_list.txt").write_text("00000013_000.png\n00000013_001.png\n00000031_000.png\n")
    spec = f"nih:{root};name=nih"
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(overlay.maps_model(tmp_path / "t.onnx"), spec, out, log=_quiet)
    before, _ = pseudo.load_source(spec)
    after, _ = pseudo.load_source(pseudo.data_spec(out, "nih"))
    key = [(s.path, s.label, s.patient_id, s.split, s.source) for s in after]
    assert key == [(s.path, s.label, s.patient_id, s.split, s.source) for s in before]
    assert [k[2:] for k in key] == [("00000013", None, "nih"), ("00000013", None, "nih"), ("00000020", "test", "nih"),
                                    ("00000031", None, "nih")]  # the Effusion film is not a No Finding negative
    assert report["n_images"] == 4 and report["patient_ids_known"] is True


def test_a_films_own_masks_and_reference_ratio_are_kept(tmp_path):
    from tests.train.masked_fixtures import MASK_COLUMNS, make_masked_set

    labels = make_masked_set(tmp_path / "masked", n=6, size=SIZE, masked=3)
    spec = f"csv:{labels.parent};csv={labels};mask_columns={','.join(MASK_COLUMNS)};ctr_column=ctr;name=m"
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(overlay.maps_model(tmp_path / "t.onnx"), spec, out, log=_quiet)
    before, _ = pseudo.load_source(spec)
    after, _ = pseudo.load_source(pseudo.data_spec(out, "m"))
    assert [s.masks for s in after[:3]] == [s.masks for s in before[:3]]  # the manual files themselves
    assert [r["teacher_flag"] for r in _rows(out)] == ["manual"] * 3 + [""] * 3
    assert [s.ctr for s in after] == pytest.approx([s.ctr for s in before], abs=1e-6)
    assert (report["n_with_own_masks"], report["n_with_masks"], report["n_without_masks"]) == (3, 3, 0)


def test_a_run_stopped_half_way_leaves_no_labels_and_can_start_again(site, tmp_path, monkeypatch):
    spec, _ = site
    out = tmp_path / "pseudo"
    teacher = overlay.maps_model(tmp_path / "t.onnx")
    real_write, calls = cv2.imwrite, []

    def dies(path, image):
        calls.append(path)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real_write(path, image)

    monkeypatch.setattr(cv2, "imwrite", dies)
    with pytest.raises(KeyboardInterrupt):
        pseudo.pseudo_label(teacher, spec, out, batch_size=2, log=_quiet)
    monkeypatch.setattr(cv2, "imwrite", real_write)
    assert not (out / "labels.csv").exists() and not (out / "masks").exists()
    report = pseudo.pseudo_label(teacher, spec, out, batch_size=2, log=_quiet)
    assert report["n_with_masks"] == 5 and len(_rows(out)) == 6 and not (out / ".partial").exists()
    assert len(list((out / "masks" / "heart").iterdir())) == 5


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
    report = pseudo.pseudo_label(overlay.maps_model(tmp_path / "teacher.onnx"), spec, out, log=_quiet)
    rows = _rows(out)
    assert all(r["mask_heart"] == "" for r in rows)
    assert [r["teacher_flag"] for r in rows[1:]] == ["lungs_cut_by_edge"] * 5
    assert not math.isnan(float(rows[1]["teacher_ctr"]))  # the ratio is still recorded, only not taught
    assert report["flags"] == {"lungs_cut_by_edge": 5, "truncated": 1} and report["n_with_masks"] == 0
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


@pytest.mark.parametrize("problem, message", [
    ("formula id", "starts with a character a spreadsheet reads as a formula"),
    ("spec separator", "cannot be named in a cxr-train --data spec"),
])
def test_what_labels_csv_could_not_hold_is_refused_before_writing(tmp_path, capsys, problem, message):
    films = {"a.png": (1, "x", ""), "b.png": (0, "y", "")}
    spec = _write_source(tmp_path / "site", films, patient="=HYPERLINK(1)" if problem == "formula id" else None)
    out = tmp_path / ("pseudo;x" if problem == "spec separator" else "pseudo")
    assert pseudo.main([str(overlay.maps_model(tmp_path / "t.onnx")), spec, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_command_line_writes_and_says_how_to_train_on_them(site, tmp_path, capsys):
    spec, _ = site
    out = tmp_path / "pseudo"
    assert pseudo.main([str(overlay.maps_model(tmp_path / "t.onnx")), spec, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 of 6 images got the teacher's masks" in printed and "truncated 1" in printed
    assert f"--data '{pseudo.data_spec(out, 'NAME')}'" in printed


def test_a_batch_the_teacher_fails_is_retried_one_film_at_a_time(site, tmp_path, monkeypatch):
    from cxr.runtime.scoring import Scorer

    spec, _ = site
    real_run = Scorer.run

    def flaky(self, batch, extras=()):
        if batch.shape[0] > 1:
            raise RuntimeError("the batch fails")
        if batch.mean() < 100:  # the dark films fail on their own too
            raise ValueError("boom")
        return real_run(self, batch, extras)

    monkeypatch.setattr(Scorer, "run", flaky)
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(overlay.maps_model(tmp_path / "t.onnx"), spec, out, batch_size=3, log=_quiet)
    rows = _rows(out)
    dark = [r for r in rows[1:] if _preprocessed(r["path"]).mean() < 100]
    assert dark and all(r["teacher_flag"] == "inference_failed: ValueError: boom" for r in dark)
    assert all(r["mask_heart"] == "" for r in dark)
    taught = [r for r in rows[1:] if r not in dark]
    assert taught and all(r["mask_heart"] and r["teacher_flag"] == "" for r in taught)
    assert report["flags"] == {"inference_failed": len(dark), "truncated": 1}
    assert report["n_with_masks"] == len(taught) and len(rows) == 6


def test_shifted_moves_the_content_and_says_where_it_lies():
    image = np.arange(1, 26, dtype=np.uint8).reshape(5, 5)
    moved, inside = pseudo.shifted(image, 1, -2)
    np.testing.assert_array_equal(moved[1:, :3], image[:4, 2:])
    assert not moved[0].any() and not moved[:, 3:].any()  # the uncovered border is 0, as the training fills it
    np.testing.assert_array_equal(inside, moved > 0)
    back, seen = pseudo.shifted(moved, -1, 2)
    np.testing.assert_array_equal(back[seen], image[seen])
    assert seen.sum() == 4 * 3 and pseudo.shift_grid(0) == [(0, 0)] and len(set(pseudo.shift_grid(3))) == 9


def _drawings(truth, shifts, extra_at=None):
    """What a teacher equivariant to shifts draws on each moved film: the truth moved (cut at the edge), plus a stray
    blob on the drawing `extra_at`."""
    out = []
    for k, (dy, dx) in enumerate(shifts):
        drawn = pseudo.shifted(truth, dy, dx)[0].copy()
        if k == extra_at:
            drawn[:, 0:4, 24:28] = 1
        out.append(drawn)
    return out


def test_the_vote_drops_what_one_drawing_alone_saw_and_keeps_structures_at_the_edge():
    from cxr.runtime.anatomy import main_parts_reference

    truth = np.zeros((1, 3, 32, 32), np.uint8)
    truth[0, 0, 12:22, 10:20] = 1  # heart
    truth[0, 1, 4:32, 0:9] = 1  # a lung in the corner: its corner pixel is seen by 4 of the 9 drawings
    truth[0, 2, 4:28, 21:30] = 1
    shifts = pseudo.shift_grid(3)
    voted = pseudo.vote(_drawings(truth, shifts, extra_at=4), shifts)
    np.testing.assert_array_equal(voted, truth)  # the edge column kept: only the drawings that saw it vote on it
    # one stray piece drawn apart by every drawing: the vote keeps it, then main parts drop it as the model does
    stray = truth.copy()
    stray[0, 2, 0:3, 0:3] = 1
    voted = pseudo.vote(_drawings(stray, shifts), shifts)
    np.testing.assert_array_equal(voted, main_parts_reference(stray[0])[None])
    np.testing.assert_array_equal(voted, truth)


def test_a_shift_vote_of_an_equivariant_teacher_draws_its_masks_and_measures_them_again(site, tmp_path):
    """The bright teacher's masks (image > 128) move with the film, so a vote over shifts gives its own masks back,
    after main parts; the ratio is measured on them (not the teacher's in-graph 0.3 + 0.4 x brightness)."""
    from cxr.runtime.anatomy import ctr_reference, main_parts_reference

    spec, folder = site
    teacher = bright_model(tmp_path / "t.onnx")
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(teacher, spec, out, batch_size=2, shift_vote=3, log=_quiet)
    assert report["shift_vote"] == 3
    assert json.loads((out / "pseudo.json").read_text())["shift_vote"] == 3
    bad, *films = _rows(out)
    assert bad["teacher_flag"].startswith("truncated:")
    taught = 0
    for r in films:
        image = _preprocessed(r["path"])
        expected = main_parts_reference(np.repeat((image[0] > 128).astype(np.uint8), 3, axis=0))
        ctr = ctr_reference(expected)
        assert float(r["teacher_ctr"]) == pytest.approx(ctr, abs=1e-6)
        assert float(r["teacher_probability"]) == pytest.approx(float(expected_probability(image)[0]), abs=1e-5)
        assert r["teacher_flag"] == mask_flags(expected, ctr)
        if not r["teacher_flag"]:
            taught += 1
            for column, plane in zip(pseudo.MASK_COLUMNS, expected):
                np.testing.assert_array_equal(cv2.imread(str(out / r[column]), cv2.IMREAD_UNCHANGED), plane * 255)
    assert taught == report["n_with_masks"] > 0
    plain = pseudo.pseudo_label(teacher, spec, tmp_path / "plain", batch_size=2, log=_quiet)
    assert plain["shift_vote"] == 0 and plain["n_with_masks"] == taught


@pytest.mark.parametrize("pixels", ["-1", str(SIZE // 4)])
def test_a_shift_vote_out_of_range_is_refused_before_anything_is_written(site, tmp_path, capsys, pixels):
    spec, _ = site
    out = tmp_path / "pseudo"
    assert pseudo.main([str(bright_model(tmp_path / "t.onnx")), spec, "--out", str(out), "--shift-vote", pixels]) == 2
    assert f"--shift-vote {pixels}: give a shift of 1 to {SIZE // 4 - 1} pixels" in capsys.readouterr().err
    assert not out.exists()


def test_a_shift_vote_on_masks_of_another_size_is_refused_before_anything_is_written(site, tmp_path):
    spec, _ = site
    out = tmp_path / "pseudo"
    with pytest.raises(pseudo.PseudoError, match=rf"masks of \[{SIZE // 2}, {SIZE // 2}\] for an input of "
                                                 rf"\[{SIZE}, {SIZE}\]; --shift-vote needs masks at the input's size"):
        pseudo.pseudo_label(bright_model(tmp_path / "t.onnx", half_masks=True), spec, out, shift_vote=2, log=_quiet)
    assert not out.exists()


def test_agreement_counts_the_drawings_near_the_votes_ratio_and_none_without_a_ratio():
    nan = float("nan")
    ratios = np.array([[0.50, 0.50, nan, 0.40],
                       [0.52, 0.60, 0.50, 0.41],
                       [0.531, 0.50, 0.50, 0.449]])  # three drawings of four films
    voted = np.array([0.50, 0.50, nan, 0.42])
    np.testing.assert_array_equal(pseudo.agreement(ratios, voted, 0.03), [2, 2, 0, 3])
    np.testing.assert_array_equal(pseudo.agreement(ratios, voted, 0.015), [1, 2, 0, 1])


def _unsteady_on_first_film(monkeypatch):
    """Scorer.run, but with the ratio measured on the masks drawn (main parts, as cxr's models measure in the graph),
    and the first film of each batch gets no heart in the drawings on films moved right (dx > 0: 3 of the vote's 9),
    so only 6 of its 9 drawings measure a ratio; calls come once per shift, in shift_grid's order."""
    from cxr.runtime.anatomy import main_parts_reference
    from cxr.runtime.scoring import Scorer

    real_run = Scorer.run
    right = [k for k, (_, dx) in enumerate(pseudo.shift_grid(3)) if dx > 0]
    calls = []

    def unsteady(self, batch, extras=()):
        out = real_run(self, batch, extras)
        if batch.shape[0] > 1:  # not the blank film of the vote's size check
            if len(calls) % 9 in right:
                out["masks"] = out["masks"].copy()
                out["masks"][0, 0] = 0
            calls.append(1)
        out["ctr"] = np.array([ctr_reference(main_parts_reference(m)) for m in out["masks"]], np.float32)
        return out

    monkeypatch.setattr(Scorer, "run", unsteady)


def test_each_film_records_how_many_drawings_agree_with_its_vote(site, tmp_path, monkeypatch):
    spec, _ = site
    _unsteady_on_first_film(monkeypatch)
    out = tmp_path / "pseudo"
    report = pseudo.pseudo_label(bright_model(tmp_path / "t.onnx"), spec, out, batch_size=16, shift_vote=3,
                                 log=_quiet)
    bad, a, *others = _rows(out)
    assert a["path"].endswith("a.png") and a["teacher_agreement"] == "6"  # 3 drawings without a heart: no ratio
    assert bad["teacher_agreement"] == "" and all(r["teacher_agreement"] == "9" for r in others)
    assert a["teacher_flag"] == "" and a["mask_heart"]  # the vote of the six drawings that drew the heart keeps it
    assert cv2.imread(str(out / a["mask_heart"]), cv2.IMREAD_UNCHANGED).any()
    assert report["flags"] == {"lungs_cut_by_edge": 1, "truncated": 1} and report["n_with_masks"] == 4
    assert report["agreement"] == {"6": 1, "9": 3}  # the films whose voted masks look like a chest (not e.png)
    saved = json.loads((out / "pseudo.json").read_text())
    assert (saved["agreement"], saved["agree_within"]) == ({"6": 1, "9": 3}, 0.03)


def test_without_a_vote_the_agreement_column_is_blank(site, tmp_path):
    spec, _ = site
    report = pseudo.pseudo_label(bright_model(tmp_path / "t.onnx"), spec, tmp_path / "p", log=_quiet)
    assert all(r["teacher_agreement"] == "" for r in _rows(tmp_path / "p"))
    assert report["agreement"] is None and report["agree_within"] is None


def test_a_votes_agreement_is_given_back_once_per_film():
    class Teacher:  # masks: the film's pixels above 0, drawn into all three structures (an equivariant teacher)
        model_path = "t.onnx"

        class card:
            class preprocess:
                size = 32

        def run(self, batch, extras=()):
            masks = np.repeat((np.asarray(batch) > 0).astype(np.uint8), 3, axis=1)
            return {"logit": np.zeros(len(batch)), "probability": np.full(len(batch), 0.5), "masks": masks,
                    "ctr": np.array([ctr_reference(m) for m in masks], np.float32)}

    films = np.zeros((2, 1, 32, 32), np.uint8)
    films[:, 0, 8:24, 8:24] = 200  # the same film twice: the same voted masks
    drawer = pseudo.ShiftVote(Teacher(), 2)
    voted = drawer.run(films)["masks"]
    assert drawer.agreement_of(voted[0]) == 9 and drawer.agreement_of(voted[1]) == 9
    with pytest.raises(pseudo.PseudoError, match="no vote of this session gave these masks"):
        drawer.agreement_of(voted[0])
    assert drawer._agreement == {}  # nothing held once each film's count was given back


def test_a_shift_vote_needs_the_teachers_own_ratio():
    class Teacher:  # masks but no ctr output
        model_path = "t.onnx"

        class card:
            class preprocess:
                size = 32

        def run(self, batch, extras=()):
            return {"logit": np.zeros(len(batch)), "probability": np.full(len(batch), 0.5),
                    "masks": np.zeros((len(batch), 3, 32, 32), np.uint8)}

    with pytest.raises(pseudo.PseudoError, match="t.onnx: the model has no masks/ctr outputs; --shift-vote needs"):
        pseudo.ShiftVote(Teacher(), 2)
