"""External validation: a trained run scored by PyTorch on a whole source it never saw, with the same reports as its
test split (the decision at its threshold, AUROC with 95% CI of classifier, CTR and fusion, Dice and CTR error where
the source has masks and reference ratios), overall and per sub-source.

    python -m cxr.train.external RUN_DIR 'csv:/data/wj;csv=/data/wj/labels.csv;mask_columns=a,b,c;ctr_column=ctr'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cxr.runtime.card import Threshold


def evaluate_source(checkpoint: str | Path, source: str, batch_size: int = 32, workers: int = 2,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score every labelled image of `source` (a --data spec: KIND:PATH[;key=value...]) with the run's best weights."""
    from torch.utils.data import DataLoader

    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint, resolve_checkpoint
    from cxr.train.config import SourceSpec, TrainConfig, parse_mask_columns, parse_source
    from cxr.train.data import CxrDataset, preload, preload_masks
    from cxr.train.datasets import load_dataset
    from cxr.train.decision import Decision
    from cxr.train.distributed import DistContext
    from cxr.train.evaluate import evaluate_split, full_report

    ckpt = load_checkpoint(resolve_checkpoint(checkpoint))
    model = model_from_checkpoint(ckpt)
    config = TrainConfig.from_dict(ckpt["config"])
    raw = parse_source(source)
    spec = SourceSpec(**{"name": raw["kind"], "nih_negatives": "all", **raw})
    spec.check()
    index = load_dataset(spec.kind, spec.data_root, csv_path=spec.csv_path, path_column=spec.path_column,
                         label_column=spec.label_column, patient_column=spec.patient_column,
                         split_column="__no_split__", source_column=spec.source_column,
                         positive_class=spec.positive_class, negative_class=spec.negative_class,
                         uncertain=spec.uncertain, frontal_only=spec.frontal_only, nih_negatives=spec.nih_negatives,
                         mask_columns=parse_mask_columns(spec.mask_columns), ctr_column=spec.ctr_column)
    samples = [s if s.source else _named(s, spec.name) for s in index.samples]
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
               skipped=dict(index.summary()["skipped"]), threshold=float(threshold.value))
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
    args = ap.parse_args(argv)
    report = jsonable(evaluate_source(args.run, args.source, workers=args.workers))
    text = json.dumps(report, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
