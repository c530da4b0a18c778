"""The run directory's plain files: config.json, history.csv, metrics.json. Only rank 0 calls these.

Each file is written with cxr.runtime.atomic, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from cxr.runtime.atomic import atomic_write, write_text_atomic
from cxr.runtime.serialization import jsonable

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_auroc", "val_auprc", "val_sensitivity",
                   "val_specificity", "val_f1", "threshold", "seconds", "is_best")


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_history(path: Path, history: Iterable[Mapping[str, Any]]) -> Path:
    """history.csv: one row per completed epoch, the columns of HISTORY_COLUMNS, then the run's own (AUROC per
    source as val_auroc[NAME], mask loss, Dice, the CTR's AUROC) in the order they first appear."""
    path = Path(path)
    history = list(history)
    extra = [k for row in history for k in row if k not in HISTORY_COLUMNS]
    columns = list(HISTORY_COLUMNS) + list(dict.fromkeys(extra))
    with atomic_write(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return path


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.csv back as dicts of numbers (empty cells are NaN)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: (int(v) if k in ("epoch", "is_best") else (float(v) if v != "" else math.nan))
                         for k, v in row.items()})
    return rows
