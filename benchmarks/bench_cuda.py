"""On a CUDA machine: DenseNet-121 at 224, batch 64, fp32 and fp16, ONNX Runtime's CUDA execution provider with I/O
binding against PyTorch eager on the same card.

Each half skips on its own: the ONNX Runtime rows need onnxruntime-gpu (CUDAExecutionProvider), the PyTorch rows a
CUDA build of torch and a GPU. Inputs are copied to the GPU once, outside the timing, on both sides (ONNX Runtime:
the same I/O binding as `cxr-bench --device cuda`; PyTorch: a tensor already on the device), and every timed call
waits for the GPU to finish (binding.synchronize_outputs / torch.cuda.synchronize). The fp16 ONNX file is
`cxr.export.quantize.convert_fp16` of the benchmark's fp32 export (uint8 input and float32 outputs kept); PyTorch
fp16 is the same weights after `.half()`. The card's name is recorded in extra_info (`gpu`).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from conftest import CACHE

BATCH = 64
ROUNDS = 20


def gpu_name() -> str:
    """The first GPU's name: torch's view when it has one, else nvidia-smi's, else 'unknown GPU'."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    return "unknown GPU"


def _batch() -> np.ndarray:
    return np.random.default_rng(64).integers(0, 256, (BATCH, 1, 224, 224), dtype=np.uint8)


@pytest.fixture(scope="module")
def ort_cuda_models(densenet) -> dict:
    try:  # torch's bundled CUDA/cuDNN libraries, loaded first, are what a pip-only onnxruntime-gpu finds
        import torch  # noqa: F401
    except ImportError:
        pass
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: load CUDA/cuDNN from the nvidia-* wheels
        ort.preload_dlls()
    import onnx

    from cxr.export.quantize import convert_fp16

    fp16 = CACHE / "model.fp16.onnx"
    if not fp16.is_file() or fp16.stat().st_mtime < densenet["fp32"].stat().st_mtime:
        tmp = CACHE / ".model.fp16.onnx.tmp"
        convert_fp16(densenet["fp32"], tmp)
        proto, card = onnx.load(str(tmp)), onnx.load(str(densenet["fp32"]), load_external_data=False)
        del proto.metadata_props[:]
        proto.metadata_props.extend(card.metadata_props)  # the fp32 card: same contract, input size, threshold
        onnx.save(proto, str(tmp))
        tmp.replace(fp16)
    return {"fp32": densenet["fp32"], "fp16": fp16}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda(benchmark, annotate, ort_cuda_models, precision):
    from cxr.cli.bench import bound_runner
    from cxr.runtime.errors import ProviderError
    from cxr.runtime.scoring import Scorer

    try:
        scorer = Scorer(ort_cuda_models[precision], device="cuda")
    except ProviderError as exc:  # the provider is listed but CUDA/cuDNN could not be loaded
        pytest.skip(f"CUDAExecutionProvider listed but not usable: {exc}")
    x = _batch()
    run, binding = bound_runner(scorer._session, x, "cuda")  # as cxr-bench --device cuda: input on the GPU once
    benchmark.group = f"cuda-b{BATCH}"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=3)
    # the timed path must give real numbers: the last timed run's outputs, copied back, against CPU fp32
    prob = binding.copy_outputs_to_cpu()[1].astype(np.float64)
    reference = Scorer(ort_cuda_models["fp32"], device="cpu").predict(x)[1]
    max_diff = float(np.max(np.abs(prob - reference)))
    annotate(providers=scorer.providers, threads="n/a", images=BATCH, batch=BATCH, engine="onnxruntime",
             precision=precision, gpu=gpu_name(), io_binding=True, max_abs_prob_diff_vs_cpu_fp32=max_diff,
             model_bytes=ort_cuda_models[precision].stat().st_size)
    # TF32 convolutions (fp32 on Ampere and later) and fp16: a sanity bound against garbage, not a precision claim
    assert np.isfinite(prob).all() and max_diff < 2e-2, max_diff


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pytorch_cuda(benchmark, annotate, densenet, precision):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from cxr.train.checkpoints import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(densenet["checkpoint"])).cuda().eval()
    if precision == "fp16":
        model = model.half()
    x = torch.from_numpy(_batch()).cuda()

    def run():
        with torch.inference_mode():
            out = model(x)
        torch.cuda.synchronize()
        return out

    benchmark.group = f"cuda-b{BATCH}"
    annotate(providers="torch-cuda", threads="n/a", images=BATCH, batch=BATCH, engine="pytorch",
             precision=precision, gpu=gpu_name(), torch_version=str(torch.__version__),
             cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
    out = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=3)
    assert tuple(out.shape) == (BATCH,) and bool(torch.isfinite(out.float()).all())
    reference = model_from_checkpoint(load_checkpoint(densenet["checkpoint"])).eval()
    with torch.inference_mode():
        expected = torch.sigmoid(reference(x.cpu()))
    max_diff = float((torch.sigmoid(out.float().cpu()) - expected).abs().max())
    benchmark.extra_info["max_abs_prob_diff_vs_cpu_fp32"] = max_diff
    assert max_diff < 2e-2, max_diff  # as for ONNX Runtime: a sanity bound, not a precision claim
