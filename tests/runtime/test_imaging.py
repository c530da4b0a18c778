"""cxr.runtime.imaging: every supported file reads to 2-D uint8/uint16; every broken file gives its typed error."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime import errors
from cxr.runtime.errors import ImageError
from cxr.runtime.imaging import IMAGE_SUFFIXES, MAX_PIXELS, MIN_SIDE, is_image_candidate, read_image, unsupported_format
from cxr.runtime.preprocess import preprocess_image
from tests.badfiles import chest_like, write_bad_files, write_dicom, write_good_files

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
XRV = "torchxrayvision_tests"
SIIM = f"{XRV}/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
DICOM_NAMES = ["dicom_samples/RG1_UNCR.dcm", "dicom_samples/nih_cxr14_google_dicom_covid0000.dcm",
               SIIM, f"{XRV}/Fake_MONOHR1.dcm"]


def _shared_images() -> list[str]:
    """Every file listed in the three labels.csv (read at collection time; empty where the data is absent)."""
    names = []
    for labels in sorted(SHARED.glob("*/labels.csv")):
        with open(labels, newline="") as f:
            names += [f"{labels.parent.name}/{row['path']}" for row in csv.DictReader(f)]
    return sorted(names)


def _read_rel(shared_data: Path, rel: str) -> np.ndarray:
    return read_image(shared_data / rel)


@pytest.mark.parametrize("rel", _shared_images() or ["(no shared data)"])
def test_every_labelled_real_image_reads_to_2d_gray(shared_data, rel):
    image = _read_rel(shared_data, rel)
    assert image.ndim == 2 and image.dtype in (np.uint8, np.uint16)
    assert image.flags.c_contiguous
    assert 256 <= min(image.shape) and max(image.shape) <= 4096
    # Six JSRT PNGs (JPCLN031, 037, 078, 083, 094, 117) hold only 16-17 gray levels (239..255): degraded copies.
    assert int(image.max()) - int(image.min()) >= 16


def test_labels_list_covers_dicoms_and_tbx11k(shared_data):
    listed = set(_shared_images())
    assert set(DICOM_NAMES) <= listed
    assert {p.relative_to(shared_data).as_posix() for p in (shared_data / XRV).rglob("*.png")} <= listed
    assert len(listed) >= 500


def _lungs_and_mediastinum(image: np.ndarray) -> tuple[float, float]:
    """Mean of both lung fields and of the central (spine/mediastinum) strip, on a PA chest image."""
    h, w = image.shape
    rows = slice(int(0.25 * h), int(0.5 * h))
    lungs = np.concatenate([image[rows, int(0.2 * w):int(0.35 * w)], image[rows, int(0.65 * w):int(0.8 * w)]], 1)
    centre = image[rows, int(0.45 * w):int(0.55 * w)]
    return float(lungs.mean()), float(centre.mean())


@pytest.mark.parametrize("rel", DICOM_NAMES[:3])
@pytest.mark.parametrize("form", ["read", "preprocessed"])
def test_dicoms_come_out_with_bright_body_and_dark_lungs(shared_data, rel, form):
    """MONOCHROME1 (RG1) is inverted like MONOCHROME2 looks: lungs dark, spine and mediastinum bright."""
    image = _read_rel(shared_data, rel)
    if form == "preprocessed":
        image = preprocess_image(image)
        assert image.dtype == np.uint8 and image.shape == (224, 224)
    lungs, centre = _lungs_and_mediastinum(image.astype(np.float64) / np.iinfo(image.dtype).max)
    assert centre > lungs + 0.15, (lungs, centre)


def test_rg1_window_and_inversion_rule(shared_data):
    """RG1: 15 bits stored, window 15000/30000 (covers all pixels), MONOCHROME1 -> uint16 =
    65535 * (max - v) / range."""
    import pydicom

    raw = pydicom.dcmread(shared_data / DICOM_NAMES[0]).pixel_array.astype(np.float64)
    image = _read_rel(shared_data, DICOM_NAMES[0])
    assert image.dtype == np.uint16 and image.shape == (1955, 1841)
    expected = (raw.max() - raw) * 65535.0 / (raw.max() - raw.min())
    assert np.abs(image - expected).max() <= 1.0


def test_fake_monochrome1_is_the_inverse_of_the_original(shared_data):
    original = _read_rel(shared_data, SIIM)
    fake = _read_rel(shared_data, f"{XRV}/Fake_MONOHR1.dcm")
    assert original.dtype == fake.dtype == np.uint8
    np.testing.assert_array_equal(original.astype(int) + fake.astype(int), 255)
    assert np.corrcoef(original.ravel(), fake.ravel())[0, 1] < -0.99


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_files(folder)


BAD_NAMES = ["empty.png", "truncated.png", "truncated.jpg", "notes.png", "random.dcm", "nopixels.dcm", "tiny.png",
             "constant.png", "huge.png", "multiframe.dcm", "scan.webp"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_files_raise_their_code_naming_the_file(bad_folder, name):
    folder, expected = bad_folder
    assert set(expected) == set(BAD_NAMES)
    with pytest.raises(ImageError) as info:
        read_image(folder / name)
    assert info.value.code == expected[name]
    assert name in str(info.value) and info.value.code in str(info.value)


def test_bad_file_messages_say_the_problem(bad_folder):
    folder, _ = bad_folder
    messages = {}
    for name in ("empty.png", "huge.png", "multiframe.dcm", "tiny.png", "truncated.jpg", "truncated.png"):
        with pytest.raises(ImageError) as info:
            read_image(folder / name)
        messages[name] = info.value.message
    assert messages["empty.png"] == "empty file (0 bytes)"
    assert "100000x100000" in messages["huge.png"]
    assert "multi-frame DICOM (3 frames) is not supported" in messages["multiframe.dcm"]
    assert "1x1" in messages["tiny.png"] and str(MIN_SIDE) in messages["tiny.png"]
    assert "no end-of-image marker" in messages["truncated.jpg"]  # cv2 4.x would decode it half-grey
    assert "no IEND chunk" in messages["truncated.png"]


@pytest.mark.parametrize("tail", [b"\0" * 100, b"trailing junk from a camera"])
def test_jpeg_with_bytes_after_the_end_marker_reads(good_folder, tmp_path, tail):
    path = tmp_path / "padded.jpg"
    path.write_bytes((good_folder / "rgb.jpg").read_bytes() + tail)
    np.testing.assert_array_equal(read_image(path), read_image(good_folder / "rgb.jpg"))


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    write_good_files(folder)
    return folder


@pytest.mark.parametrize("name,dtype,shape", [
    ("gray8.png", np.uint8, (256, 224)), ("gray16.png", np.uint16, (240, 256)), ("rgb.jpg", np.uint8, (200, 200)),
    ("rgba.png", np.uint8, (128, 128)), ("mono2.dcm", np.uint16, (128, 160)), ("IM0001", np.uint8, (96, 96)),
])
def test_good_files_read(good_folder, name, dtype, shape):
    assert sorted(p.name for p in good_folder.iterdir()) == sorted(
        ["gray8.png", "gray16.png", "rgb.jpg", "rgba.png", "mono2.dcm", "IM0001"])
    image = read_image(good_folder / name)
    assert image.dtype == dtype and image.shape == shape and image.flags.c_contiguous


@pytest.mark.parametrize("name", ["gray8.png", "gray16.png", "rgb.jpg", "mono2.dcm", "IM0001"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_cut_short_files_raise_truncated(good_folder, tmp_path, name, fraction):
    """Never a half-decoded image: any valid file cut short is refused as truncated."""
    data = (good_folder / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[:max(200, int(len(data) * fraction))])
    with pytest.raises(ImageError) as info:
        read_image(cut)
    assert info.value.code == errors.TRUNCATED


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def _write_palette_png(path: Path, gray_level: int) -> Path:
    from PIL import Image

    index = np.zeros((64, 64), np.uint8)
    index[:, 32:] = 1
    im = Image.fromarray(index, mode="P")
    im.putpalette([gray_level] * 3 + [200, 200, 200] + [0] * 3 * 254)
    im.save(path)
    return path


@pytest.mark.parametrize("kind", ["rgb.png", "rgba_opaque.png", "rgba_transparent.png", "palette.png", "rgb.bmp",
                                  "rgb.tif", "gray.tif"])
def test_colour_and_other_formats_give_the_gray_level(tmp_path, kind):
    """Pure gray 100 stays 100 whatever the container; alpha is dropped (a transparent pixel keeps its colour)."""
    block = np.full((64, 64), 100, np.uint8)
    block[:, 32:] = 200
    stem = kind.split(".")[0]
    if kind == "palette.png":
        path = _write_palette_png(tmp_path / kind, 100)
    elif stem.startswith("rgba"):
        bgra = cv2.cvtColor(block, cv2.COLOR_GRAY2BGRA)
        bgra[..., 3] = 0 if stem.endswith("transparent") else 255
        path = _write(tmp_path / kind, bgra)
    elif stem == "gray":
        path = _write(tmp_path / kind, block)
    else:
        path = _write(tmp_path / kind, cv2.cvtColor(block, cv2.COLOR_GRAY2BGR))
    image = read_image(path)
    assert image.ndim == 2 and image.dtype == np.uint8
    assert image[0, 0] == 100 and image[0, 63] == 200


def test_pure_red_uses_the_luma_weights(tmp_path):
    bgr = np.zeros((64, 64, 3), np.uint8)
    bgr[..., 2] = 255
    bgr[:, :32] = 0
    image = read_image(_write(tmp_path / "red.png", bgr))
    assert image[0, 63] == 76  # round(0.299 * 255)


def test_16_bit_png_keeps_every_value(tmp_path):
    values = np.random.default_rng(1).integers(0, 65536, (96, 80), dtype=np.uint16)
    image = read_image(_write(tmp_path / "g16.png", values))
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, values)


def test_float_tiff_is_unsupported(tmp_path):
    path = _write(tmp_path / "float.tif", chest_like().astype(np.float32) / 255)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.code == errors.UNSUPPORTED and "float32" in info.value.message


@pytest.mark.parametrize("case,code", [
    ("monochrome1_window", None), ("rescale", None), ("window_clips_all", errors.BLANK),
    ("cut_pixels", errors.TRUNCATED), ("colour", errors.DICOM_UNSUPPORTED), ("jpeg_ls", errors.DICOM_UNSUPPORTED),
    ("huge_header", errors.TOO_LARGE), ("named_png", None),
])
def test_dicom_cases(tmp_path, case, code):
    from pydicom.encaps import encapsulate

    pixels = chest_like(64, 80, np.uint16) >> 4  # 12-bit values
    name = "x.png" if case == "named_png" else "x.dcm"
    kwargs = {
        "monochrome1_window": dict(photometric="MONOCHROME1", extra={"WindowCenter": 2048, "WindowWidth": 4096}),
        "rescale": dict(extra={"RescaleSlope": -2, "RescaleIntercept": 100}),
        "window_clips_all": dict(extra={"WindowCenter": 90000, "WindowWidth": 10}),
        "cut_pixels": dict(pixel_data=pixels.tobytes()[:3000]),
        "colour": dict(extra={"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
                       pixel_data=np.repeat(pixels, 3).tobytes()),
        "jpeg_ls": dict(transfer_syntax="1.2.840.10008.1.2.4.80", pixel_data=encapsulate([b"\xff\xd8" + b"\0" * 64])),
        "huge_header": dict(extra={"Rows": 20000, "Columns": 20000}),
        "named_png": {},
    }[case]
    path = write_dicom(tmp_path / name, pixels, **kwargs)
    if code is not None:
        with pytest.raises(ImageError) as info:
            read_image(path)
        assert info.value.code == code
        if case == "jpeg_ls":
            assert "JPEG-LS" in info.value.message
        return
    image = read_image(path)
    assert image.dtype == np.uint16 and image.shape == (64, 80)
    corr = np.corrcoef(image.ravel().astype(float), pixels.ravel().astype(float))[0, 1]
    inverted = case in ("monochrome1_window", "rescale")  # negative slope also turns the values over
    assert corr < -0.999 if inverted else corr > 0.999
    assert image.min() == 0 and image.max() == 65535


@pytest.mark.parametrize("name,content,expected", [
    ("README.txt", b"hello", False),
    ("labels.csv", b"path,label\n", False),
    ("notes.png", b"just text", True),
    ("scan.DCM", b"", True),
    ("IM0001", b"\0" * 128 + b"DICM" + b"\0" * 64, True),
    ("photo", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, True),
    ("image.jpeg.bak", b"\xff\xd8\xff\xe0", True),
    ("data.bin", b"\0" * 200, False),
    ("scan.webp", b"", True),  # a format cxr refuses still becomes a row, never a silent skip
    ("scan.GIF", b"", True),
    ("export", b"GIF89a" + b"\0" * 20, True),
    ("frame", b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20, True),
])
def test_is_image_candidate(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert is_image_candidate(path) is expected


@pytest.mark.parametrize("name,expected", [
    ("IM0002", True), ("1.2.840.113619.2.55.3", True),  # DICOM names: no or numeric suffix -> an unreadable row
    ("chest.png", True), ("notes.txt", False), ("data.bin", False),
    ("clip.mp4", False), ("model.h5", False), ("notes.txt~", False)])  # not DICOM-like: still non-images
def test_a_file_that_cannot_be_opened_is_a_candidate_when_it_may_be_dicom(tmp_path, monkeypatch, name, expected):
    path = tmp_path / name
    path.write_bytes(b"\0" * 128 + b"DICM")

    def locked(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("cxr.runtime.imaging.open", locked, raising=False)
    assert is_image_candidate(path) is expected


@pytest.mark.parametrize("name,write,shown", [
    ("xray.webp", "cv2", "WebP images are not supported"),
    ("xray.gif", b"GIF89a\x40\x00\x40\x00" + b"\0" * 40, "GIF images are not supported"),
    ("xray.jp2", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 40, "JPEG 2000 images are not supported"),
    ("noext", b"GIF87a" + b"\0" * 40, "GIF images are not supported"),
    ("xray.png", b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 40, "WebP images are not supported"),  # misnamed
    ("xray.heic", b"\0\0\0\x18ftypheic" + b"\0" * 40, "HEIC images are not supported"),
    ("IMG_0001", b"\0\0\0\x18ftypheic" + b"\0" * 40, "HEIC images are not supported"),  # no suffix: signature
    ("photo.dat", b"\0\0\0\x1cftypavif" + b"\0" * 40, "AVIF images are not supported"),
])
def test_other_image_formats_are_unsupported_rows(tmp_path, name, write, shown):
    path = tmp_path / name
    if write == "cv2":
        image = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
        assert cv2.imwrite(str(path), image), "this OpenCV cannot write WebP"
    else:
        path.write_bytes(write)
    assert is_image_candidate(path)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.code == errors.UNSUPPORTED
    assert shown in str(info.value) and "convert to PNG" in str(info.value) and str(path) in str(info.value)
    assert unsupported_format(path) == shown.split(" images")[0]


def test_unsupported_format_is_none_for_readable_and_unknown_files(tmp_path):
    png = tmp_path / "scan.gif"  # a real PNG misnamed .gif is read as the PNG it is
    assert cv2.imwrite(str(tmp_path / "x.png"), np.tile(np.arange(64, dtype=np.uint8), (64, 1)))
    (tmp_path / "x.png").rename(png)
    assert unsupported_format(png) is None and read_image(png).shape == (64, 64)
    (tmp_path / "notes.txt").write_text("hello")
    assert unsupported_format(tmp_path / "notes.txt") is None


def test_public_constants():
    assert IMAGE_SUFFIXES == frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
    assert MIN_SIDE == 32 and MAX_PIXELS == 100_000_000


def test_unreadable_path_is_typed(tmp_path):
    with pytest.raises(ImageError) as info:
        read_image(tmp_path)  # a directory cannot be read as a file
    assert info.value.code == errors.UNREADABLE and str(tmp_path) in str(info.value)


@pytest.mark.parametrize("center,width", [(1500, 1000), (2048, 4096), (600.5, 2)])
def test_linear_window_matches_pydicom(tmp_path, center, width):
    """The float32 LINEAR window equals pydicom's apply_voi_lut, up to the final min-max rounding."""
    import pydicom
    from pydicom.pixels import apply_voi_lut

    pixels = chest_like(64, 80, np.uint16) >> 4
    path = write_dicom(tmp_path / "w.dcm", pixels, extra={"WindowCenter": center, "WindowWidth": width})
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(ds.pixel_array, ds, index=0).astype(np.float64)
    ref = (ref - ref.min()) * 65535.0 / (ref.max() - ref.min())
    assert np.abs(read_image(path).astype(np.float64) - ref).max() <= 1.0


@pytest.mark.parametrize("center,width", [(None, 400), (1500, None), (None, None), (1500, 0)])
def test_an_empty_or_invalid_window_is_ignored_with_a_warning(tmp_path, caplog, center, width):
    """WindowCenter/Width are Type 3: an empty one (or a width below 1) means no usable window, not a broken file."""
    pixels = chest_like(64, 80, np.uint16) >> 4
    plain = read_image(write_dicom(tmp_path / "plain.dcm", pixels))
    path = write_dicom(tmp_path / "w.dcm", pixels, extra={"WindowCenter": center, "WindowWidth": width})
    with caplog.at_level(logging.WARNING, logger="cxr.runtime.imaging"):
        image = read_image(path)
    np.testing.assert_array_equal(image, plain)
    assert any("ignoring invalid DICOM window" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


def test_concurrent_reads_restore_the_opencv_log_level(good_folder):
    from concurrent.futures import ThreadPoolExecutor

    level = cv2.utils.logging.getLogLevel()
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda n: read_image(good_folder / n).shape, ["gray8.png", "rgb.jpg", "rgba.png"] * 8))
    assert shapes[:3] == [(256, 224), (200, 200), (128, 128)]
    assert cv2.utils.logging.getLogLevel() == level


def _read_in_child(path, queue):
    try:
        queue.put(read_image(path).shape)
    except ImageError as exc:
        queue.put(exc.code)


def test_decode_helpers_end_with_their_readers_and_a_forked_child_gets_its_own(tmp_path):
    """One decode helper thread per reading thread: gone when the reader ends (no build-up over many folder runs), and
    a fork (a DataLoader worker) whose parent read before does not wait on the parent's helper, which it lacks."""
    import gc
    import multiprocessing
    import threading
    from concurrent.futures import ThreadPoolExecutor

    path = _write(tmp_path / "x.png", chest_like(64, 80))
    for _ in range(5):
        with ThreadPoolExecutor(2) as pool:
            assert all(s == (64, 80) for s in pool.map(lambda _: read_image(path).shape, range(4)))
    gc.collect()
    read_image(path)  # this thread's helper, inherited (without its thread) by the child below

    def helpers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "cxr-decode"]

    from cxr.runtime import imaging

    mine = imaging._decoders.decoder.thread
    for t in helpers():  # an ended reader's helper has been told to stop; it leaves once it is scheduled
        if t is not mine:
            t.join(timeout=10)
    assert helpers() == [mine]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(path, queue))
    child.start()
    try:
        assert queue.get(timeout=10) == (64, 80)  # without its own helper it would wait 20 s and say too_slow
    finally:
        child.join(15)
