"""Scorer (session, card, providers, batch validation) and score_folder (order, error rows, retries, bounded memory)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from cxr.runtime import errors, scoring  # noqa: E402
from cxr.runtime.errors import ModelCardError, ModelLoadError, ProviderError  # noqa: E402
from cxr.runtime.imaging import read_image  # noqa: E402
from cxr.runtime.preprocess import preprocess_batch  # noqa: E402
from cxr.runtime.scoring import Scorer, score_folder  # noqa: E402
from tests.badfiles import write_bad_files, write_good_files  # noqa: E402
from tests.onnx_fixtures import default_card, expected_probability, mean_brightness_model  # noqa: E402


@pytest.fixture()
def scorer(tiny_model) -> Scorer:
    return Scorer(tiny_model, device="cpu")


@pytest.mark.parametrize("n", [1, 3, 17])
def test_probabilities_match_the_closed_form(scorer, n):
    batch = np.random.default_rng(n).integers(0, 256, (n, 1, 64, 64), dtype=np.uint8)
    prob = scorer(batch)
    assert prob.dtype == np.float32 and prob.shape == (n,)
    np.testing.assert_allclose(prob, expected_probability(batch), atol=1e-6, rtol=0)
    logit, prob2 = scorer.predict(batch)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit.astype(np.float64))), prob2, atol=1e-6)


def test_attributes_describe_the_model_and_session(scorer, tiny_model):
    assert scorer.input_size == 64 and scorer.threshold == 0.5
    assert scorer.card.preprocess.size == 64
    assert scorer.device == "cpu" and scorer.providers == ["CPUExecutionProvider"]
    assert scorer.model_path == tiny_model
    assert scorer.model_sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()


def test_the_scan_reads_the_input_dimensions_as_the_file_declares_them(tiny_model, tmp_path):
    import onnx

    from cxr.runtime.onnx_scan import scan_model

    assert scan_model(tiny_model).inputs == {"image": ["N", 1, 64, 64]}
    model = onnx.load(str(tiny_model))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 4
    dims[2].Clear()  # declared, but neither named nor sized
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert scan_model(tmp_path / "m.onnx").inputs == {"image": [4, 1, None, 64]}


def test_a_fixed_batch_in_the_file_is_refused_whatever_batch_size_is_asked(tiny_model, tmp_path):
    import onnx

    model = onnx.load(str(tiny_model))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    for batch_size in (None, 4):
        with pytest.raises(ModelLoadError, match=r"batch dimension of 'image' must be dynamic, found \[4, 1, 64, 64\]"):
            Scorer(tmp_path / "fixed.onnx", device="cpu", batch_size=batch_size)


def test_batch_size_fixes_nothing_on_the_cpu_provider(tiny_model):
    """Only an OpenVINO session is compiled for the batch (tests/cli/test_openvino.py); ONNX Runtime's CPU provider
    runs a dynamic batch as fast, so its session keeps it and takes any batch."""
    scorer = Scorer(tiny_model, device="cpu", batch_size=4)
    assert scorer.static_batch is None and scorer.batch_size == 4
    assert scorer._session.get_inputs()[0].shape[0] == "N"
    batch = np.random.default_rng(5).integers(0, 256, (7, 1, 64, 64), dtype=np.uint8)
    np.testing.assert_allclose(scorer(batch), expected_probability(batch), atol=1e-6, rtol=0)
    assert pickle.loads(pickle.dumps(scorer)).batch_size == 4
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="batch_size must be a positive integer or None"):
            Scorer(tiny_model, device="cpu", batch_size=bad)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
def test_a_session_fixed_to_a_batch_pads_and_splits_without_losing_a_row(tiny_model, monkeypatch, n):
    """The padding and splitting of a session compiled for a fixed batch (what OpenVINO sessions get), run here on
    the CPU provider, which applies the same free-dimension override when asked."""
    monkeypatch.setattr(Scorer, "_static_batch", lambda self, providers, scan: self.batch_size)
    fixed = Scorer(tiny_model, device="cpu", batch_size=4)
    assert fixed.static_batch == 4 and fixed._session.get_inputs()[0].shape == [4, 1, 64, 64]
    calls = []
    real_run = fixed._session.run
    monkeypatch.setattr(fixed, "_session", type("Spy", (), {"run": lambda self, names, feed: calls.append(
        feed["image"].shape[0]) or real_run(names, feed)})())
    # every image differs, so a row moved, lost or taken from the padding would show
    batch = np.stack([np.full((1, 64, 64), 20 * i + 7, np.uint8) for i in range(n)])
    logit, prob = fixed.predict(batch)
    np.testing.assert_allclose(prob, expected_probability(batch), atol=1e-6, rtol=0)
    assert logit.shape == (n,) and calls == [4] * -(-n // 4)  # ceil(n / 4) calls, every one of 4 images
    assert fixed.run(batch[:0])["probability"].shape == (0,)


def test_for_batch_gives_the_session_cxr_score_would_run(tiny_model, tmp_path, monkeypatch):
    import shutil

    dynamic = Scorer(tiny_model, device="cpu", batch_size=4)
    assert dynamic.for_batch(8) is dynamic  # a dynamic session runs any batch as it is
    monkeypatch.setattr(Scorer, "_static_batch", lambda self, providers, scan: self.batch_size)
    path = tmp_path / "m.onnx"
    shutil.copy(tiny_model, path)
    fixed = Scorer(path, device="cpu", batch_size=4)
    assert fixed.for_batch(4) is fixed
    other = fixed.for_batch(8)
    assert other.static_batch == 8 and other._session.get_inputs()[0].shape[0] == 8
    assert (other.model_path, other.threads, other.precision) == (fixed.model_path, fixed.threads, fixed.precision)
    mean_brightness_model(path, gain=4.0)  # replaced by another valid model
    with pytest.raises(ModelLoadError, match="the model file changed since it was loaded"):
        fixed.for_batch(2)


def test_pickles_by_path_for_distributed_workers(scorer):
    clone = pickle.loads(pickle.dumps(scorer))
    batch = np.full((2, 1, 64, 64), 200, np.uint8)
    np.testing.assert_array_equal(clone(batch), scorer(batch))
    assert clone.device == "cpu"


@pytest.mark.parametrize("batch, match", [
    (np.zeros((2, 1, 64, 64), np.float32), "uint8"),
    (np.zeros((2, 64, 64), np.uint8), r"\[N, 1, 64, 64\]"),
    (np.zeros((2, 3, 64, 64), np.uint8), r"\[N, 1, 64, 64\]"),
    (np.zeros((2, 1, 32, 32), np.uint8), r"got \[2, 1, 32, 32\]"),
    ([[0]], "numpy array"),
])
def test_bad_batches_are_refused_with_a_clear_message(scorer, batch, match):
    with pytest.raises(ValueError, match=match):
        scorer(batch)


def test_empty_batch_gives_empty_output(scorer):
    assert scorer(np.zeros((0, 1, 64, 64), np.uint8)).shape == (0,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(with_card=False), "no 'cxr.card' metadata"),
    (dict(card_json="{not json"), "not valid JSON"),
    (dict(card_json='{"schema_version": 1}'), "missing required field"),
    (dict(card=default_card(size=32)), "input size 32 but the graph takes 64x64"),
])
def test_models_without_a_valid_card_are_refused(tmp_path, kwargs, match):
    path = mean_brightness_model(tmp_path / "m.onnx", size=64, **kwargs)
    with pytest.raises(ModelCardError, match=match) as info:
        Scorer(path, device="cpu")
    assert str(path) in str(info.value)


def test_model_with_float_input_is_refused(tmp_path):
    path = mean_brightness_model(tmp_path / "f.onnx", size=64, input_dtype="float32")
    with pytest.raises(ModelLoadError, match="must be uint8"):
        Scorer(path, device="cpu")


@pytest.mark.parametrize("content, match", [
    (None, "model file not found"),
    (b"this is not a protobuf at all" * 10, "cannot be loaded as an ONNX model"),
    (b"", "cannot be loaded as an ONNX model"),
])
def test_missing_or_non_onnx_files_are_refused_naming_the_file(tmp_path, content, match):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match) as info:
        Scorer(path, device="cpu")
    assert str(path) in str(info.value)


def test_cuda_without_the_provider_is_an_error(tiny_model, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        Scorer(tiny_model, device="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_that_falls_back_to_cpu_is_an_error_not_a_silent_cpu_run(tiny_model, monkeypatch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine really has CUDA")
    # The build claims CUDA, but the session cannot start it and quietly uses the CPU: that must be refused.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="fell back to CPUExecutionProvider"):
        Scorer(tiny_model, device="cuda")
    auto = Scorer(tiny_model, device="auto")  # auto may fall back, and says what it uses
    assert auto.device == "cpu" and auto.providers == ["CPUExecutionProvider"]


def test_cuda_on_a_cpu_only_build_is_an_error(tiny_model):
    if "CUDAExecutionProvider" in scoring.available_providers():
        pytest.skip("this machine really has CUDA")
    with pytest.raises(ProviderError):
        Scorer(tiny_model, device="cuda")


@pytest.mark.parametrize("kwargs", [dict(device="gpu"), dict(threads=0)])
def test_bad_constructor_arguments(tiny_model, kwargs):
    with pytest.raises(ValueError):
        Scorer(tiny_model, **kwargs)


def test_threads_set_the_session_and_survive_pickling(tiny_model):
    import pickle

    scorer = Scorer(tiny_model, device="cpu", threads=1)
    assert scorer._session.get_session_options().intra_op_num_threads == 1
    again = pickle.loads(pickle.dumps(scorer))
    assert again.threads == 1 and again._session.get_session_options().intra_op_num_threads == 1


# ---- score_folder ----------------------------------------------------------------------------------------------

@pytest.fixture()
def mixed_folder(tmp_path) -> tuple[Path, list[str], dict[str, str]]:
    folder = tmp_path / "images"
    good = write_good_files(folder / "good")
    bad = write_bad_files(folder / "bad")
    return folder, [f"good/{g}" for g in good], {f"bad/{k}": v for k, v in bad.items()}


def expected_for(folder: Path, rel: str, scorer: Scorer) -> float:
    batch = preprocess_batch([read_image(folder / rel)], scorer.card.preprocess)
    return float(expected_probability(batch)[0])


@pytest.mark.parametrize("batch_size, workers", [(1, 1), (4, 2), (64, 3)])
def test_score_folder_rows_in_sorted_order_with_error_rows(scorer, mixed_folder, batch_size, workers):
    folder, good, bad = mixed_folder
    rows = list(score_folder(folder, scorer, batch_size=batch_size, workers=workers))
    assert [r.path for r in rows] == sorted(good + list(bad))
    by_path = {r.path: r for r in rows}
    for rel, code in bad.items():
        assert (by_path[rel].status, by_path[rel].error_code) == ("error", code), rel
        assert by_path[rel].probability is None and by_path[rel].label_pred is None and by_path[rel].error_message
    for rel in good:
        row = by_path[rel]
        assert row.status == "ok", (rel, row.error_code, row.error_message)
        assert row.probability == pytest.approx(expected_for(folder, rel, scorer), abs=1e-6)
        assert row.label_pred == int(row.probability >= 0.5)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_threshold_override_sets_the_label(scorer, mixed_folder, threshold):
    folder, good, _ = mixed_folder
    rows = [r for r in score_folder(folder, scorer, threshold=threshold) if r.ok]
    assert len(rows) == len(good)
    assert {r.label_pred for r in rows} == {1 if threshold == 0.0 else 0}


def test_unexpected_exception_on_one_file_becomes_an_internal_row(scorer, mixed_folder, monkeypatch):
    import cxr.runtime.imaging as imaging

    folder, good, _ = mixed_folder
    real = imaging.read_image

    def flaky(path):
        if Path(path).name == "gray8.png":
            raise RuntimeError("decoder exploded")
        return real(path)

    monkeypatch.setattr(imaging, "read_image", flaky)
    rows = {r.path: r for r in score_folder(folder, scorer, batch_size=4)}
    assert rows["good/gray8.png"].error_code == scoring.INTERNAL
    assert "RuntimeError: decoder exploded" in rows["good/gray8.png"].error_message
    assert all(rows[g].ok for g in good if g != "good/gray8.png")


def test_a_failing_batch_is_retried_one_by_one(scorer, mixed_folder, monkeypatch):
    folder, good, _ = mixed_folder
    poison = expected_for(folder, "good/rgb.jpg", scorer)
    real_run = Scorer.run

    def run(self, batch, extras=()):
        probs = expected_probability(batch)
        if batch.shape[0] > 1 or abs(probs[0] - poison) < 1e-9:
            raise RuntimeError("session failed")
        return real_run(self, batch, extras)

    monkeypatch.setattr(Scorer, "run", run)
    rows = {r.path: r for r in score_folder(folder, scorer, batch_size=8, files=[Path(g) for g in good])}
    assert list(rows) == good  # no file of the failed batches is lost
    assert rows["good/rgb.jpg"].error_code == scoring.INFERENCE_FAILED
    assert "session failed" in rows["good/rgb.jpg"].error_message
    assert all(rows[g].ok for g in good if g != "good/rgb.jpg")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_in_flight_files_stay_bounded(scorer, tmp_path, monkeypatch, batch_size):
    folder = tmp_path / "many"
    folder.mkdir()
    write_good_files(tmp_path / "src")
    names = [f"{i:03d}.png" for i in range(40)]
    for name in names:
        (folder / name).write_bytes((tmp_path / "src" / "gray8.png").read_bytes())
    submitted: list[Path] = []

    class CountingPool(scoring.ThreadPoolExecutor):
        def submit(self, fn, path, *args):
            submitted.append(path)
            return super().submit(fn, path, *args)

    monkeypatch.setattr(scoring, "ThreadPoolExecutor", CountingPool)
    peak = 0

    def on_item(row):  # files submitted for reading but not yet handed out, this one included
        nonlocal peak
        peak = max(peak, len(submitted) - names.index(row.path))

    rows = list(score_folder(folder, scorer, batch_size=batch_size, workers=2, on_item=on_item))
    assert [r.path for r in rows] == names and all(r.ok for r in rows)
    assert peak == 2 * batch_size  # the next batch is read ahead, and never more than that


def test_dangling_symlink_becomes_an_unreadable_row(scorer, tmp_path):
    import os

    write_good_files(tmp_path)
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    rows = {r.path: r for r in score_folder(tmp_path, scorer)}
    assert rows["dangling.png"].error_code == errors.UNREADABLE


def test_interrupt_from_on_item_stops_the_reader_threads(scorer, mixed_folder):
    import threading

    folder, _, _ = mixed_folder
    seen = []

    def on_item(row):
        seen.append(row.path)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in score_folder(folder, scorer, batch_size=2, workers=2, on_item=on_item):
            pass
    assert len(seen) == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("cxr-read")]


def test_a_model_file_replaced_while_it_loads_is_refused(tiny_model, tmp_path, monkeypatch):
    """The manifest's hash must describe the file the session was built from: a file replaced between the hash and
    the session (a re-export landing at that moment) is refused, never recorded with the other file's hash."""
    import os
    import shutil

    import onnxruntime as ort

    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model, model)
    real = ort.InferenceSession

    def replaced_during_load(*args, **kwargs):
        session = real(*args, **kwargs)
        other = tmp_path / "other.onnx"  # another export, moved into place as a re-export would be
        shutil.copy(tiny_model, other)
        os.replace(other, model)
        return session

    monkeypatch.setattr(ort, "InferenceSession", replaced_during_load)
    with pytest.raises(ModelLoadError, match="changed while it was being loaded"):
        Scorer(model, device="cpu")
    monkeypatch.setattr(ort, "InferenceSession", real)
    scorer = Scorer(model, device="cpu")
    assert scorer.model_size_bytes == model.stat().st_size == tiny_model.stat().st_size


def test_score_folder_walking_itself_warns_of_folder_problems(tiny_model, tmp_path, caplog):
    """cxr-score walks first and prints problems once; a library caller that lets score_folder walk hears them too."""
    import logging
    import os

    import cv2

    folder = tmp_path / "f"
    folder.mkdir()
    image = np.full((40, 40), 90, np.uint8)
    image[10:30, 10:30] = 200
    assert cv2.imwrite(str(folder / "a.png"), image)
    os.symlink(folder, folder / "loop")
    with caplog.at_level(logging.WARNING, logger="cxr.runtime.scoring"):
        rows = list(scoring.score_folder(folder, Scorer(tiny_model, device="cpu")))
    assert [r.path for r in rows] == ["a.png"]
    assert f"{folder}: loop: symlink loop" in caplog.text
