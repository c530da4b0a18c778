"""scripts/real.py's measure of how a masked source outlines the heart (printed by `make external`)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ctr_wingspan_jsrt"


@pytest.fixture(scope="module")
def real():
    spec = importlib.util.spec_from_file_location("real_script", REPO / "scripts" / "real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chest(heart_top: int, shape: str) -> list[np.ndarray]:
    """Lungs from row 10 to 89 (80 rows); a heart from heart_top to row 79, a full box or a triangle."""
    lungs = np.zeros((2, 100, 100), np.uint8)
    lungs[0, 10:90, 10:40] = 1
    lungs[1, 10:90, 60:90] = 1
    heart = np.zeros((100, 100), np.uint8)
    for y in range(heart_top, 80):
        half = 20 if shape == "box" else 1 + (y - heart_top) * 19 // (79 - heart_top)
        heart[y, 50 - half:50 + half] = 1
    return [heart, lungs[0], lungs[1]]


def test_outline_measures_on_hand_made_masks(real):
    top, bottom, fill = real.outline_measures(*chest(42, "box"))
    assert top == pytest.approx(32 / 79) and bottom == pytest.approx(69 / 79) and fill == pytest.approx(1.0)
    _, _, fill = real.outline_measures(*chest(42, "triangle"))
    assert 0.45 < fill < 0.6
    empty = real.outline_measures(np.zeros((100, 100)), *chest(42, "box")[1:])
    assert all(math.isnan(v) for v in empty)


def test_mask_conventions_bands_by_source(real, tmp_path):
    for name, top, shape in (("a", 30, "box"), ("b", 42, "triangle")):
        for kind, mask in zip(("heart", "left_lung", "right_lung"), chest(top, shape)):
            (tmp_path / kind).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / kind / f"{name}.png"), mask * 255)
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "dataset", "ctr_mask", *real.MASK_COLUMNS])
        w.writerow(["a.png", "first", "0.55", "heart/a.png", "left_lung/a.png", "right_lung/a.png"])
        w.writerow(["b.png", "second", "0.45", "heart/b.png", "left_lung/b.png", "right_lung/b.png"])
        w.writerow(["c.png", "second", "0.45", "heart/missing.png", "left_lung/b.png", "right_lung/b.png"])
    conv = real.mask_conventions(tmp_path, labels)
    assert conv["first"] == {"0.50-0.60": {"n": 1, "heart_top": round(20 / 79, 3), "heart_bottom": round(69 / 79, 3),
                                           "box_fill": 1.0}}
    assert list(conv["second"]) == ["0.35-0.50"] and conv["second"]["0.35-0.50"]["n"] == 1  # unreadable mask skipped


@pytest.mark.skipif(not (DATA / "labels.csv").is_file(), reason="the wingspan/JSRT data folder is not beside the repo")
def test_the_two_masked_sources_outline_the_heart_differently(real, tmp_path):
    conv = real.mask_conventions(DATA, real.masked_labels(DATA, tmp_path))
    for band in ("0.35-0.50", "0.50-0.60"):
        jsrt, wingspan = conv["jsrt"][band], conv["wingspan"][band]
        assert wingspan["heart_top"] < jsrt["heart_top"] - 0.03  # wingspan's outlines reach higher
        assert wingspan["box_fill"] < jsrt["box_fill"] - 0.05  # and fill less of their box


def test_follows_tells_a_measurement_from_a_constant(real):
    reference = [0.40, 0.45, 0.50, 0.55, 0.60]
    tracking = real.follows([(r + 0.02, r) for r in reference])
    assert tracking["bias"] == pytest.approx(0.02) and tracking["pearson_r"] == pytest.approx(1.0)
    assert tracking["slope"] == pytest.approx(1.0)
    constant = real.follows([(0.52, r) for r in reference])  # one typical ratio for every film
    assert math.isnan(constant["pearson_r"]) and constant["slope"] == pytest.approx(0.0, abs=1e-9)
    flat = real.follows([(0.52 + 0.001 * (i % 2), r) for i, r in enumerate(reference)])
    assert abs(flat["slope"]) < 0.01 and constant["bias"] == pytest.approx(0.02)
    assert math.isnan(real.follows([(0.5, 0.5), (0.6, 0.6)])["slope"])  # too few films for a slope
    assert math.isnan(real.follows([])["bias"])


def test_ctr_agreement_reads_the_scored_rows(real, tmp_path):
    results, labels = tmp_path / "results.csv", tmp_path / "labels.csv"
    results.write_text("path,prob_cardiomegaly,cardiomegaly,status,error,ctr,ctr_flag\n"
                       "a.png,0.1,0,ok,,0.42,\nb.png,0.9,1,ok,,0.61,lungs_cut_by_edge\nc.png,,,error,unreadable,,\n"
                       "d.png,0.5,1,ok,,0.50,\n")
    labels.write_text("path,ctr_mask\nset/png/a.png,0.40\nset/png/b.png,0.60\nset/png/c.png,0.5\n"
                      "set/png/d.png,0.50\nother/png/e.png,0.3\n")
    c = real.ctr_agreement(results, labels, "set/png/")
    assert (c["n"], c["n_measured"], c["flags"]) == (4, 3, 1)
    assert c["mae"] == pytest.approx(0.01) and c["within_0.03"] == pytest.approx(1.0)
    assert c["bias"] == pytest.approx(0.01) and c["slope"] > 0.9
    assert c["n_unflagged"] == 2 and c["mae_unflagged"] == pytest.approx(0.01)  # b.png's flagged row set aside


def seed_dir(root: Path, seed: int, key: str, rows: list[tuple]) -> Path:
    """An --out of `make external` holding run `key`'s scored rows (path, probability, ctr, label, status)."""
    (root / key / "run").mkdir(parents=True)
    (root / key / "run" / "config.json").write_text(f'{{"seed": {seed}}}')
    (root / key / "run" / "metrics.json").write_text('{"decision": {"mode": "classifier"}}')
    with open(root / key / "left_out_results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "prob_cardiomegaly", "cardiomegaly", "status", "error", "ctr", "ctr_flag", "label"])
        for path, p, ctr, label, status in rows:
            w.writerow([path, p if status == "ok" else "", "", status, "", ctr, "", label])
    return root


def test_seed_average_averages_each_films_probability_over_the_seeds(real, tmp_path):
    """Two seeds that each rank one positive last: averaged, the films rank perfectly; per view; a film one seed
    could not read is left out of every column (the same films everywhere), and so is a film without a label."""
    rng = np.random.default_rng(0)
    names = [f"images/{k}.png" for k in range(40)]
    y = np.array([k % 2 for k in range(40)])
    base = y * 0.5 + 0.25
    p0, p1 = base + rng.uniform(-0.01, 0.01, 40), base + rng.uniform(-0.01, 0.01, 40)
    p0[1], p1[3] = 0.0, 0.0  # each seed misses a different positive completely
    rows0 = [(n, p0[k], "", y[k], "ok") for k, n in enumerate(names)] + [("images/bad.png", "", "", 1, "ok")]
    rows1 = [(n, p1[k], "", y[k], "ok") for k, n in enumerate(names)] + [("images/bad.png", "", "", 1, "error")]
    rows0.append(("images/unlabelled.png", 0.9, "", "", "ok"))
    rows1.append(("images/unlabelled.png", 0.9, "", "", "ok"))
    rows0[0], rows1[0] = ("images/0.png", 0.3, "", 0, "ok"), ("images/0.png", 0.2, "", 0, "ok")
    dirs = [seed_dir(tmp_path / "s0", 0, "A", rows0), seed_dir(tmp_path / "s1", 1, "A", rows1)]
    views = {n: ("PA" if k < 20 else "AP") for k, n in enumerate(names)}
    avg = real.seed_average(dirs, "A", views=views)
    assert avg["seeds"] == [0, 1] and set(avg["groups"]) == {"all", "AP", "PA"}
    g = avg["groups"]["all"]
    assert (g["n"], g["n_positive"]) == (40, 20)
    assert g["seeds_auroc"][0] == pytest.approx(19 / 20) and g["seeds_auroc"][1] == pytest.approx(19 / 20)
    assert g["average_auroc"] == pytest.approx(1.0)  # each positive missed by one seed still beats every negative
    assert all(lo >= 0 for lo, _ in g["average_minus_seed_ci95"])
    assert avg["groups"]["PA"]["n"] == 20 and "ctr" not in avg


def test_seed_average_of_the_ctr_against_the_manual_ratio(real, tmp_path):
    rows0 = [("a.png", 0.2, 0.40, 0, "ok"), ("b.png", 0.8, 0.60, 1, "ok"), ("c.png", 0.7, "", 1, "ok"),
             ("d.png", 0.3, 0.46, 0, "ok")]
    rows1 = [("a.png", 0.1, 0.44, 0, "ok"), ("b.png", 0.9, 0.64, 1, "ok"), ("c.png", 0.6, 0.55, 1, "ok"),
             ("d.png", 0.4, 0.50, 0, "ok")]
    dirs = [seed_dir(tmp_path / "s0", 0, "C", rows0), seed_dir(tmp_path / "s1", 1, "C", rows1)]
    reference = {"a.png": 0.40, "b.png": 0.60, "c.png": 0.55, "d.png": 0.50}
    c = real.seed_average(dirs, "C", reference=reference)["ctr"]
    assert c["n"] == 3  # c.png: one seed measured no ratio
    assert c["seeds_mae"] == pytest.approx([(0 + 0 + 0.04) / 3, (0.04 + 0.04 + 0) / 3])
    assert c["average_mae"] == pytest.approx((0.02 + 0.02 + 0.02) / 3)
    assert c["average_within_0.03"] == pytest.approx(1.0)


def test_a_finished_run_of_another_seed_is_not_reused(real, tmp_path):
    """--seeds / --seed into an --out that already holds another seed's run: refused, never mixed in silently."""
    from types import SimpleNamespace

    run_dir = seed_dir(tmp_path, 0, "A", []) / "A" / "run"
    with pytest.raises(SystemExit, match="holds a run of --seed 0 --split-seed None, not the --seed 1"):
        real.train(run_dir, [], SimpleNamespace(seed=1, split_seed=None, epochs=12))
    real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=12))  # same seed: reused
    with pytest.raises(SystemExit, match="holds a run without --balance-labels"):
        real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=12, balance_labels=True))
    with pytest.raises(SystemExit, match="holds a run of --aug-opacity 0, not the 0.3 asked for"):
        real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=12, aug_opacity=0.3))
    with pytest.raises(SystemExit, match="holds a run of --aug-draws joint, not the independent asked for"):
        real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=12, aug_draws="independent"))


def test_aug_opacity_reaches_cxr_train_beside_the_augmentation(real, tmp_path, monkeypatch):
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(real, "run", lambda cmd, allowed=(0,): calls.append(cmd) or 0)
    real.train(tmp_path / "op", [], SimpleNamespace(seed=0, split_seed=0, epochs=20, size=160, aug_opacity=0.3))
    real.train(tmp_path / "plain", [], SimpleNamespace(seed=0, split_seed=0, epochs=20, size=160))
    real.train(tmp_path / "a0", [], SimpleNamespace(seed=0, split_seed=0, epochs=20, size=160, aug_opacity=0.3),
               extra=["--rotation-degrees", "5"])  # the baseline A0 keeps its own recipe
    real.train(tmp_path / "apart", [], SimpleNamespace(seed=0, split_seed=0, epochs=20, size=160,
                                                       aug_draws="independent"))
    op, plain, a0, apart = calls
    assert apart[apart.index("--aug-draws") + 1] == "independent" and "--aug-draws" not in plain
    assert op[op.index("--aug-opacity") + 1] == "0.3"
    assert op[:-2] == [str(tmp_path / "op") if c == str(tmp_path / "plain") else c for c in plain]
    assert "--aug-opacity" not in a0 and set(real.AUGMENT) <= set(op)


@pytest.mark.parametrize("metrics, epochs, resumed", [
    ({"epochs_run": 12, "stopped_early": False}, 20, True),    # longer: the same run carries on to 20
    ({"epochs_run": 12, "stopped_early": False}, 12, False),   # as long: reused
    ({"epochs_run": 12, "stopped_early": False}, 8, False),    # shorter: reused as it is (never cut back)
    ({"epochs_run": 9, "stopped_early": True}, 20, False),     # early stopping ended it: more epochs change nothing
])
def test_more_epochs_continue_a_finished_run(real, tmp_path, monkeypatch, capsys, metrics, epochs, resumed):
    import json
    from types import SimpleNamespace

    run_dir = seed_dir(tmp_path, 0, "A", []) / "A" / "run"
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    calls = []
    monkeypatch.setattr(real, "run", lambda cmd, allowed=(0,): calls.append(cmd) or 0)
    real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=epochs))
    if resumed:
        assert calls == [[str(real.BIN / "cxr-train"), "--resume", str(run_dir), "--max-epochs", str(epochs)]]
        assert f"finished run of 12 epochs: continuing it to {epochs}" in capsys.readouterr().out
    else:
        assert calls == [] and "reusing it" in capsys.readouterr().out


def test_an_interrupted_run_resumes_to_the_epochs_asked(real, tmp_path, monkeypatch):
    from types import SimpleNamespace

    run_dir = tmp_path / "A" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"state")
    (run_dir / "config.json").write_text('{"max_epochs": 12, "seed": 0, "split_seed": null, "aug_opacity": 0.3}')
    calls = []
    monkeypatch.setattr(real, "run", lambda cmd, allowed=(0,): calls.append(cmd) or 0)
    real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=20, aug_opacity=0.3))
    real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=8, aug_opacity=0.3))  # never cut short
    assert calls == [[str(real.BIN / "cxr-train"), "--resume", str(run_dir), "--max-epochs", n] for n in ("20", "12")]
    # an interrupted run is checked like a finished one before it resumes
    with pytest.raises(SystemExit, match="holds a run of --aug-opacity 0.3, not the 0.0 asked for"):
        real.train(run_dir, [], SimpleNamespace(seed=0, split_seed=None, epochs=20))
    with pytest.raises(SystemExit, match="holds a run of --seed 0 --split-seed None, not the --seed 1"):
        real.train(run_dir, [], SimpleNamespace(seed=1, split_seed=None, epochs=20, aug_opacity=0.3))
    assert len(calls) == 2


def test_seed_average_names_each_seeds_decision_and_split(real, tmp_path):
    rows = [("a.png", 0.2, "", 0, "ok"), ("b.png", 0.8, "", 1, "ok")]
    dirs = [seed_dir(tmp_path / f"s{n}", n, "A", rows) for n in (3, 4)]
    avg = real.seed_average(dirs, "A")
    assert (avg["seeds"], avg["split_seeds"], avg["decisions"]) == ([3, 4], [None, None], ["classifier"] * 2)
    assert "seed 3 (classifier) | seed 4 (classifier)" in "\n".join(real.print_average("A", "t", avg))


def test_ensemble_builds_each_run_of_every_folder_into_one_model(real, tmp_path, monkeypatch, capsys):
    """--ensemble: cxr-ensemble over the same run of every seed folder, then export and the left-out test; a run
    missing from one folder is skipped, not built from fewer members."""
    import argparse
    import json

    seeds = [tmp_path / "seed0", tmp_path / "seed1"]
    for d in seeds:
        for key in ("A", "B"):
            (d / key / "run").mkdir(parents=True)
            (d / key / "run" / "best.pt").write_bytes(b"weights")
    (seeds[1] / "B" / "run" / "best.pt").unlink()
    calls = []
    monkeypatch.setattr(real, "run", lambda cmd, allowed=(0,): calls.append(cmd) or 0)
    monkeypatch.setattr(real, "export", lambda run_dir, model: calls.append(["export", str(run_dir), str(model)]))
    monkeypatch.setattr(real, "external_plans", lambda args, out: {k: (k, [], f"csv:{k}", None) for k in "ABC"})
    monkeypatch.setattr(real, "left_out_entry", lambda args, key, plan, run_dir, key_out, labels, t0:
                        {"plan": plan[2], "run_dir": str(run_dir)})
    out = tmp_path / "out"
    report = real.mode_ensemble(argparse.Namespace(only="A,B", data=tmp_path), seeds, out)
    built = out / "ensemble" / "A" / "run"
    assert calls == [[str(real.BIN / "cxr-ensemble"), str(seeds[0] / "A" / "run"), str(seeds[1] / "A" / "run"),
                      "--out", str(built)],
                     ["export", str(built), str(out / "ensemble" / "A" / "model.onnx")]]
    assert list(report) == ["A"] and report["A"]["plan"] == "csv:A"
    assert "B: not a finished run in every folder given; skipped" in capsys.readouterr().out
    saved = json.loads((out / "ensemble" / "ensemble.json").read_text())
    assert saved["A"]["members"] == [str(seeds[0] / "A" / "run"), str(seeds[1] / "A" / "run")]
    # built before: reused when it is of the same runs, refused when of others
    (built / "best.pt").parent.mkdir(parents=True, exist_ok=True)
    (built / "best.pt").write_bytes(b"ensemble")
    (built / "metrics.json").write_text(json.dumps({"ensemble_of": [str(seeds[0] / "A" / "run"),
                                                                    str(seeds[1] / "A" / "run")]}))
    calls.clear()
    real.mode_ensemble(argparse.Namespace(only="A", data=tmp_path), seeds, out)
    assert calls == [["export", str(built), str(out / "ensemble" / "A" / "model.onnx")]]
    assert "already holds this ensemble: reusing it" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds an ensemble of .* not of the runs given now"):
        real.mode_ensemble(argparse.Namespace(only="A", data=tmp_path), seeds[::-1], out)
    import os

    later = (built / "best.pt").stat().st_mtime + 60  # a member continued to more epochs after the build
    os.utime(seeds[1] / "A" / "run" / "best.pt", (later, later))
    with pytest.raises(SystemExit, match="was built before a member's last training"):
        real.mode_ensemble(argparse.Namespace(only="A", data=tmp_path), seeds, out)


@pytest.mark.parametrize("argv, message", [
    (["--mode", "external", "--ensemble"], "--ensemble goes with --seeds"),
    (["--mode", "external", "--seeds", "0,1", "--ensemble"], "give --split-seed N"),
])
def test_ensemble_arguments_are_checked(real, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        real.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def _pseudo_dir(tmp_path, names, counted=None, source=None, by_source=("nih",)):
    """A pseudo-labels folder of the NIH sample under tmp_path/data whose teacher's card says it trained on the
    --data sources `names` (and counted films of the sources `counted` per split)."""
    import hashlib

    out = tmp_path / "pseudo"
    out.mkdir()
    (out / "labels.csv").write_text("path,cardiomegaly\n")
    data = {"data_sources": [{"name": n, "kind": "csv", "root": "/d"} for n in names]}
    if counted is not None:
        data["sources"] = {"train": {n: 3 for n in counted}, "val": {}}
    record = {"teacher": {"card": {"training": {"data": data}}, "sha256": "ab" * 32}, "n_images": 10,
              "n_with_masks": 7, "flags": {"lungs_cut_by_edge": 3},
              "source": source or f"nih:{tmp_path / 'data' / 'nih_cxr14_sample'};name=nih",
              "index": {"by_source": {n: {} for n in by_source}},
              "labels_sha256": hashlib.sha256((out / "labels.csv").read_bytes()).hexdigest()}
    (out / "pseudo.json").write_text(json.dumps(record))
    return out


@pytest.mark.parametrize("names, counted, key, refused", [
    (["nih", "jsrt"], None, "B", None),
    (["nih", "wingspan"], ["nih", "wingspan"], "C", None),
    (["nih", "wingspan"], None, "B", "leaves out wingspan"),
    (["nih", "jsrt"], None, "C", "leaves out jsrt"),
    (["nih", "wj"], None, "B", "leaves out wingspan"),  # make real's source holds both masked hospitals
    (["nih", "csv"], ["nih", "jsrt", "wingspan"], "B", "leaves out wingspan"),  # unnamed --data: its films say it
    ([], None, "B", "does not name every source"),
    (["nih", None], None, "B", "does not name every source"),
    (["nih", "jsrt"], None, "A", "not A"),
])
def test_nih_masks_come_from_a_teacher_that_never_saw_the_hospital_left_out(real, tmp_path, names, counted, key,
                                                                            refused):
    masks = _pseudo_dir(tmp_path, names, counted)
    if refused:
        with pytest.raises(SystemExit, match=refused):
            real.teacher_check(masks, key, tmp_path / "data")
        return
    got = real.teacher_check(masks, key, tmp_path / "data")
    assert got == {"n_images": 10, "n_with_masks": 7, "flags": {"lungs_cut_by_edge": 3}, "teacher_sha256": "ab" * 32,
                   "teacher_sources": sorted(set(names + (counted or [])))}


@pytest.mark.parametrize("source, by_source, edit, message", [
    ("csv:{data}/ctr_wingspan_jsrt;name=nih", ("nih",), False, "not the NIH sample"),
    ("nih:{data}/elsewhere;name=nih", ("nih",), False, "not the NIH sample"),
    (None, ("nih", "wingspan"), False, "not the NIH sample"),
    (None, ("nih",), True, "SHA-256 differs"),
])
def test_nih_masks_must_label_the_nih_sample_itself(real, tmp_path, source, by_source, edit, message):
    masks = _pseudo_dir(tmp_path, ["nih", "jsrt"], source=source and source.format(data=tmp_path / "data"),
                        by_source=by_source)
    if edit:
        (masks / "labels.csv").write_text("path,cardiomegaly\nwingspan/png/x.png,1\n")
    with pytest.raises(SystemExit, match=message):
        real.teacher_check(masks, "B", tmp_path / "data")


def test_a_finished_run_on_other_data_is_not_reused(real, tmp_path):
    """The same seed's finished run, trained without the masks now asked for: refused, never reported as taught."""
    from types import SimpleNamespace

    run_dir = tmp_path / "B" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"epochs_run": 20}))
    (run_dir / "config.json").write_text(json.dumps({
        "seed": 0, "split_seed": 0, "dataset": "nih", "data_root": str(tmp_path / "nih"), "csv_path": None,
        "extra_sources": [{"kind": "csv", "data_root": str(tmp_path / "wj"), "csv_path": str(tmp_path / "j.csv")}]}))
    args = SimpleNamespace(seed=0, split_seed=0, epochs=20)
    jsrt = f"csv:{tmp_path / 'wj'};csv={tmp_path / 'j.csv'};name=jsrt"
    real.train(run_dir, [f"nih:{tmp_path / 'nih'};name=nih", jsrt], args)  # the same data: reused
    with pytest.raises(SystemExit, match="trained on other data"):
        real.train(run_dir, [f"csv:{tmp_path / 'p'};csv={tmp_path / 'p' / 'labels.csv'};name=nih", jsrt], args)


def test_nih_masks_train_nih_from_the_pseudo_labels(real, tmp_path):
    wj = tmp_path / "data" / "ctr_wingspan_jsrt"
    wj.mkdir(parents=True)
    (wj / "labels.csv").write_text("path,dataset,cardiomegaly_mask_ctr,ctr_mask\n"
                                   "jsrt/png/a.png,jsrt,0,0.45\nwingspan/png/b.png,wingspan,1,0.55\n")
    args = argparse.Namespace(data=tmp_path / "data", nih_masks=tmp_path / "pseudo")
    plans = real.external_plans(args, tmp_path)
    nih = [s for s in plans["B"][1] if "name=nih" in s]
    pseudo = (tmp_path / "pseudo").resolve()
    assert nih == [f"csv:{pseudo};csv={pseudo / 'labels.csv'};mask_columns=mask_heart,mask_left_lung,"
                   "mask_right_lung;ctr_column=ctr_reference;name=nih"]
    assert plans["C"][1][0] == nih[0] and not any("name=nih" in s for s in plans["A"][1])


@pytest.mark.parametrize("extra, message", [
    ([], "python -m cxr.train.pseudo"),
    (["--only", "A,B"], "--only B, C or B,C"),
    ([], "--only B, C or B,C"),
])
def test_nih_masks_arguments_are_checked(real, tmp_path, capsys, extra, message):
    if message.startswith("--only"):
        (tmp_path / "pseudo.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        real.main(["--mode", "external", "--nih-masks", str(tmp_path)] + extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_score_reports_the_exported_models_figures_per_view(real, tmp_path):
    from tests.runtime.test_overlay_fixtures import chest_like, maps_model

    folder = tmp_path / "nih" / "images"
    folder.mkdir(parents=True)
    views = {"a.png": ("AP", 1), "b.png": ("AP", 0), "c.png": ("PA", 1), "d.png": ("PA", 0), "e.png": ("PA", 0)}
    for i, name in enumerate(views):
        assert cv2.imwrite(str(folder / name), chest_like(bright=i % 2 == 0))
    labels = tmp_path / "nih" / "labels.csv"
    labels.write_text("path,cardiomegaly,view_position\n"
                      + "".join(f"images/{n},{y},{v}\n" for n, (v, y) in views.items()))
    manifest = real.score(tmp_path / "nih", maps_model(tmp_path / "m.onnx"), labels, tmp_path / "r.csv",
                          group_column="view_position")
    groups = manifest["labels"]["groups"]
    assert groups["column"] == "view_position"
    assert [(g["group"], g["n"], g["n_positive"]) for g in groups["groups"]] == [("AP", 2, 1), ("PA", 3, 1)]


def _plain_run(root: Path, key: str, seconds: list[float]) -> Path:
    """A finished plain run `key` under root (history with the epochs' times) and its exported model's bytes."""
    run_dir = root / key / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_text("epoch,seconds\n" + "".join(f"{i},{s}\n" for i, s in enumerate(seconds, 1)))
    (root / key / "model.onnx").write_bytes(b"plain model " + key.encode())
    return run_dir


def test_teach_draws_the_plain_runs_masks_and_trains_the_same_seed_with_them(real, tmp_path, monkeypatch, capsys):
    """--teach: B's exported model draws the NIH masks (python -m cxr.train.pseudo on the NIH sample), the teacher is
    checked, and a second run trains on them with the same sources otherwise; its entry names the teacher and both
    runs' training time."""
    import hashlib

    out, data = tmp_path / "out", tmp_path / "data"
    _plain_run(out, "B", [60.0, 90.0])
    calls = []

    def fake_run(cmd, allowed=(0,)):  # the pseudo-labels as python -m cxr.train.pseudo writes them
        calls.append(cmd)
        masks = Path(cmd[-1])
        made = _pseudo_dir(tmp_path, ["nih", "jsrt"])
        made.rename(masks)
        record = json.loads((masks / "pseudo.json").read_text())
        record["teacher"]["sha256"] = hashlib.sha256(Path(cmd[3]).read_bytes()).hexdigest()
        record["source"] = cmd[4]
        (masks / "pseudo.json").write_text(json.dumps(record))
        return 0

    def fake_train(run_dir, sources, args, extra=None):
        calls.append(["train", str(run_dir), *sources, args.seed, args.split_seed])
        run_dir.mkdir(parents=True)
        (run_dir / "history.csv").write_text("epoch,seconds\n1,30\n2,45.5\n")

    monkeypatch.setattr(real, "run", fake_run)
    monkeypatch.setattr(real, "train", fake_train)
    monkeypatch.setattr(real, "export", lambda run_dir, model: calls.append(["export", str(run_dir), str(model)]))
    monkeypatch.setattr(real, "external_plans", lambda args, out: {
        "B": ("NIH + JSRT -> wingspan", [f"nih-from:{args.nih_masks}", "jsrt"], "wingspan", "wingspan/png/")})
    monkeypatch.setattr(real, "left_out_entry", lambda args, key, plan, run_dir, key_out, labels, t0: {
        "title": plan[0], "key": key, "run_dir": str(run_dir), "exported_ctr_vs_masks": {"mae": 0.0312}})
    args = argparse.Namespace(data=data, seed=1, split_seed=0, nih_masks=None, teach=True)
    entry = real.taught_entry(args, "B", out, {"exported_ctr_vs_masks": {"mae": 0.0634}})
    masks = out / "B-masks"
    assert calls[0] == [real.sys.executable, "-m", "cxr.train.pseudo", str(out / "B" / "model.onnx"),
                        f"nih:{data / 'nih_cxr14_sample'};name=nih", "--out", str(masks)]
    assert calls[1:] == [["train", str(out / "B-taught" / "run"), f"nih-from:{masks}", "jsrt", 1, 0],
                         ["export", str(out / "B-taught" / "run"), str(out / "B-taught" / "model.onnx")]]
    assert entry["key"] == "B-taught" and entry["title"] == "NIH + JSRT -> wingspan, NIH masks drawn by the plain run"
    assert entry["teacher"]["run"] == str(out / "B" / "run") and entry["teacher"]["masks"] == str(masks)
    assert entry["teacher"]["teacher_sources"] == ["jsrt", "nih"] and entry["teacher"]["n_with_masks"] == 7
    assert entry["training_seconds"] == {"teacher": 150.0, "taught": 75.5}
    assert "B: ctr error of the exported model, plain 0.0634 -> taught 0.0312" in capsys.readouterr().out
    # a second call reuses the same teacher's masks; a teacher trained on since has its masks refused
    calls.clear()
    monkeypatch.setattr(real, "train", lambda run_dir, sources, args, extra=None: calls.append(["train"]))
    real.taught_entry(args, "B", out, {})
    assert calls[0] == ["train"] and "already holds model.onnx's masks: reusing them" in capsys.readouterr().out
    # the same teacher's masks voted over shifts (python -m cxr.train.pseudo --shift-vote) are not --teach's
    record = json.loads((masks / "pseudo.json").read_text())
    (masks / "pseudo.json").write_text(json.dumps({**record, "shift_vote": 4}))
    with pytest.raises(SystemExit, match=r"masks voted over shifts \(--shift-vote 4\); --teach draws them once"):
        real.taught_entry(args, "B", out, {})
    (masks / "pseudo.json").write_text(json.dumps(record))
    (out / "B" / "model.onnx").write_bytes(b"plain model B, trained on")
    with pytest.raises(SystemExit, match="masks drawn by another model"):
        real.taught_entry(args, "B", out, {})
    # masks of other films (another spec) are refused the same way
    other = argparse.Namespace(**{**vars(args), "data": tmp_path / "elsewhere"})
    with pytest.raises(SystemExit, match="or of other films"):
        real.taught_entry(other, "B", out, {})
    # the user deletes the masks as told and they are drawn again by the new model: the taught run, trained on the
    # old masks, is refused rather than reused or continued on the new ones
    import shutil

    shutil.rmtree(masks)
    with pytest.raises(SystemExit, match="trained on other masks than those now in"):
        real.taught_entry(args, "B", out, {})


def test_teach_follows_b_and_c_only(real, tmp_path, monkeypatch):
    """mode_external with --teach: B and C each followed by their taught run, in the report under B-taught/C-taught;
    A is never taught (it does not train on NIH)."""
    done = []
    monkeypatch.setattr(real, "external_plans", lambda args, out: {k: (k, [], k, None) for k in "ABC"})
    monkeypatch.setattr(real, "mask_conventions", lambda wj, labels: {})
    monkeypatch.setattr(real, "print_conventions", lambda conv: None)
    monkeypatch.setattr(real, "train", lambda run_dir, sources, args, extra=None: done.append(run_dir.parent.name))
    monkeypatch.setattr(real, "export", lambda run_dir, model: None)
    monkeypatch.setattr(real, "left_out_entry", lambda args, key, plan, run_dir, key_out, labels, t0: {"key": key})
    monkeypatch.setattr(real, "taught_entry", lambda args, key, out, teacher: done.append(f"{key}-taught") or
                        {"teacher_key": teacher["key"]})
    args = argparse.Namespace(only="A,B,C", data=tmp_path, teach=True, nih_masks=None)
    report = real.mode_external(args, tmp_path)
    assert done == ["A", "B", "B-taught", "C", "C-taught"]
    assert report["B-taught"] == {"teacher_key": "B"} and "A-taught" not in report
    assert set(json.loads((tmp_path / "external.json").read_text())) >= {"B-taught", "C-taught"}


@pytest.mark.parametrize("extra", [
    ["--mode", "real", "--teach"],
    ["--mode", "external", "--only", "A", "--teach"],
    ["--mode", "external", "--average", "x", "--teach"],
])
def test_teach_arguments_are_checked(real, extra, capsys):
    with pytest.raises(SystemExit) as exc:
        real.main(extra)
    assert exc.value.code == 2 and "--teach goes with --mode external" in capsys.readouterr().err


def test_teach_and_nih_masks_are_not_given_together(real, tmp_path, capsys):
    (tmp_path / "pseudo.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        real.main(["--mode", "external", "--only", "B", "--nih-masks", str(tmp_path), "--teach"])
    assert exc.value.code == 2 and "not with --nih-masks" in capsys.readouterr().err


def test_average_covers_the_taught_runs_the_folders_hold(real, tmp_path):
    """--seeds with --teach: the taught runs are averaged over the seeds beside the plain ones, their ctr against the
    left-out masks."""
    data = tmp_path / "data"
    (data / "ctr_wingspan_jsrt").mkdir(parents=True)
    (data / "nih_cxr14_sample").mkdir(parents=True)
    (data / "ctr_wingspan_jsrt" / "labels.csv").write_text("path,ctr_mask\nwingspan/png/a.png,0.40\n"
                                                           "wingspan/png/b.png,0.60\n")
    (data / "nih_cxr14_sample" / "labels.csv").write_text("path,view_position\n")
    dirs = []
    for seed, shift in ((0, 0.02), (1, -0.02)):
        rows = [("a.png", 0.2, 0.40 + shift, 0, "ok"), ("b.png", 0.8, 0.60 + shift, 1, "ok")]
        d = seed_dir(tmp_path / f"s{seed}", seed, "B", rows)
        seed_dir(d, seed, "B-taught", [(p, pr, c - shift, y, s) for p, pr, c, y, s in rows])
        dirs.append(d)
    report = real.mode_average(argparse.Namespace(data=data, only="B"), dirs, tmp_path)
    assert list(report) == ["B", "B-taught"]
    assert report["B"]["ctr"]["seeds_mae"] == pytest.approx([0.02, 0.02])
    assert report["B-taught"]["ctr"]["seeds_mae"] == pytest.approx([0.0, 0.0])
    assert "B-taught: NIH + JSRT -> wingspan, NIH masks drawn by the plain run" in report["B-taught"]["table"][0]


def test_teach_trains_nothing_when_the_plain_run_drew_no_usable_masks(real, tmp_path, monkeypatch, capsys):
    """A teacher whose masks were all flagged: the taught run would repeat the plain one epoch for epoch (same seed,
    split and films, none with masks), so it is skipped with the reason, not trained for hours."""
    out, data = tmp_path / "out", tmp_path / "data"
    _plain_run(out, "C", [60.0])
    masks = _pseudo_dir(tmp_path, ["nih", "wingspan"], source=f"nih:{data / 'nih_cxr14_sample'};name=nih")
    record = json.loads((masks / "pseudo.json").read_text())
    import hashlib

    record.update(n_with_masks=0, flags={"lungs_cut_by_edge": 10})
    record["teacher"]["sha256"] = hashlib.sha256((out / "C" / "model.onnx").read_bytes()).hexdigest()
    (masks / "pseudo.json").write_text(json.dumps(record))
    masks.rename(out / "C-masks")
    monkeypatch.setattr(real, "train", lambda *a, **k: pytest.fail("trained a run with nothing to teach"))
    entry = real.taught_entry(argparse.Namespace(data=data, seed=0, split_seed=0, nih_masks=None), "C", out, {})
    assert entry["skipped"] == ("the plain run drew no usable masks on the 10 NIH films (flags: lungs_cut_by_edge "
                                "10); nothing to teach")
    assert "C-taught: skipped" in capsys.readouterr().out and not (out / "C-taught").exists()


@pytest.mark.parametrize("metrics, epochs, refused", [
    ({"epochs_run": 20}, 20, None),  # finished as asked: its masks are its own
    ({"epochs_run": 12, "stopped_early": True}, 20, None),  # early stopping ended it: reused as it is
    ({"epochs_run": 12}, 20, "will now continue to --epochs 20"),
    (None, 20, "will now train again"),  # deleted (or interrupted) with its masks left behind
])
def test_teach_refuses_masks_of_an_earlier_state_of_the_run_before_anything_trains(real, tmp_path, metrics, epochs,
                                                                                   refused):
    (tmp_path / "B" / "run").mkdir(parents=True)
    if metrics is not None:
        (tmp_path / "B" / "run" / "metrics.json").write_text(json.dumps(metrics))
    args = argparse.Namespace(epochs=epochs)
    real.teach_precheck(args, tmp_path, "B")  # no masks yet: nothing to check
    (tmp_path / "B-masks").mkdir()
    (tmp_path / "B-masks" / "pseudo.json").write_text("{}")
    if refused is None:
        real.teach_precheck(args, tmp_path, "B")
        return
    with pytest.raises(SystemExit, match=refused + r".*delete .*B-masks and .*B-taught"):
        real.teach_precheck(args, tmp_path, "B")


def test_the_plain_runs_nih_source_is_the_one_the_masks_are_drawn_on(real, tmp_path):
    """--teach draws the masks on nih_spec: the very source B and C train on, so the pseudo-labels' films, patients
    and split are the plain run's."""
    wj = tmp_path / "data" / "ctr_wingspan_jsrt"
    wj.mkdir(parents=True)
    (wj / "labels.csv").write_text("path,dataset,cardiomegaly_mask_ctr,ctr_mask\njsrt/png/a.png,jsrt,0,0.45\n")
    args = argparse.Namespace(data=tmp_path / "data", nih_masks=None)
    plans = real.external_plans(args, tmp_path)
    assert plans["B"][1][0] == plans["C"][1][0] == real.nih_spec(args)


def test_shift_average_change_pairs_the_films_scored_both_ways(real, tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("path,prob_cardiomegaly,cardiomegaly,status,error,label\n"
                        + "".join(f"{p},{q},,{s},,{y}\n" for p, q, s, y in rows))
        return path

    # once: one positive ranked below a negative (AUROC 3/4); averaged: every positive first (1.0). A film that failed
    # either way and one without a label are left out of both.
    once = write("once.csv", [("a", 0.9, "ok", 1), ("b", 0.3, "ok", 1), ("c", 0.4, "ok", 0), ("d", 0.1, "ok", 0),
                              ("e", "", "error", 1), ("f", 0.8, "ok", "")])
    averaged = write("avg.csv", [("a", 0.8, "ok", 1), ("b", 0.5, "ok", 1), ("c", 0.4, "ok", 0), ("d", 0.2, "ok", 0),
                                 ("e", 0.9, "ok", 1), ("f", 0.1, "ok", "")])
    got = real.shift_average_change(once, averaged)
    assert (got["n"], got["n_positive"]) == (4, 2)
    assert (got["auroc_once"], got["auroc_averaged"], got["change"]) == pytest.approx((0.75, 1.0, 0.25))
    lo, hi = got["change_ci95"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0


def test_negatives_by_kind_ranks_the_positives_against_each_kind_of_negative(real, tmp_path):
    """NIH's negatives: 'No Finding' films and films with other findings only; all films and per view."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,cardiomegaly,finding_labels,view_position\n"
                      "images/p1.png,1,Cardiomegaly|Effusion,AP\nimages/p2.png,1,Cardiomegaly,PA\n"
                      "images/n1.png,0,No Finding,AP\nimages/n2.png,0,No Finding,PA\n"
                      "images/o1.png,0,Effusion,AP\nimages/o2.png,0,Edema|Effusion,PA\n"
                      "images/bad.png,1,Cardiomegaly,AP\nimages/gone.png,0,No Finding,AP\n")
    results = tmp_path / "r.csv"
    results.write_text("path,prob_cardiomegaly,cardiomegaly,status,error,label\n"
                       "images/p1.png,0.6,1,ok,,1\nimages/p2.png,0.9,1,ok,,1\nimages/n1.png,0.1,0,ok,,0\n"
                       "images/n2.png,0.2,0,ok,,0\nimages/o1.png,0.95,1,ok,,0\nimages/o2.png,0.5,0,ok,,0\n"
                       "images/bad.png,,,error,unreadable,1\n")
    got = {(g["view"], g["negatives"]): g for g in real.negatives_by_kind(results, labels)}
    assert set(got) == {(v, k) for v in ("all", "AP", "PA") for k in ("No Finding", "other findings")}
    assert (got["all", "No Finding"]["n"], got["all", "No Finding"]["n_positive"]) == (4, 2)
    assert got["all", "No Finding"]["auroc"] == pytest.approx(1.0)
    assert got["all", "other findings"]["auroc"] == pytest.approx(2 / 4)  # o1 above both positives, o2 below both
    assert got["AP", "other findings"]["auroc"] == pytest.approx(0.0) and got["PA", "other findings"]["auroc"] == 1.0
    lo, hi = got["all", "other findings"]["auroc_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    # a row that failed keeps out of every line even with a probability; a negative of no stated kind too
    with open(results, "a") as fh:
        fh.write("images/gone.png,0.99,1,error,timeout,0\nimages/blank.png,0.99,1,ok,,0\n")
    with open(labels, "a") as fh:
        fh.write("images/blank.png,0,,PA\n")
    assert [g["auroc"] for g in real.negatives_by_kind(results, labels)] == [g["auroc"] for g in got.values()]
    # labels without NIH's finding_labels column: nothing to tell apart, no lines
    plain = tmp_path / "plain.csv"
    plain.write_text("path,cardiomegaly\nimages/p1.png,1\nimages/n1.png,0\n")
    assert real.negatives_by_kind(results, plain) == []


def test_score_passes_the_shift_average_to_cxr_score(real, tmp_path):
    from tests.runtime.test_overlay_fixtures import chest_like, maps_model

    folder = tmp_path / "nih" / "images"
    folder.mkdir(parents=True)
    for i, name in enumerate(("a.png", "b.png")):
        assert cv2.imwrite(str(folder / name), chest_like(bright=i == 0))
    labels = tmp_path / "nih" / "labels.csv"
    labels.write_text("path,cardiomegaly\nimages/a.png,1\nimages/b.png,0\n")
    manifest = real.score(tmp_path / "nih", maps_model(tmp_path / "m.onnx"), labels, tmp_path / "r.csv",
                          extra=["--shift-average", "2"])
    assert manifest["shift_average"]["pixels"] == 2 and manifest["shift_average"]["drawings"] == 9


@pytest.mark.parametrize("extra", [["--mode", "real", "--shift-average", "4"],
                                   ["--mode", "external", "--shift-average", "0"],
                                   ["--mode", "external", "--shift-average", "40"],  # a quarter of 160 px
                                   ["--mode", "external", "--only", "B,C", "--shift-average", "4"]])
def test_shift_average_arguments_are_checked(real, extra, capsys):
    with pytest.raises(SystemExit) as exc:
        real.main(extra)
    assert exc.value.code == 2
    assert ("--shift-average PIXELS (1 to 39 at --size 160) goes with --mode external and the run A"
            in capsys.readouterr().err)
