"""Splits are drawn by patient, stratified, deterministic, keep what the data gives, and are recorded exactly."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from cxr.train.datasets import Sample
from cxr.train.splits import SPLITS_NAME, assign_splits, check_splits, read_splits, split_counts, write_splits


def cohort(n_patients: int = 200, positive_share: float = 0.3, seed: int = 0) -> list[Sample]:
    """Patients with 1-3 images each; a patient's images share the label except some positives' first image."""
    rng = random.Random(seed)
    samples = []
    for p in range(n_patients):
        label = int(rng.random() < positive_share)
        for k in range(rng.choice([1, 1, 2, 3])):
            samples.append(Sample(Path(f"/data/p{p:04d}_{k}.png"), label if k else label * rng.choice([0, 1]),
                                  f"p{p:04d}", None, rng.choice(["a", "b"])))
    return samples


def splits_of_patients(samples) -> dict[str, set[str]]:
    seen = defaultdict(set)
    for s in samples:
        seen[s.patient_id].add(s.split)
    return seen


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("val_fraction, test_fraction", [(0.15, 0.15), (0.2, 0.0), (0.1, 0.3), (0.3, 0.2)])
def test_patient_disjoint_stratified_and_sized(seed, val_fraction, test_fraction):
    samples = cohort(seed=seed)
    out = assign_splits(samples, val_fraction, test_fraction, seed=seed)
    assert [s.path for s in out] == [s.path for s in samples]  # same order, same images
    assert all(len(names) == 1 for names in splits_of_patients(out).values())
    required = ("train", "val", "test") if test_fraction else ("train", "val")
    check_splits(out, required)  # each has positives and negatives, no patient in two splits
    counts = split_counts(out)
    assert set(counts) == set(required)
    n_patients = len({s.patient_id for s in samples})
    for name, frac in (("val", val_fraction), ("test", test_fraction)):
        if frac:
            assert abs(counts[name]["patients"] - frac * n_patients) <= 2  # rounded per label stratum


def patient_label_share(samples, split):
    labels = defaultdict(int)
    for s in samples:
        if s.split == split:
            labels[s.patient_id] = max(labels[s.patient_id], s.label)
    return sum(labels.values()) / len(labels)


@pytest.mark.parametrize("seed", [0, 3])
def test_label_share_is_kept_in_every_split(seed):
    out = assign_splits(cohort(n_patients=400, seed=seed), 0.2, 0.2, seed=seed)
    overall = patient_label_share([s.__class__(s.path, s.label, s.patient_id, "all") for s in out], "all")
    for name in ("train", "val", "test"):
        assert patient_label_share(out, name) == pytest.approx(overall, abs=0.02)


def test_deterministic_for_a_seed_and_independent_of_order():
    samples = cohort()
    first = {s.path: s.split for s in assign_splits(samples, seed=4)}
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert {s.path: s.split for s in assign_splits(shuffled, seed=4)} == first
    assert {s.path: s.split for s in assign_splits(samples, seed=5)} != first


def test_existing_test_is_kept_and_val_comes_from_the_rest():
    samples = cohort()
    given = [s.__class__(s.path, s.label, s.patient_id, "test" if s.patient_id < "p0050" else None, s.source)
             for s in samples]
    out = assign_splits(given, 0.15, 0.15, seed=0)
    for before, after in zip(given, out):
        assert (after.split == "test") == (before.split == "test")
    assert set(split_counts(out)) == {"train", "val", "test"}
    check_splits(out, ("train", "val", "test"))


def test_val_is_carved_from_train_when_the_data_has_train_and_test_only():
    samples = [s.__class__(s.path, s.label, s.patient_id, "test" if s.patient_id < "p0040" else "train", s.source)
               for s in cohort()]
    out = assign_splits(samples, 0.15, 0.15, seed=0)
    assert [s.split == "test" for s in out] == [s.split == "test" for s in samples]
    moved = {s.patient_id for s in out if s.split == "val"}
    assert moved and all(pid >= "p0040" for pid in moved)
    check_splits(out, ("train", "val", "test"))


def test_complete_splits_are_left_alone_and_stray_images_join_their_patient():
    samples = [Sample(Path("/a0.png"), 1, "a", "train"), Sample(Path("/a1.png"), 0, "a", None),
               Sample(Path("/b0.png"), 0, "b", "val"), Sample(Path("/c0.png"), 1, "c", "test"),
               Sample(Path("/d0.png"), 0, "d", None)]
    out = assign_splits(samples, 0.15, 0.15, seed=0)
    assert [s.split for s in out] == ["train", "train", "val", "test", "train"]


@pytest.mark.parametrize("split, labels, message", [
    ("val", [0, 0], "split 'val' has no positive (cardiomegaly) images (2 images)"),
    ("val", [1, 1], "split 'val' has no negative images (2 images)"),
    ("test", [0, 1], "split 'val' is empty"),
])
def test_check_splits_names_the_split(split, labels, message):
    samples = [Sample(Path("/t0.png"), 0, "t0", "train"), Sample(Path("/t1.png"), 1, "t1", "train")]
    samples += [Sample(Path(f"/x{i}.png"), label, f"x{i}", split) for i, label in enumerate(labels)]
    with pytest.raises(ValueError) as info:
        check_splits(samples)
    assert message in str(info.value)


def test_check_splits_names_patients_in_two_splits():
    samples = [Sample(Path(f"/{s}{i}.png"), i % 2, f"p{i}", s) for s in ("train", "val") for i in range(4)]
    with pytest.raises(ValueError, match=r"4 patient\(s\) are in more than one split: p0 \(train/val\), p1"):
        check_splits(samples)


@pytest.mark.parametrize("val_fraction, test_fraction", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_bad_fractions(val_fraction, test_fraction):
    with pytest.raises(ValueError, match="fraction"):
        assign_splits(cohort(10), val_fraction, test_fraction)


def test_write_and_read_splits_round_trip(tmp_path):
    samples = assign_splits(cohort(30), seed=2)
    samples.append(Sample(Path("/data/odd, name.png"), 1, "px", None, ""))
    samples.append(Sample(Path("/data/m.png"), 0, "pm", "val", "wj", (Path("/m/h.png"), Path("/m/l.png"),
                                                                      Path("/m/r.png")), 0.4375))
    path = write_splits(samples, tmp_path / "run")
    assert path == tmp_path / "run" / SPLITS_NAME
    assert path.read_text().splitlines()[0] == ("path,label,patient_id,split,source,mask_heart,mask_left_lung,"
                                                "mask_right_lung,ctr_ref")
    assert read_splits(path) == samples


def test_splits_written_before_masks_existed_still_read(tmp_path):
    path = tmp_path / "splits.csv"
    path.write_text("path,label,patient_id,split,source\n/a.png,1,p,train,\n")
    (sample,) = read_splits(path)
    assert sample.masks is None and sample.ctr is None and sample.split == "train"


@pytest.mark.parametrize("content, message", [
    ("path,label,patient_id\n/a.png,1,p\n", r"missing column\(s\) \['split', 'source'\]"),
    ("path,label,patient_id,split,source\n/a.png,2,p,train,\n", "splits.csv:2: bad row"),
    ("path,label,patient_id,split,source\n/a.png,1,p,later,\n", "unknown split 'later'"),
])
def test_read_splits_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "splits.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_splits(path)
    assert str(path) in str(info.value)
