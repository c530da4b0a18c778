"""JPEG checks for cxr.runtime.imaging: walk the markers before decoding (frame size, scan count, every scan complete
with all its restart intervals, every coefficient of every component carried, an end marker) and decode so that a scan
which ran out of coded data is found (libjpeg fills it with grey and only warns). Raises ImageError like the rest of
the readers; `read_image` is the entry point, these are its JPEG half.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from cxr.runtime.errors import CORRUPT, TOO_SLOW, TRUNCATED, ImageError

MAX_JPEG_SCANS = 100  # a JPEG with more scans is `too_slow` (each progressive scan re-reads the whole image)


JPEG_UNUSUAL = {0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical lossless",
                 0xCB: "lossless arithmetic-coded", 0xCD: "hierarchical", 0xCE: "hierarchical",
                 0xCF: "hierarchical lossless"}
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the marker after a scan's data (not RSTn, not stuffing)
_JPEG_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_JPEG_FILLER = bytes((i * 73 + 41) % 251 for i in range(64))  # no 0xFF: never a marker


@dataclass
class JpegLayout:
    """What the JPEG markers say: frame type and size, and where each scan's entropy-coded data ends."""

    frame: int = 0  # the SOFn marker byte
    precision: int = 8
    width: int = 0
    height: int = 0
    components: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (h, v) sampling factors
    scan_ends: list[int] = field(default_factory=list)  # offset of the marker that ends each scan's data
    coverage: dict[int, int] = field(default_factory=dict)  # id -> bit mask of the coefficients its scans carry


def jpeg_layout(path: Path, data: bytes, *, check_header: Callable[..., None]) -> JpegLayout:
    """Walk every JPEG marker: the frame header's size (checked before decoding by `check_header(path, cols, rows,
    channels, bits)`, the size limits every format shares, which the caller owns), the scans (at most
    MAX_JPEG_SCANS; each complete, with every restart interval present) and an EOI marker after the last scan
    (trailing padding allowed). Raises TRUNCATED, CORRUPT, TOO_LARGE or TOO_SLOW."""
    layout, i, n, restart = JpegLayout(), 2, len(data), 0
    while True:
        while i < n and data[i] == 0xFF:  # marker prefix and fill bytes
            i += 1
        if i >= n:
            raise ImageError(TRUNCATED, path, "JPEG is truncated: the file ends before the image data")
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:
            raise ImageError(TRUNCATED, path, "JPEG has no image data (end marker before any scan)")
        if i + 2 > n:
            raise ImageError(TRUNCATED, path, "JPEG is truncated: the file ends inside a header segment")
        length = struct.unpack(">H", data[i:i + 2])[0]
        body = data[i + 2:i + length]
        if length < 2 or len(body) < length - 2:
            raise ImageError(TRUNCATED, path, "JPEG is truncated: the file ends inside a header segment")
        i += length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _jpeg_frame(path, layout, marker, body, check_header)
        elif marker == 0xDD and len(body) >= 2:
            restart = struct.unpack(">H", body[:2])[0]
        elif marker == 0xDA:
            i = _jpeg_scan(path, data, layout, body, i, restart)
            if data.find(b"\xff\xd9", i, i + 2) == i:
                break
    _jpeg_check_coverage(path, layout)
    return layout


def _jpeg_frame(path: Path, layout: JpegLayout, marker: int, body: bytes, check_header) -> None:
    if layout.frame or len(body) < 6:
        raise ImageError(CORRUPT, path, "JPEG frame header is repeated or too short")
    layout.frame = marker
    layout.precision, layout.height, layout.width, count = struct.unpack(">BHHB", body[:6])
    for k in range(count):
        c = body[6 + 3 * k:9 + 3 * k]
        if len(c) < 3 or not c[1] >> 4 or not c[1] & 15:
            raise ImageError(CORRUPT, path, "JPEG frame header is corrupt (component list)")
        layout.components[c[0]] = (c[1] >> 4, c[1] & 15)
    if layout.height:  # 0: defined later by a DNL marker (not read by OpenCV)
        check_header(path, layout.width, layout.height, count, layout.precision)


def _jpeg_scan(path: Path, data: bytes, layout: JpegLayout, body: bytes, start: int, restart: int) -> int:
    """Record one scan (its data runs from `start` to the next marker that is not RSTn); return that marker's
    offset."""
    if not layout.frame:
        raise ImageError(CORRUPT, path, "JPEG has a scan before its frame header")
    if len(layout.scan_ends) >= MAX_JPEG_SCANS:
        raise ImageError(TOO_SLOW, path, f"JPEG has more than {MAX_JPEG_SCANS} scans (each one re-reads the whole "
                         "image); refused before decoding")
    ids = list(body[1:1 + 2 * body[0]:2]) if body else []
    if not ids or len(body) < 4 + 2 * len(ids) or any(c not in layout.components for c in ids):
        raise ImageError(CORRUPT, path, "JPEG scan header is corrupt")
    first, last = body[1 + 2 * len(ids)], body[2 + 2 * len(ids)]
    for c in ids:
        layout.coverage[c] = layout.coverage.get(c, 0) | (((1 << (min(last, 63) + 1)) - 1) >> first << first)
    end = _JPEG_SCAN_END.search(data, start)
    if end is None:
        raise ImageError(TRUNCATED, path, "JPEG is truncated: no end-of-image marker after the image data")
    if restart and layout.height:
        expected = _ceil_div(_jpeg_scan_units(layout, ids), restart) - 1
        found = len(_JPEG_RESTART.findall(data, start, end.start()))
        if found < expected:
            raise ImageError(TRUNCATED, path, f"JPEG is truncated: a scan has {found + 1} of its {expected + 1} "
                             "restart intervals")
    layout.scan_ends.append(end.start())
    return end.start()


def _jpeg_scan_units(layout: JpegLayout, ids: list[int]) -> int:
    """Minimum coded units in a scan: interleaved MCUs, or the blocks of its one component."""
    hmax = max(h for h, _ in layout.components.values())
    vmax = max(v for _, v in layout.components.values())
    if len(ids) > 1:
        return _ceil_div(layout.width, 8 * hmax) * _ceil_div(layout.height, 8 * vmax)
    h, v = layout.components[ids[0]]
    return _ceil_div(_ceil_div(layout.width * h, hmax), 8) * _ceil_div(_ceil_div(layout.height * v, vmax), 8)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_check_coverage(path: Path, layout: JpegLayout) -> None:
    """Every component must be carried, all 64 coefficients, by the scans present: a progressive JPEG cut at a
    scan boundary (and re-terminated) would otherwise decode quietly without its detail or without a component."""
    full = (1 << 64) - 1
    sequential = layout.frame in (0xC0, 0xC1, 0xC3, 0xC9, 0xCB)
    missing = [c for c in layout.components if layout.coverage.get(c, 0) != full and not
               (sequential and c in layout.coverage)]
    if missing:
        raise ImageError(TRUNCATED, path, f"JPEG is truncated: its {len(layout.scan_ends)} scan(s) leave part of the "
                         "image uncoded")


def decode_jpeg(data: bytes, layout: JpegLayout) -> np.ndarray | str | None:
    """Decode a JPEG with Pillow and prove that no scan ran out of coded data.

    libjpeg fills a scan that ends early (cut and re-terminated with FFD9, or a frame header taller than the data)
    with grey and only warns ("Corrupt JPEG data: premature end of data segment"); OpenCV prints that on stderr and
    returns the image, Pillow stays silent. Neither reports it, and capturing stderr is neither thread-safe nor
    quiet. So the file is decoded a second time with filler bytes inserted before each scan's closing marker: a
    complete scan never reads past its last block, so the filler changes nothing; a short scan decodes the filler
    instead of grey and the images differ. Pillow (libjpeg-turbo, the same output as OpenCV) is used for both
    decodes because it keeps libjpeg's warnings off stderr. Cost: one more decode (~35 ms for 2048x2048)."""
    first = _pillow_jpeg(data)
    if first is None:
        return None
    parts, previous = [], 0
    for end in layout.scan_ends:
        parts += [data[previous:end], _JPEG_FILLER]
        previous = end
    parts.append(data[previous:])
    again = _pillow_jpeg(b"".join(parts))
    if again is None or not np.array_equal(first, again):
        return "the coded data ends before the image does (the decoder filled the rest with grey)"
    return first


def _pillow_jpeg(data: bytes) -> np.ndarray | None:
    """A JPEG decoded by Pillow to gray (L kept; colour through RGB, converted like OpenCV's BGR2GRAY); None when
    Pillow fails. JpegImageFile is built directly: the sizes are already checked, and Image.open's own
    decompression-bomb warning would fire for legitimate 90-100 Mpx images."""
    from PIL import JpegImagePlugin

    try:
        with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            array = np.asarray(im)
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, ... on corrupt data
        return None
    return array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
