"""Masks drawn by a trained model for images that have none, so that another run learns the anatomy from them too
(pseudo-labels; one run taught by several runs built into one file with cxr-ensemble).

    python -m cxr.train.pseudo TEACHER.onnx 'nih:/data/nih;name=nih' --out DIR
    cxr-train --data 'csv:DIR;csv=DIR/labels.csv;mask_columns=mask_heart,mask_left_lung,mask_right_lung;name=nih'

The teacher (an exported model with a `masks` output) scores every labelled image of the source through onnxruntime,
with the preprocessing of its own card, as cxr-score would. An image whose masks look like a chest gets three mask
files (DIR/masks/{heart,left_lung,right_lung}/NNNNNN.png, named by row, 0/255 at the teacher's input size: cxr-train
resizes mask files like the image, so they fit any --image-size). An image whose masks carry a `ctr_flag` (no heart,
one lung, lungs cut by the edge, a heart wider than the lungs) or that cannot be read keeps blank mask cells: it
trains the classifier only, as before. DIR/labels.csv keeps each image's label, patient and split exactly as the source
gave them (so a run with the same --split-seed draws the same split), plus the teacher's ratio, probability and flag;
DIR/pseudo.json records the teacher (path, SHA-256, card) and the counts.

Where a run is to be tested on a source left out, neither the teacher nor the images labelled here may include that
source: pseudo-labels drawn on the test films would carry the test set into training.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MASK_COLUMNS = ("mask_heart", "mask_left_lung", "mask_right_lung")
STRUCTURES = ("heart", "left_lung", "right_lung")
COLUMNS = ("path", "cardiomegaly", "patient_id", "split", *MASK_COLUMNS, "teacher_ctr", "teacher_probability",
           "teacher_flag")
UNREADABLE = "unreadable"


class PseudoError(ValueError):
    """The teacher, the source or the output folder cannot be used (the message says which and why)."""


def load_source(spec: str) -> tuple[list, dict]:
    """The labelled samples of a --data spec, as cxr-train indexes that source (its own splits kept, none drawn)."""
    from cxr.train.config import SourceSpec, parse_mask_columns, parse_source
    from cxr.train.datasets import load_dataset

    raw = parse_source(spec)
    source = SourceSpec(**{"name": raw["kind"], **raw})
    source.check()
    index = load_dataset(source.kind, source.data_root, csv_path=source.csv_path, path_column=source.path_column,
                         label_column=source.label_column, patient_column=source.patient_column,
                         split_column=source.split_column, source_column=source.source_column,
                         positive_class=source.positive_class, negative_class=source.negative_class,
                         uncertain=source.uncertain, frontal_only=source.frontal_only,
                         nih_negatives=source.nih_negatives, mask_columns=parse_mask_columns(source.mask_columns),
                         ctr_column=source.ctr_column)
    return list(index.samples), index.summary()


def teacher_masks(scorer, paths: Sequence[Path], batch_size: int = 16, workers: int = 2):
    """For each path, in order: (masks uint8 0/1 [3, S, S], ctr, probability, flag) from the teacher; masks None and
    flag 'unreadable: why' for a file that cannot be read."""
    from cxr.runtime.anatomy import mask_flags
    from cxr.runtime.errors import ImageError
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import preprocess_batch

    config = scorer.card.preprocess

    def load(path: Path):
        try:
            return preprocess_batch([read_image(path)], config)[0], None
        except (ImageError, OSError, ValueError) as exc:
            return None, f"{UNREADABLE}: {getattr(exc, 'message', None) or exc}"

    out: list[tuple[np.ndarray | None, float, float, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            loaded = list(pool.map(load, paths[start:start + batch_size]))
            good = [i for i, (image, _) in enumerate(loaded) if image is not None]
            values = scorer.run(np.stack([loaded[i][0] for i in good]), extras=("masks", "ctr")) if good else {}
            at = {i: j for j, i in enumerate(good)}
            for i, (_, error) in enumerate(loaded):
                if error is not None:
                    out.append((None, float("nan"), float("nan"), error))
                    continue
                masks = (np.asarray(values["masks"][at[i]]) > 0).astype(np.uint8)
                ctr = float(values["ctr"][at[i]])
                out.append((masks, ctr, float(values["probability"][at[i]]), mask_flags(masks, ctr)))
    return out


def _refuse_out(out: Path) -> None:
    if (out / "labels.csv").exists() or (out / "masks").exists():
        raise PseudoError(f"{out}: already holds pseudo-labels (labels.csv or masks/); give another --out or delete "
                          "them")


def pseudo_label(teacher: str | Path, spec: str, out: str | Path, *, batch_size: int = 16, workers: int = 2,
                 device: str = "cpu", log=print) -> dict[str, Any]:
    """Write DIR/labels.csv, the mask files and DIR/pseudo.json for every labelled image of `spec`; returns the
    summary written to pseudo.json. PseudoError for a teacher without masks or an output folder already used."""
    import cv2

    from cxr.runtime.atomic import write_text_atomic
    from cxr.runtime.scoring import Scorer

    out = Path(out)
    _refuse_out(out)
    scorer = Scorer(teacher, device=device)
    if "masks" not in scorer.extra_outputs or "ctr" not in scorer.extra_outputs:
        raise PseudoError(f"{teacher}: the model has no masks/ctr outputs (it was trained without a segmentation "
                          "head); a teacher must draw heart and lungs")
    samples, summary = load_source(spec)
    if not samples:
        raise PseudoError(f"{spec}: no labelled images")
    out.mkdir(parents=True, exist_ok=True)
    for name in STRUCTURES:
        (out / "masks" / name).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = teacher_masks(scorer, [s.path for s in samples], batch_size=batch_size, workers=workers)
    flags: dict[str, int] = {}
    rows = []
    for i, (sample, (masks, ctr, prob, flag)) in enumerate(zip(samples, results)):
        cells = ["", "", ""]
        if masks is not None and not flag:
            cells = [f"masks/{name}/{i:06d}.png" for name in STRUCTURES]
            for cell, plane in zip(cells, masks):
                if not cv2.imwrite(str(out / cell), plane * np.uint8(255)):
                    raise PseudoError(f"{out / cell}: could not be written")
        for f in filter(None, (flag.split(":")[0] if flag.startswith(UNREADABLE) else flag).split(";")):
            flags[f] = flags.get(f, 0) + 1
        rows.append([str(sample.path), int(sample.label), sample.patient_id, sample.split or "", *cells,
                     "" if np.isnan(ctr) else f"{ctr:.6f}", "" if np.isnan(prob) else f"{prob:.6f}", flag])
    tmp = out / "labels.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerows(rows)
    tmp.replace(out / "labels.csv")
    n_masked = sum(1 for r in rows if r[4])
    report = {"teacher": {"path": str(Path(teacher).resolve()), "sha256": scorer.model_sha256,
                          "card": json.loads(scorer.card.to_json())},
              "source": spec, "index": summary, "n_images": len(rows), "n_with_masks": n_masked,
              "n_without_masks": len(rows) - n_masked, "flags": dict(sorted(flags.items())),
              "mask_size": int(scorer.card.preprocess.size), "seconds": round(time.time() - t0, 1),
              "mask_columns": list(MASK_COLUMNS)}
    write_text_atomic(out / "pseudo.json", json.dumps(report, indent=1, sort_keys=True))
    log(f"pseudo-labels: {n_masked} of {len(rows)} images got the teacher's masks; "
        f"{len(rows) - n_masked} keep none ({', '.join(f'{k} {v}' for k, v in sorted(flags.items())) or 'none'})")
    return report


def data_spec(out: str | Path, name: str) -> str:
    """The cxr-train --data spec of the pseudo-labelled source written into `out` (its CSV names every image by its
    absolute path, and the mask files relative to itself)."""
    out = Path(out).resolve()
    return f"csv:{out};csv={out / 'labels.csv'};mask_columns={','.join(MASK_COLUMNS)};name={name}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cxr.train.pseudo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher", type=Path, help="an exported model (.onnx) with masks and ctr outputs")
    ap.add_argument("source", help="the images to label, a cxr-train --data spec: KIND:PATH[;key=value...]")
    ap.add_argument("--out", type=Path, required=True, help="a new folder for labels.csv, masks/ and pseudo.json")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = ap.parse_args(argv)
    from cxr.runtime.errors import ModelCardError, ModelLoadError

    try:
        report = pseudo_label(args.teacher, args.source, args.out, batch_size=args.batch_size,
                              workers=args.workers, device=args.device)
    except (PseudoError, ModelLoadError, ModelCardError, ValueError) as exc:
        print(f"cxr.train.pseudo: error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['n_with_masks']} of {report['n_images']} images with masks; train on them with: "
          f"--data '{data_spec(args.out, 'NAME')}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
