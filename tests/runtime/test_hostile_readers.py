"""Hostile files: nothing lost, nothing forged: corrupt JPEGs never read as ok, sizes and decode time
bounded before decoding, special files never read forever, and every refusal names the real problem."""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime import errors, imaging
from cxr.runtime.errors import ImageError
from cxr.runtime.imaging import read_image
from tests.badfiles import chest_like, write_dicom


def _code(path: Path) -> tuple[str, str]:
    with pytest.raises(ImageError) as info:
        read_image(path)
    return info.value.code, info.value.message


def _noisy_chest(size: int = 256) -> np.ndarray:
    image = cv2.resize(chest_like(128, 128), (size, size)).astype(np.int16)
    image += np.random.default_rng(0).integers(-20, 20, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(kind: str) -> bytes:
    image = _noisy_chest()
    params = {"baseline": [], "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
              "restart": [cv2.IMWRITE_JPEG_RST_INTERVAL, 4], "colour": []}[kind]
    if kind == "colour":
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        image[..., 0] //= 2
    ok, encoded = cv2.imencode(".jpg", image, params)
    assert ok
    return encoded.tobytes()


def _cut_and_reterminated(data: bytes) -> bytes:
    last_scan = data.rfind(b"\xff\xda")
    return data[:last_scan + (len(data) - last_scan) * 9 // 10] + b"\xff\xd9"


def _taller_frame(data: bytes) -> bytes:
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    height = struct.unpack(">H", data[sof + 5:sof + 7])[0]
    return data[:sof + 5] + struct.pack(">H", height + 64) + data[sof + 7:]


JPEG_KINDS = ["baseline", "progressive", "restart", "colour"]


@pytest.mark.parametrize("kind", JPEG_KINDS)
@pytest.mark.parametrize("damage", [_cut_and_reterminated, _taller_frame], ids=["cut_reterminated", "taller_frame"])
def test_jpeg_whose_data_ends_before_the_image_is_refused(tmp_path, kind, damage):
    """libjpeg fills the missing part with grey and only warns on stderr; the read must fail, never be ok."""
    path = tmp_path / "x.jpg"
    path.write_bytes(damage(_jpeg(kind)))
    code, message = _code(path)
    assert code in (errors.TRUNCATED, errors.CORRUPT), message


@pytest.mark.parametrize("kind", JPEG_KINDS)
@pytest.mark.parametrize("tail", [b"", b"\0" * 64], ids=["exact", "padded"])
def test_valid_jpegs_still_read_exactly(tmp_path, kind, tail):
    data = _jpeg(kind)
    path = tmp_path / "x.jpg"
    path.write_bytes(data + tail)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # what cxr read before
    if expected.ndim == 3:
        expected = cv2.cvtColor(expected, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(read_image(path), expected)


def test_progressive_jpeg_cut_at_a_scan_boundary_is_refused(tmp_path):
    data = _jpeg("progressive")
    second_scan = data.find(b"\xff\xda", data.find(b"\xff\xda") + 2)
    third_scan = data.find(b"\xff\xda", second_scan + 2)
    path = tmp_path / "x.jpg"
    path.write_bytes(data[:third_scan] + b"\xff\xd9")  # DC and the first AC band only
    assert _code(path)[0] == errors.TRUNCATED


def jpeg12(blocks: np.ndarray) -> bytes:
    """A valid 12-bit extended-sequential (SOF1) grayscale JPEG whose 8x8 blocks are flat at the values `blocks`."""
    rows, cols = blocks.shape

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    bits, previous = [], 0
    for value in blocks.ravel():
        dc = 8 * (int(value) - 2048)
        diff, previous = dc - previous, dc
        size = abs(diff).bit_length()
        bits += format(size, "04b") if size < 15 else "11110"  # DC table: sizes 0-14 in 4 bits, 15 in 5
        if size:
            bits += format(diff if diff > 0 else diff + (1 << size) - 1, f"0{size}b")
        bits += "0"  # AC table: end of block only
    bits += "1" * (-len(bits) % 8)
    scan = bytes(int("".join(bits[i:i + 8]), 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    dht = b"\x00" + bytes([0, 0, 0, 15, 1] + [0] * 11) + bytes(range(16)) + b"\x10" + bytes([1] + [0] * 15) + b"\x00"
    return (b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64)
            + segment(0xC1, struct.pack(">BHHB", 12, rows * 8, cols * 8, 1) + b"\x01\x11\x00")
            + segment(0xC4, dht) + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + scan + b"\xff\xd9")


def test_valid_12_bit_jpeg_reads_or_is_unsupported_never_truncated(tmp_path):
    blocks = (np.arange(64).reshape(8, 8) * 60 + 100).astype(np.uint16)
    path = tmp_path / "x12.jpg"
    path.write_bytes(jpeg12(blocks))
    try:
        image = read_image(path)
    except ImageError as e:
        assert e.code == errors.UNSUPPORTED and "12-bit JPEG" in e.message, e
    else:
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image[::8, ::8], blocks)


def test_jpeg_scan_count_bomb_is_refused_before_decoding(tmp_path):
    data = _jpeg("progressive")
    last_scan, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    path = tmp_path / "bomb.jpg"
    path.write_bytes(data[:end] + data[last_scan:end] * imaging.MAX_JPEG_SCANS + b"\xff\xd9")
    code, message = _code(path)
    assert code == errors.TOO_SLOW and str(imaging.MAX_JPEG_SCANS) in message


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def test_valid_very_wide_png_is_too_large_with_its_size(tmp_path):
    width, height = 2_000_000, 32
    raw = zlib.compressobj(9)
    idat = b"".join(raw.compress(b"\0" * (width + 1)) for _ in range(height)) + raw.flush()
    path = tmp_path / "wide.png"
    path.write_bytes(_png(width, height, 8, 0, idat))
    code, message = _code(path)
    assert code == errors.TOO_LARGE and "2000000x32" in message


def test_16_bit_rgba_png_is_refused_from_its_header(tmp_path):
    path = tmp_path / "rgba16.png"
    path.write_bytes(_png(9000, 9000, 16, 6, b""))  # 81 Mpx is under MAX_PIXELS, but 8 bytes a pixel
    code, message = _code(path)
    assert code == errors.TOO_LARGE and "9000x9000" in message and "MiB" in message


def _bigtiff(width: int, height: int) -> bytes:
    entries = b"".join(struct.pack("<HHQQ", tag, 4, 1, value) for tag, value in ((256, width), (257, height)))
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + entries + struct.pack("<Q", 0)


def test_bigtiff_size_is_checked_from_its_header(tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(_bigtiff(60_000, 60_000))
    code, message = _code(path)
    assert code == errors.TOO_LARGE and "60000x60000" in message


def test_os2_bmp_reads(tmp_path):
    width = height = 64
    row = (width * 3 + 3) // 4 * 4
    pixels = b"".join(bytes([y * 3] * width * 3) + bytes(row - width * 3) for y in range(height))  # bottom-up
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    path = tmp_path / "os2.bmp"
    path.write_bytes(b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + header + pixels)
    image = read_image(path)
    assert image.shape == (64, 64) and image[-1, 0] == 0 and image[0, 0] == 63 * 3


@pytest.mark.parametrize("make", ["symlink_to_dev_zero", "fifo"])
def test_special_file_swapped_in_is_refused_not_read_forever(tmp_path, make):
    path = tmp_path / "scan.png"
    if make == "fifo":
        os.mkfifo(path)
    else:
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero here")
        os.symlink("/dev/zero", path)
    outcome = {}

    def read():
        try:
            read_image(path)
        except ImageError as e:
            outcome["error"] = e

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_image did not return within 10 s"
    assert outcome["error"].code == errors.UNREADABLE and "not a regular file" in outcome["error"].message


def test_a_decode_past_the_time_bound_is_too_slow(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    assert cv2.imwrite(str(path), chest_like(64, 64))
    real = cv2.imdecode

    def slow(*args):
        time.sleep(2)
        return real(*args)

    monkeypatch.setattr(imaging, "MAX_DECODE_SECONDS", 0.2)
    monkeypatch.setattr(cv2, "imdecode", slow)
    started = time.monotonic()
    code, message = _code(path)
    assert code == errors.TOO_SLOW and "0.2 s" in message
    assert time.monotonic() - started < 1.5


# ---------------------------------------------------------------- DICOM

def _dicom(tmp_path: Path, **kwargs) -> Path:
    return write_dicom(tmp_path / "x.dcm", chest_like(64, 80, np.uint16) >> 4, **kwargs)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("extra,tag", [
    ({"RescaleSlope": "NaN"}, "RescaleSlope"), ({"RescaleIntercept": "NaN"}, "RescaleIntercept"),
    ({"RescaleSlope": "inf"}, "RescaleSlope"), ({"RescaleSlope": 0}, "RescaleSlope"),
    ({"RescaleSlope": "1e38"}, "RescaleSlope"),
])
def test_bad_rescale_is_bad_dicom_naming_the_tag(tmp_path, extra, tag):
    code, message = _code(_dicom(tmp_path, extra=extra))
    assert code == errors.BAD_DICOM and tag in message


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("center,width", [("NaN", 400), (1500, "NaN"), ("inf", "inf")])
def test_non_finite_window_is_ignored_like_any_invalid_window(tmp_path, caplog, center, width):
    plain = read_image(write_dicom(tmp_path / "plain.dcm", chest_like(64, 80, np.uint16) >> 4))
    image = read_image(_dicom(tmp_path, extra={"WindowCenter": center, "WindowWidth": width}))
    np.testing.assert_array_equal(image, plain)
    assert any("ignoring invalid DICOM window" in r.getMessage() for r in caplog.records)


def test_dicom_bits_allocated_64_is_unsupported_naming_the_tag(tmp_path):
    pixels = (chest_like(64, 80, np.uint16) >> 4).astype(np.uint64)
    path = write_dicom(tmp_path / "x.dcm", pixels, extra={"BitsAllocated": 64, "BitsStored": 64, "HighBit": 63})
    code, message = _code(path)
    assert code == errors.DICOM_UNSUPPORTED and "BitsAllocated 64" in message


def test_compressed_dicom_frame_bigger_than_its_header_is_refused_before_decoding(tmp_path):
    from pydicom.encaps import encapsulate

    data = _jpeg("baseline")
    sof = data.find(b"\xff\xc0")
    huge = data[:sof + 5] + struct.pack(">HH", 30_000, 30_000) + data[sof + 9:]
    path = _dicom(tmp_path, transfer_syntax="1.2.840.10008.1.2.4.50", pixel_data=encapsulate([huge]),
                  extra={"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7})
    code, message = _code(path)
    assert code == errors.TOO_LARGE and "30000x30000" in message
