"""Every dataset layout parses from small fixtures written here; nothing is dropped without a reason."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.train.datasets import DATASET_KINDS, DatasetIndex, Sample, load_dataset, parse_label


def write_png(path: Path, value: int = 100) -> Path:
    """A small valid grayscale image (40x40, not blank, so cxr.runtime.imaging accepts it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((40, 40), value, np.uint8)
    image[10:30, 10:30] = 255 - value
    assert cv2.imwrite(str(path), image), f"fixture not written: {path}"
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def by_name(index: DatasetIndex) -> dict[str, Sample]:
    return {s.path.name: s for s in index.samples}


# ---------------------------------------------------------------------------------------------------------- folder


def test_folder_with_split_folders(tmp_path):
    for split, cls, name in [("train", "Cardiomegaly", "a.png"), ("train", "Normal", "b.png"),
                             ("val", "Cardiomegaly", "c.png"), ("val", "Normal", "d.jpg"),
                             ("test", "Normal", "sub/e.png")]:
        write_png(tmp_path / split / cls / name)
    (tmp_path / "train" / "Normal" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "Other").mkdir()
    (tmp_path / "extras").mkdir()
    index = load_dataset("folder", tmp_path)
    got = {n: (s.label, s.split, s.patient_id) for n, s in by_name(index).items()}
    assert got == {"a.png": (1, "train", "train/Cardiomegaly/a.png"), "b.png": (0, "train", "train/Normal/b.png"),
                   "c.png": (1, "val", "val/Cardiomegaly/c.png"), "d.jpg": (0, "val", "val/Normal/d.jpg"),
                   "e.png": (0, "test", "test/Normal/sub/e.png")}  # no NIH-style names: each image its own patient
    assert index.patient_ids_known is False
    assert all(s.path.is_absolute() for s in index.samples)
    reasons = {Path(p).name: r for p, r in index.skipped}
    assert reasons == {"notes.txt": "not an image file", "Other": "not a class folder", "extras": "not a split folder"}


@pytest.mark.parametrize("sub", ["sub", "scan: 2024"])  # a folder name with ": " keeps its whole path
def test_folder_symlink_loop_lists_each_image_once(tmp_path, sub):
    write_png(tmp_path / "Cardiomegaly" / "a.png")
    write_png(tmp_path / "Normal" / sub / "b.png")
    (tmp_path / "Normal" / sub / "back").symlink_to(tmp_path / "Normal", target_is_directory=True)
    write_png(tmp_path / "elsewhere" / "c.png")
    (tmp_path / "Normal" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    index = load_dataset("folder", tmp_path)
    names = sorted(s.path.relative_to(tmp_path).as_posix() for s in index.samples)
    assert names == sorted(["Cardiomegaly/a.png", "Normal/linked/c.png", f"Normal/{sub}/b.png"])  # not looped
    loops = [(Path(p).relative_to(tmp_path).as_posix(), r) for p, r in index.skipped if "loop" in r]
    assert loops == [(f"Normal/{sub}/back", "symlink loop (points back to a folder above it), not followed")]


def test_folder_refused_formats_and_broken_links_are_skipped_once_with_a_reason(tmp_path):
    write_png(tmp_path / "Cardiomegaly" / "a.png")
    write_png(tmp_path / "Normal" / "b.png")
    ok, webp = cv2.imencode(".webp", np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
    (tmp_path / "Normal" / "c.webp").write_bytes(webp.tobytes() if ok else b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 32)
    (tmp_path / "Normal" / "d.gif").write_bytes(b"GIF89a" + b"\0" * 40)
    (tmp_path / "Normal" / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "Normal" / "gone").symlink_to(tmp_path / "missing")
    index = load_dataset("folder", tmp_path)
    assert sorted(s.path.name for s in index.samples) == ["a.png", "b.png"]
    reasons = sorted((Path(p).name, r) for p, r in index.skipped)
    assert reasons == [("c.webp", "unsupported image format (WebP); convert to PNG"),
                       ("d.gif", "unsupported image format (GIF); convert to PNG"),
                       ("gone", "broken symlink"), ("gone.png", "broken symlink")]


def test_folder_samples_keep_path_order(tmp_path):
    for rel in ("Normal/a-b/x.png", "Normal/a/x.png", "Normal/a.png", "Normal/B.png"):
        write_png(tmp_path / rel)
    write_png(tmp_path / "Cardiomegaly" / "c.png")
    index = load_dataset("folder", tmp_path)
    normal = [s.path for s in index.samples if s.label == 0]
    assert normal == sorted(normal) and len(normal) == 4


def test_folder_without_split_folders_and_custom_class_names(tmp_path):
    write_png(tmp_path / "enlarged" / "x.png")
    write_png(tmp_path / "enlarged" / "y.png")
    write_png(tmp_path / "fine" / "z.png")
    index = load_dataset("folder", tmp_path, positive_class="Enlarged", negative_class="Fine")
    assert {n: (s.label, s.split) for n, s in by_name(index).items()} == {
        "x.png": (1, None), "y.png": (1, None), "z.png": (0, None)}
    assert index.summary()["by_split"] == {"unassigned": {"total": 3, "positives": 2, "negatives": 1}}


@pytest.mark.parametrize("names, known, patients", [
    (["00000001_000.png", "00000001_001.png", "00000002_000.png"], True, {"00000001", "00000002"}),
    # one other name keeps the NIH patients grouped; that image alone is its own patient (by its path)
    (["00000001_000.png", "00000001_000 (copy).png"], False, {"00000001", "Normal/00000001_000 (copy).png"}),
])
def test_folder_patient_ids_from_nih_style_names(tmp_path, caplog, names, known, patients):
    for name in names:
        write_png(tmp_path / "Normal" / name)
    write_png(tmp_path / "Cardiomegaly" / names[0].replace("_000", "_009"))
    with caplog.at_level(logging.WARNING, logger="cxr.train.datasets"):
        index = load_dataset("folder", tmp_path)
    assert index.patient_ids_known is known
    assert {s.patient_id for s in index.samples} == patients
    assert ("1 of 3 image names are not NIH-style" in caplog.text) is (not known)


def test_folder_images_with_one_file_name_in_many_folders_are_different_patients(tmp_path):
    """CheXpert-like trees repeat file names (study1/view1_frontal.png): without patient ids, never merge them."""
    for i in range(3):
        write_png(tmp_path / "Normal" / f"study{i}" / "view1_frontal.png")
        write_png(tmp_path / "Cardiomegaly" / f"study{i}" / "view1_frontal.png")
    index = load_dataset("folder", tmp_path)
    assert len({s.patient_id for s in index.samples}) == 6 and index.patient_ids_known is False


def test_folder_without_class_folders_is_an_error(tmp_path):
    write_png(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match="no class folders 'Cardiomegaly' or 'Normal'"):
        load_dataset("folder", tmp_path)


# ---------------------------------------------------------------------------------------------------------- csv


def test_csv_with_custom_columns(tmp_path, caplog):
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png"):
        write_png(tmp_path / "img" / name)
    labels = write_csv(tmp_path / "meta" / "labels.csv", ["file", "y", "pid", "fold", "site"], [
        [str(tmp_path / "img" / "a.png"), "1", "p1", "train", "s1"],  # absolute path
        ["img/b.png", "no", "p1", "", "s1"],
        ["img/c.png", "Positive", "", "test", "s2"],  # no patient id: its own patient, named by its path
        ["img/d.png", "maybe", "p3", "", "s2"],
        ["img/e.png", "", "p4", "", "s2"],
        ["img/missing.png", "1", "p5", "", "s2"],
        ["img/f.png", "0", "p6", "holdout", "s2"],
    ])
    with caplog.at_level(logging.WARNING, logger="cxr.train.datasets"):
        index = load_dataset("csv", tmp_path, csv_path=labels, path_column="file", label_column="y",
                             patient_column="pid", split_column="fold", source_column="site")
    got = {n: (s.label, s.patient_id, s.split, s.source) for n, s in by_name(index).items()}
    assert got == {"a.png": (1, "p1", "train", "s1"), "b.png": (0, "p1", None, "s1"),
                   "c.png": (1, "img/c.png", "test", "s2")}
    assert index.patient_ids_known is False  # one row had no patient id
    reasons = sorted(r for _, r in index.skipped)
    assert reasons == ["bad label 'maybe'", "missing file", "no label",
                       "unknown split 'holdout' (expected one of ('train', 'val', 'test') or blank)"]
    assert "4 of 7 entries skipped" in caplog.text


@pytest.mark.parametrize("value, expected", [
    ("1", 1), ("0", 0), ("1.0", 1), ("0.0", 0), ("true", 1), ("False", 0), ("yes", 1), ("NO", 0),
    ("positive", 1), ("negative", 0), ("Cardiomegaly", 1), ("normal", 0), ("", None), ("2", None), ("-1", None),
])
def test_label_values(value, expected):
    assert parse_label(value) == expected


def test_csv_paths_relative_to_the_csv_folder_and_default_source_column(tmp_path):
    write_png(tmp_path / "data" / "x.png")
    labels = write_csv(tmp_path / "data" / "labels.csv", ["path", "cardiomegaly", "dataset"], [["x.png", "1", "siteA"]])
    index = load_dataset("csv", labels)  # root may be the CSV itself
    assert [(s.path, s.source, s.patient_id) for s in index.samples] == [
        ((tmp_path / "data" / "x.png").resolve(), "siteA", "x.png")]
    assert index.patient_ids_known is False


def test_csv_without_patient_ids_uses_nih_style_names(tmp_path):
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png", "scan.png"):
        write_png(tmp_path / name)
    labels = write_csv(tmp_path / "labels.csv", ["path", "cardiomegaly"],
                       [["00000001_000.png", "1"], ["00000001_001.png", "0"], ["00000002_000.png", "0"]])
    index = load_dataset("csv", labels)
    assert {n: s.patient_id for n, s in by_name(index).items()} == {
        "00000001_000.png": "00000001", "00000001_001.png": "00000001", "00000002_000.png": "00000002"}
    assert index.patient_ids_known is True
    with open(labels, "a", newline="") as fh:
        fh.write("scan.png,1\n")
    index = load_dataset("csv", labels)
    assert by_name(index)["scan.png"].patient_id == "scan.png" and index.patient_ids_known is False


@pytest.mark.parametrize("kwargs, message", [
    ({"label_column": "label"}, r"missing column\(s\) 'label' \(choose it with --label-column\)"),
    ({"path_column": "file"}, r"missing column\(s\) 'file' \(choose it with --path-column\)"),
    ({"source_column": "site"}, r"source column 'site' \(--source-column\) not found"),
    # a typo in the patient column must not split by image
    ({"patient_column": "PatientXX"}, r"patient column 'PatientXX' \(--patient-column\) not found"),
])
def test_csv_missing_columns_are_named_with_the_option_that_fixes_them(tmp_path, kwargs, message):
    write_csv(tmp_path / "labels.csv", ["path", "cardiomegaly"], [["x.png", "1"]])
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("csv", tmp_path, **kwargs)
    assert "labels.csv" in str(info.value)


@pytest.mark.parametrize("kind, kwargs, message", [
    ("imagefolder", {}, "dataset kind must be one of"),
    ("csv", {"uncertain": "maybe"}, "uncertain must be one of"),
])
def test_bad_arguments(tmp_path, kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(kind, tmp_path, **kwargs)


@pytest.mark.parametrize("kind", DATASET_KINDS)
def test_missing_root_is_named(tmp_path, kind):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(kind, tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------- nih


@pytest.fixture()
def nih_root(tmp_path) -> Path:
    root = tmp_path / "nih"
    write_png(root / "images_001" / "images" / "00000001_000.png")
    write_png(root / "images_001" / "images" / "00000001_001.png")
    write_png(root / "images_002" / "images" / "00000002_000.png")
    write_png(root / "images_002" / "00000003_000.png")
    write_csv(root / "Data_Entry_2017_v2020.csv", ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"], [
        ["00000001_000.png", "Cardiomegaly", "0", "1"],
        ["00000001_001.png", "Cardiomegaly|Emphysema", "1", "1"],
        ["00000002_000.png", "No Finding", "0", "2"],
        ["00000003_000.png", "Effusion|Infiltration", "0", "3"],
        ["00000004_000.png", "Cardiomegaly", "0", "4"],  # no image on disk
    ])
    return root


def test_nih(nih_root):
    (nih_root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (nih_root / "test_list.txt").write_text("00000003_000.png\n00000004_000.png\n")
    index = load_dataset("nih", nih_root, nih_negatives="all")
    got = {n: (s.label, s.patient_id, s.split, s.source) for n, s in by_name(index).items()}
    assert got == {"00000001_000.png": (1, "00000001", None, "nih"), "00000001_001.png": (1, "00000001", None, "nih"),
                   "00000002_000.png": (0, "00000002", None, "nih"), "00000003_000.png": (0, "00000003", "test", "nih")}
    assert [r for _, r in index.skipped] == ["missing file"]
    assert "00000004_000.png" in index.skipped[0][0]
    assert index.patient_ids_known is True


def test_nih_negatives_are_no_finding_by_default_as_in_the_recipe(nih_root):
    """The recipe's classes were Cardiomegaly and Normal: an image with other findings only is neither."""
    index = load_dataset("nih", nih_root)
    assert {n: s.label for n, s in by_name(index).items()} == {
        "00000001_000.png": 1, "00000001_001.png": 1, "00000002_000.png": 0}  # 'Cardiomegaly|Emphysema' is positive
    assert sorted((Path(p.split(" ")[-1]).name, r) for p, r in index.skipped) == [
        ("00000003_000.png", "other finding, not Normal (--nih-negatives all keeps it)"),
        ("00000004_000.png", "missing file")]
    with pytest.raises(ValueError, match="nih_negatives must be one of"):
        load_dataset("nih", nih_root, nih_negatives="some")


def test_nih_symlink_loop_is_walked_once_and_reported(nih_root):
    images = nih_root / "images_001" / "images"
    (images / "again").symlink_to(nih_root / "images_001", target_is_directory=True)
    index = load_dataset("nih", nih_root, nih_negatives="all")
    assert sorted(by_name(index)) == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"]
    assert by_name(index)["00000001_000.png"].path == (images / "00000001_000.png").resolve()
    assert sorted(index.skipped) == sorted([
        (str(images / "again"), "symlink loop (points back to a folder above it), not followed"),
        (f"{nih_root / 'Data_Entry_2017_v2020.csv'}:6 00000004_000.png", "missing file")])


def test_nih_without_lists_leaves_everything_unassigned(nih_root):
    index = load_dataset("nih", nih_root, nih_negatives="all")
    assert {s.split for s in index.samples} == {None}
    assert len(index.samples) == 4


def test_nih_without_labels_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Data_Entry_2017"):
        load_dataset("nih", tmp_path)


# ---------------------------------------------------------------------------------------------------------- chexpert

CHEXPERT_ROWS = [  # (path under the release folder, Frontal/Lateral, Cardiomegaly)
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "1.0"),
    ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "1.0"),
    ("train/patient00002/study1/view1_frontal.jpg", "Frontal", "-1.0"),
    ("train/patient00003/study1/view1_frontal.jpg", "Frontal", ""),
    ("train/patient00004/study1/view1_frontal.jpg", "Frontal", "0.0"),
]


@pytest.fixture(params=["prefixed", "plain"])
def chexpert_root(request, tmp_path) -> Path:
    """The release folder; CSV paths either start with its name (as CheXpert ships) or are relative to it."""
    root = tmp_path / "CheXpert-v1.0-small"
    prefix = "CheXpert-v1.0-small/" if request.param == "prefixed" else ""
    for rel, _, _ in CHEXPERT_ROWS:
        write_png(root / rel)
    write_png(root / "valid/patient64541/study1/view1_frontal.jpg")
    header = ["Path", "Sex", "Frontal/Lateral", "AP/PA", "Cardiomegaly"]
    write_csv(root / "train.csv", header, [[prefix + r, "Male", v, "AP", c] for r, v, c in CHEXPERT_ROWS]
              + [[prefix + "train/patient00005/study1/view1_frontal.jpg", "Female", "Frontal", "PA", "1.0"]])
    write_csv(root / "valid.csv", header, [[prefix + "valid/patient64541/study1/view1_frontal.jpg", "Male",
                                            "Frontal", "PA", "1.0"]])
    return root


@pytest.mark.parametrize("uncertain, frontal_only, expected, skipped", [
    ("zeros", False, {"00001/view1": 1, "00001/view2": 1, "00002/view1": 0, "00003/view1": 0, "00004/view1": 0},
     ["missing file"]),
    ("ones", False, {"00001/view1": 1, "00001/view2": 1, "00002/view1": 1, "00003/view1": 0, "00004/view1": 0},
     ["missing file"]),
    ("ignore", False, {"00001/view1": 1, "00001/view2": 1, "00003/view1": 0, "00004/view1": 0},
     ["missing file", "uncertain label"]),
    ("drop", True, {"00001/view1": 1, "00003/view1": 0, "00004/view1": 0},
     ["lateral view", "missing file", "uncertain label"]),
])
def test_chexpert(chexpert_root, uncertain, frontal_only, expected, skipped):
    index = load_dataset("chexpert", chexpert_root, uncertain=uncertain, frontal_only=frontal_only)
    train = {f"{s.patient_id[-5:]}/{s.path.stem.split('_')[0]}": s.label for s in index.samples if s.split is None}
    assert train == expected
    assert sorted(r for _, r in index.skipped) == skipped
    test = [s for s in index.samples if s.split == "test"]
    assert [(s.patient_id, s.label) for s in test] == [("patient64541", 1)]  # valid.csv is the held-out set
    assert {s.source for s in index.samples} == {"chexpert"}
    assert all(s.patient_id.startswith("patient") and s.path.is_file() for s in index.samples)


# ---------------------------------------------------------------------------------------------------------- checks


def test_verify_images_skips_unreadable_files_with_their_code(tmp_path):
    write_png(tmp_path / "Normal" / "good.png")
    (tmp_path / "Normal" / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "Cardiomegaly").mkdir()
    cv2.imwrite(str(tmp_path / "Cardiomegaly" / "blank.png"), np.zeros((40, 40), np.uint8))
    unchecked = load_dataset("folder", tmp_path)
    assert len(unchecked.samples) == 3 and unchecked.skipped == []
    index = load_dataset("folder", tmp_path, verify_images=True, workers=2)
    assert [s.path.name for s in index.samples] == ["good.png"]
    assert sorted((Path(p).name, r) for p, r in index.skipped) == [("blank.png", "blank"),
                                                                     ("garbage.png", "not_an_image")]
    assert index.summary()["skipped"] == {"blank": 1, "not_an_image": 1}


def test_summary_counts(tmp_path):
    for name in ("a", "b", "c"):
        write_png(tmp_path / f"{name}.png")
    write_csv(tmp_path / "labels.csv", ["path", "cardiomegaly", "split", "source"],
              [["a.png", 1, "train", "s1"], ["b.png", 0, "train", "s2"], ["c.png", 0, "val", "s1"],
               ["d.png", 1, "val", "s1"]])
    summary = load_dataset("csv", tmp_path).summary()
    assert summary["total"] == 3 and summary["positives"] == 1 and summary["negatives"] == 2
    assert summary["by_split"] == {"train": {"total": 2, "positives": 1, "negatives": 1},
                                   "val": {"total": 1, "positives": 0, "negatives": 1}}
    assert summary["by_source"]["s1"] == {"total": 2, "positives": 1, "negatives": 1}
    assert summary["skipped"] == {"missing file": 1}


def test_phantom_kind(tmp_path):
    from cxr.train.phantom import make_phantom

    make_phantom(tmp_path, 12, seed=5, size=64)
    index = load_dataset("phantom", tmp_path)
    assert len(index.samples) == 12 and index.skipped == []
    assert {s.source for s in index.samples} == {"phantom"}
    assert index.patient_ids_known is True
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader((tmp_path / "labels.csv").open())}
    assert all(s.label == int(rows[s.path.name]["cardiomegaly"]) for s in index.samples)


@pytest.mark.parametrize("label_column, total, by_source", [
    ("cardiomegaly", 221, {"wingspan": (152, 69)}),
    ("cardiomegaly_mask_ctr", 506, {"wingspan": (185, 74), "jsrt": (69, 178)}),
])
def test_real_ctr_labels_parse(shared_data, label_column, total, by_source):
    index = load_dataset("csv", shared_data / "ctr_wingspan_jsrt", label_column=label_column)
    summary = index.summary()
    assert summary["total"] == total
    assert {k: (v["positives"], v["negatives"]) for k, v in summary["by_source"].items()} == by_source
    assert summary["skipped"] == ({"no label": 506 - total} if total < 506 else {})
    assert index.patient_ids_known is True and summary["patients"] == total
    assert all(s.path.is_file() for s in index.samples[:20])


def test_data_modules_do_not_import_torch():
    """The training data layer stays torch-free so indexing, splitting and cxr-phantom are light and fast."""
    import subprocess
    import sys

    code = ("import sys, cxr.train.datasets, cxr.train.splits, cxr.train.phantom, cxr.cli.phantom; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
