"""Several sources in one run, masks from CSV columns, the segmentation head end to end (train -> export -> score),
the decision on validation, and augmentation that moves image and masks together. Mechanics: densenet_tiny, 64 px."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from cxr.train.config import TrainConfig, parse_source
from tests.train.masked_fixtures import MASK_COLUMNS, make_masked_set
from tests.train.train_fixtures import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
MASKS = ",".join(MASK_COLUMNS)


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return make_masked_set(tmp_path_factory.mktemp("masked"), n=48, masked=36)


def masked_config(masked, phantom, **overrides) -> TrainConfig:
    extra = ({"kind": "phantom", "data_root": str(phantom), "name": "ph"},)
    base = dict(dataset="csv", data_root=str(masked.parent), csv_path=str(masked), mask_columns=MASKS,
                ctr_column="ctr", source_name="masked", extra_sources=extra, seg_lr=3e-3, max_epochs=2)
    return tiny_config(masked.parent, **{**base, **overrides})


@pytest.mark.parametrize("spec, expected", [
    ("csv:/d", {"kind": "csv", "data_root": "/d"}),
    ("nih:/d/n;name=nih2;nih_negatives=all", {"kind": "nih", "data_root": "/d/n", "name": "nih2",
                                                "nih_negatives": "all"}),
    ("csv:/d;csv=/d/l.csv;mask_columns=a,b,c;frontal_only=yes",
     {"kind": "csv", "data_root": "/d", "csv_path": "/d/l.csv", "mask_columns": "a,b,c", "frontal_only": True}),
])
def test_parse_source(spec, expected):
    assert parse_source(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("bogus:/d", "KIND:PATH"),
    ("csv:/d;colour=blue", "not key=value"),
    ("csv:/d;label_column", "not key=value"),
])
def test_parse_source_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_source(spec)


def test_config_checks_sources_and_segmentation(masked, phantom):
    cfg = masked_config(masked, phantom)
    assert [s.name for s in cfg.sources()] == ["masked", "ph"] and cfg.use_seg_head
    assert cfg.sources()[1].mask_columns is None  # masks are per source, not inherited
    with pytest.raises(ValueError, match="distinct names"):
        masked_config(masked, phantom, source_name="ph")
    with pytest.raises(ValueError, match="mask_columns"):
        masked_config(masked, phantom, mask_columns="a,b")
    with pytest.raises(ValueError, match="need the segmentation head"):
        tiny_config(phantom, decision="fusion")
    with pytest.raises(ValueError, match="unknown option"):
        masked_config(masked, phantom, extra_sources=({"kind": "phantom", "data_root": "/x", "colour": "b"},))
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_old_config_without_new_fields_reads_as_it_ran(phantom):
    saved = tiny_config(phantom).to_dict()
    for key in ("seg_head", "decision", "extra_sources", "mask_columns", "aug_scale"):
        saved.pop(key)
    old = TrainConfig.from_dict(saved)
    assert old.seg_head == "off" and old.decision == "classifier" and not old.use_seg_head


def test_missing_mask_column_names_the_option(masked, phantom, tmp_path):
    from cxr.train.prepare import _index

    with pytest.raises(ValueError, match=r"mask column\(s\) \(--mask-columns\) \['nope'\]"):
        _index(masked_config(masked, phantom, mask_columns="mask_heart,mask_left_lung,nope"))


def test_missing_mask_file_is_named(masked, phantom, tmp_path):
    from cxr.train.prepare import _index

    bad = tmp_path / "labels.csv"
    rows = list(csv.reader(open(masked, newline="")))
    rows[1][4] = "heart/absent.png"
    csv.writer(open(bad, "w", newline="")).writerows(rows)
    with pytest.raises(ValueError, match="absent.png"):
        _index(masked_config(masked, phantom, csv_path=str(bad)))


def test_multi_source_splits_never_share_a_patient(masked, phantom):
    from cxr.train.prepare import _index

    # both sources name their patients p000, p001, ... (phantom ids differ in form): prefixed per source
    samples, summary = _index(masked_config(masked, phantom))
    assert set(summary["data_sources"]) == {"masked", "ph"}
    split_of = {}
    for s in samples:
        assert s.patient_id.split("/")[0] in ("masked", "ph")
        assert split_of.setdefault(s.patient_id, s.split) == s.split
    for source in ("masked", "ph"):  # each source is split on its own: every split gets some of each
        assert {s.split for s in samples if s.source == source} == {"train", "val", "test"}
    with_masks = [s for s in samples if s.masks is not None]
    assert len(with_masks) == 36 and all(s.source == "masked" and s.ctr is not None for s in with_masks)


@pytest.fixture(scope="module")
def seg_run(masked, phantom, tmp_path_factory):
    from cxr.train.loop import train

    run_dir = tmp_path_factory.mktemp("segrun") / "run"
    config = masked_config(masked, phantom, aug_scale=0.1, aug_translate=0.05, aug_gamma=0.2, aug_noise=0.02,
                           balance_sources=True, balance_labels=True, max_epochs=3)
    return run_dir, train(config, run_dir)


def test_seg_run_reports_per_source_and_anatomy(seg_run):
    from cxr.train.rundir import read_history

    run_dir, summary = seg_run
    history = read_history(run_dir / "history.csv")
    assert {"val_auroc[masked]", "val_auroc[ph]", "val_dice_heart", "train_mask_loss"} <= set(history[0])
    test = summary["metrics"]["test"]
    assert set(test["by_source"]) == {"masked", "ph"}
    assert set(test["by_score"]) == {"classifier", "ctr", "fusion"}
    anatomy = test["by_source"]["masked"]["anatomy"]
    assert 0.0 <= anatomy["dice_heart"] <= 1.0 and anatomy["ctr_n_reference"] > 0
    assert "dice_heart" not in test["by_source"]["ph"]["anatomy"] or math.isnan(
        test["by_source"]["ph"]["anatomy"]["dice_heart"])  # no reference masks there
    decision = summary["decision"]
    assert decision["mode"] in ("classifier", "ctr", "fusion")
    assert set(summary["metrics"]["decision_candidates"]) == {"classifier", "ctr", "fusion"}
    splits = list(csv.DictReader(open(run_dir / "splits.csv", newline="")))
    assert sum(bool(r["mask_heart"]) for r in splits) == 36


def test_seg_run_exports_ctr_and_masks_and_scores_them(seg_run, masked, tmp_path):
    pytest.importorskip("onnx")
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions
    from cxr.runtime.anatomy import ctr_reference
    from cxr.runtime.scoring import Scorer, score_folder

    run_dir, _ = seg_run
    out = tmp_path / "model.onnx"
    report = export_onnx(run_dir, out, ExportOptions(opset=17))
    checks = report.validation["checks"]
    assert checks["parity_extra_outputs"]["passed"]
    scorer = Scorer(out, device="cpu")
    assert scorer.card.output_names == ("logit", "probability", "cam", "ctr", "masks")
    assert scorer.extra_outputs == ("cam", "ctr", "masks")
    batch = np.stack([np.zeros((1, 64, 64), np.uint8), np.full((1, 64, 64), 128, np.uint8)])
    values = scorer.run(batch, ("ctr", "masks"))
    assert values["masks"].shape == (2, 3, 64, 64) and values["masks"].dtype == np.uint8
    for ctr, m in zip(values["ctr"], values["masks"]):  # the graph's CTR is the reference CTR of its masks
        ref = ctr_reference(m)
        assert (math.isnan(ref) and math.isnan(ctr)) or ctr == pytest.approx(ref, abs=1e-6)
    rows = list(score_folder(masked.parent, scorer, batch_size=4, workers=1))
    assert rows and all((r.ctr is None) == (r.ctr_flag != "" and "no_" in r.ctr_flag) or r.ctr is not None
                        for r in rows if r.ok)


def test_decision_in_the_graph_matches_the_checkpoint(seg_run, tmp_path):
    pytest.importorskip("onnx")
    import torch

    from cxr.export.graph import ExportWrapper
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint
    from cxr.train.decision import Decision

    run_dir, _ = seg_run
    ckpt = load_checkpoint(run_dir / "best.pt")
    model = model_from_checkpoint(ckpt)
    for mode, data in ckpt["metrics"]["decision_candidates"].items():
        decision = Decision.from_dict(data)
        image = torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8)
        logit, prob, _, ctr, _ = ExportWrapper.build(model, decision).eval()(image)
        cls = model(image).detach().numpy()
        want = decision.logit(cls, ctr.numpy())
        np.testing.assert_allclose(logit.detach().numpy(), want, rtol=1e-5, atol=1e-5, err_msg=mode)


def test_augmentation_moves_masks_with_the_image():
    from cxr.train.augment import Augmenter

    image = np.zeros((64, 64), np.uint8)
    image[20:40, 10:30] = 255
    masks = np.zeros((3, 64, 64), np.uint8)
    masks[:, 20:40, 10:30] = 1
    aug = Augmenter({"aug_scale": 0.15, "aug_translate": 0.1, "rotation_degrees": 10}, 64)
    for index in range(5):
        seed = np.random.SeedSequence([0, 1, index])
        img, m = aug(image, masks, seed)
        again, m2 = aug(image, masks, np.random.SeedSequence([0, 1, index]))
        assert np.array_equal(img, again) and np.array_equal(m, m2)  # a pure function of (seed, epoch, index)
        bright = img > 127
        assert (bright == m[0].astype(bool)).mean() > 0.98  # the mask still covers the moved square
        assert not np.array_equal(m[0], masks[0])


def test_photometric_augmentation_leaves_masks_alone():
    from cxr.train.augment import Augmenter

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    masks = (rng.random((3, 64, 64)) < 0.3).astype(np.uint8)
    aug = Augmenter({"aug_gamma": 0.3, "aug_noise": 0.05, "aug_jpeg": 30, "aug_blur": 1.0, "aug_contrast": 0.2}, 64)
    changed = 0
    for index in range(6):
        img, m = aug(image, masks, np.random.SeedSequence([0, 0, index]))
        assert np.array_equal(m, masks) and img.dtype == np.uint8 and img.shape == (64, 64)
        changed += not np.array_equal(img, image)
    assert changed == 6  # blur has p=1 here


def test_sharpen_and_clahe_change_edges_and_local_contrast_not_the_masks():
    from cxr.train.augment import Augmenter
    from cxr.train.config import TrainConfig

    yy, xx = np.mgrid[0:96, 0:96]
    image = (60 + 100 * (xx > 48) + 20 * np.sin(yy / 7.0)).astype(np.uint8)  # a soft-ish edge and a slow ripple
    masks = np.zeros((3, 96, 96), np.uint8)
    masks[:, 30:60, 20:70] = 1
    sharp = Augmenter({"aug_sharpen": 1.0}, 96)
    img, m = sharp(image, masks, np.random.SeedSequence([0, 0, 1]))
    assert np.array_equal(m, masks)
    change = np.abs(img.astype(int) - image.astype(int))
    assert change[:, 46:52].max() >= 10  # the step between columns 48 and 49 is enhanced
    assert change[:, 5:30].max() <= 3  # flat parts stay (nearly) as they were
    assert img[:, 48].astype(int).mean() < image[:, 48].mean() and img[:, 49].mean() > image[:, 49].mean()
    clahe = Augmenter({"aug_clahe": 1.0}, 96)
    img2, m2 = clahe(image, masks, np.random.SeedSequence([0, 0, 2]))
    assert np.array_equal(m2, masks) and not np.array_equal(img2, image)
    with pytest.raises(ValueError, match="aug_sharpen"):
        TrainConfig(aug_sharpen=1.5)
    with pytest.raises(ValueError, match="aug_clahe"):
        TrainConfig(aug_clahe=-0.1)


@pytest.fixture(scope="module")
def seg_model(seg_run, tmp_path_factory):
    pytest.importorskip("onnx")
    from cxr.export.onnx_export import export_onnx
    from cxr.export.options import ExportOptions

    out = tmp_path_factory.mktemp("segmodel") / "model.onnx"
    export_onnx(seg_run[0], out, ExportOptions(opset=17))
    return out


def test_cxr_score_writes_ctr_columns_for_a_model_with_ctr(seg_model, masked, tmp_path):
    from click.testing import CliRunner

    from cxr.cli.score import main as score_main
    from cxr.runtime.scoring import Scorer

    out = tmp_path / "r.csv"
    result = CliRunner().invoke(score_main, [str(masked.parent), "--out", str(out), "--model", str(seg_model)])
    assert result.exit_code in (0, 3), result.output
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == ["path", "prob_cardiomegaly", "cardiomegaly", "status", "error", "ctr", "ctr_flag"]
    assert "ctr column" in result.output
    scorer = Scorer(seg_model, device="cpu")
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import preprocess_batch

    for row in rows[:6]:
        image = preprocess_batch([read_image(masked.parent / row["path"])], scorer.card.preprocess)
        ctr = float(scorer.run(image, ("ctr",))["ctr"][0])
        assert (row["ctr"] == "" and math.isnan(ctr)) or float(row["ctr"]) == pytest.approx(ctr, abs=5e-5)


def test_onnx_ctr_equals_pytorch_on_real_images(seg_run, seg_model, shared_data):
    """The graph's masks and CTR against PyTorch's on real wingspan/JSRT radiographs (mechanics model)."""
    from cxr.export.validate import extra_parity, ort_session, run_ort_all, run_torch_all
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint

    root = shared_data / "ctr_wingspan_jsrt"
    files = sorted((root / "jsrt" / "png").glob("*.png"))[:6] + sorted((root / "wingspan" / "png").glob("*.png"))[:6]
    images = preprocess_batch([read_image(f) for f in files], PreprocessConfig(size=64))
    ckpt = load_checkpoint(seg_run[0] / "best.pt")
    ref = run_torch_all(model_from_checkpoint(ckpt), images)
    got = run_ort_all(ort_session(seg_model), images)
    figures = extra_parity(got, ref)
    assert figures["ctr_nan_agree"] and figures["ctr_max_abs_diff"] <= 0.02
    assert figures["ctr_max_rel_diff_same_masks"] <= 1e-5 and figures["ctr_not_its_masks_ratio"] == 0
    assert figures["masks_disagreement"] <= 1e-3 and figures["cam_max_rel_diff"] <= 1e-3


def test_a_model_without_the_new_outputs_scores_as_before(tiny_model, masked, tmp_path):
    """A model exported before cam/ctr/masks (logit and probability only) keeps the five columns and its numbers."""
    from click.testing import CliRunner

    from cxr.cli.score import main as score_main
    from cxr.runtime.scoring import Scorer

    scorer = Scorer(tiny_model, device="cpu")
    assert scorer.extra_outputs == () and scorer.card.output_names == ("logit", "probability")
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(score_main, [str(masked.parent), "--out", str(out), "--model", str(tiny_model)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == ["path", "prob_cardiomegaly", "cardiomegaly", "status", "error"]
    assert len(rows) == 48 + 3 * 36 and all(r["status"] == "ok" for r in rows)  # images and mask files
    assert "no ctr or cam output" in result.output


def test_stretch_changes_the_height_of_the_film_not_the_cardiothoracic_ratio():
    from cxr.train.augment import Augmenter
    from cxr.train.config import TrainConfig

    image = np.full((96, 96), 40, np.uint8)
    masks = np.zeros((3, 96, 96), np.uint8)
    masks[0, 40:60, 38:60] = 1  # heart: 22 columns
    masks[1, 20:70, 50:80] = 1  # left lung
    masks[2, 20:70, 14:44] = 1  # right lung: union 66 columns
    image[masks.any(0)] = 200

    def extents(m):
        cols = lambda a: np.flatnonzero(a.any(0))  # noqa: E731
        rows = np.flatnonzero(m[1:].any(0).any(1))
        heart, lungs = cols(m[0]), cols(m[1] | m[2])
        return heart[-1] - heart[0] + 1, lungs[-1] - lungs[0] + 1, rows[-1] - rows[0] + 1

    stretch = Augmenter({"aug_stretch": 0.3}, 96)
    heights = set()
    for i in range(8):
        img, m = stretch(image, masks, np.random.SeedSequence([0, 0, i]))
        heart, lungs, height = extents(m)
        assert (heart, lungs) == (22, 66)  # horizontal extents, and so the ratio, as they were
        heights.add(int(height))
    assert len(heights) >= 4 and min(heights) < 45 and max(heights) > 55  # the lungs' height (50) moved both ways
    with pytest.raises(ValueError, match="aug_stretch"):
        TrainConfig(aug_stretch=1.0)


def test_split_seed_keeps_the_patients_split_while_the_seed_changes(masked, phantom):
    """--seed alone redraws the split; with --split-seed the runs of several seeds share validation and test."""
    from cxr.train.prepare import _index

    def split_of(**overrides) -> dict[str, str]:
        samples, _ = _index(masked_config(masked, phantom, **overrides))
        return {s.patient_id: s.split for s in samples}

    first = split_of(seed=0)
    assert split_of(seed=1, split_seed=0) == first
    assert split_of(seed=5, split_seed=0) == first
    assert split_of(seed=1) != first  # the seed alone still draws its own split, as before
    assert split_of(seed=0, split_seed=1) == split_of(seed=1)


def test_split_seed_is_checked_and_absent_from_old_configs(phantom):
    with pytest.raises(ValueError, match="split_seed"):
        tiny_config(phantom, split_seed=-1)
    saved = tiny_config(phantom).to_dict()
    saved.pop("split_seed")
    assert TrainConfig.from_dict(saved).split_seed is None
