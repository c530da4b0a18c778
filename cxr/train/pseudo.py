"""Masks drawn by a trained model for images that have none, so that another run learns the anatomy from them too
(pseudo-labels; one run taught by several runs built into one file with cxr-ensemble).

    python -m cxr.train.pseudo TEACHER.onnx 'nih:/data/nih;name=nih' --out DIR
    cxr-train --data 'csv:DIR;csv=DIR/labels.csv;mask_columns=...;ctr_column=...;name=nih' ...   (printed in full)

The teacher (an exported model with a `masks` output) scores every labelled image of the source through onnxruntime,
with the preprocessing of its own card, as cxr-score would. An image whose masks look like a chest gets three mask
files (DIR/masks/{heart,left_lung,right_lung}/NNNNNN.png, named by row, 0/255 at the teacher's input size: cxr-train
resizes mask files like the image, so they fit any --image-size). An image whose masks carry a `ctr_flag` (no heart,
one lung, lungs cut by the edge, a heart wider than the lungs) or that cannot be read or scored (flag: cxr-score's
error code and message) keeps blank mask cells: it
trains the classifier only, as before; a film with masks of its own (a csv source's mask columns) keeps them (flag
`manual`). DIR/labels.csv keeps each image's label, patient, split, source and reference ratio exactly as the source
gave them (so a run with the same --split-seed draws the same split), plus the teacher's ratio, probability and flag;
DIR/pseudo.json records the teacher (path, SHA-256, card), the source, the CSV's SHA-256 and the counts. Everything is
written under DIR/.partial and moved into place at the end: a run stopped half-way leaves no labels.csv and can be
started again.

`--shift-vote PIXELS` steadies the teacher at the cost of nine inference passes, no training: each film is drawn on
nine times, moved by 0 or PIXELS pixels (at the teacher's input size) along each axis (a 3 x 3 grid), each drawing
is moved back, and a pixel is kept where at least half of the drawings that saw it drew it; each structure then
keeps its main part and the ratio is measured on the voted masks, as the model measures its own. DIR/labels.csv's
`teacher_agreement` says for each film how many of the nine drawings the teacher measured (its own `ctr` output)
within 0.03 of the voted masks' ratio: how steady the teacher is on that film when it moves a few pixels; pseudo.json
counts the films that look like a chest by agreement.

Where a run is to be tested on a source left out, neither the teacher nor the images labelled here may include that
source: pseudo-labels drawn on the test films would carry the test set into training.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr.runtime.shifts import largest_shift, shift_grid, shifted

MASK_COLUMNS = ("mask_heart", "mask_left_lung", "mask_right_lung")
STRUCTURES = ("heart", "left_lung", "right_lung")
COLUMNS = ("path", "cardiomegaly", "patient_id", "split", "source", *MASK_COLUMNS, "ctr_reference", "teacher_ctr",
           "teacher_probability", "teacher_flag", "teacher_agreement")
MANUAL = "manual"
"""teacher_flag of a film that has its own (manual) masks: they are kept, the teacher's are not used."""
AGREE_WITHIN = 0.03
"""How close a drawing's ratio must lie to the vote's to agree with it (teacher_agreement): the ratio target's scale."""
_SPEC_SEPARATORS = (";", ",", "\n", "\r")


class PseudoError(ValueError):
    """The teacher, the source or the output folder cannot be used (the message says which and why)."""


def load_source(spec: str) -> tuple[list, dict]:
    """The labelled samples of a --data spec, as cxr-train indexes that source (its own splits kept, none drawn)."""
    from cxr.train.config import SourceSpec, parse_source

    raw = parse_source(spec)
    source = SourceSpec(**{"name": raw["kind"], **raw})
    source.check()
    index = source.load()
    return list(index.samples), index.summary()


def teacher_masks(scorer, paths: Sequence[Path], batch_size: int = 16, workers: int = 2):
    """For each path, in order, yield (masks uint8 0/1 [3, S, S] or None, ctr, probability, flag) from the teacher,
    scored as cxr-score scores (cxr.runtime.scoring.score_folder: reading ahead in threads, a failing batch retried
    one film at a time); masks None and the flag 'ERROR_CODE: message' for a film that could not be read or scored."""
    from cxr.runtime.scoring import score_folder

    nan = float("nan")
    if not paths:
        return
    rows = score_folder(Path(paths[0]).anchor, scorer, batch_size=batch_size, workers=workers,
                        files=list(paths), maps=True)  # absolute paths: the anchor joined to each is the path
    for row in rows:
        if row.status != "ok" or row.masks is None:
            yield None, nan, nan, f"{row.error_code or 'no_masks'}: {row.error_message or 'the teacher drew none'}"
            continue
        ctr = nan if row.ctr is None else float(row.ctr)
        yield (np.asarray(row.masks) > 0).astype(np.uint8), ctr, float(row.probability), row.ctr_flag


def vote(masks: Sequence[np.ndarray], shifts: Sequence[tuple[int, int]]) -> np.ndarray:
    """Majority vote of 0/1 masks [N, C, H, W], each drawn on the films moved by its (dy, dx) of `shifts`: each mask
    is moved back, and a pixel is on where at least half of the drawings that saw it (whose moved film still held
    it) put it on. Then each structure keeps its main part, as the model's own masks do."""
    from cxr.runtime.anatomy import main_parts_reference

    votes = np.zeros(masks[0].shape, np.int32)
    seen = np.zeros(masks[0].shape[-2:], np.int32)
    for m, (dy, dx) in zip(masks, shifts):
        back, inside = shifted((np.asarray(m) > 0).astype(np.uint8), -dy, -dx)
        votes += back
        seen += inside
    on = ((2 * votes >= seen) & (seen > 0)).astype(np.uint8)
    return np.stack([main_parts_reference(one) for one in on]) if len(on) else on


def agreement(ratios: np.ndarray, voted: np.ndarray, within: float) -> np.ndarray:
    """For each film, how many of the drawings' ratios ([D, N]) lie within `within` of the voted masks' ratio ([N]);
    a drawing without a ratio (NaN: no heart or no lungs) agrees with nothing, and nothing agrees with a vote
    without one."""
    with np.errstate(invalid="ignore"):
        close = np.abs(np.asarray(ratios, float) - np.asarray(voted, float)[None]) <= within
    return close.sum(axis=0).astype(np.int64)


class ShiftVote:
    """The teacher with its masks voted over small shifts of each film (test-time augmentation: `vote` over
    `shift_grid(pixels)`, the model run once per shift); the ratio is measured again on the voted masks (as the
    model measures its own), and its mask flags follow from them. The probability, logit and activation map stay
    those of the film as given. Everything else (card, threshold, SHA-256) is the teacher's. For each film the vote
    also counts the drawings whose own ratio (the teacher's `ctr` output for that drawing) agrees with the voted
    masks' (`agreement`, within AGREE_WITHIN); `agreement_of(masks)` gives that count back for a film's voted masks,
    as they reach a row of cxr-score's `score_folder`."""

    def __init__(self, scorer, pixels: int):
        size = int(scorer.card.preprocess.size)
        if not 0 < pixels <= largest_shift(size):
            raise PseudoError(f"--shift-vote {pixels}: give a shift of 1 to {largest_shift(size)} pixels (the "
                              f"teacher's input is {size}x{size})")
        blank = scorer.run(np.zeros((1, 1, size, size), np.uint8), ("ctr", "masks"))
        if "ctr" not in blank or "masks" not in blank:
            raise PseudoError(f"{scorer.model_path}: the model has no masks/ctr outputs; --shift-vote needs both")
        drawn = blank["masks"].shape[-2:]
        if tuple(drawn) != (size, size):  # the moved drawings are moved back pixel for pixel
            raise PseudoError(f"{scorer.model_path}: masks of {list(drawn)} for an input of {[size, size]}; "
                              "--shift-vote needs masks at the input's size")
        self._scorer, self.pixels, self.shifts = scorer, int(pixels), shift_grid(int(pixels))
        self._agreement: dict[bytes, list[int]] = {}  # digest of voted masks -> counts, oldest first

    def agreement_of(self, masks: np.ndarray) -> int:
        """How many drawings agreed with the vote that gave these voted masks (0/1 uint8 [3, S, S], as `run`
        returned them); each count is given back once, oldest first for films voted to the same masks."""
        key = _digest(masks)
        counts = self._agreement.get(key)
        if not counts:
            raise PseudoError("no vote of this session gave these masks")  # a caller's bug, never a guess
        count = counts.pop(0)
        if not counts:
            del self._agreement[key]  # nothing kept per film once its row has it: a folder of any size
        return count

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)

    def run(self, batch: np.ndarray, extras: Sequence[str] = ()) -> dict[str, np.ndarray]:
        from cxr.runtime.anatomy import ctr_reference

        extras = tuple(dict.fromkeys((*extras, "ctr", "masks")))
        drawn, ratios, values = [], [], None
        for dy, dx in self.shifts:
            out = self._scorer.run(shifted(np.asarray(batch), dy, dx)[0], extras)
            drawn.append(out["masks"])
            ratios.append(out["ctr"])  # the teacher's own measure of this drawing (its main parts, in the graph)
            if (dy, dx) == (0, 0):
                values = out
        masks = vote(drawn, self.shifts)
        values["masks"] = masks
        values["ctr"] = np.array([ctr_reference(m) for m in masks], np.float32)
        for m, count in zip(masks, agreement(np.stack(ratios), values["ctr"], AGREE_WITHIN)):
            self._agreement.setdefault(_digest(m), []).append(int(count))
        return values


def _digest(masks: np.ndarray) -> bytes:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(masks, np.uint8).tobytes()).digest()


def _check_out(out: Path) -> None:
    if (out / "labels.csv").exists() or (out / "masks").exists():
        raise PseudoError(f"{out}: already holds pseudo-labels (labels.csv or masks/); give another --out or delete "
                          "them")
    if any(c in str(out.resolve()) for c in _SPEC_SEPARATORS):
        raise PseudoError(f"{str(out)!r}: a folder whose path holds ';', ',' or a line break cannot be named in a "
                          "cxr-train --data spec; choose another --out")


def _check_cells(samples: Sequence) -> None:
    """Refuse what labels.csv could not hold faithfully: a path that is not valid text, or a patient id that a
    spreadsheet would run as a formula (guarding it would change the id, and with it the split)."""
    from cxr.runtime.results import safe_cell

    for s in samples:
        try:
            str(s.path).encode("utf-8")
        except UnicodeEncodeError:
            raise PseudoError(f"{str(s.path)!r}: the file name is not valid UTF-8; rename it (labels.csv is UTF-8 "
                              "text)") from None
        if safe_cell(s.patient_id) != s.patient_id:  # the results CSV's rule for what a spreadsheet would run
            raise PseudoError(f"{s.path}: patient id {s.patient_id!r} starts with a character a spreadsheet reads "
                              "as a formula; rename the id in the source")


def _cell(value: float) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.6f}"


def pseudo_label(teacher: str | Path, spec: str, out: str | Path, *, batch_size: int = 16, workers: int = 2,
                 device: str = "cpu", shift_vote: int = 0, log=print) -> dict[str, Any]:
    """Write DIR/labels.csv, the mask files and DIR/pseudo.json for every labelled image of `spec`; returns the
    summary written to pseudo.json. Everything is written under DIR/.partial first and moved into place at the end,
    so a run that stops half-way leaves no labels.csv and can simply be started again. PseudoError for a teacher
    without masks, a source labels.csv could not hold, or an output folder already used."""
    import shutil

    import cv2

    from cxr.runtime.atomic import write_text_atomic
    from cxr.runtime.scoring import Scorer

    out = Path(out)
    _check_out(out)
    scorer = Scorer(teacher, device=device)
    if "masks" not in scorer.extra_outputs or "ctr" not in scorer.extra_outputs:
        raise PseudoError(f"{teacher}: the model has no masks/ctr outputs (it was trained without a segmentation "
                          "head); a teacher must draw heart and lungs")
    drawer = ShiftVote(scorer, shift_vote) if shift_vote else scorer
    samples, summary = load_source(spec)
    if not samples:
        raise PseudoError(f"{spec}: no labelled images")
    _check_cells(samples)
    ids_known = bool(summary.get("patient_ids_known"))
    partial = out / ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # a run stopped half-way: ours, started again from nothing
    for name in STRUCTURES:
        (partial / "masks" / name).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    flags: dict[str, int] = {}
    agreed: dict[int, int] = {}  # drawings agreeing -> films whose voted masks look like a chest
    n_masked = n_manual = 0
    with open(partial / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        results = teacher_masks(drawer, [s.path for s in samples], batch_size=batch_size, workers=workers)
        for i, (sample, (masks, ctr, prob, flag)) in enumerate(zip(samples, results)):
            cells, agree = ["", "", ""], ""
            if masks is not None and drawer is not scorer:
                agree = drawer.agreement_of(masks)
                if not flag and not sample.masks:
                    agreed[agree] = agreed.get(agree, 0) + 1
            if sample.masks:  # the source's own masks win over the teacher's
                cells, flag = [str(p) for p in sample.masks], MANUAL
                n_manual += 1
            elif masks is not None and not flag:
                cells = [f"masks/{name}/{i:06d}.png" for name in STRUCTURES]
                for cell, plane in zip(cells, masks):
                    if not cv2.imwrite(str(partial / cell), plane * np.uint8(255)):
                        raise PseudoError(f"{out / cell}: could not be written")
                n_masked += 1
            for f in filter(None, flag.split(":")[0].split(";")) if flag != MANUAL else ():  # an error: its code
                flags[f] = flags.get(f, 0) + 1
            # no ids in the source: none written, so cxr-train treats each film as its own patient as before
            w.writerow([str(sample.path), int(sample.label), sample.patient_id if ids_known else "",
                        sample.split or "", sample.source, *cells, _cell(sample.ctr), _cell(ctr), _cell(prob), flag,
                        agree])
    import hashlib

    digest = hashlib.sha256((partial / "labels.csv").read_bytes()).hexdigest()
    n = len(samples)
    report = {"teacher": {"path": str(Path(teacher).resolve()), "sha256": scorer.model_sha256,
                          "card": json.loads(scorer.card.to_json())}, "shift_vote": int(shift_vote),
              "agree_within": AGREE_WITHIN if shift_vote else None,
              "agreement": {str(k): v for k, v in sorted(agreed.items())} if shift_vote else None,
              "source": spec, "index": summary, "patient_ids_known": ids_known, "n_images": n,
              "n_with_masks": n_masked, "n_with_own_masks": n_manual, "n_without_masks": n - n_masked - n_manual,
              "flags": dict(sorted(flags.items())), "mask_size": int(scorer.card.preprocess.size),
              "labels_sha256": digest, "seconds": round(time.time() - t0, 1), "mask_columns": list(MASK_COLUMNS)}
    (partial / "masks").rename(out / "masks")
    (partial / "labels.csv").rename(out / "labels.csv")
    write_text_atomic(out / "pseudo.json", json.dumps(report, indent=1, sort_keys=True))
    shutil.rmtree(partial, ignore_errors=True)
    kept = f"; {n_manual} keep their own" if n_manual else ""
    log(f"pseudo-labels: {n_masked} of {n} images got the teacher's masks{kept}; "
        f"{n - n_masked - n_manual} have none ({', '.join(f'{k} {v}' for k, v in sorted(flags.items())) or 'none'})")
    return report


def data_spec(out: str | Path, name: str) -> str:
    """The cxr-train --data spec of the pseudo-labelled source written into `out` (its CSV names every image by its
    absolute path, and the mask files relative to itself)."""
    out = Path(out).resolve()
    return (f"csv:{out};csv={out / 'labels.csv'};mask_columns={','.join(MASK_COLUMNS)};ctr_column=ctr_reference;"
            f"name={name}")


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
    ap.add_argument("--shift-vote", type=int, default=0, metavar="PIXELS",
                    help="draw each film's masks 9 times, on the film moved 0 or PIXELS pixels (at the teacher's "
                         "input size) each way, and keep what half or more of them draw (0, the default: draw once)")
    args = ap.parse_args(argv)
    from cxr.runtime.errors import CxrError

    try:
        report = pseudo_label(args.teacher, args.source, args.out, batch_size=args.batch_size,
                              workers=args.workers, device=args.device, shift_vote=args.shift_vote)
    except (PseudoError, CxrError, ValueError) as exc:
        print(f"cxr.train.pseudo: error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['n_with_masks']} of {report['n_images']} images with masks; train on them with: "
          f"--data '{data_spec(args.out, 'NAME')}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
