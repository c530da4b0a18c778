"""A synthetic chest-radiograph phantom: the built-in dataset that lets the whole pipeline run with no real data.

Each image has a body outline, two dark lungs, a bright heart and mediastinum, diaphragm domes, ribs, clavicles and a
faint spine. The label is the classical radiographic criterion: cardiomegaly = cardiothoracic ratio (CTR) > 0.5, with
CTR = horizontal extent of the heart / horizontal extent of both lungs (how datasets with heart and lung masks, such
as JSRT's, measure it). CTRs are spread uniformly across the cut-off so the task is learnable but not trivial near 0.5.
Nuisance variation (size, position, a few degrees of rotation, exposure, gamma, blur, noise, anatomy proportions) keeps
the model from solving it by counting pixels. Some patients get follow-up images (same anatomy, CTR +- 0.01, another
exposure and position), so splitting by patient matters here as it does on real data.

Deterministic: the same (n, seed, size) gives the same PNG bytes. Pure numpy + OpenCV (no torch).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxr.runtime.atomic import atomic_write, write_text_atomic
from cxr.train.errors import TrainError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the rendering changes, so an old set on disk is not reused as if it were current
CTR_RANGE = (0.38, 0.62)
CTR_CUTOFF = 0.5
LABELS_NAME = "labels.csv"
PARAMS_NAME = "phantom.json"
IMAGES_DIR = "images"
IMAGE_NAME = re.compile(r"P\d{5,}_\d+\.png")  # how make_phantom names its images
LABEL_COLUMNS = ("path", "cardiomegaly", "ctr", "patient_id")
MASKS_DIR = "masks"
MASK_COLUMNS = ("mask_heart", "mask_left_lung", "mask_right_lung")
MASK_CTR_COLUMN = "ctr_mask"  # the ratio measured on the written masks, as cxr measures it (cxr.runtime.anatomy)
_SHIFT = 4  # sub-pixel bits for OpenCV drawing: shapes are placed to 1/16 px so the CTR is exact at any size
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Anatomy:
    """What stays the same for one patient across images (proportions relative to the thoracic width)."""

    ctr: float
    thorax_frac: float  # thoracic width / image width
    lung_aspect: float  # lung height (apex to costophrenic angle) / thoracic width
    right_share: float  # share of the thoracic width on the patient's right (image left) of the midline
    heart_right_share: float  # share of the heart width right of the midline (the rest lies left of it)
    heart_aspect: float  # heart height / heart width
    mediastinum: float  # mediastinum half-width / thoracic width
    dome_right: float  # right hemidiaphragm dome height / thoracic width (usually the higher one)
    dome_left: float
    body_margin: float  # body half-width / thorax half-width
    rib_gap: float  # vertical rib spacing / lung height
    lung_density: float  # how dark aerated lung is (0 = air, 1 = soft tissue)
    heart_density: float  # extra density of the heart over the mediastinum


@dataclass(frozen=True)
class View:
    """What changes between two images of one patient: positioning and exposure."""

    zoom: float
    dx: float  # centre offset, fraction of the image side
    dy: float
    angle: float  # degrees
    gain: float
    gamma: float
    blur: float  # Gaussian sigma in pixels at 256 px
    noise: float  # noise sigma in grey levels (0-255)
    seed: int  # for the texture and noise fields


def sample_anatomy(rng: np.random.Generator, ctr: float) -> Anatomy:
    u = rng.uniform
    return Anatomy(
        ctr=float(ctr), thorax_frac=u(0.60, 0.72), lung_aspect=u(0.78, 0.98), right_share=u(0.46, 0.52),
        heart_right_share=u(0.28, 0.40), heart_aspect=u(0.62, 0.85), mediastinum=u(0.055, 0.085),
        dome_right=u(0.07, 0.11), dome_left=u(0.05, 0.09), body_margin=u(1.10, 1.25), rib_gap=u(0.085, 0.105),
        lung_density=u(0.22, 0.40), heart_density=u(0.03, 0.12),
    )


def sample_view(rng: np.random.Generator) -> View:
    u = rng.uniform
    return View(zoom=u(0.90, 1.06), dx=u(-0.04, 0.04), dy=u(-0.04, 0.04), angle=u(-3.0, 3.0), gain=u(0.80, 1.15),
                gamma=u(0.75, 1.35), blur=u(0.6, 1.6), noise=u(2.0, 7.0), seed=int(rng.integers(0, 2**31 - 1)))


def render_phantom(rng: np.random.Generator, ctr: float, size: int = 256, *, return_masks: bool = False):
    """One phantom radiograph with cardiothoracic ratio `ctr`: uint8 [size, size] (new anatomy and view from `rng`).

    With return_masks=True returns (image, {"heart": bool mask, "lungs": bool mask}) in the image frame.
    """
    if not 0.2 <= ctr <= 0.8:
        raise TrainError(f"ctr must lie in [0.2, 0.8], got {ctr!r}")
    if not isinstance(size, int) or size < 64:
        raise TrainError(f"size must be an integer >= 64, got {size!r}")
    anatomy = sample_anatomy(rng, ctr)
    return render(anatomy, sample_view(rng), size, return_masks=return_masks)


def render(anatomy: Anatomy, view: View, size: int, *, return_masks: bool = False):
    """Draw `anatomy` as seen in `view` (see render_phantom)."""
    s = float(size)
    wt = anatomy.thorax_frac * view.zoom * s  # thoracic width in pixels
    mid_x = s / 2 + view.dx * s
    h_lung = anatomy.lung_aspect * wt
    top = s * 0.5 - 0.58 * h_lung + view.dy * s  # lung apex
    base = top + h_lung  # costophrenic angles
    x_right = mid_x - anatomy.right_share * wt  # outer edge of the patient's right lung (image left)
    x_left = x_right + wt
    med = anatomy.mediastinum * wt

    body = np.zeros((size, size), np.uint8)
    _draw_body(body, mid_x, wt, anatomy.body_margin, top, s)
    lungs = np.zeros((size, size), np.uint8)
    for outer, inner, dome in ((x_right, mid_x - med, anatomy.dome_right * wt),
                               (x_left, mid_x + med, anatomy.dome_left * wt)):
        cv2.fillPoly(lungs, [_lung_polygon(outer, inner, top, base, dome)], 1, cv2.LINE_8, _SHIFT)
    heart = np.zeros((size, size), np.uint8)
    hw = anatomy.ctr * wt
    h_right = mid_x - anatomy.heart_right_share * hw
    hb = anatomy.heart_aspect * hw / 2
    heart_cy = base - anatomy.dome_left * wt * 0.55 - hb * 0.55
    cv2.fillPoly(heart, [_heart_polygon(h_right, h_right + hw, heart_cy, hb)], 1, cv2.LINE_8, _SHIFT)

    lung_only = (lungs > 0) & (heart == 0)
    d = body.astype(np.float32)  # density: 1 = soft tissue, 0 = air
    tex_rng = np.random.default_rng(view.seed)
    texture = _smooth_noise(tex_rng, size, cells=24) * 0.10  # vessels and lung markings
    d[lung_only] = anatomy.lung_density + texture[lung_only]
    d += heart.astype(np.float32) * anatomy.heart_density
    bones = np.zeros((size, size), np.float32)
    _draw_spine(bones, mid_x, top - 0.15 * h_lung, s, wt)
    _draw_ribs(bones, mid_x, x_right, x_left, top, h_lung, anatomy.rib_gap, wt)
    _draw_clavicles(bones, mid_x, top, wt)
    d += bones * body

    d = cv2.GaussianBlur(d, (0, 0), view.blur * s / 256.0)
    centre = (s / 2 + view.dx * s, s / 2 + view.dy * s)
    rot = cv2.getRotationMatrix2D(centre, view.angle, 1.0)
    d = cv2.warpAffine(d, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    img = np.clip(d * (0.72 * view.gain), 0.0, 1.0) ** view.gamma * 255.0
    img += _smooth_noise(tex_rng, size, cells=size // 2) * view.noise * 2.0
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if not return_masks:
        return img
    masks = {name: cv2.warpAffine(m, rot, (size, size), flags=cv2.INTER_NEAREST) > 0
             for name, m in (("heart", heart), ("lungs", lungs))}
    return img, masks


def _write_masks(out: Path, name: str, drawn: dict) -> tuple[str, str, str, str]:
    """Heart, left lung, right lung PNGs (0/255) for one image; their relative paths and the ratio measured on them.
    The two lungs are the lung mask's two connected parts (the patient's left lung is on the image's right)."""
    from cxr.runtime.anatomy import ctr_reference

    heart, lungs = drawn["heart"], drawn["lungs"]
    count, comp = cv2.connectedComponents(lungs.astype(np.uint8), connectivity=8)
    if count == 3:  # background + two lungs: the one further left in the image is the patient's right lung
        first_x = [np.flatnonzero((comp == c).any(axis=0)).mean() for c in (1, 2)]
        right = comp == (1 if first_x[0] < first_x[1] else 2)
    else:  # lungs drawn touching: split at the emptiest column of the middle third
        w = lungs.shape[1]
        occupancy = lungs[:, w // 3: 2 * w // 3].sum(axis=0)
        split = w // 3 + int(np.argmin(occupancy))
        right = lungs.copy()
        right[:, split:] = False
    left = lungs & ~right
    paths = []
    for part, m in (("heart", heart), ("left_lung", left), ("right_lung", right)):
        rel = f"{MASKS_DIR}/{part}/{name}"
        if not cv2.imwrite(str(out / rel), m.astype(np.uint8) * 255):
            raise OSError(f"{out / rel}: could not write the mask PNG")
        paths.append(rel)
    ratio = ctr_reference(np.stack([heart, left, right]))
    return (*paths, f"{ratio:.4f}")


def measure_ctr(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Horizontal extent of the heart mask / horizontal extent of the lung mask (how CTR is measured on masks)."""
    hx = np.flatnonzero(heart.any(axis=0))
    lx = np.flatnonzero(lungs.any(axis=0))
    if hx.size == 0 or lx.size == 0:
        raise TrainError("empty heart or lung mask")
    return float(hx[-1] - hx[0]) / float(max(lx[-1] - lx[0], 1))  # between extreme pixel centres


def _pts(xs, ys) -> np.ndarray:
    return np.rint(np.stack([xs, ys], axis=1) * _ONE).astype(np.int32)


def _lung_polygon(outer: float, inner: float, top: float, base: float, dome: float) -> np.ndarray:
    """Apex near the midline, lateral wall bulging out to `outer`, a diaphragm dome at the bottom."""
    sign = 1.0 if outer > inner else -1.0
    width = abs(outer - inner)
    apex_x = inner + sign * width * 0.35
    s = np.linspace(0.0, 1.0, 24)
    wall_x = apex_x + (outer - apex_x) * np.sin(np.minimum(s / 0.8, 1.0) * math.pi / 2) ** 0.5
    wall_y = top + s * (base - top)
    u = np.linspace(0.0, 1.0, 20)[1:]  # costophrenic angle -> medial end of the dome
    dome_x = outer + (inner - outer) * u
    dome_y = base - dome * np.sin(np.minimum(u * 1.3, 1.0) * math.pi * 0.75) - 0.2 * dome * u
    inner_y = np.linspace(dome_y[-1], top + 0.1 * (base - top), 8)[1:]
    inner_x = np.full_like(inner_y, inner)
    xs = np.concatenate([wall_x, dome_x, inner_x, [apex_x - sign * width * 0.05]])
    ys = np.concatenate([wall_y, dome_y, inner_y, [top + 0.02 * (base - top)]])
    return _pts(xs, ys)


def _heart_polygon(x_right: float, x_left: float, cy: float, half_h: float) -> np.ndarray:
    """A rounded heart silhouette spanning exactly [x_right, x_left]; the apex (image right) sits lower."""
    t = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
    c = np.cos(t)
    cx = x_right + (x_left - x_right) * 0.42
    ax = np.where(c >= 0, x_left - cx, cx - x_right)
    xs = cx + ax * np.sign(c) * np.abs(c) ** 0.8
    ys = cy + half_h * np.sin(t) + 0.25 * half_h * np.clip(c, 0, None) * (np.sin(t) > 0)
    xs = np.clip(xs, x_right, x_left)
    return _pts(xs, ys)


def _draw_body(body: np.ndarray, mid_x: float, wt: float, margin: float, top: float, s: float) -> None:
    half = wt / 2 * margin
    pts = _pts(np.array([mid_x - 0.22 * half, mid_x - 0.25 * half, mid_x - 0.95 * half, mid_x - half,
                         mid_x - 0.97 * half, mid_x + 0.97 * half, mid_x + half, mid_x + 0.95 * half,
                         mid_x + 0.25 * half, mid_x + 0.22 * half]),
               np.array([-1.0, top - 0.18 * wt, top - 0.02 * wt, top + 0.3 * wt, s + 1,
                         s + 1, top + 0.3 * wt, top - 0.02 * wt, top - 0.18 * wt, -1.0]))
    cv2.fillPoly(body, [pts], 1, cv2.LINE_AA, _SHIFT)


def _draw_spine(bones: np.ndarray, mid_x: float, y0: float, s: float, wt: float) -> None:
    w = 0.05 * wt
    cv2.rectangle(bones, (int((mid_x - w) * _ONE), int(y0 * _ONE)), (int((mid_x + w) * _ONE), int((s + 1) * _ONE)),
                  0.12, -1, cv2.LINE_AA, _SHIFT)


def _draw_ribs(bones, mid_x, x_right, x_left, top, h_lung, gap, wt) -> None:
    """Posterior ribs: arcs from the spine rising then falling to the lateral chest wall, stopping at the bases."""
    thickness = max(1, int(round(0.024 * wt)))
    step = gap * h_lung
    layer = np.zeros_like(bones)
    for side_x in (x_right, x_left):
        sign = -1.0 if side_x < mid_x else 1.0
        half = abs(side_x - mid_x)
        start, end = (180.0, 330.0) if sign < 0 else (210.0, 360.0)
        for k in range(12):
            y = top + (k + 0.2) * step
            if y > top + h_lung * 0.95:
                break
            centre = (int((mid_x + sign * 0.55 * half) * _ONE), int((y + 0.8 * step) * _ONE))
            axes = (int(0.55 * half * _ONE), int(1.1 * step * _ONE))
            cv2.ellipse(layer, centre, axes, sign * 12.0, start, end, 0.16, thickness, cv2.LINE_AA, _SHIFT)
    cut = int(min(bones.shape[0], max(0.0, top + h_lung)))
    layer[cut:] = 0
    bones += layer


def _draw_clavicles(bones, mid_x, top, wt) -> None:
    thickness = max(1, int(round(0.03 * wt)))
    for sign in (-1.0, 1.0):
        p0 = (int((mid_x + sign * 0.06 * wt) * _ONE), int((top + 0.02 * wt) * _ONE))
        p1 = (int((mid_x + sign * 0.5 * wt) * _ONE), int((top - 0.06 * wt) * _ONE))
        cv2.line(bones, p0, p1, 0.3, thickness, cv2.LINE_AA, _SHIFT)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with features about size/cells pixels wide."""
    cells = max(2, min(cells, size))
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) * 0.5


# ---------------------------------------------------------------------------------------------------------------
# The dataset on disk


def plan_patients(n: int, seed: int) -> list[tuple[str, int]]:
    """(patient id, image number) for n images: about 75% of patients have one image, the rest two or three."""
    rng = np.random.default_rng([seed, 0])
    plan: list[tuple[str, int]] = []
    p = 0
    while len(plan) < n:
        count = int(rng.choice([1, 2, 3], p=[0.75, 0.17, 0.08]))
        for k in range(min(count, n - len(plan))):
            plan.append((f"P{p:05d}", k))
        p += 1
    return plan


def make_phantom(out_dir: Path | str, n: int, seed: int = 0, size: int = 256, masks: bool = False) -> Path:
    """Write n phantom PNGs under out_dir/images, out_dir/labels.csv and out_dir/phantom.json; return labels.csv.

    labels.csv columns: path (relative to out_dir), cardiomegaly (int(ctr > 0.5)), ctr, patient_id.
    masks=True also writes heart / left lung / right lung masks (8-bit PNG, 0 or 255; the patient's left lung is on
    the image's right) under out_dir/masks/{heart,left_lung,right_lung}/ and adds the columns mask_heart,
    mask_left_lung, mask_right_lung (paths relative to out_dir) and ctr_mask (the ratio measured on those masks, the
    way cxr measures it), the layout of a real masked dataset, so the segmentation head can train on it.
    phantom.json is written last, so a set interrupted half-way is never mistaken for a finished one.
    """
    if not isinstance(n, int) or n < 1:
        raise TrainError(f"n must be a positive integer, got {n!r}")
    if not isinstance(size, int) or size < 64:
        raise TrainError(f"size must be an integer >= 64, got {size!r}")
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    if masks:
        for part in ("heart", "left_lung", "right_lung"):
            (out / MASKS_DIR / part).mkdir(parents=True, exist_ok=True)
    (out / PARAMS_NAME).unlink(missing_ok=True)
    rows = []
    anatomy: Anatomy | None = None
    for pid, k in plan_patients(n, seed):
        p_index = int(pid[1:])
        if k == 0:
            ctr = float(np.random.default_rng([seed, 1, p_index]).uniform(*CTR_RANGE))
            anatomy = sample_anatomy(np.random.default_rng([seed, 2, p_index]), round(ctr, 4))
            this = anatomy
        else:  # a follow-up: same anatomy, the heart measured a little differently
            delta = float(np.random.default_rng([seed, 3, p_index, k]).uniform(-0.01, 0.01))
            this = dataclasses.replace(anatomy, ctr=round(anatomy.ctr + delta, 4))
        view = sample_view(np.random.default_rng([seed, 4, p_index, k]))
        rel = f"{IMAGES_DIR}/{pid}_{k}.png"
        if masks:
            image, drawn = render(this, view, size, return_masks=True)
        else:
            image = render(this, view, size)
        if not cv2.imwrite(str(out / rel), image):
            raise OSError(f"{out / rel}: could not write the PNG")
        row = (rel, int(this.ctr > CTR_CUTOFF), f"{this.ctr:.4f}", pid)
        if masks:
            row += _write_masks(out, f"{pid}_{k}.png", drawn)
        rows.append(row)
    labels = out / LABELS_NAME
    with atomic_write(labels, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS + ((*MASK_COLUMNS, MASK_CTR_COLUMN) if masks else ()))
        writer.writerows(rows)
    params = phantom_params(n, seed, size, masks)
    params.update(positives=sum(r[1] for r in rows), patients=len({r[3] for r in rows}))
    write_text_atomic(out / PARAMS_NAME, json.dumps(params, indent=2) + "\n")
    log.info("wrote %d phantom images (%d positive) to %s", n, params["positives"], out)
    return labels


def phantom_params(n: int, seed: int, size: int, masks: bool = False) -> dict:
    """What identifies a phantom set: two sets with equal parameters have the same bytes."""
    params = {"generator": "cxr.phantom", "version": GENERATOR_VERSION, "n": n, "seed": seed, "size": size}
    return {**params, "masks": True} if masks else params


def existing_phantom(out_dir: Path | str, n: int, seed: int, size: int, masks: bool = False) -> dict | None:
    """The phantom.json of a complete set in out_dir made with these parameters, else None."""
    out = Path(out_dir)
    try:
        params = json.loads((out / PARAMS_NAME).read_text())
    except (OSError, ValueError):
        return None
    wanted = phantom_params(n, seed, size, masks)
    if not isinstance(params, dict) or any(params.get(k) != v for k, v in wanted.items()) or \
            bool(params.get("masks")) != masks:
        return None
    try:
        with (out / LABELS_NAME).open(newline="") as f:
            paths = [row["path"] for row in csv.DictReader(f)]
    except (OSError, KeyError, csv.Error):
        return None
    if len(paths) != n or not all((out / p).is_file() for p in paths):
        return None
    return params
