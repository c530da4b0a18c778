"""The README's Python example runs as written (on a small model and two images made here), and the Dockerfile is
the scoring-only install (built and run where a Docker engine exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _api_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its API example block"
    return match.group(1)


def test_readme_api_example_runs(tiny_model, tmp_path, monkeypatch, capsys):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.onnx").write_bytes(Path(tiny_model).read_bytes())
    cv2.imwrite("a.png", np.tile(np.arange(256, dtype=np.uint8), (128, 1)))
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", "MONOCHROME2", 1
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.tile(np.arange(128, dtype=np.uint8) * 2, (128, 1)).tobytes()
    ds.save_as("b.dcm", enforce_file_format=True)
    exec(compile(_api_example(), "README.md:api-example", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["a.png", "b.dcm"]
    for line in lines:
        prob = float(line.split()[1])
        assert 0.0 <= prob <= 1.0 and line.endswith(("no cardiomegaly", " cardiomegaly"))


def test_dockerfile_is_the_scoring_only_install():
    text = (REPO / "Dockerfile").read_text()
    installs = re.findall(r'pip install[^"\n]*"([^"]+)"', text)
    assert installs == [".[cpu]"]  # never the training extra (torch) in the scoring image
    assert 'ENTRYPOINT ["cxr-score"]' in text
    for needed in ("pyproject.toml", "README.md", "cxr"):
        assert re.search(rf"COPY .*\b{re.escape(needed)}\b", text), needed


@pytest.mark.slow
def test_docker_image_builds_and_scores(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine here (the docker client alone cannot build images)")
    tag = "cxr-score-test"
    build = subprocess.run([docker, "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([docker, "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "cxr-score" in run.stdout
    probe = subprocess.run([docker, "run", "--rm", "--entrypoint", "python", tag, "-c",
                            "import cxr.cli.score, sys; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=300)
    assert probe.stdout.strip() == "False"
