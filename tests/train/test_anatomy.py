"""The segmentation head and the cardiothoracic ratio: decoder shapes, the mask loss, the CTR in PyTorch, in numpy
and in the ONNX graph (hand-made masks, empty and edge-touching ones included), and the CTR definition on the real
manual masks."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch

from cxr.runtime.anatomy import HEART_WIDER, LUNGS_CUT, NO_HEART, NO_LUNGS, ONE_LUNG, ctr_reference, mask_flags
from cxr.train.anatomy import ctr_from_masks, dice_per_structure, mask_loss
from cxr.train.model import CardiomegalyNet, build_model


def _masks(h=20, w=30, heart=(5, 10, 12, 17), lungs=((3, 15, 4, 13), (3, 15, 16, 27))) -> np.ndarray:
    """[3, h, w] 0/1 with rectangles (r0, r1, c0, c1) for the heart and the two lungs."""
    m = np.zeros((3, h, w), np.uint8)
    r0, r1, c0, c1 = heart
    m[0, r0:r1, c0:c1] = 1
    for k, (r0, r1, c0, c1) in enumerate(lungs, start=1):
        m[k, r0:r1, c0:c1] = 1
    return m


HAND_MADE = {
    "rectangles": (_masks(), 5 / 23),
    "no_heart": (_masks(heart=(0, 0, 0, 0)), math.nan),
    "no_lungs": (_masks(lungs=((0, 0, 0, 0), (0, 0, 0, 0))), math.nan),
    "one_lung_touching_edge": (_masks(lungs=((3, 15, 0, 13), (0, 0, 0, 0))), 5 / 13),
    "widest_row_not_global_extent": (_masks(lungs=((3, 8, 2, 10), (10, 15, 12, 29))), 5 / 17),
    "heart_only_one_column": (_masks(heart=(5, 10, 12, 13)), 1 / 23),
    "full_frame": (np.ones((3, 20, 30), np.uint8), 1.0),
}


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_ctr_reference_on_hand_made_masks(name):
    masks, expected = HAND_MADE[name]
    got = ctr_reference(masks)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(HAND_MADE))
def test_torch_ctr_equals_reference(name):
    masks, expected = HAND_MADE[name]
    got = float(ctr_from_masks(torch.from_numpy(masks)[None])[0])
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-6)


def test_torch_ctr_matches_reference_on_random_masks():
    rng = np.random.default_rng(0)
    stack = (rng.random((64, 3, 24, 24)) < rng.random((64, 1, 1, 1)) * 0.15).astype(np.uint8)
    got = ctr_from_masks(torch.from_numpy(stack)).numpy()
    want = np.array([ctr_reference(m) for m in stack])
    np.testing.assert_allclose(got, want, atol=1e-6)  # NaN where want is NaN (assert_allclose: equal_nan)


class _CtrOnly(torch.nn.Module):
    def forward(self, masks):
        return ctr_from_masks(masks)


def test_onnx_ctr_equals_reference_at_opset_17():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    torch.onnx.export(_CtrOnly(), (torch.zeros(2, 3, 20, 30, dtype=torch.uint8),), buffer, dynamo=False,
                      opset_version=17, input_names=["masks"], output_names=["ctr"],
                      dynamic_axes={"masks": {0: "N"}, "ctr": {0: "N"}})
    proto = onnx.load_from_string(buffer.getvalue())
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    names = sorted(HAND_MADE)
    batch = np.stack([HAND_MADE[n][0] for n in names])
    (got,) = session.run(None, {"masks": batch})
    want = np.array([HAND_MADE[n][1] for n in names])
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("masks, flags", [
    (_masks(), ""),
    (_masks(heart=(0, 0, 0, 0)), NO_HEART),
    (_masks(lungs=((0, 0, 0, 0), (0, 0, 0, 0))), NO_LUNGS),
    (_masks(lungs=((3, 15, 0, 13), (3, 15, 16, 27))), LUNGS_CUT),
    (_masks(heart=(0, 0, 0, 0), lungs=((3, 15, 4, 13), (3, 15, 16, 30))), f"{NO_HEART};{LUNGS_CUT}"),
    (_masks(lungs=((3, 15, 4, 13), (0, 0, 0, 0))), ONE_LUNG),
    (_masks(lungs=((0, 0, 0, 0), (3, 15, 16, 31))), f"{ONE_LUNG};{LUNGS_CUT}"),
])
def test_mask_flags(masks, flags):
    assert mask_flags(masks) == flags


def test_a_ratio_above_one_is_flagged_with_or_without_masks():
    """A heart wider than the lungs' widest row (lungs mostly missed): the ratio is written, and flagged."""
    narrow_lungs = _masks(heart=(8, 14, 6, 26), lungs=((4, 15, 10, 13), (4, 15, 16, 19)))
    ctr = ctr_reference(narrow_lungs)
    assert ctr > 1 and mask_flags(narrow_lungs, ctr) == HEART_WIDER
    assert mask_flags(_masks(), ctr_reference(_masks())) == ""
    assert mask_flags(None, 1.2) == HEART_WIDER and mask_flags(None, 0.55) == "" and mask_flags(None, 1.0) == ""


def test_ctr_definition_matches_the_labels_on_real_masks(shared_data):
    """The reference reproduces labels.csv's ctr_mask (computed by the data's curators from the 512 px masks)."""
    import cv2

    root = shared_data / "ctr_wingspan_jsrt"
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    errors = []
    for row in rows[::25]:
        subset, _, name = row["path"].split("/")
        stack = np.stack([cv2.imread(str(root / subset / "mask" / s / name), cv2.IMREAD_GRAYSCALE) >= 128
                          for s in ("heart", "left_lung", "right_lung")])
        errors.append(abs(ctr_reference(stack) - float(row["ctr_mask"])))
    assert len(errors) >= 20 and max(errors) < 1e-4  # the CSV rounds to 4 decimals


@pytest.mark.parametrize("size", [64, 96])
def test_decoder_output_shapes(size):
    model = CardiomegalyNet("densenet_tiny", seg_head=True).eval()
    image = torch.randint(0, 256, (3, 1, size, size), dtype=torch.uint8)
    out = model.forward_all(image)
    assert out["logit"].shape == (3,)
    assert out["mask_logits"].shape == (3, 3, size, size)
    assert out["features"].ndim == 4 and out["features"].shape[0] == 3
    torch.testing.assert_close(out["logit"], model(image))  # the decoder leaves the classifier as it was
    assert model.cam(out["features"]).shape == (3, *out["features"].shape[2:])


def test_without_seg_head_the_model_is_the_recipe():
    plain = build_model("densenet_tiny")
    assert not any(k.startswith("decoder.") for k in plain.state_dict())
    seg = build_model("densenet_tiny", seg_head=True)
    assert set(plain.state_dict()) < set(seg.state_dict())
    assert "mask_logits" not in plain.forward_all(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))


def test_mask_loss_ignores_images_without_masks_and_rewards_right_masks():
    target = torch.from_numpy(np.stack([_masks(), _masks()])).float()
    right = (target * 2 - 1) * 8.0  # confident and right
    wrong = -right
    has = torch.tensor([True, False])
    good, n = mask_loss(right, target, has)
    bad, _ = mask_loss(wrong, target, has)
    assert n == 1 and float(good) < 0.01 < 1.0 < float(bad)
    # the second image has no masks: whatever the decoder says there, the loss does not change
    mixed = torch.stack([right[0], wrong[1]])
    assert float(mask_loss(mixed, target, has)[0]) == pytest.approx(float(good))
    zero, n0 = mask_loss(wrong, target, torch.tensor([False, False]))
    assert n0 == 0 and float(zero) == 0.0


def test_dice_per_structure():
    a = torch.from_numpy(_masks())[None]
    b = a.clone()
    b[0, 0] = 0  # heart missed entirely
    d = dice_per_structure(b, a)[0]
    assert float(d[0]) == 0.0 and float(d[1]) == 1.0 and float(d[2]) == 1.0


def _chest(h=96, w=96, islands=()) -> np.ndarray:
    """[3, h, w] 0/1: an elliptic heart and two lung blobs (cv2-drawn), plus islands (k, r0, r1, c0, c1)."""
    import cv2

    m = np.zeros((3, h, w), np.uint8)
    cv2.ellipse(m[0], (w // 2 + 4, 60 * h // 96), (14 * w // 96, 11 * h // 96), 0, 0, 360, 1, -1)
    cv2.ellipse(m[1], (w - 28 * w // 96, 45 * h // 96), (13 * w // 96, 30 * h // 96), 0, 0, 360, 1, -1)
    cv2.ellipse(m[2], (28 * w // 96, 45 * h // 96), (13 * w // 96, 30 * h // 96), 0, 0, 360, 1, -1)
    for k, r0, r1, c0, c1 in islands:
        m[k, r0:r1, c0:c1] = 1
    return m


MAIN_PART_CASES = {
    "clean": _chest(),
    "heart_island_below_the_lungs": _chest(islands=[(0, 86, 92, 2, 10)]),
    "lung_specks_at_both_edges": _chest(islands=[(1, 40, 44, 94, 96), (2, 70, 75, 0, 3), (2, 5, 6, 0, 96)]),
    "empty_heart": _chest() * np.array([0, 1, 1], np.uint8)[:, None, None],
    "all_empty": np.zeros((3, 96, 96), np.uint8),
    "full_frame": np.ones((3, 96, 96), np.uint8),
    "not_a_multiple_of_four": _chest(90, 94, islands=[(0, 2, 5, 80, 93)]),
}


@pytest.mark.parametrize("name", sorted(MAIN_PART_CASES))
def test_main_parts_torch_equals_numpy_twin(name):
    from cxr.runtime.anatomy import main_parts_reference
    from cxr.train.anatomy import main_parts

    masks = MAIN_PART_CASES[name]
    got = main_parts(torch.from_numpy(masks)[None])[0].numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, main_parts_reference(masks))


def test_main_parts_drop_the_islands_and_keep_one_piece_masks_as_they_were():
    import cv2

    from cxr.runtime.anatomy import main_parts_reference

    clean = MAIN_PART_CASES["clean"]
    np.testing.assert_array_equal(main_parts_reference(clean), clean)
    for name in ("heart_island_below_the_lungs", "lung_specks_at_both_edges"):
        noisy = MAIN_PART_CASES[name]
        kept = main_parts_reference(noisy)
        np.testing.assert_array_equal(kept, clean)  # exactly the largest 8-connected part of each structure
        for k in range(3):
            n, labels, stats, _ = cv2.connectedComponentsWithStats(noisy[k], connectivity=8)
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            np.testing.assert_array_equal(kept[k], (labels == largest).astype(np.uint8))
        # the island set the extent before: the heart island widens the heart, the specks the thorax
        assert ctr_reference(noisy) != pytest.approx(ctr_reference(clean))
        assert ctr_reference(kept) == pytest.approx(ctr_reference(clean))


def test_main_parts_on_random_masks_match_the_twin():
    """Blobs and specks at random (seeded): the traced-graph arithmetic and the numpy twin agree pixel for pixel."""
    import cv2

    from cxr.runtime.anatomy import main_parts_reference
    from cxr.train.anatomy import main_parts

    rng = np.random.default_rng(1)
    stack = np.zeros((12, 3, 64, 72), np.uint8)
    for m in stack:
        for k in range(3):
            for _ in range(rng.integers(0, 4)):
                cv2.circle(m[k], (int(rng.integers(0, 72)), int(rng.integers(0, 64))), int(rng.integers(1, 15)), 1, -1)
    got = main_parts(torch.from_numpy(stack)).numpy()
    want = np.stack([main_parts_reference(m) for m in stack])
    np.testing.assert_array_equal(got, want)


class _MeasuredCtr(torch.nn.Module):
    def forward(self, masks):
        from cxr.train.anatomy import main_parts

        kept = main_parts(masks)
        return ctr_from_masks(kept), kept


def test_onnx_main_parts_and_ctr_equal_the_numpy_twin_at_opset_17():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from cxr.runtime.anatomy import main_parts_reference

    buffer = io.BytesIO()
    torch.onnx.export(_MeasuredCtr(), (torch.zeros(2, 3, 96, 96, dtype=torch.uint8),), buffer, dynamo=False,
                      opset_version=17, input_names=["masks"], output_names=["ctr", "kept"],
                      dynamic_axes={"masks": {0: "N"}, "ctr": {0: "N"}, "kept": {0: "N"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    names = sorted(n for n in MAIN_PART_CASES if MAIN_PART_CASES[n].shape == (3, 96, 96))
    batch = np.stack([MAIN_PART_CASES[n] for n in names])
    ctr, kept = session.run(None, {"masks": batch})
    want_kept = np.stack([main_parts_reference(m) for m in batch])
    np.testing.assert_array_equal(kept, want_kept)
    np.testing.assert_allclose(ctr, [ctr_reference(m) for m in want_kept], atol=1e-6)


def test_scoring_writes_the_flags_beside_the_models_ratio():
    """What cxr-score puts in ctr_flag for a model whose masks missed most of the lungs (ratio 2.2), and for a
    model with a ctr output but no masks."""
    from cxr.runtime.scoring import _one

    narrow_lungs = _masks(heart=(8, 14, 6, 26), lungs=((4, 15, 10, 13), (4, 15, 16, 19)))
    values = {"logit": np.array([0.0]), "probability": np.array([0.5]), "ctr": np.array([2.2], np.float32),
              "masks": narrow_lungs[None]}
    row = _one(values, 0)
    assert row["ctr"] == pytest.approx(2.2) and row["ctr_flag"] == HEART_WIDER
    del values["masks"]
    assert _one(values, 0)["ctr_flag"] == HEART_WIDER
    values["ctr"] = np.array([np.nan], np.float32)
    assert _one(values, 0) == {"logit": 0.0, "probability": 0.5, "ctr": None, "ctr_flag": "not_measurable"}
