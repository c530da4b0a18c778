"""cxr-ensemble: several runs of one split used together, exported as one ONNX file (mechanics: densenet_tiny, 64 px).

Two runs of different --seed share --split-seed 0; the second's decision is rewritten to read the ratio, so the
average really mixes a classifier member with a ratio member."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train.masked_fixtures import make_masked_set
from tests.train.test_multisource import masked_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@pytest.mark.parametrize("logits", [
    [[0.3, -2.0, 5.0], [1.1, -0.5, -7.0]],
    [[30.0, -30.0, 0.0], [25.0, -40.0, 0.0], [-3.0, 2.0, 0.0]],
    [[20.0, 40.0, -60.0], [25.0, 60.0, -45.0]],  # sure members: 1 - p is 0 in float32, a naive logit is inf
])
def test_mean_probability_logit_is_the_logit_of_the_mean_probability(logits):
    from cxr.train.model import mean_probability_logit

    got = mean_probability_logit(torch.tensor(logits, dtype=torch.float32)).numpy()
    x = np.asarray(logits, np.float64)
    expected = np.log(_sigmoid(x).mean(axis=0)) - np.log(_sigmoid(-x).mean(axis=0))  # float64, in log space
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mean_probability_logit_leaves_out_members_that_cannot_decide():
    from cxr.train.model import mean_probability_logit

    nan = float("nan")
    got = mean_probability_logit(torch.tensor([[1.0, nan, nan], [-1.0, 2.0, nan], [0.5, -1.0, nan]])).numpy()
    p0 = _sigmoid([1.0, -1.0, 0.5]).mean()
    p1 = _sigmoid([2.0, -1.0]).mean()
    np.testing.assert_allclose(got[:2], [np.log(p0 / (1 - p0)), np.log(p1 / (1 - p1))], rtol=1e-5)
    assert math.isnan(got[2])  # no member can decide: no probability (cxr-score: no_anatomy)


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return make_masked_set(tmp_path_factory.mktemp("masked"), n=48, masked=36)


@pytest.fixture(scope="module")
def members(masked, phantom, tmp_path_factory):
    """Two trained runs of one split; the second made to decide on its measured ratio."""
    from cxr.train.checkpoints import load_checkpoint, save_checkpoint
    from cxr.train.loop import train

    root = tmp_path_factory.mktemp("members")
    runs = []
    for seed in (0, 1):
        run_dir = root / f"seed{seed}"
        train(masked_config(masked, phantom, seed=seed, split_seed=0, max_epochs=1, decision="classifier"), run_dir)
        runs.append(run_dir)
    ckpt = load_checkpoint(runs[1])
    ckpt.pop("path")
    ckpt["decision"] = {"mode": "ctr", "w_classifier": 0.0, "w_ctr": 12.0, "intercept": -6.0, "validation": {}}
    save_checkpoint(ckpt, runs[1] / "best.pt")
    return runs


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory):
    from cxr.train.ensemble import build_ensemble

    out = tmp_path_factory.mktemp("ens") / "ensemble"
    return out, build_ensemble(members, out)


def _val_images(run_dir, size=64):
    from cxr.runtime.preprocess import PreprocessConfig
    from cxr.train.data import load_preprocessed
    from cxr.train.splits import read_splits

    samples = [s for s in read_splits(run_dir / "splits.csv") if s.split == "val"]
    pp = PreprocessConfig(size=size)
    return np.stack([load_preprocessed(s.path, pp)[None] for s in samples]), np.array([s.label for s in samples])


def _member_outputs(run_dir, images):
    from cxr.export.validate import run_torch_all
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint
    from cxr.train.decision import Decision

    ckpt = load_checkpoint(run_dir)
    return run_torch_all(model_from_checkpoint(ckpt), images, decision=Decision.from_dict(ckpt.get("decision")))


def test_ensemble_averages_each_members_decided_probability(members, ensemble):
    from cxr.export.validate import run_torch_all
    from cxr.runtime import metrics as M
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint
    from cxr.train.decision import Decision
    from cxr.train.evaluate import choose_threshold

    out, summary = ensemble
    images, labels = _val_images(members[0])
    per_member = [_member_outputs(r, images) for r in members]
    ckpt = load_checkpoint(out)
    got = run_torch_all(model_from_checkpoint(ckpt), images, decision=Decision.from_dict(ckpt["decision"]))
    probs = np.stack([m["probability"] for m in per_member]).astype(np.float64)
    expected = np.where(np.isnan(probs), 0, probs).sum(0) / np.isfinite(probs).sum(0)
    np.testing.assert_allclose(got["probability"], expected, atol=2e-6)
    assert "ratio" in ckpt["threshold"]["detail"]  # a member reads the ratio: threshold between tied probabilities
    assert np.isfinite(probs).all(axis=0).sum() >= 5  # films both members decided: the mean is really of two
    assert not np.allclose(probs[0], probs[1], atol=1e-3)  # the members really differ
    # masks: the members' mask probabilities averaged, then measured as one model's would be
    assert got["masks"].shape == per_member[0]["masks"].shape and got["masks"].dtype == np.uint8
    assert set(np.unique(got["masks"])) <= {0, 1}
    # the threshold is chosen on the shared validation split with the ensemble's own probabilities
    assert ckpt["decision"]["mode"] == "classifier" and summary["decision"]["mode"] == "classifier"
    # ... and, since a member reads the ratio, moved halfway down to the next lower validation probability (if any)
    th = choose_threshold("youden_j", None, labels, expected)
    below = expected[expected < th.value]
    want = (th.value + below.max()) / 2 if below.size else th.value
    assert ckpt["threshold"]["value"] == pytest.approx(want, abs=1e-6)
    assert "2 members' mean probability" in ckpt["threshold"]["detail"]
    assert summary["metrics"]["val"]["auroc"] == pytest.approx(M.roc_auc(labels, expected), abs=1e-9)
    assert "test" in summary["metrics"] and summary["metrics"]["test"]["n"] > 0
    # the ratio of the averaged masks and the fusion are reported beside the average, not used
    assert set(summary["metrics"]["decision_candidates"]) == {"classifier", "ctr", "fusion"}
    assert math.isfinite(summary["metrics"]["test"]["by_score"]["ctr"]["auroc"])


def test_ensemble_run_lists_its_members(members, ensemble):
    from cxr.runtime.serialization import sha256_file
    from cxr.train.checkpoints import load_checkpoint

    out, summary = ensemble
    listed = summary["ensemble"]["members"]
    assert [m["checkpoint_sha256"] for m in listed] == [sha256_file(r / "best.pt") for r in members]
    assert [m["run"] for m in listed] == ["/".join(r.resolve().parts[-3:]) for r in members]  # no home folder
    assert [m["seed"] for m in listed] == [0, 1] and [m["split_seed"] for m in listed] == [0, 0]
    assert [m["decision"]["mode"] for m in listed] == ["classifier", "ctr"]
    assert [m["machines"] for m in listed] == [load_checkpoint(r / "best.pt")["machines"] for r in members]
    assert all(m["machines"] and m["machines"][0]["cpu_model"] for m in listed)  # where each member trained
    assert (out / "splits.csv").read_bytes() == (members[0] / "splits.csv").read_bytes()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["ensemble_of"] == [str(r) for r in members] and math.isfinite(saved["metrics"]["val"]["auroc"])


def test_exported_ensemble_scores_as_the_members_average(members, ensemble, tmp_path):
    """One ONNX file, validated like any export; its probability is the mean of the members' exported files' and its
    card lists the members."""
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions
    from cxr.runtime.card import ModelCard
    from cxr.runtime.scoring import Scorer

    out, _ = ensemble
    report = export_onnx(out, tmp_path / "ens.onnx", ExportOptions(opset=17))
    assert report.validation["passed"]
    paths = []
    for i, r in enumerate(members):
        paths.append(tmp_path / f"m{i}.onnx")
        export_onnx(r, paths[-1], ExportOptions(opset=17, validate=False))
    images, _ = _val_images(members[0])
    ens = Scorer(tmp_path / "ens.onnx", device="cpu")
    got = ens.run(images, ("ctr", "masks", "cam"))
    probs = np.stack([Scorer(p, device="cpu").run(images)["probability"] for p in paths]).astype(np.float64)
    np.testing.assert_allclose(got["probability"], np.nanmean(probs, axis=0), atol=2e-6)
    assert got["cam"].shape[0] == len(images) and np.nanmax(got["cam"]) <= 1.0 + 1e-6
    import onnx

    card = ModelCard.from_metadata({p.key: p.value for p in onnx.load(str(tmp_path / "ens.onnx")).metadata_props})
    assert [m["decision"]["mode"] for m in card.training["model"]["ensemble"]["members"]] == ["classifier", "ctr"]
    assert set(card.output_names) >= {"ctr", "masks", "cam"}


def _copy_with_moved_val_row(run_dir, dest):
    shutil.copytree(run_dir, dest)
    with open(dest / "splits.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    i = next(i for i, r in enumerate(rows[1:], 1) if r[3] == "val")
    rows[i][3] = "train"
    with open(dest / "splits.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return dest


def test_ensemble_refuses_runs_that_do_not_fit_together(members, ensemble, tmp_path):
    from cxr.train.ensemble import build_ensemble
    from cxr.train.errors import TrainError

    other = _copy_with_moved_val_row(members[1], tmp_path / "other")
    with pytest.raises(TrainError, match=r"val split differs .*--split-seed"):
        build_ensemble([members[0], other], tmp_path / "a")
    with pytest.raises(TrainError, match="same weights .*given twice"):
        build_ensemble([members[0], members[0]], tmp_path / "b")
    with pytest.raises(TrainError, match="two or more"):
        build_ensemble([members[0]], tmp_path / "c")
    with pytest.raises(TrainError, match="already an ensemble"):
        build_ensemble([ensemble[0], members[0]], tmp_path / "d")
    with pytest.raises(TrainError, match="already holds a run"):
        build_ensemble(members, ensemble[0])
    with pytest.raises(TrainError, match="no splits.csv"):
        shutil.copytree(members[1], tmp_path / "nosplits")
        (tmp_path / "nosplits" / "splits.csv").unlink()
        build_ensemble([members[0], tmp_path / "nosplits"], tmp_path / "e")
    assert not any((tmp_path / x).exists() for x in "abcde")  # nothing written on a refusal


def test_ensemble_refuses_a_member_without_the_segmentation_head(members, tmp_path):
    from cxr.train.checkpoints import load_checkpoint, save_checkpoint
    from cxr.train.ensemble import build_ensemble
    from cxr.train.errors import TrainError
    from cxr.train.model import CardiomegalyNet

    plain = shutil.copytree(members[1], tmp_path / "plain")
    ckpt = load_checkpoint(plain)
    ckpt.pop("path")
    ckpt["model"]["seg_head"] = False
    ckpt["model_state"] = CardiomegalyNet("densenet_tiny").state_dict()
    save_checkpoint(ckpt, plain / "best.pt")
    with pytest.raises(TrainError, match="segmentation head"):
        build_ensemble([members[0], plain], tmp_path / "out")


def test_a_damaged_ensemble_checkpoint_is_refused_by_name(ensemble, tmp_path):
    from cxr.train.checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(ensemble[0])
    ckpt["model"]["ensemble"]["members"] = ckpt["model"]["ensemble"]["members"][:1]
    with pytest.raises(CheckpointError, match="two or more members"):
        model_from_checkpoint(ckpt)
    ckpt = load_checkpoint(ensemble[0])
    ckpt["model_state"].pop(next(iter(ckpt["model_state"])))
    with pytest.raises(CheckpointError, match="weights do not match the ensemble of 2"):
        model_from_checkpoint(ckpt)
    ckpt = load_checkpoint(ensemble[0])
    ckpt["model"]["ensemble"]["members"] *= 500  # checked against the weights before any network is built
    with pytest.raises(CheckpointError, match="lists 1000 members but its weights hold 2"):
        model_from_checkpoint(ckpt)
    ckpt = load_checkpoint(ensemble[0])
    ckpt["model"]["ensemble"]["members"][0]["decision"] = ["ctr"]
    with pytest.raises(CheckpointError, match="member 0 has no decision"):
        model_from_checkpoint(ckpt)
    ckpt = load_checkpoint(ensemble[0])
    ckpt["model"]["seg_head"] = False
    with pytest.raises(CheckpointError, match="member 1 decides on the ratio .* no segmentation head"):
        model_from_checkpoint(ckpt)


def test_cli(members, tmp_path):
    from cxr.cli.ensemble import main

    runner = CliRunner()
    result = runner.invoke(main, [str(members[0]), str(members[1]), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["member", "seed"] and lines[3].startswith("ensemble")
    assert "next: cxr-export" in result.output and (tmp_path / "ens" / "best.pt").is_file()
    again = runner.invoke(main, [str(members[0]), str(members[1]), "--out", str(tmp_path / "ens")])
    assert again.exit_code == 1 and "already holds a run" in again.output
    assert runner.invoke(main, [str(members[0]), "--out", str(tmp_path / "x")]).exit_code == 2
    evil = shutil.copytree(members[1], tmp_path / "s1\x1b[2J\x1b[31mforged")  # a run folder's name is printed
    shown = runner.invoke(main, [str(members[0]), str(evil), "--out", str(tmp_path / "shown")])
    assert shown.exit_code == 0 and "\x1b" not in shown.output and "\\x1b[2J" in shown.output
    refused = runner.invoke(main, [str(evil), str(evil), "--out", str(tmp_path / "twice")])
    assert refused.exit_code == 1 and "\x1b" not in refused.output and "given twice" in refused.output
    auto = runner.invoke(main, [str(members[0]), str(members[1]), "--out", str(tmp_path / "auto"),
                                "--decision", "auto"])
    assert auto.exit_code == 0, auto.output
    saved = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert saved["decision"]["mode"] in ("classifier", "ctr", "fusion")
    assert set(saved["metrics"]["decision_candidates"]) == {"classifier", "ctr", "fusion"}


def test_films_no_member_could_decide_are_left_out_counted_and_kept_out_of_the_loss(monkeypatch):
    """An ensemble's NaN probability (no member could decide) is left out of its figures, never scored as a call; a
    single model's evaluation is not filtered (a NaN there is an error to see, not a film to drop)."""
    from cxr.runtime.preprocess import PreprocessConfig
    from cxr.train import ensemble as E
    from cxr.train import evaluate
    from cxr.train.decision import Decision

    ev = evaluate.Evaluation(loss=math.nan, labels=np.array([1, 0, 1, 0]),
                             probabilities=_sigmoid([2.2, np.nan, 0.4, -1.4]), index=np.arange(4), n_unreadable=1,
                             logits=np.array([2.2, np.nan, 0.4, -1.4]))
    monkeypatch.setattr(evaluate, "evaluate_split", lambda *a, **k: ev)
    kept, undecided = E._evaluate(type("Stub", (), {"seg_head": False})(), [], PreprocessConfig(size=64), 8, None)
    assert undecided == 1 and kept.index.tolist() == [0, 2, 3] and kept.labels.tolist() == [1, 1, 0]
    assert kept.n_unreadable == 1 and np.isfinite(kept.probabilities).all()
    assert kept.loss == pytest.approx(evaluate.bce_loss(np.array([2.2, 0.4, -1.4]), np.array([1, 1, 0]), None))
    assert evaluate.decided(ev, Decision()) is ev


def test_an_ensemble_that_cannot_decide_reports_no_ratio_either():
    """Where no member could decide, the exported ctr is NaN too, so cxr-score writes no_anatomy, not an invalid
    probability; a single model's graph is unchanged."""
    from cxr.export.graph import ExportWrapper
    from cxr.train.decision import Decision

    class Stub(torch.nn.Module):
        seg_head = True
        members = ()

        def forward_all(self, image):
            n, size = image.shape[0], image.shape[-1]
            masks = torch.full((n, 3, size, size), -5.0)
            masks[:, 0, 20:40, 24:40] = 5.0  # a heart
            masks[:, 1, 10:50, 34:56] = 5.0  # and both lungs: a measurable ratio on every film
            masks[:, 2, 10:50, 8:30] = 5.0
            return {"logit": torch.tensor([0.5, float("nan")])[:n], "mask_logits": masks,
                    "cam": torch.zeros(n, 2, 2)}

        def cam_of(self, out):
            return out["cam"]

    logit, prob, _, ctr, _ = ExportWrapper.build(Stub(), Decision())(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    assert math.isfinite(float(ctr[0])) and math.isnan(float(ctr[1])) and math.isnan(float(prob[1]))
    del Stub.members
    _, _, _, ctr, _ = ExportWrapper.build(Stub(), Decision())(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    assert math.isfinite(float(ctr[1]))  # not an ensemble: the ratio is reported whatever the logit
