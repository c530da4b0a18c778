"""cxr-bench: JSON fields a user reads, ordered percentiles, and exit codes for bad devices and batch sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cxr.cli.bench import main


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("batch_sizes, expected", [("1,4", [1, 4]), ("8,2,8", [2, 8])])
def test_json_has_percentiles_throughput_and_machine_facts(tiny_model, tmp_path, batch_sizes, expected):
    out = tmp_path / "bench.json"
    result = _run(["--model", tiny_model, "--batch-sizes", batch_sizes, "--seconds", 0.2, "--warmup", 1,
                   "--threads", 1, "--json", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["batch_size"] for r in data["results"]] == expected
    assert data["providers"] == ["CPUExecutionProvider"]
    assert data["threads"]["requested"] == 1 and data["threads"]["intra_op"] == 1
    assert data["input_size"] == 64
    assert set(data["cpu"]) >= {"model", "logical_cores", "physical_cores", "flags", "max_mhz"}
    assert set(data["cpu"]["flags"]) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "avx512_bf16",
                                         "amx_bf16", "amx_int8"}
    assert set(data["versions"]) >= {"cxr", "onnxruntime", "numpy", "python"}
    for r in data["results"]:
        for unit in ("batch_ms", "image_ms"):
            p = r[unit]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
        assert r["runs"] >= 3
        assert r["image_ms"]["p50"] == pytest.approx(r["batch_ms"]["p50"] / r["batch_size"])
        assert r["images_per_s"] == pytest.approx(1000 * r["batch_size"] / r["batch_ms"]["p50"])
    table = result.stdout.splitlines()
    assert "p50 ms/img" in table[0] and len(table) == 2 + len(expected)


def test_cuda_without_cuda_exits_1_with_reason(tiny_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider")
    result = _run(["--model", tiny_model, "--device", "cuda", "--seconds", 0.1])
    assert result.exit_code == 1
    assert "cuda" in result.output.lower() and "CPUExecutionProvider" in result.output


@pytest.mark.parametrize("sizes", ["0", "1,x", "", "-4", "5000"])
def test_bad_batch_sizes_are_usage_errors(tiny_model, sizes):
    result = _run(["--model", tiny_model, "--batch-sizes", sizes])
    assert result.exit_code == 2
    assert "--batch-sizes" in result.output


@pytest.mark.parametrize("make_file", ["missing", "not_onnx"])
def test_unusable_model_exits_1_naming_the_file(tmp_path, make_file):
    path = tmp_path / "model.onnx"
    if make_file == "not_onnx":
        path.write_text("this is not a model")
    result = _run(["--model", path, "--seconds", 0.1])
    assert result.exit_code == 1
    assert str(path) in result.output


def test_bench_cli_does_not_import_torch(tiny_model, tmp_path):
    code = ("import sys; from cxr.cli.bench import main\n"
            "try:\n    main([%r, %r, '--seconds', '0.05', '--batch-sizes', '1'])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('torch' in sys.modules)") % ("--model", str(tiny_model))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_io_binding_runner_gives_the_plain_sessions_outputs(tiny_model):
    """The I/O-binding path that cxr-bench --device cuda and benchmarks/bench_cuda.py time, bound on the CPU here:
    each run must write fresh outputs equal to session.run on the same batch (logit and probability, in order)."""
    import numpy as np

    from cxr.cli.bench import bound_runner
    from cxr.runtime.scoring import Scorer

    scorer = Scorer(tiny_model, device="cpu")
    rng = np.random.default_rng(3)
    first = rng.integers(0, 256, (5, 1, 64, 64), dtype=np.uint8)
    expected = scorer._session.run(["logit", "probability"], {"image": first})
    run, binding = bound_runner(scorer._session, first, "cpu")
    run()
    logit, prob = binding.copy_outputs_to_cpu()
    np.testing.assert_allclose(logit, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prob, expected[1], rtol=1e-5, atol=1e-6)
    assert prob.shape == (5,) and np.all((prob > 0) & (prob < 1))
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logit.astype(np.float64))), rtol=1e-5)
    # a second binding on another batch gives that batch's outputs, not the first one's
    second = rng.integers(0, 256, (5, 1, 64, 64), dtype=np.uint8)
    run2, binding2 = bound_runner(scorer._session, second, "cpu")
    run2()
    np.testing.assert_allclose(binding2.copy_outputs_to_cpu()[1],
                               scorer._session.run(["probability"], {"image": second})[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(binding2.copy_outputs_to_cpu()[1], prob)


def test_json_into_a_missing_folder_is_refused_before_any_timing(tiny_model, tmp_path):
    out = tmp_path / "no-such-folder" / "bench.json"
    result = _run(["--model", tiny_model, "--seconds", 0.2, "--json", out])
    assert result.exit_code == 1
    assert f"cannot write {out}: folder {out.parent} does not exist" in result.output
    assert "p50 ms/img" not in result.output and not out.parent.exists()
