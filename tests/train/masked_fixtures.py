"""A small labelled set with heart and lung masks: phantom radiographs (cxr.train.phantom) whose masks are written
as PNG files named by CSV columns, the wingspan/JSRT layout. Mechanics only (densenet_tiny at 64 px)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

MASK_COLUMNS = ("mask_heart", "mask_left_lung", "mask_right_lung")


def make_masked_set(root: Path, n: int = 48, size: int = 64, masked: int | None = None, seed: int = 0) -> Path:
    """n phantom images (patients p000..), the first `masked` (default all) with mask files; labels.csv columns
    path,cardiomegaly,patient_id,ctr,mask_heart,mask_left_lung,mask_right_lung. Returns the CSV path."""
    from cxr.runtime.anatomy import ctr_reference
    from cxr.train.phantom import render_phantom

    root.mkdir(parents=True, exist_ok=True)
    masked = n if masked is None else masked
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        ctr = float(rng.uniform(0.38, 0.62))
        image, m = render_phantom(rng, ctr, size=size, return_masks=True)
        lungs = m["lungs"].astype(bool)
        mid = size // 2
        left = lungs.copy()
        left[:, :mid] = False  # the patient's left lung lies on the image's right
        right = lungs & ~left
        stack = np.stack([m["heart"].astype(bool), left, right]).astype(np.uint8)
        name = f"img{i:03d}.png"
        cv2.imwrite(str(root / name), image)
        cells = ["", "", ""]
        if i < masked:
            for col, plane in zip(("heart", "left_lung", "right_lung"), stack):
                (root / col).mkdir(exist_ok=True)
                cv2.imwrite(str(root / col / name), plane * 255)
            cells = [f"{c}/{name}" for c in ("heart", "left_lung", "right_lung")]
        rows.append([name, int(ctr_reference(stack) > 0.5), f"p{i:03d}", f"{ctr_reference(stack):.4f}", *cells])
    path = root / "labels.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cardiomegaly", "patient_id", "ctr", *MASK_COLUMNS])
        w.writerows(rows)
    return path
