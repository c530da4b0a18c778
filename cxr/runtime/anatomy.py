"""The cardiothoracic ratio on masks, in numpy (the reference the model's in-graph CTR is tested against), and the
plausibility checks cxr-score applies to a model's masks. No torch here.

CTR, as the labels define it: the heart's horizontal extent (first to last occupied column, inclusive) over the
largest horizontal extent of one row of the union of both lungs; NaN when the heart or the lungs are empty.
"""

from __future__ import annotations

import cv2
import numpy as np

STRUCTURES = ("heart", "left_lung", "right_lung")

# ctr_flag values cxr-score writes beside an implausible measurement (empty when the masks look like a chest)
NO_HEART = "no_heart"
NO_LUNGS = "no_lungs"
LUNGS_CUT = "lungs_cut_by_edge"
ONE_LUNG = "one_lung_missing"  # the thorax is measured on one lung: the ratio comes out too high
HEART_WIDER = "heart_wider_than_lungs"  # a ratio above 1: no chest holds a heart wider than its lungs


def _extent(occupied: np.ndarray) -> int:
    idx = np.flatnonzero(occupied)
    return int(idx[-1] - idx[0] + 1) if idx.size else 0


def ctr_reference(masks: np.ndarray) -> float:
    """CTR of one 0/1 mask stack [3, H, W] (heart, left lung, right lung); NaN if not measurable."""
    masks = np.asarray(masks) > 0
    if masks.ndim != 3 or masks.shape[0] != 3:
        raise ValueError(f"expected masks of shape [3, H, W], got {list(masks.shape)}")
    heart_w = _extent(masks[0].any(axis=0))
    lungs = masks[1] | masks[2]
    thorax_w = max((_extent(row) for row in lungs), default=0)
    if heart_w == 0 or thorax_w == 0:
        return float("nan")
    return heart_w / thorax_w


MAIN_PART_FACTOR = 4
"""Main parts are found on a grid of 4x4-pixel cells (islands closer than a cell join the part)."""


def main_part_geometry(height: int, width: int) -> tuple[int, int, int]:
    """(cell size, seed box in cells: about a quarter of the image, growth steps: the grid's height plus width) of
    the main-part search on masks of this size; the model's in-graph `main_parts` and the twin below share it."""
    hc, wc = -(-height // MAIN_PART_FACTOR), -(-width // MAIN_PART_FACTOR)
    return MAIN_PART_FACTOR, 2 * (max(height, width) // (8 * MAIN_PART_FACTOR)) + 1, hc + wc


def main_parts_reference(masks: np.ndarray) -> np.ndarray:
    """numpy twin of the model's in-graph `main_parts` (cxr.train.anatomy): for each structure of 0/1 masks [C, H, W],
    the 8-connected part, on a grid of 4x4-pixel cells, holding the densest neighbourhood (a box a quarter of the
    image wide, first in row-major order on ties), grown from that cell for as many steps as the grid is high plus
    wide; the pixels outside it are dropped."""
    m = (np.asarray(masks) > 0).astype(np.uint8)
    _, h, w = m.shape
    f, box, steps = main_part_geometry(h, w)
    hc, wc = -(-h // f), -(-w // f)
    out = np.zeros_like(m)
    for i, mask in enumerate(m):
        padded = np.zeros((hc * f, wc * f), np.uint8)
        padded[:h, :w] = mask
        coarse = padded.reshape(hc, f, wc, f).max(axis=(1, 3))
        if not coarse.any():
            continue
        density = cv2.boxFilter(coarse.astype(np.int32), cv2.CV_32S, (box, box), normalize=False,
                                borderType=cv2.BORDER_CONSTANT) * coarse
        part = np.zeros_like(coarse)
        part.flat[int(np.argmax(density))] = 1
        kernel = np.ones((3, 3), np.uint8)
        for _ in range(steps):
            part = cv2.dilate(part, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) & coarse
        keep = np.repeat(np.repeat(part, f, axis=0), f, axis=1)[:h, :w]
        out[i] = mask & keep
    return out


def mask_flags(masks: np.ndarray | None, ctr: float | None = None) -> str:
    """'' when the masks [3, H, W] (None: a model without them) and the measured `ctr` look like a chest; else why
    the CTR should not be trusted (';'-joined)."""
    flags = []
    if masks is not None:
        masks = np.asarray(masks) > 0
        if not masks[0].any():
            flags.append(NO_HEART)
        lungs = masks[1] | masks[2]
        if not lungs.any():
            flags.append(NO_LUNGS)
        else:
            if not (masks[1].any() and masks[2].any()):
                flags.append(ONE_LUNG)
            if lungs[:, 0].any() or lungs[:, -1].any():
                flags.append(LUNGS_CUT)  # the widest row may run past the image: the thorax is under-measured
    if ctr is not None and ctr > 1.0:
        flags.append(HEART_WIDER)
    return ";".join(flags)
