"""cxr.export: the exported file honours the model I/O contract, carries its card and passes its own checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from cxr.export.artifacts import side_path  # noqa: E402
from cxr.export.errors import ExportError  # noqa: E402
from cxr.export.graph import export_graph  # noqa: E402
from cxr.export.onnx_export import export_onnx  # noqa: E402
from cxr.export.options import SUPPORTED_OPSETS, ExportOptions  # noqa: E402
from cxr.export.validate import check_batchnorm_eval, check_opset, file_opset  # noqa: E402
from cxr.runtime.card import ModelCard  # noqa: E402
from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch  # noqa: E402
from cxr.train.checkpoints import CheckpointError  # noqa: E402
from tests.export.conftest import SIZE, THRESHOLD, tiny_model, write_images, write_run  # noqa: E402


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_probs(model, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model.eval()(torch.from_numpy(batch))).numpy()


def _val_batch(run: Path) -> np.ndarray:
    from cxr.runtime.imaging import read_image

    files = sorted((run / "images" / "val").glob("*.png"))
    return preprocess_batch([read_image(p) for p in files], PreprocessConfig(size=SIZE))


def test_single_file_with_card_and_report(exported, tiny_run):
    out = exported.path
    assert out.is_file() and exported.size_bytes == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.validation.json"]  # no .data
    card = ModelCard.from_metadata(_session(out).get_modelmeta().custom_metadata_map)
    assert card.preprocess == PreprocessConfig(size=SIZE)
    assert (card.threshold.value, card.threshold.method, card.threshold.detail) == (
        THRESHOLD["value"], THRESHOLD["method"], THRESHOLD["detail"])
    assert card.export["opset"] == 17 and card.export["precision"] == "fp32"
    assert card.export["validation"]["parity_max_abs_diff"] <= 1e-4
    assert set(card.export["versions"]) == {"cxr", "torch", "onnx", "onnxruntime"}
    assert card.training["split_sizes"] == {"train": 4, "val": 12, "test": 0}
    assert card.training["data"]["n_unreadable"] == 1 and "unreadable" not in card.training["data"]
    assert card.training["metrics"]["val"]["auprc"] is None  # NaN in the checkpoint -> null in JSON
    assert len(card.export["checkpoint"]["sha256"]) == 64
    report = json.loads(side_path(out, "validation.json").read_text())
    assert report["passed"] is True and report["n_images"] == 12
    assert report["checks"]["parity_torch_vs_ort"]["max_abs_diff"] <= 1e-4
    assert set(report["checks"]["batch_invariance"]["per_batch_size"]) == {"2", "7", "32", "max"}
    assert report["checks"]["runtime_scorer"]["passed"] is True


def test_io_contract_and_dynamic_batch(exported, tiny_run):
    session = _session(exported.path)
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(uint8)", [1, SIZE, SIZE])
    assert [(o.name, o.type) for o in session.get_outputs()] == [("logit", "tensor(float)"),
                                                                  ("probability", "tensor(float)"),
                                                                  ("cam", "tensor(float)")]
    batch = _val_batch(tiny_run)
    model = tiny_model()
    for n in (1, 5, 12):
        logit, prob, cam = session.run(None, {"image": batch[:n]})
        assert logit.shape == prob.shape == (n,) and prob.dtype == np.float32
        assert cam.shape[0] == n and cam.ndim == 3 and (cam >= 0).all()
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit)), atol=1e-6)
        assert np.max(np.abs(prob - _torch_probs(model, batch[:n]))) <= 1e-4


@pytest.mark.parametrize("opset", [13, 18, 20])
def test_other_opsets_written_exactly(tiny_run, tmp_path, opset):
    report = export_onnx(tiny_run, tmp_path / "m.onnx", ExportOptions(opset=opset))
    assert file_opset(report.path) == opset
    assert report.validation["checks"]["parity_torch_vs_ort"]["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("opset", [7, 12, 21, 99, "17"])
def test_unsupported_opset_refused_before_loading(tmp_path, opset):
    # the checkpoint does not exist: the opset error must come first
    with pytest.raises(ValueError, match="opset .* is not supported"):
        export_onnx(tmp_path / "missing-run", tmp_path / "m.onnx", ExportOptions(opset=opset))


@pytest.mark.parametrize("opset", [SUPPORTED_OPSETS.start - 1, SUPPORTED_OPSETS.stop])
def test_cli_refuses_the_opsets_the_exporter_refuses(tmp_path, opset):
    from click.testing import CliRunner

    from cxr.cli.export import main

    result = CliRunner().invoke(main, [str(tmp_path), "--out", str(tmp_path / "m.onnx"), "--opset", str(opset)])
    assert result.exit_code == 2
    assert f"{SUPPORTED_OPSETS.start}<=x<={SUPPORTED_OPSETS.stop - 1}" in result.output


def test_check_opset_catches_wrong_opset(exported, tmp_path):
    proto = onnx.load(str(exported.path))
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 18
    lying = tmp_path / "lying.onnx"
    onnx.save(proto, str(lying))
    with pytest.raises(ExportError, match="asked for opset 17, file says 18"):
        check_opset(lying, 17)
    assert check_opset(exported.path, 17) == 17


def test_exporter_writing_wrong_opset_is_rejected(tiny_run, tmp_path, monkeypatch):
    import cxr.export.onnx_export as mod

    real = mod.export_graph
    monkeypatch.setattr(mod, "export_graph",
                        lambda model, opset, size, training=False, **kw: real(model, 18, size, **kw))
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="asked for opset 17, file says 18"):
        export_onnx(tiny_run, out, ExportOptions(opset=17))
    assert not out.exists()
    assert side_path(out, "rejected.onnx").is_file()
    rejected_report = json.loads(side_path(out, "rejected.validation.json").read_text())
    assert rejected_report["passed"] is False and rejected_report["checks"]["opset"]["passed"] is False


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_mode_batchnorm_detected(tmp_path):
    proto = export_graph(tiny_model(), 17, SIZE, training=True)
    path = tmp_path / "train_mode.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ExportError, match="BatchNormalization node.* in training mode"):
        check_batchnorm_eval(path)
    eval_path = tmp_path / "eval_mode.onnx"
    onnx.save(export_graph(tiny_model(), 17, SIZE), str(eval_path))
    assert check_batchnorm_eval(eval_path) > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_mode_export_rejected_end_to_end(tiny_run, tmp_path, monkeypatch):
    import cxr.export.onnx_export as mod

    real = mod.export_graph
    monkeypatch.setattr(mod, "export_graph", lambda model, opset, size, training=False, **kw: real(model, opset, size,
                                                                                                  training=True, **kw))
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="training mode"):
        export_onnx(tiny_run, out)
    assert not out.exists()


def test_parity_failure_rejects_file(tiny_run, tmp_path, monkeypatch):
    import cxr.export.validate as val

    real = val.run_torch_all

    def wrong(model, images, batch_size=16, decision=None):
        return {**real(model, images, batch_size, decision), "probability": np.full(images.shape[0], 0.5, "f4")}

    monkeypatch.setattr(val, "run_torch_all", wrong)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="max \\|prob ORT - prob torch\\|"):
        export_onnx(tiny_run, out)
    assert not out.exists() and side_path(out, "rejected.onnx").exists()


def test_no_images_for_validation_is_a_clear_error(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "splits.csv").unlink()
    with pytest.raises(ExportError, match="--sample DIR"):
        export_onnx(run / "best.pt", tmp_path / "m.onnx")
    report = export_onnx(run, tmp_path / "m.onnx", ExportOptions(validate=False))
    card = ModelCard.from_metadata(_session(report.path).get_modelmeta().custom_metadata_map)
    assert card.export["validation"] == "skipped" and report.validation == "skipped"


def test_sample_dir_is_used(tiny_run, tmp_path):
    sample = tmp_path / "sample"
    write_images(sample, 5, seed=9, ext=".jpg")
    (sample / "notes.txt").write_text("not an image")
    report = export_onnx(tiny_run / "best.pt", tmp_path / "m.onnx", ExportOptions(sample_dir=sample))
    assert report.validation["n_images"] == 5 and "sample" in report.validation["images"]


@pytest.mark.parametrize("case", ["missing", "random_bytes", "truncated", "arch_mismatch"])
def test_bad_checkpoints(tiny_run, tmp_path, case):
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "random_bytes":
        target = tmp_path / "best.pt"
        target.write_bytes(os.urandom(4096))
    elif case == "truncated":
        data = (tiny_run / "best.pt").read_bytes()
        target = tmp_path / "best.pt"
        target.write_bytes(data[: len(data) // 2])
    else:
        from cxr.train.checkpoints import load_checkpoint, save_checkpoint

        data = load_checkpoint(tiny_run)
        data["model"] = {"arch": "densenet121", "dropout": 0.2}
        target = save_checkpoint({k: v for k, v in data.items() if k != "path"}, tmp_path / "best.pt")
    out = tmp_path / "m.onnx"
    with pytest.raises(CheckpointError, match=str(target.name)) as info:
        export_onnx(target, out)
    if case == "arch_mismatch":
        assert "densenet121" in str(info.value)
    assert not out.exists()


def test_real_images_parity(shared_data, tiny_run, tmp_path):
    report = export_onnx(tiny_run, tmp_path / "m.onnx", ExportOptions(sample_dir=shared_data / "torchxrayvision_tests"))
    assert report.validation["n_images"] >= 5  # PNG, JPEG and DICOM files
    assert report.validation["checks"]["parity_torch_vs_ort"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_densenet121_at_224(tmp_path):
    torch.manual_seed(0)
    run = write_run(tmp_path / "run", model=tiny_model(arch="densenet121"), arch="densenet121", n_val=4)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["preprocess"] = {"size": 224}
    from cxr.train.checkpoints import save_checkpoint

    save_checkpoint(ckpt, run / "best.pt")
    report = export_onnx(run, tmp_path / "model.onnx", ExportOptions(max_samples=4))
    assert file_opset(report.path) == 17 and not list(tmp_path.glob("*.data"))
    assert report.size_bytes > 20e6
    assert report.validation["checks"]["parity_torch_vs_ort"]["max_abs_diff"] <= 1e-4
