"""The synthetic phantom: exact CTR, right-looking anatomy, deterministic bytes, and the cxr-phantom command."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from cxr.cli.phantom import main
from cxr.train.phantom import (
    CTR_RANGE,
    existing_phantom,
    make_phantom,
    measure_ctr,
    render,
    render_phantom,
    sample_anatomy,
    sample_view,
)


def read_rows(folder):
    with (folder / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("ctr", [0.38, 0.45, 0.49, 0.51, 0.55, 0.62])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_measure_the_requested_ctr(ctr, seed):
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, ctr)
    upright = dataclasses.replace(sample_view(rng), angle=0.0)  # CTR is defined in the patient's frame
    _, masks = render(anatomy, upright, 256, return_masks=True)
    assert measure_ctr(masks["heart"], masks["lungs"]) == pytest.approx(ctr, abs=0.01)


@pytest.mark.parametrize("seed", range(5))
def test_lungs_are_darker_than_the_heart(seed):
    image, masks = render_phantom(np.random.default_rng(seed), 0.5, 256, return_masks=True)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    lungs_only = masks["lungs"] & ~masks["heart"]
    assert image[lungs_only].mean() + 40 < image[masks["heart"]].mean()
    corners = np.concatenate([image[:10, :10].ravel(), image[:10, -10:].ravel()])
    assert corners.mean() < image[lungs_only].mean()  # air outside the body is darkest


@pytest.mark.parametrize("ctr, size", [(0.1, 256), (0.5, 32), (0.5, 100.0)])
def test_render_rejects_bad_arguments(ctr, size):
    with pytest.raises(ValueError):
        render_phantom(np.random.default_rng(0), ctr, size)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    sets = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_phantom(tmp_path / name, 8, seed=seed, size=64)
        sets[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name / "images").iterdir())}
        sets[name]["labels.csv"] = (tmp_path / name / "labels.csv").read_bytes()
    assert sets["a"] == sets["b"]
    assert sets["a"]["labels.csv"] != sets["c"]["labels.csv"]


def test_labels_follow_the_ctr_and_patients_repeat(tmp_path):
    labels = make_phantom(tmp_path, 120, seed=0, size=64)
    rows = read_rows(tmp_path)
    assert labels == tmp_path / "labels.csv" and len(rows) == 120
    assert list(rows[0]) == ["path", "cardiomegaly", "ctr", "patient_id"]
    ctrs = np.array([float(r["ctr"]) for r in rows])
    assert [int(r["cardiomegaly"]) for r in rows] == [int(c > 0.5) for c in ctrs]
    assert CTR_RANGE[0] - 0.01 <= ctrs.min() and ctrs.max() <= CTR_RANGE[1] + 0.01
    positives = sum(int(r["cardiomegaly"]) for r in rows)
    assert 0.3 * 120 < positives < 0.7 * 120
    per_patient = Counter(r["patient_id"] for r in rows)
    assert 5 <= sum(1 for c in per_patient.values() if c > 1) and max(per_patient.values()) <= 3
    for pid in (p for p, c in per_patient.items() if c > 1):  # follow-ups: the same heart, measured again
        same = [float(r["ctr"]) for r in rows if r["patient_id"] == pid]
        assert max(same) - min(same) <= 0.02
    params = json.loads((tmp_path / "phantom.json").read_text())
    assert (params["n"], params["seed"], params["size"], params["positives"]) == (120, 0, 64, positives)
    assert all((tmp_path / r["path"]).is_file() for r in rows)


def test_existing_phantom_rejects_an_incomplete_set(tmp_path):
    make_phantom(tmp_path, 6, seed=1, size=64)
    assert existing_phantom(tmp_path, 6, 1, 64) is not None
    assert existing_phantom(tmp_path, 6, 2, 64) is None
    next((tmp_path / "images").iterdir()).unlink()
    assert existing_phantom(tmp_path, 6, 1, 64) is None


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_writes_then_reuses(tmp_path):
    out = tmp_path / "ph"
    first = run_cli(out, "--n", 10, "--seed", 2, "--size", 64)
    assert first.exit_code == 0, first.output
    positives = sum(int(r["cardiomegaly"]) for r in read_rows(out))
    assert f"wrote 10 phantom images to {out}" in first.output and f"{positives} of 10 positive" in first.output
    stamp = (out / "labels.csv").stat().st_mtime_ns
    again = run_cli(out, "--n", 10, "--seed", 2, "--size", 64)
    assert again.exit_code == 0 and "reusing the phantom set" in again.output
    assert (out / "labels.csv").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("other_args", [["--n", 11, "--seed", 2], ["--n", 10, "--seed", 3]])
def test_cli_refuses_a_different_set_without_overwrite(tmp_path, other_args):
    out = tmp_path / "ph"
    assert run_cli(out, "--n", 10, "--seed", 2, "--size", 64).exit_code == 0
    refused = run_cli(out, *other_args, "--size", 64)
    assert refused.exit_code == 1 and "is not empty" in refused.output and "--overwrite" in refused.output
    replaced = run_cli(out, *other_args, "--size", 64, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    n = int(other_args[1])
    assert len(read_rows(out)) == n and len(list((out / "images").iterdir())) == n


def test_cli_refuses_a_foreign_folder_and_overwrite_keeps_foreign_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refused = run_cli(tmp_path, "--n", 4, "--size", 64)
    assert refused.exit_code == 1 and f"{tmp_path} is not empty" in refused.output
    assert run_cli(tmp_path, "--n", 4, "--size", 64, "--overwrite").exit_code == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_refuses_a_file_as_out(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = run_cli(target, "--n", 4)
    assert result.exit_code != 0 and "file.txt" in result.output


def test_masks_option_writes_the_masked_layout_that_trains_the_decoder(tmp_path):
    import csv

    import cv2

    from cxr.runtime.anatomy import ctr_reference
    from cxr.train.datasets import load_dataset
    from cxr.train.phantom import MASK_COLUMNS, existing_phantom, make_phantom

    labels = make_phantom(tmp_path / "p", 12, seed=3, size=96, masks=True)
    rows = list(csv.DictReader(labels.open()))
    assert list(rows[0])[-4:] == [*MASK_COLUMNS, "ctr_mask"]
    for r in rows:
        heart, left, right = (cv2.imread(str(tmp_path / "p" / r[c]), cv2.IMREAD_GRAYSCALE) for c in MASK_COLUMNS)
        assert set(np.unique(heart)) == {0, 255} and left.any() and right.any() and not (left & right).any()
        # the patient's left lung lies on the image's right
        assert np.flatnonzero(left.any(axis=0)).mean() > np.flatnonzero(right.any(axis=0)).mean()
        assert float(r["ctr_mask"]) == pytest.approx(ctr_reference(np.stack([heart, left, right])), abs=1e-4)
        assert float(r["ctr_mask"]) == pytest.approx(float(r["ctr"]), abs=0.03)  # drawn to the requested ratio
    # a set with masks is another set than one without (never reused for it), and loads with its masks
    assert existing_phantom(tmp_path / "p", 12, 3, 96, masks=True) is not None
    assert existing_phantom(tmp_path / "p", 12, 3, 96) is None
    index = load_dataset("phantom", str(tmp_path / "p"), mask_columns=MASK_COLUMNS, ctr_column="ctr_mask")
    assert all(s.masks is not None and s.ctr is not None for s in index.samples)
