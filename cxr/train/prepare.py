"""From a TrainConfig to the samples of each split, ready for the loaders (and splits.csv written once).

Fresh run: index the dataset (cxr.train.datasets), use its predefined split or assign one by patient
(cxr.train.splits), take the seeded quick-run subsets if asked, read every image once into memory when caching
(unreadable images reported and dropped), check that train and val each hold positives and negatives, and write
splits.csv. Resumed run: the samples come back from the run's splits.csv, so the data cannot drift between the parts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr.train.config import TrainConfig
from cxr.train.data import preload
from cxr.train.distributed import DistContext, barrier

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    samples: dict[str, list]
    cache: dict[str, dict[int, np.ndarray] | None] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    pos_weight: float | None = None


def _index(config: TrainConfig) -> tuple[list, dict[str, Any]]:
    from cxr.train.datasets import load_dataset
    from cxr.train.splits import assign_splits, check_patient_leaks

    if not config.data_root:
        raise ValueError("no dataset given: pass --data KIND:PATH (e.g. --data folder:/data/nih)")
    index = load_dataset(
        config.dataset, config.data_root, csv_path=config.csv_path, path_column=config.path_column,
        label_column=config.label_column, patient_column=config.patient_column, split_column=config.split_column,
        source_column=config.source_column, positive_class=config.positive_class,
        negative_class=config.negative_class, uncertain=config.uncertain, frontal_only=config.frontal_only,
        nih_negatives=config.nih_negatives,
        verify_images=config.verify_images, workers=max(1, config.num_workers))
    samples = list(index.samples)
    if not samples:
        raise ValueError(f"{config.data_root}: no labelled images found for dataset kind {config.dataset!r}")
    # keeps a split the data already names (a given test is never redrawn); assigns the rest by patient
    samples = assign_splits(samples, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                            seed=config.seed)
    check_patient_leaks(samples)  # now, before minutes of reading images, not after
    if not index.patient_ids_known:
        log.warning("%s: patient ids are not known for every image; those images count as their own patient, so "
                    "one patient's images may land in different splits (name a patient column, or use NIH-style "
                    "file names like 00000001_000.png)", config.data_root)
    summary = {"index": index.summary(), "patient_ids_known": bool(index.patient_ids_known)}
    return samples, summary


def _subset(samples: list, limit: int | None, seed: int, split: str) -> list:
    """A seeded random subset of at most `limit` samples, kept in the original order (quick runs only)."""
    if limit is None or len(samples) <= limit:
        return samples
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    keep = np.sort(rng.choice(len(samples), size=limit, replace=False))
    return [samples[i] for i in keep]


def prepare_data(config: TrainConfig, run_dir: Path, ctx: DistContext, resume: bool = False) -> PreparedData:
    from cxr.train.splits import check_splits, read_splits, write_splits

    if resume:
        samples = list(read_splits(Path(run_dir) / "splits.csv"))
        summary: dict[str, Any] = {"resumed_from_splits_csv": True}
    else:
        samples, summary = _index(config)
    by_split = {s: [x for x in samples if x.split == s] for s in SPLITS}
    if not resume:
        by_split["train"] = _subset(by_split["train"], config.max_train_images, config.seed, "train")
        for s in ("val", "test"):
            by_split[s] = _subset(by_split[s], config.max_eval_images, config.seed, s)

    cache: dict[str, Any] = {}
    unreadable: list[dict[str, str]] = []
    use_cache = config.cache_enabled(sum(len(v) for v in by_split.values()))
    for split in SPLITS:
        if not use_cache or not by_split[split]:
            cache[split] = None
            continue
        got, failures = preload(by_split[split], config.preprocess, workers=max(1, config.num_workers))
        keep = sorted(got)
        by_split[split] = [by_split[split][i] for i in keep]
        cache[split] = {new: got[old] for new, old in enumerate(keep)}
        unreadable += [{**f, "split": split} for f in failures]
    if unreadable:
        log.warning("%d unreadable image(s) left out of the run (listed in metrics.json under data.unreadable)",
                    len(unreadable))

    kept = [x for s in SPLITS for x in by_split[s]]
    # A test split, when there is one, must hold both classes too: its AUROC is the figure users report.
    check_splits(kept, required=("train", "val", "test") if by_split["test"] else ("train", "val"))
    if ctx.is_main and not resume:
        write_splits(kept, run_dir)
    barrier(ctx)

    counts = {s: Counter(int(x.label) for x in by_split[s]) for s in SPLITS}
    n_pos, n_neg = counts["train"][1], counts["train"][0]
    if config.pos_weight == "auto":
        pos_weight = n_neg / n_pos
    else:
        pos_weight = None if config.pos_weight is None else float(config.pos_weight)
    summary.update({
        "kind": config.dataset, "root": str(config.data_root),
        **{f"n_{s}": len(by_split[s]) for s in SPLITS},
        "positives": {s: counts[s][1] for s in SPLITS}, "negatives": {s: counts[s][0] for s in SPLITS},
        "sources": {s: dict(Counter(str(x.source) for x in by_split[s])) for s in SPLITS},
        "unreadable": unreadable, "cached_in_memory": use_cache, "pos_weight": pos_weight,
        "subset": {"max_train_images": config.max_train_images, "max_eval_images": config.max_eval_images},
    })
    log.info("data: train %d (%d positive), val %d (%d positive), test %d (%d positive)", len(by_split["train"]),
             n_pos, len(by_split["val"]), counts["val"][1], len(by_split["test"]), counts["test"][1])
    return PreparedData(samples=by_split, cache=cache, summary=summary, pos_weight=pos_weight)
