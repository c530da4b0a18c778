"""External validation: a trained run scored by PyTorch on a whole source it never saw, with the same reports as its
test split (the decision at its threshold, AUROC with 95% CI of classifier, CTR and fusion, Dice and CTR error where
the source has masks and reference ratios), overall and per sub-source.

    python -m cxr.train.external RUN_DIR 'csv:/data/wj;csv=/data/wj/labels.csv;mask_columns=a,b,c;ctr_column=ctr'

A source that shares images with the run's own splits (the same file, or a byte-identical copy under another name)
is not external: it is refused, naming how many and which, unless `--drop-overlap` leaves those images out (the
report then counts them as `n_dropped_overlap`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cxr.runtime.card import Threshold


class OverlapError(ValueError):
    """The source named as external shares images with the run's training, validation or test split."""


def _digest(path: Path) -> str | None:
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def overlap_with_run(run_dir: Path, paths: list[Path]) -> list[tuple[Path, str]]:
    """(image of the source, the run's split it also sits in) for every image that is one of the run's own files
    (same resolved path) or a byte-identical copy of one (same size, then same sha256)."""
    from cxr.train.splits import read_splits

    splits_csv = Path(run_dir) / "splits.csv"
    if not splits_csv.is_file():
        raise OverlapError(f"{splits_csv}: not found; the run's splits are needed to check that the source is "
                           "external (a run written by cxr-train has it)")
    by_path, by_size = {}, {}
    for s in read_splits(splits_csv):
        p = s.path if s.path.is_absolute() else Path(run_dir) / s.path
        by_path[p.resolve()] = s.split.value if hasattr(s.split, "value") else str(s.split)
        try:
            by_size.setdefault(p.stat().st_size, []).append(p)
        except OSError:
            continue
    digests: dict[Path, str | None] = {}
    found = []
    for path in paths:
        real = Path(path).resolve()
        if real in by_path:
            found.append((Path(path), by_path[real]))
            continue
        try:
            size = real.stat().st_size
        except OSError:
            continue
        if size not in by_size:
            continue
        mine = _digest(real)
        for other in by_size[size]:
            if other not in digests:
                digests[other] = _digest(other)
            if mine is not None and digests[other] == mine:
                found.append((Path(path), by_path.get(other.resolve(), "?")))
                break
    return found


def evaluate_source(checkpoint: str | Path, source: str, batch_size: int = 32, workers: int = 2,
                    n_boot: int = 1000, seed: int = 0, drop_overlap: bool = False) -> dict[str, Any]:
    """Score every labelled image of `source` (a --data spec: KIND:PATH[;key=value...]) with the run's best weights.
    OverlapError when the source shares images with the run's splits (drop_overlap=True leaves them out instead)."""
    from torch.utils.data import DataLoader

    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint
    from cxr.train.config import SourceSpec, TrainConfig, parse_source
    from cxr.train.data import CxrDataset, preload, preload_masks
    from cxr.train.decision import Decision
    from cxr.train.distributed import DistContext
    from cxr.train.evaluate import evaluate_split, full_report

    ckpt_path = resolve_checkpoint(checkpoint)
    raw = parse_source(source)
    spec = SourceSpec(**{"name": raw["kind"], "nih_negatives": "all", **raw})
    spec.check()
    index = spec.load(split_column="__no_split__")
    samples = [s if s.source else _named(s, spec.name) for s in index.samples]
    shared = overlap_with_run(Path(ckpt_path).parent, [s.path for s in samples])
    if shared and not drop_overlap:
        examples = ", ".join(f"{p} ({split})" for p, split in shared[:3])
        raise OverlapError(f"{source}: {len(shared)} of {len(samples)} images are also in the run's own splits "
                           f"(e.g. {examples}); an external test must use images the run never saw "
                           "(--drop-overlap leaves them out)")
    dropped = {p for p, _ in shared}
    samples = [s for s in samples if s.path not in dropped]
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    config = TrainConfig.from_dict(ckpt["config"])
    cache, failures = preload(samples, config.preprocess, workers=workers)
    keep = sorted(cache)
    samples = [samples[i] for i in keep]
    cache = {new: cache[old] for new, old in enumerate(keep)}
    masks = preload_masks(samples, config.image_size, workers=workers) if model.seg_head else None
    loader = DataLoader(CxrDataset(samples, config.preprocess, cache=cache, masks=masks), batch_size=batch_size)
    ev = evaluate_split(model, loader, DistContext(), None)
    decision = Decision.from_dict(ckpt.get("decision"))
    metrics = ckpt.get("metrics") or {}
    candidates = {m: Decision.from_dict(d) for m, d in (metrics.get("decision_candidates") or {}).items()}
    candidates = candidates or {decision.mode: decision}
    threshold = Threshold(**ckpt["threshold"])
    out = full_report(ev, decision, candidates, threshold, samples, n_boot=n_boot, seed=seed)
    out.update(source=source, run=str(checkpoint), n_unreadable_files=len(failures),
               skipped=dict(index.summary()["skipped"]), threshold=float(threshold.value),
               n_dropped_overlap=len(dropped))
    return out


def _named(sample, name: str):
    from dataclasses import replace

    return replace(sample, source=name)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from cxr.runtime.serialization import jsonable

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("source")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--drop-overlap", action="store_true",
                    help="leave out images that are also in the run's splits instead of refusing the source")
    args = ap.parse_args(argv)
    try:
        report = jsonable(evaluate_source(args.run, args.source, workers=args.workers,
                                          drop_overlap=args.drop_overlap))
    except OverlapError as exc:
        print(f"cxr.train.external: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
