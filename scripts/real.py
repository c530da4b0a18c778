#!/usr/bin/env python
"""`make real`: the real-data recipe on ../shared/data/ctr_wingspan_jsrt (506 adult PA radiographs, 2 sources).

    cxr-train (csv, patient-disjoint splits) -> cxr-export --opset 17 -> cxr-score on the test split -> honest figures

Labels: `cardiomegaly_mask_ctr` (cardiothoracic ratio > 0.5 measured on the manual heart/lung masks; the only label
present for all 506 images; the key-point label `cardiomegaly` exists for 221 wingspan images only). One image per
patient in both sources. Random init (no ImageNet weights offline), lr 1e-4, 160 px; the rest is the recipe.
Beware the shortcut: the source (wingspan is 71% positive, JSRT 28%) predicts the label, so per-source AUROC is printed.

    python scripts/real.py [--data ../shared/data/ctr_wingspan_jsrt] [--out real_out] [--epochs 12]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], allowed=(0,)) -> int:
    print("\n$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc not in allowed:
        sys.exit(f"real: step failed with exit code {rc}")
    return rc


def fmt(m: dict | None, key) -> str:
    """m[key] for printing; undefined metrics (None, NaN) read 'n/a'."""
    v = (m or {}).get(key) if not isinstance(m, (list, tuple)) else (m[key] if m else None)
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ctr_wingspan_jsrt")
    ap.add_argument("--out", type=Path, default=Path("real_out"))
    ap.add_argument("--label-column", default="cardiomegaly_mask_ctr")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args(argv)
    labels_csv = args.data / "labels.csv"
    if not labels_csv.is_file():
        print(f"real: {labels_csv} not found; `make real` needs ../shared/data beside the repository", file=sys.stderr)
        return 1
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir, model = out / "run", out / "model.onnx"
    t0 = time.time()
    if (run_dir / "metrics.json").is_file():
        print(f"{run_dir} already holds a finished run: reusing it (delete it to train again).")
    elif (run_dir / "last.pt").is_file():
        run([str(BIN / "cxr-train"), "--resume", str(run_dir)])
    else:
        run([str(BIN / "cxr-train"), "--data", f"csv:{args.data}", "--csv", str(labels_csv),
             "--label-column", args.label_column, "--source-column", "dataset", "--out", str(run_dir),
             "--init", "random", "--lr", str(args.lr), "--image-size", str(args.size),
             "--max-epochs", str(args.epochs), "--num-workers", "0", "--seed", "0"])
    if not (model.is_file() and model.stat().st_mtime >= (run_dir / "best.pt").stat().st_mtime):
        run([str(BIN / "cxr-export"), str(run_dir), "--out", str(model), "--opset", "17"])

    # The test split as a folder of links (relative paths kept) plus its labels, scored like any user folder.
    test_dir, test_labels = out / "test_images", out / "test_labels.csv"
    with open(run_dir / "splits.csv", newline="") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    with open(test_labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "source"])
        for r in test:
            rel = Path(r["path"]).resolve().relative_to(args.data.resolve())
            link = test_dir / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(Path(r["path"]).resolve(), link)
            w.writerow([rel.as_posix(), r["label"], r["source"]])
    results = out / "results.csv"
    run([str(BIN / "cxr-score"), str(test_dir), "--out", str(results), "--model", str(model),
         "--labels", str(test_labels), "--quiet"], allowed=(0, 3))

    manifest = json.loads((out / "results.manifest.json").read_text())
    m = (manifest.get("labels") or {}).get("metrics") or {}
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    print("\n" + "=" * 78)
    print(f"Real data: {labels_csv} (label {args.label_column}), patient-disjoint splits, random init.")
    print(f"Test split scored by cxr-score (n={m.get('n')}, {m.get('n_positive')} positive):")
    ci = m.get("auroc_ci95")
    print(f"  AUROC {fmt(m, 'auroc')} (95% CI {fmt(ci, 0)}-{fmt(ci, 1)})  AUPRC {fmt(m, 'auprc')}")
    print(f"  at threshold {fmt(m, 'threshold')} (chosen on validation): sensitivity {fmt(m, 'sensitivity')}  "
          f"specificity {fmt(m, 'specificity')}  PPV {fmt(m, 'ppv')}  NPV {fmt(m, 'npv')}  F1 {fmt(m, 'f1')}")
    per_source = train_metrics.get("metrics", {}).get("test", {}).get("by_source") or {}
    for source, sm in sorted(per_source.items()):
        print(f"  {source:<9} n={sm.get('n')}  positives {sm.get('n_positive')}  AUROC {fmt(sm, 'auroc')}")
    print("Published anchors: CheXNet cardiomegaly AUROC 0.92 (ImageNet weights, 112,120 NIH images); torchxrayvision")
    n_train = train_metrics.get("data", {}).get("n_train", "?")
    print(f"densenet121-all 0.88 on NIH. These figures come from {n_train} training images, random init, "
          f"{args.size} px:")
    print("expect lower, wider intervals, and read the per-source lines for the source shortcut.")
    print(f"Finished in {time.time() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
