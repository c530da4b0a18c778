#!/usr/bin/env python
"""Does the model look at the heart? For a model with `cam` and `masks` outputs, on labelled images: how much of the
class activation map lies on the model's own heart mask, and whether the map's hottest point lies on the heart.

    python scripts/cam_on_heart.py MODEL FOLDER LABELS [--label-column C] [--path-column P] [--json OUT]
    make cam-on-heart MODEL=model.onnx FOLDER=jsrt/png LABELS=labels.csv [LABEL_COLUMN=cardiomegaly_mask_ctr]

Per class (positives, negatives), over the images where the model found a heart and the map is not all zero (a
map is all zero where nothing in the image counts for cardiomegaly, as on many negatives):
  mass in heart   the share of the map's mass (ReLU'd map, bilinear to the input grid) inside the predicted heart
                  mask, beside the share of the image the mask covers (a map blind to anatomy gets about the latter)
  mass in box     the same for the heart's bounding box widened by 10% of the image side on every side (the map is
                  coarse: 5 x 5 cells at 160 px, so a strict mask undercounts a map centred on the heart)
  peak in box     the fraction of images whose map maximum lies in that box (of those measured, and of all: an
                  image without a map or heart counts as not on it), beside the box's mean share of the image
                  (where a peak placed at random would land that often)
Both maps and masks are on the model's square input grid (the image squashed to S x S), as the overlays draw them.

Labels: any CSV the scorer's --labels reads (cxr.runtime.labels); a labelled path also matches a scored image whose
relative path it ends with (`jsrt/png/a.png` -> `a.png`), when exactly one does. Read-only: writes nothing but --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr.runtime.labels import match_labels, read_labels  # noqa: E402
from cxr.runtime.scoring import Scorer, score_folder  # noqa: E402
from cxr.runtime.walk import find_images  # noqa: E402

BOX_PAD = 0.10  # the heart box is widened by this share of the image side on every side


def heart_measures(cam: np.ndarray, heart_mask: np.ndarray, side: int) -> dict[str, float] | str:
    """The figures of one image, on a `side` x `side` grid; "no_heart" where the model found no heart, "zero_map"
    where the map is all zero (no positive evidence anywhere: common on negatives), as there is nothing to measure."""
    cam = cv2.resize(np.asarray(cam, np.float32), (side, side), interpolation=cv2.INTER_LINEAR).clip(min=0)
    heart = cv2.resize(np.asarray(heart_mask, np.float32), (side, side), interpolation=cv2.INTER_NEAREST) > 0.5
    total = float(cam.sum())
    if not heart.any():
        return "no_heart"
    if total <= 0:
        return "zero_map"
    ys, xs = np.nonzero(heart)
    pad = round(BOX_PAD * side)
    box = np.zeros_like(heart)
    box[max(0, ys.min() - pad):ys.max() + pad + 1, max(0, xs.min() - pad):xs.max() + pad + 1] = True
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return {"mass_in_heart": float(cam[heart].sum()) / total, "heart_area": float(heart.mean()),
            "mass_in_box": float(cam[box].sum()) / total, "box_area": float(box.mean()),
            "peak_in_box": float(box[peak])}


def summarize(measures: list[dict[str, float] | str]) -> dict[str, float | int]:
    """Means (and medians of the mass shares) over the measurable images; how many could not be measured, why."""
    done = [m for m in measures if isinstance(m, dict)]
    out: dict[str, float | int] = {"n": len(measures), "measured": len(done),
                                   "no_heart": measures.count("no_heart"), "zero_map": measures.count("zero_map")}
    if done:
        for key in done[0]:
            out[f"{key}_mean"] = float(np.mean([m[key] for m in done]))
        for key in ("mass_in_heart", "mass_in_box"):
            out[f"{key}_median"] = float(np.median([m[key] for m in done]))
        out["peak_in_box_of_all"] = sum(m["peak_in_box"] for m in done) / len(measures)  # unmeasured: not on it
    return out


def label_files(labels_path: Path, folder: Path, files: list[Path], path_column: str | None,
                label_column: str | None) -> dict[str, int]:
    """Scored relative path -> 0/1: the scorer's matching, then a labelled path ending in '/<scored path>'."""
    labels = read_labels(labels_path, path_column, label_column)
    matched = match_labels(labels, folder, files)
    by_file = dict(matched.by_file)
    scored = [f.as_posix() for f in files]
    for key in matched.unmatched:
        hits = [rel for rel in scored if key.endswith("/" + rel)]
        if len(hits) == 1 and hits[0] not in by_file:
            by_file[hits[0]] = labels.labels[key]
    return by_file


def measure(model: Path, folder: Path, labels_path: Path, path_column: str | None = None,
            label_column: str | None = None, threads: int | None = None) -> dict:
    """Score the labelled images of `folder` with `model` and summarize the map against the heart per class."""
    scorer = Scorer(model, device="cpu", threads=threads)
    missing = [o for o in ("cam", "masks") if o not in scorer.extra_outputs]
    if missing:
        raise SystemExit(f"{model}: the model has no {' or '.join(missing)} output; this check needs an activation "
                         "map and the anatomy masks (a model trained with masks and exported by cxr 0.2 or later)")
    files = find_images(folder).files
    by_file = label_files(labels_path, folder, files, path_column, label_column)
    if not by_file:
        raise SystemExit(f"{labels_path}: no labelled path matches an image in {folder}")
    wanted = [f for f in files if f.as_posix() in by_file]
    per_class: dict[int, list] = {1: [], 0: []}
    failed = 0
    for row in score_folder(folder, scorer, batch_size=8, workers=2, files=wanted, maps=True):
        if not row.ok:
            failed += 1
            continue
        per_class[by_file[row.path]].append(heart_measures(row.cam, row.masks[0], scorer.input_size))
    return {"model": str(model), "folder": str(folder), "labels": str(labels_path), "input_size": scorer.input_size,
            "box_pad": BOX_PAD, "not_scored": failed,
            "positives": summarize(per_class[1]), "negatives": summarize(per_class[0])}


def render(result: dict) -> str:
    lines = [f"{result['model']} on {result['folder']} (labels {result['labels']}; {result['not_scored']} file(s) "
             "not scored)"]
    for name in ("positives", "negatives"):
        s = result[name]
        lines.append(f"  {name}: n={s['n']}, measured {s['measured']} (no heart found: {s['no_heart']}, "
                     f"all-zero map: {s['zero_map']})")
        if not s["measured"]:
            continue
        lines += [f"    map mass in the heart mask: mean {s['mass_in_heart_mean']:.3f}, median "
                  f"{s['mass_in_heart_median']:.3f} (the mask covers {s['heart_area_mean']:.3f} of the image)",
                  f"    map mass in the heart box (+{result['box_pad']:.0%} of the side): mean "
                  f"{s['mass_in_box_mean']:.3f}, median {s['mass_in_box_median']:.3f} (the box covers "
                  f"{s['box_area_mean']:.3f})",
                  f"    map peak in the heart box: {s['peak_in_box_mean']:.3f} of the measured images, "
                  f"{s['peak_in_box_of_all']:.3f} of all {s['n']} (a random peak: {s['box_area_mean']:.3f})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--label-column", default=None, help="default: label, or else cardiomegaly")
    parser.add_argument("--path-column", default=None, help="default: path")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.model, args.folder, args.labels, args.path_column, args.label_column, args.threads)
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
