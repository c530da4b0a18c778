"""cxr-score --quiet is errors only: no warning, note or summary on stderr, with the same exit code, while every
warning (cxr-score's own, the runtime's logged ones, Python's) is kept in the manifest's `warnings` list and what
--device auto / --precision picked is in its device and precision sections, so a quiet run can be audited."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from cxr.cli.score import main  # noqa: E402
from tests.badfiles import chest_like, write_bad_files, write_dicom, write_good_files  # noqa: E402


def run(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def manifest(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".manifest.json").read_text())


@pytest.fixture()
def troubled(tmp_path) -> tuple[Path, Path]:
    """Good images, one unreadable file, a DICOM whose window is ignored (a logged warning), and labels of which
    one path matches (few labels: a warning and exit 3)."""
    root = tmp_path / "images"
    names = write_good_files(root)
    (root / "empty.png").write_bytes(b"")
    write_dicom(root / "window.dcm", chest_like(64, 80, np.uint16) >> 4,
                extra={"WindowCenter": 1500, "WindowWidth": 0})
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + f"{names[0]},1\n" + "".join(f"other/{i}.png,0\n" for i in range(10)))
    return root, labels


FEW = "few labels match"
WINDOW = "ignoring invalid DICOM window"


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_quiet_says_nothing_but_keeps_every_warning_in_the_manifest(tiny_model, troubled, tmp_path, flag):
    root, labels = troubled
    out = tmp_path / "q.csv"
    result = run(root, "--out", out, "--model", tiny_model, "--labels", labels, flag)  # --device auto
    assert result.exit_code == 3  # few labels and an error row: as without --quiet
    assert result.stderr == "" and result.stdout == ""
    kept = manifest(out)["warnings"]
    assert any(w.startswith(f"--labels {labels}: {FEW}") for w in kept)
    assert any(WINDOW in w and str(root / "window.dcm") in w for w in kept)
    device = manifest(out)["device"]  # what auto picked, no longer said on stderr
    assert device["requested"] == "auto" and device["used"] == "cpu"
    assert manifest(out)["precision"]["why"]


def test_without_quiet_the_same_warnings_are_said_and_kept(tiny_model, troubled, tmp_path):
    root, labels = troubled
    quiet, loud = tmp_path / "q.csv", tmp_path / "l.csv"
    assert run(root, "--out", quiet, "--model", tiny_model, "--labels", labels, "-q").exit_code == 3
    result = run(root, "--out", loud, "--model", tiny_model, "--labels", labels)
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert f"cxr-score: warning: --labels {labels}: {FEW}" in result.stderr
    assert any(line.startswith("cxr-score: warning: ") and WINDOW in line for line in lines)
    assert any(line.startswith("cxr-score: model ") for line in lines)  # the notes and summary are back
    assert manifest(loud)["warnings"] == [w.replace(str(quiet), str(loud)) for w in manifest(quiet)["warnings"]]
    assert out_rows(loud) == out_rows(quiet)


def out_rows(out: Path) -> list[str]:
    return out.read_text().splitlines()


def test_a_clean_quiet_run_lists_no_warnings(tiny_model, tmp_path):
    root = tmp_path / "images"
    write_good_files(root)
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and result.stderr == ""
    assert manifest(out)["warnings"] == []


def test_bad_images_alone_are_error_rows_not_stderr_lines_under_quiet(tiny_model, tmp_path):
    root = tmp_path / "images"
    write_good_files(root)
    bad = write_bad_files(root / "bad")
    out = tmp_path / "r.csv"
    result = run(root, "--out", out, "--model", tiny_model, "-q")
    assert result.exit_code == 3 and result.stderr == ""
    assert manifest(out)["counts"]["error"] == len(bad)


def test_python_warnings_during_a_run_are_kept_and_quiet(tiny_model, tmp_path, monkeypatch):
    from cxr.runtime import imaging

    real = imaging.read_image

    def grumbling(path, *args, **kwargs):
        warnings.warn(f"odd header in {Path(path).name}", UserWarning, stacklevel=1)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imaging, "read_image", grumbling)
    root = tmp_path / "images"
    write_good_files(root)
    out = tmp_path / "r.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = run(root, "--out", out, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and result.stderr == ""
    assert any("UserWarning: odd header in gray8.png" in w for w in manifest(out)["warnings"])


@pytest.mark.parametrize("flag", ["-q", "--quiet"])
def test_errors_still_show_under_quiet(tmp_path, flag):
    root = tmp_path / "images"
    write_good_files(root)
    missing = tmp_path / "nowhere.onnx"
    result = run(root, "--out", tmp_path / "r.csv", "--model", missing, flag)
    assert result.exit_code == 1
    assert result.stderr.startswith("cxr-score: error: ") and str(missing) in result.stderr
