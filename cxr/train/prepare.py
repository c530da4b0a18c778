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
from cxr.train.data import preload, preload_masks
from cxr.train.distributed import DistContext, barrier
from cxr.train.errors import TrainError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    samples: dict[str, list]
    cache: dict[str, dict[int, np.ndarray] | None] = field(default_factory=dict)
    mask_cache: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    pos_weight: float | None = None


def _index(config: TrainConfig) -> tuple[list, dict[str, Any]]:
    """Index every --data source, split each by patient on its own, and check no patient is in two splits."""
    from cxr.train.splits import check_patient_leaks

    if not config.data_root:
        raise TrainError("no dataset given: pass --data KIND:PATH (e.g. --data folder:/data/nih)")
    specs = config.sources()
    samples: list = []
    indexes: dict[str, Any] = {}
    known = True
    for spec in specs:
        got, index = _index_source(config, spec, prefix=len(specs) > 1)
        samples += got
        indexes[spec.name] = index.summary()
        known &= bool(index.patient_ids_known)
    check_patient_leaks(samples)  # now, before minutes of reading images, not after
    if len(specs) == 1:
        summary = {"index": indexes[specs[0].name], "patient_ids_known": known}
    else:
        summary = {"index": indexes, "patient_ids_known": known, "data_sources": [s.name for s in specs]}
    return samples, summary


def _index_source(config: TrainConfig, spec, prefix: bool) -> tuple[list, Any]:
    """One source's samples with their splits (drawn by patient within this source)."""
    from dataclasses import replace

    from cxr.train.splits import assign_splits

    index = spec.load(verify_images=config.verify_images, workers=max(1, config.num_workers))
    samples = list(index.samples)
    if not samples:
        raise TrainError(f"{spec.data_root}: no labelled images found for dataset kind {spec.kind!r}")
    if prefix:  # several sources: patient ids are per source, and a source without a column is named by --data
        has_column = spec.source_column or any(s.source not in ("", spec.kind) for s in samples)
        samples = [replace(s, patient_id=f"{spec.name}/{s.patient_id}",
                           source=s.source if has_column and s.source else spec.name) for s in samples]
    # keeps a split the data already names (a given test is never redrawn); assigns the rest by patient
    samples = assign_splits(samples, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                            seed=_split_seed(config))
    if not index.patient_ids_known:
        log.warning("%s: patient ids are not known for every image; those images count as their own patient, so "
                    "one patient's images may land in different splits (name a patient column, or use NIH-style "
                    "file names like 00000001_000.png)", spec.data_root)
    return samples, index


def _split_seed(config: TrainConfig) -> int:
    return config.seed if config.split_seed is None else config.split_seed


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
        by_split["train"] = _subset(by_split["train"], config.max_train_images, _split_seed(config), "train")
        for s in ("val", "test"):
            by_split[s] = _subset(by_split[s], config.max_eval_images, _split_seed(config), s)

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
    mask_cache = {}
    if config.use_seg_head:  # masks are small (3 x S x S bits per image): always kept in memory
        for split in SPLITS:
            mask_cache[split] = preload_masks(by_split[split], config.image_size, workers=max(1, config.num_workers))
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
        "data_sources": [{"name": sp.name, "kind": sp.kind, "root": str(sp.data_root)} for sp in config.sources()],
        **{f"n_{s}": len(by_split[s]) for s in SPLITS},
        "positives": {s: counts[s][1] for s in SPLITS}, "negatives": {s: counts[s][0] for s in SPLITS},
        "sources": {s: dict(Counter(str(x.source) for x in by_split[s])) for s in SPLITS},
        "with_masks": {s: sum(x.masks is not None for x in by_split[s]) for s in SPLITS},
        "unreadable": unreadable, "cached_in_memory": use_cache, "pos_weight": pos_weight,
        "subset": {"max_train_images": config.max_train_images, "max_eval_images": config.max_eval_images},
    })
    log.info("data: train %d (%d positive), val %d (%d positive), test %d (%d positive)", len(by_split["train"]),
             n_pos, len(by_split["val"]), counts["val"][1], len(by_split["test"]), counts["test"][1])
    log.info("splits:\n%s", split_table(by_split))
    return PreparedData(samples=by_split, cache=cache, summary=summary, pos_weight=pos_weight, mask_cache=mask_cache)


def split_table(by_split: dict[str, list]) -> str:
    """A small table of images / positives / with masks per source and split, for the training log."""
    sources = sorted({str(x.source) for v in by_split.values() for x in v})
    lines = [f"  {'source':<14}" + "".join(f"{s:>22}" for s in SPLITS)]
    for name in sources + (["all"] if len(sources) > 1 else []):
        cells = []
        for split in SPLITS:
            xs = [x for x in by_split[split] if name == "all" or str(x.source) == name]
            cells.append(f"{len(xs):>6} ({sum(x.label for x in xs):>4} pos, "
                         f"{sum(x.masks is not None for x in xs):>4} m)")
        lines.append(f"  {name or '-':<14}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)
