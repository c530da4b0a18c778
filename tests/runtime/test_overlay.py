"""Overlays: what is drawn (map where the model looked, contours, CTR extents), where it is written (only inside the
folder given, never over an input), and the background writer (error rows skipped, failures counted, not raised)."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from cxr.runtime.overlay import (
    HEART_EXTENT_BGR,
    OverlayPathError,
    OverlayWriter,
    confined_target,
    ctr_extents,
    overlay_relpath,
    render_overlay,
)
from cxr.runtime.scoring import ScoreRow
from tests.runtime.test_overlay_fixtures import chest_like, fixed_masks


def test_the_map_is_drawn_where_it_is_hot_and_the_rest_stays_gray():
    image = np.full((200, 100), 128, np.uint8)  # not square: the map is stretched back to the image's shape
    cam = np.zeros((7, 7), np.float32)
    cam[6, 0] = 5.0  # bottom-left cell
    out = render_overlay(image, cam=cam)
    assert out.shape == (200, 100, 3)
    hot = out[190, 5].astype(int)
    cold = out[100, 95].astype(int)
    assert hot[2] - hot[1] > 40  # JET at its maximum is red: the red channel well above the gray level
    assert list(cold) == [128, 128, 128]


def test_a_zero_or_nan_map_leaves_the_radiograph():
    image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    for cam in (np.zeros((2, 2), np.float32), np.full((2, 2), np.nan, np.float32)):
        out = render_overlay(image, cam=cam)
        np.testing.assert_array_equal(out[40:, :, 0], image[40:])  # below the caption box (none here)


def test_ctr_extents_follow_the_anatomy_definition():
    masks = fixed_masks(64)
    heart, thorax = ctr_extents(masks)
    assert heart[:2] == (24, 40) and thorax[:2] == (8, 55)
    from cxr.runtime.anatomy import ctr_reference

    assert (heart[1] - heart[0] + 1) / (thorax[1] - thorax[0] + 1) == pytest.approx(ctr_reference(masks))


def test_contours_and_extents_are_drawn_and_shrunk_to_max_side():
    image = np.full((2000, 1500), 90, np.uint16) * 200
    out = render_overlay(image, masks=fixed_masks(64), ctr=0.35, max_side=400)
    assert out.shape == (400, 300, 3)
    yellow = np.all(out == HEART_EXTENT_BGR, axis=-1)
    assert yellow.any(), "the heart extent line is drawn"
    rows = np.flatnonzero(yellow.any(axis=1))
    assert 0.5 * 400 < rows.mean() < 0.85 * 400  # on the heart's middle row, low in the image


@pytest.mark.parametrize("rel, inputs, expected", [
    ("a/b.png", [], "a/b.png"),
    ("a/B.PNG", [], "a/B.PNG"),
    ("c.dcm", [], "c.dcm.png"),
    ("c.dcm", ["c.dcm.png"], "c.dcm.overlay.png"),
    ("c.dcm", ["c.dcm.png", "c.dcm.overlay.png"], "c.dcm.overlay2.png"),
])
def test_overlay_names_keep_the_relative_path_and_never_collide(tmp_path, rel, inputs, expected):
    for name in inputs:
        (tmp_path / name).write_bytes(b"x")
    assert overlay_relpath(rel, tmp_path) == expected


@pytest.mark.parametrize("rel", ["../escape.png", "a/../../escape.png", "/abs.png", "./x/../y.png", ""])
def test_targets_outside_the_folder_are_refused(tmp_path, rel):
    root = tmp_path / "o"
    root.mkdir()
    with pytest.raises(OverlayPathError):
        confined_target(root, rel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_symlinked_folder_inside_the_overlays_is_not_followed(tmp_path):
    root, outside = tmp_path / "o", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OverlayPathError, match="symlink"):
        confined_target(root, "sub/x.png")


def test_the_scored_file_itself_is_never_a_target(tmp_path):
    root = tmp_path / "o"
    root.mkdir()
    source = tmp_path / "in.png"
    source.write_bytes(b"input")
    os.link(source, root / "in.png")  # the overlay name is a hard link to the input
    with pytest.raises(OverlayPathError, match="scored file"):
        confined_target(root, "in.png", source)
    assert source.read_bytes() == b"input"


def _row(path: str, ok: bool = True, p: float = 0.9) -> ScoreRow:
    if not ok:
        return ScoreRow(path, "error", error_code="truncated", error_message="cut short")
    return ScoreRow(path, "ok", probability=p, logit=0.0, label_pred=int(p >= 0.5),
                    cam=np.ones((2, 2), np.float32), masks=fixed_masks(64), ctr=0.35)


def test_writer_draws_ok_rows_skips_error_rows_and_counts_failures(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "o"
    (folder / "sub").mkdir(parents=True)
    out.mkdir()
    cv2.imwrite(str(folder / "sub" / "a.png"), chest_like(80, 60))
    (folder / "gone.png").write_bytes(b"")  # scored before, unreadable now: counted, not raised
    drawn = []
    with OverlayWriter(folder, out, threshold=0.5, on_drawn=lambda i, g, d: drawn.append((i, g.shape, d.shape)),
                       max_pending=1) as writer:
        writer.submit(_row("sub/a.png"), 7)
        writer.submit(_row("bad.png", ok=False), 8)
        writer.submit(_row("gone.png"), 9)
    stats = writer.stats
    assert (stats.written, stats.failed) == (1, 1) and "gone.png" in stats.failures[0]
    assert drawn == [(7, (80, 60), (80, 60, 3))]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["sub/a.png"]
    assert cv2.imread(str(out / "sub" / "a.png")).shape == (80, 60, 3)


def test_an_old_model_without_maps_still_gets_an_overlay(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "o"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), chest_like(64, 64))
    with OverlayWriter(folder, out, threshold=0.5) as writer:
        writer.submit(ScoreRow("a.png", "ok", probability=0.2, logit=0.0, label_pred=0))
    assert writer.stats.written == 1 and (out / "a.png").is_file()
