"""Fuzzing read_image: mutated PNG/JPEG/TIFF/BMP/DICOM bytes and random bytes either read to a 2-D uint8/uint16
array or raise ImageError, never another exception and never a hang. Bounded (few examples, no deadline) so the
suite stays fast (`make fuzz` runs it long: CXR_FUZZ_EXAMPLES); inputs that once broke the readers live in
tests/fixtures/hostile/ as regression cases."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime.errors import ImageError
from cxr.runtime.imaging import read_image
from tests.badfiles import chest_like, write_dicom

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st

HOSTILE = Path(__file__).resolve().parents[1] / "fixtures" / "hostile"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FUZZ_EXAMPLES = int(os.environ.get("CXR_FUZZ_EXAMPLES", "0") or 0)
"""`make fuzz` sets this (e.g. 2000): that many random (not derandomized) examples per test, so each long run explores
new inputs; `make test` leaves it unset: 25 fixed examples."""
FUZZ = settings(max_examples=FUZZ_EXAMPLES or 25, deadline=None, derandomize=not FUZZ_EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _seeds(folder: Path) -> dict[str, bytes]:
    """Small valid files of every format read (generated here), plus one real file per format from ../shared/data
    when it is present (the fuzz test does not need it)."""
    image = chest_like(64, 64)
    seeds = {}
    for suffix, params in ((".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                           (".tif", []), (".bmp", [])):
        ok, encoded = cv2.imencode(suffix, image, params)
        assert ok
        seeds[f"generated{len(seeds)}{suffix}"] = encoded.tobytes()
    seeds["generated.png16"] = cv2.imencode(".png", chest_like(64, 64, np.uint16))[1].tobytes()
    seeds["generated.dcm"] = write_dicom(folder / "seed.dcm", chest_like(64, 64, np.uint16) >> 4,
                                         extra={"WindowCenter": 2048, "WindowWidth": 4096}).read_bytes()
    if SHARED.is_dir():
        for pattern in ("*.png", "*.jpg", "*.dcm"):
            real = sorted(p for p in SHARED.rglob(pattern) if p.stat().st_size < 2_000_000)[:1]
            seeds.update({f"shared_{p.name}": p.read_bytes() for p in real})
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    return _seeds(tmp_path_factory.mktemp("seeds"))


def _read_bounded(path: Path, seconds: float = 30.0):
    """read_image in a helper thread: the array, or the ImageError; fails the test on any other exception or a
    hang."""
    outcome: dict = {}

    def run():
        try:
            outcome["image"] = read_image(path)
        except ImageError as e:
            outcome["error"] = e
        except BaseException as e:  # the bug this test looks for
            outcome["unexpected"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"read_image hung on {path}"
    if "unexpected" in outcome:
        raise AssertionError(f"read_image raised {type(outcome['unexpected']).__name__}, not ImageError") \
            from outcome["unexpected"]
    if "image" in outcome:
        image = outcome["image"]
        assert image.ndim == 2 and image.dtype in (np.uint8, np.uint16) and image.flags.c_contiguous
    return outcome


def _mutate(data: bytes, edits: list[tuple[int, int, int]], cut: float | None) -> bytes:
    """Apply (kind, position, value) edits: 0 overwrites a byte, 1 inserts one, 2 deletes one; then maybe cut."""
    buffer = bytearray(data)
    for kind, position, value in edits:
        i = position % max(len(buffer), 1)
        if kind == 0 and buffer:
            buffer[i] = value
        elif kind == 1:
            buffer.insert(i, value)
        elif buffer:
            del buffer[i]
    if cut is not None:
        buffer = buffer[:max(1, int(len(buffer) * cut))]
    return bytes(buffer)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)


@FUZZ
@given(data=st.data(), edits=EDITS, cut=st.none() | st.floats(0.0, 1.0))
def test_mutated_images_read_or_raise_image_error(tmp_path, seeds, data, edits, cut):
    name = data.draw(st.sampled_from(sorted(seeds)))
    seed = seeds[name]
    # Mutations in the header (first 512 bytes) find most parser bugs; half the edits are aimed there.
    if data.draw(st.booleans()):
        edits = [(kind, position % min(len(seed), 512), value) for kind, position, value in edits]
    path = tmp_path / f"fuzz{Path(name).suffix}"
    path.write_bytes(_mutate(seed, edits, cut))
    _read_bounded(path)


@FUZZ
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00",
                               b"BM", b"\0" * 128 + b"DICM"]),
       body=st.binary(max_size=600))
def test_random_bytes_behind_a_signature_read_or_raise_image_error(tmp_path, prefix, body):
    path = tmp_path / "random.img"
    path.write_bytes(prefix + body)
    _read_bounded(path)


def _hostile_fixtures() -> list[str]:
    return sorted(p.name for p in HOSTILE.iterdir() if p.is_file() and p.suffix != ".md") if HOSTILE.is_dir() else []


@pytest.mark.parametrize("name", _hostile_fixtures() or ["(none)"])
def test_hostile_fixtures_raise_the_code_in_their_name(name):
    if name == "(none)":
        pytest.skip("no fixtures in tests/fixtures/hostile")
    outcome = _read_bounded(HOSTILE / name)
    expected = name.split("__")[0]
    assert "error" in outcome and outcome["error"].code == expected, outcome
