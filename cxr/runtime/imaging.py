"""Read any supported image file into a 2-D grayscale array (step 1 of the preprocessing contract).

`read_image(path)` returns uint8 or uint16 [H, W], C-contiguous, or raises `ImageError(code, path, message)`; it never
returns a half-decoded image and never lets a cv2, pydicom or OS exception escape untyped.

Formats are recognised by their bytes, not their names (a DICOM named .png is read as DICOM; text named .png is
`not_an_image`). Sizes are checked from the header before anything is decoded, for every format (PNG IHDR, JPEG SOF,
TIFF/BigTIFF first IFD, BMP, DICOM Rows/Columns/BitsAllocated and an embedded JPEG's own frame): `MIN_SIDE`,
`MAX_SIDE`, `MAX_PIXELS`, and `MAX_DECODED_BYTES` for channels times bytes per sample. Only regular files are read,
at most `MAX_FILE_BYTES` (a FIFO or /dev/zero swapped in is `unreadable`). A JPEG with more than `MAX_JPEG_SCANS`
scans, or any decode running past `MAX_DECODE_SECONDS`, is `too_slow`.

PNG, TIFF, BMP (OpenCV, IMREAD_UNCHANGED, so a TIFF gives its first page) and JPEG (Pillow, see decode_jpeg; EXIF
orientation is ignored either way):
    8- and 16-bit gray kept as they are; colour to gray with cv2.cvtColor (BGR2GRAY; BGRA2GRAY drops alpha, so a
    transparent pixel counts with its stored colour); palette PNGs arrive as colour. Float or 32-bit images are
    `unsupported`, so are JPEGs of 12-bit precision (no decoder here). A PNG without IEND, a JPEG without an EOI
    marker after its scans, a JPEG whose scans miss part of the image (restart intervals, coefficients, or coded
    data that ends before the last block) is `truncated`; a decoder failure on a sound header is `corrupt`.
DICOM (pydicom; single frame, SamplesPerPixel 1, MONOCHROME1/2, any transfer syntax pydicom can decode here):
    pixel_array (pydicom applies BitsStored and the sign), then the modality LUT (Rescale Slope/Intercept or Modality
    LUT Sequence), then the first VOI LUT or window when present, then MONOCHROME1 is inverted so that high values are
    bright body as in MONOCHROME2. Mapping to integers:
      * 8-bit unsigned pixels with no rescale, no LUT and no window are returned as uint8 unchanged
        (MONOCHROME1: (2**BitsStored - 1) - value);
      * everything else is mapped linearly from its own [min, max] (after windowing and inversion) onto uint16
        0..65535, rounded to nearest.
    The Presentation LUT Shape is ignored (for MONOCHROME1 it restates the inversion).
    A non-finite or zero RescaleSlope, or a LUT giving non-finite values, is `bad_dicom` naming the attribute; a
    non-finite window is ignored with a warning like any invalid (Type 3) window; BitsAllocated other than 1, 8, 16
    or 32 is `dicom_unsupported`.
A zero-byte file is `not_an_image` ('empty file (0 bytes)'); an error from the operating system is `unreadable`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import stat
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cxr.runtime.errors import (
    BAD_DICOM,
    BLANK,
    CORRUPT,
    DICOM_NO_PIXELS,
    DICOM_UNSUPPORTED,
    NOT_AN_IMAGE,
    TOO_LARGE,
    TOO_SLOW,
    TOO_SMALL,
    TRUNCATED,
    UNREADABLE,
    UNSUPPORTED,
    ImageError,
)
from cxr.runtime.jpeg_checks import JPEG_UNUSUAL, MAX_JPEG_SCANS, JpegLayout, decode_jpeg, jpeg_layout  # noqa: F401

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
UNSUPPORTED_SUFFIXES = frozenset({".gif", ".webp", ".jp2", ".j2k", ".jpx", ".heic", ".heif", ".avif"})
"""Image formats cxr does not read: such files still become rows (error `unsupported`), never silently skipped."""
MIN_SIDE = 32  # pixels; a side shorter than this is `too_small`
MAX_PIXELS = 100_000_000  # rows * columns above this is `too_large` (checked from the header, before decoding)
MAX_FILE_BYTES = 1 << 30  # files larger than this are `too_large` without being read (and reads stop there)
MAX_SIDE = 65_535  # pixels; a longer side is `too_large` (JPEG's own limit; libpng refuses 1,000,000 anyway)
MAX_DECODED_BYTES = 1 << 29  # rows * columns * channels * bytes per sample above this is `too_large`, from the header
MAX_DECODE_SECONDS = 20.0  # a decode running longer is given up as `too_slow` (it finishes in the background)

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_BMP = b"BM"
_DICOM_SUFFIXES = (".dcm", ".dicom")
_OTHER_IMAGES = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"\x00\x00\x00\x0cjP  \r\n\x87\n": "JPEG 2000",
                 b"\xff\x4f\xff\x51": "JPEG 2000 codestream"}
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}  # ISO-BMFF 'ftyp' major brands


def _sniff(head: bytes) -> str | None:
    """The format the first bytes announce: 'dicom', 'png', 'jpeg', 'tiff', 'bmp', or None."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG):
        return "png"
    if head.startswith(_JPEG):
        return "jpeg"
    if head[:4] in _TIFF:
        return "tiff"
    if head.startswith(_BMP) and len(head) >= 26:
        return "bmp"
    return None


def _other_image(head: bytes) -> str | None:
    """The name of an image format cxr does not read (GIF, WebP, JPEG 2000, HEIC/HEIF/AVIF) that the first bytes
    announce."""
    for magic, name in _OTHER_IMAGES.items():
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return _HEIF_BRANDS[head[8:12]]
    return None


def _refused_format(path: Path, head: bytes) -> str | None:
    """The refused format of a file whose first bytes are `head`: by signature, else by suffix (None for a format
    cxr reads, whatever its name, or for no recognisable image at all)."""
    if _sniff(head) is not None:
        return None
    name = _other_image(head)
    if name is None and path.suffix.lower() in UNSUPPORTED_SUFFIXES:
        name = path.suffix.lower()[1:].upper()
    return name


def unsupported_format(path: Path) -> str | None:
    """The name of the refused image format `path` holds (GIF, WebP, ...), or None. Reads 132 bytes."""
    path = Path(path)
    try:
        head = _read_head(path, 132)
    except OSError:
        head = b""
    return _refused_format(path, head)


def is_image_candidate(path: Path) -> bool:
    """True when `path` should become a row when scoring a folder: a known image suffix (read or refused, see
    UNSUPPORTED_SUFFIXES), or a known signature (DICM at byte 128, PNG, JPEG, TIFF, BMP; GIF, WebP, JPEG 2000) in
    a file with another or no suffix. Reads at most 132 bytes."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() in UNSUPPORTED_SUFFIXES:
        return True
    try:
        head = _read_head(path, 132)
    except OSError:
        # Cannot even sniff it. A DICOM file often has no suffix or a numeric one (IM0001, 1.2.840...3.1): such a
        # file becomes an `unreadable` row naming it, not a silent "non-image". A locked notes.txt stays a non-image.
        return not path.suffix or path.suffix[1:].isdigit()
    return _sniff(head) is not None or _other_image(head) is not None


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file to a C-contiguous 2-D uint8 or uint16 array; raise ImageError for every failure."""
    path = Path(path)
    data = _read_bytes(path)
    kind = _sniff(data[:132])
    if kind == "dicom":
        image = _read_dicom(path, data)
    elif kind is not None:
        image = _read_raster(path, data, kind)
    elif (refused := _refused_format(path, data[:132])) is not None:
        raise ImageError(UNSUPPORTED, path, f"{refused} images are not supported (convert to PNG; cxr reads PNG, "
                                            "JPEG, TIFF, BMP and DICOM)")
    else:
        raise ImageError(NOT_AN_IMAGE, path, _unknown_bytes_message(path, data))
    _check_size(path, *image.shape)
    if image.size and int(image.max()) == int(image.min()):
        raise ImageError(BLANK, path, f"blank image: every pixel has the value {int(image.min())}")
    return np.ascontiguousarray(image)


class _NotAFile(OSError):
    """The path names something other than a regular file (a folder, FIFO, device such as /dev/zero, socket)."""


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def _open_regular(path: Path):
    """Open `path` for reading only when it is a regular file, checked on the opened descriptor (so a file swapped
    for a FIFO or /dev/zero after the walk is refused, not read forever). O_NONBLOCK keeps open() of a FIFO from
    blocking; it has no effect on regular files."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb", closefd=True) as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotAFile(f"{_file_kind(mode)}, not a regular file")
        yield f


def _read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a regular file; OSError otherwise."""
    with _open_regular(path) as f:
        return f.read(size)


def _read_bytes(path: Path) -> bytes:
    """The whole file, at most MAX_FILE_BYTES (the bound holds for a file that grows while it is read)."""
    limit = f"more than the {MAX_FILE_BYTES >> 30} GiB limit"
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(TOO_LARGE, path, f"file is {size / 2**30:.1f} GiB, {limit}")
            data = f.read(MAX_FILE_BYTES + 1)
    except _NotAFile as e:
        raise ImageError(UNREADABLE, path, f"cannot read it: {e}") from e
    except OSError as e:
        raise ImageError(UNREADABLE, path, f"cannot read the file: {e.strerror or e}") from e
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(TOO_LARGE, path, f"file grew while being read to {limit}")
    if not data:
        raise ImageError(NOT_AN_IMAGE, path, "empty file (0 bytes)")
    return data


def _unknown_bytes_message(path: Path, data: bytes) -> str:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return "named like DICOM but is not DICOM (no 'DICM' marker at byte 128)"
    return "not a PNG, JPEG, TIFF, BMP or DICOM file (unrecognised content)"


def _check_size(path: Path, rows: int, cols: int) -> None:
    if max(rows, cols) > MAX_SIDE:
        raise ImageError(TOO_LARGE, path, f"image is {cols}x{rows} pixels; a side longer than {MAX_SIDE:,} pixels is "
                         "not read")
    if rows * cols > MAX_PIXELS:
        raise ImageError(TOO_LARGE, path, f"image is {cols}x{rows} pixels, more than the limit of {MAX_PIXELS:,}")
    if min(rows, cols) < MIN_SIDE:
        raise ImageError(TOO_SMALL, path, f"image is {cols}x{rows} pixels; each side must be at least {MIN_SIDE}")


def _jpeg_header(path: Path, data: bytes) -> JpegLayout:
    return jpeg_layout(path, data, check_header=_check_header)


def _check_header(path: Path, cols: int, rows: int, channels: int = 1, bits: int = 8) -> None:
    """Refuse, before decoding, an image whose header promises more than we will allocate (see _check_size and
    MAX_DECODED_BYTES: a 16-bit RGBA image needs 8 bytes a pixel, a DICOM with BitsAllocated 32 four)."""
    _check_size(path, rows, cols)
    need = rows * cols * max(channels, 1) * max(1, -(-bits // 8))
    if need > MAX_DECODED_BYTES:
        raise ImageError(TOO_LARGE, path, f"image is {cols}x{rows} pixels with {channels} channel(s) of {bits} bits: "
                         f"{need / 2**20:,.0f} MiB to decode, more than the limit of {MAX_DECODED_BYTES >> 20} MiB")


class _Decoder:
    """A long-lived helper thread that runs one decode at a time for one calling thread: starting a thread per image
    cost about 0.2-0.5 ms a file on a busy 2-core host, a fifth of reading a 256 px PNG. It stops when its caller's
    thread ends (the thread-local holding it is dropped) or is abandoned to a runaway decode (see _bounded)."""

    def __init__(self) -> None:
        import queue
        import weakref

        self.pid = os.getpid()  # a forked child (a DataLoader worker) inherits this object but not its thread
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, args=(self._jobs,), name="cxr-decode", daemon=True)
        self.thread.start()
        weakref.finalize(self, self._jobs.put, None)

    @staticmethod
    def _serve(jobs) -> None:
        while (job := jobs.get()) is not None:
            decode, box, done = job
            try:
                box["value"] = decode()
            except BaseException as e:  # handed to the caller's thread, re-raised there
                box["error"] = e
            done.set()

    def run(self, decode, timeout: float) -> dict | None:
        """{'value': ...} or {'error': ...}, or None when `decode` did not finish within `timeout` seconds."""
        box: dict = {}
        done = threading.Event()
        self._jobs.put((decode, box, done))
        return box if done.wait(timeout) else None


_decoders = threading.local()


def _bounded(path: Path, what: str, decode):
    """Run `decode()` in a helper thread and give up after MAX_DECODE_SECONDS with `too_slow`. A C decoder cannot
    be interrupted, so a runaway one finishes in the background (its helper is abandoned: the next file gets a new
    one); the caller gets its error row instead of a stuck run. The header checks (sizes, JPEG scan count) keep
    such cases rare."""
    decoder = getattr(_decoders, "decoder", None)
    if decoder is None or decoder.pid != os.getpid():
        decoder = _decoders.decoder = _Decoder()
    box = decoder.run(decode, MAX_DECODE_SECONDS)
    if box is None:
        _decoders.decoder = None  # busy with the runaway decode; finalized (told to stop after it) when dropped
        raise ImageError(TOO_SLOW, path, f"decoding the {what} took more than {MAX_DECODE_SECONDS:g} s; given up")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------- PNG, JPEG, TIFF, BMP (OpenCV)

def _read_raster(path: Path, data: bytes, kind: str) -> np.ndarray:
    name = kind.upper()
    header = {"png": _png_header, "jpeg": _jpeg_header, "tiff": _tiff_header, "bmp": _bmp_header}[kind]
    info = header(path, data)  # raises TRUNCATED / CORRUPT / TOO_LARGE / TOO_SLOW from the header alone
    image = _bounded(path, f"{name} image", lambda: _decode_raster(data, info if kind == "jpeg" else None))
    if isinstance(image, str):
        raise ImageError(TRUNCATED, path, f"{name} is truncated or corrupt: {image}")
    if image is None:
        code, message = _decode_failure(kind, info)
        raise ImageError(code, path, message)
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(UNSUPPORTED, path, f"{name} with {image.dtype} pixels is not supported (8- or 16-bit only)")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)  # alpha dropped
        else:
            raise ImageError(UNSUPPORTED, path, f"{name} with {channels} channels is not supported")
    if image.ndim != 2:
        raise ImageError(UNSUPPORTED, path, f"{name} decoded to an array of shape {image.shape}, not a 2-D image")
    return image


def _decode_raster(data: bytes, jpeg: JpegLayout | None) -> np.ndarray | str | None:
    """cv2.imdecode, or decode_jpeg for a JPEG: the array, None when the decoder fails, or a string saying why
    the decoded pixels are not all real."""
    if jpeg is not None:
        return decode_jpeg(data, jpeg)
    with _quiet_opencv():
        try:
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            return None


def _decode_failure(kind: str, info) -> tuple[str, str]:
    """The code and message for a file whose header was sound but which OpenCV could not decode."""
    if kind == "jpeg" and info.precision != 8:
        return UNSUPPORTED, (f"{info.precision}-bit JPEG (sample precision {info.precision} in its frame header) "
                             "cannot be decoded by the installed OpenCV; convert it to a 16-bit PNG")
    if kind == "jpeg" and info.frame in JPEG_UNUSUAL:
        return UNSUPPORTED, f"{JPEG_UNUSUAL[info.frame]} JPEG cannot be decoded by the installed OpenCV"
    if kind == "bmp" and info is not None and info[2] not in (0, 1, 2, 3, 6):
        return UNSUPPORTED, f"BMP with compression type {info[2]} (embedded JPEG/PNG or CMYK) is not supported"
    return CORRUPT, f"{kind.upper()} data is corrupt; the decoder failed"


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_previous = None


@contextlib.contextmanager
def _quiet_opencv():
    """Silence OpenCV's own log (decoder warnings) while any thread decodes; the first to enter saves the level and
    the last to leave restores it, so concurrent readers never leave it silenced."""
    global _quiet_depth, _quiet_previous
    api = getattr(getattr(cv2, "utils", None), "logging", None)
    get_level = getattr(api, "getLogLevel", None) or getattr(cv2, "getLogLevel", None)
    set_level = getattr(api, "setLogLevel", None) or getattr(cv2, "setLogLevel", None)
    if get_level is None or set_level is None:
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_previous = get_level()
            set_level(getattr(api, "LOG_LEVEL_SILENT", 0))
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                set_level(_quiet_previous)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}  # colour type -> channels OpenCV returns (palette: up to BGRA)


def _png_header(path: Path, data: bytes) -> None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(TRUNCATED, path, "PNG ends (or is corrupt) before its IHDR header")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ImageError(CORRUPT, path, f"PNG header is invalid (bit depth {depth}, colour type {colour})")
    _check_header(path, width, height, _PNG_CHANNELS[colour], 16 if depth == 16 else 8)
    if data.rfind(b"IEND\xaeB`\x82") < 0:
        raise ImageError(TRUNCATED, path, "PNG is truncated: no IEND chunk at the end of the file")


_TIFF_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8: the types sizes and counts come in


def _tiff_header(path: Path, data: bytes) -> None:
    """Size, samples and bits from the first IFD of a classic TIFF or a BigTIFF, checked before decoding."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    head = 16 if big else 8
    if len(data) < head:
        raise ImageError(TRUNCATED, path, "TIFF is truncated: the file ends inside its header")
    offset = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    count_format, entry_size = ("Q", 20) if big else ("H", 12)
    count_size = struct.calcsize(count_format)
    if offset + count_size > len(data):
        raise ImageError(TRUNCATED, path, "TIFF is truncated: the file ends before its first directory")
    count = struct.unpack(order + count_format, data[offset:offset + count_size])[0]
    table = offset + count_size
    if table + count * entry_size > len(data):
        raise ImageError(TRUNCATED, path, "TIFF is truncated: the file ends inside its first directory")
    found = {}
    for k in range(count):
        entry = data[table + entry_size * k:table + entry_size * (k + 1)]
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257, 258, 277) and typ in _TIFF_TYPES:
            found[tag] = struct.unpack_from(order + _TIFF_TYPES[typ], entry, 12 if big else 8)[0]
    if 256 not in found or 257 not in found:
        raise ImageError(CORRUPT, path, "TIFF has no ImageWidth/ImageLength in its first directory")
    bits = found.get(258, 1) if found.get(277, 1) == 1 else 16  # several samples: the value is an offset; assume 16
    _check_header(path, found[256], found[257], found.get(277, 1), min(bits, 64))


def _bmp_header(path: Path, data: bytes) -> tuple[int, int, int]:
    """(width, height, compression) from a Windows (BITMAPINFOHEADER and later) or OS/2 1.x/2.x header."""
    declared = struct.unpack("<I", data[2:6])[0]
    info = struct.unpack("<I", data[14:18])[0] if len(data) >= 18 else 0
    if info == 12 and len(data) >= 26:  # OS/2 1.x BITMAPCOREHEADER: 16-bit unsigned sizes
        width, height = struct.unpack("<HH", data[18:22])
        compression = 0
    elif info in (16, 40, 52, 56, 64, 108, 124) and len(data) >= 34:
        width, height = struct.unpack("<ii", data[18:26])
        compression = struct.unpack("<I", data[30:34])[0] if info >= 40 else 0
    else:
        raise ImageError(TRUNCATED if len(data) < 54 else CORRUPT, path,
                         f"BMP header is {'truncated' if len(data) < 54 else f'of unknown size ({info} bytes)'}")
    if declared > len(data) and declared - len(data) > 2:  # some writers miscount by a padding word
        raise ImageError(TRUNCATED, path, f"BMP is truncated: {len(data)} of {declared} bytes")
    _check_header(path, abs(width), abs(height), 4)
    return abs(width), abs(height), compression


# ---------------------------------------------------------------- DICOM (pydicom)

def _read_dicom(path: Path, data: bytes) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as e:
        raise ImageError(NOT_AN_IMAGE, path, f"not a valid DICOM file: {e}") from e
    except (EOFError, struct.error) as e:
        raise ImageError(TRUNCATED, path, f"DICOM header is truncated or corrupt: {e}") from e
    except Exception as e:  # pydicom raises many kinds on malformed headers
        raise ImageError(TRUNCATED, path, f"DICOM header is corrupt: {type(e).__name__}: {e}") from e
    try:
        return _dicom_pixels(path, ds, len(data))
    except ImageError:
        raise
    except MemoryError as e:
        raise ImageError(TOO_LARGE, path, "not enough memory to decode the DICOM pixel data") from e
    except Exception as e:
        raise ImageError(DICOM_UNSUPPORTED, path, f"cannot decode the DICOM: {type(e).__name__}: {e}") from e


def _dicom_pixels(path: Path, ds, file_size: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageError(UNSUPPORTED, path, "DICOM with floating-point pixel data is not supported")
        if _dicom_cut_short(ds, file_size):
            raise ImageError(TRUNCATED, path, "DICOM is truncated: the file ends inside an element")
        raise ImageError(DICOM_NO_PIXELS, path, "DICOM file has no pixel data (PixelData element absent)")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(DICOM_UNSUPPORTED, path, f"multi-frame DICOM ({frames} frames) is not supported")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(DICOM_UNSUPPORTED, path, f"colour DICOM ({photometric or 'no PhotometricInterpretation'}, "
                         f"{samples} samples per pixel) is not supported; grayscale only")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise ImageError(DICOM_UNSUPPORTED, path, "DICOM has pixel data but no Rows/Columns")
    bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
    if bits_allocated not in (1, 8, 16, 32):
        raise ImageError(DICOM_UNSUPPORTED, path, f"BitsAllocated {bits_allocated} is not supported for integer "
                         "PixelData (1, 8, 16 or 32)")
    _check_header(path, int(cols), int(rows), 1, bits_allocated)
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError, TypeError):
        available = False
    if not available:
        raise ImageError(DICOM_UNSUPPORTED, path, f"no decoder installed for transfer syntax {syntax_name} ({syntax})")
    if not syntax.is_compressed:
        expected = int(rows) * int(cols) * max(bits_allocated, 1) // 8
        if len(ds.PixelData) < expected:
            raise ImageError(TRUNCATED, path, f"DICOM is truncated: {len(ds.PixelData)} of {expected} bytes of pixel "
                             "data")
    else:
        _check_dicom_frame(path, ds, int(rows), int(cols))
    try:
        pixels = _bounded(path, f"DICOM {syntax_name} pixel data", lambda: ds.pixel_array)
    except OSError as e:  # Pillow reports a cut-short JPEG as OSError
        code = TRUNCATED if "truncated" in str(e).lower() else DICOM_UNSUPPORTED
        raise ImageError(code, path, f"cannot decode {syntax_name} pixel data: {e}") from e
    if pixels.ndim != 2:
        raise ImageError(DICOM_UNSUPPORTED, path, f"DICOM pixel array has shape {pixels.shape}, not one 2-D frame")
    if pixels.dtype.kind == "f":
        raise ImageError(UNSUPPORTED, path, "DICOM with floating-point pixel data is not supported")
    slope, intercept = _dicom_number(path, ds, "RescaleSlope", 1.0), _dicom_number(path, ds, "RescaleIntercept", 0.0)
    if slope == 0:
        raise ImageError(BAD_DICOM, path, "RescaleSlope is 0: every pixel would take the intercept value")
    has_modality = "ModalityLUTSequence" in ds or slope != 1 or intercept != 0
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    inverse = photometric == "MONOCHROME1"
    if pixels.dtype == np.uint8 and not has_modality and not has_voi:
        if inverse:
            top = (1 << min(int(ds.get("BitsStored", 8) or 8), 8)) - 1
            pixels = (top - np.minimum(pixels, top)).astype(np.uint8)
        return pixels
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    else:
        values = pixels.astype(np.float32)
        if has_modality:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
                values = values * np.float32(slope) + np.float32(intercept)
    if has_voi:
        values = _apply_voi(path, values, ds, apply_voi_lut)
    if inverse:
        values = -values
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ImageError(BAD_DICOM, path, f"the modality LUT (RescaleSlope {slope:g}, RescaleIntercept {intercept:g}) "
                         "or VOI LUT gives values that are not finite numbers")
    if hi == lo:
        raise ImageError(BLANK, path, "blank image: every pixel has the same value after the DICOM LUT/window")
    out = (values - np.float32(lo)) * np.float32(65535.0 / (hi - lo))
    return np.rint(out, out=out).astype(np.uint16)


def _apply_voi(path: Path, values: np.ndarray, ds, apply_voi_lut) -> np.ndarray:
    """The first VOI LUT or window. The common LINEAR window is done here in float32 (pydicom's float64 version
    takes ~0.3 s on a 1955x1841 CR); VOI LUT sequences and other window functions go through pydicom."""
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if "VOILUTSequence" in ds or function != "LINEAR":
        return np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if width is None or center is None or not _finite(center, width) or float(width) < 1:
        log.warning("%s: ignoring invalid DICOM window (center %s, width %s)", path, center, width)
        return values
    # DICOM PS3.3 C.11.2.1.2.1, up to the affine output range (the caller maps [min, max] to uint16 anyway).
    c, w = float(center), float(width)
    out = (values - np.float32(c - 0.5)) * np.float32(1.0 / (w - 1) if w > 1 else 1.0) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _finite(*values) -> bool:
    """True when every value is a finite number (a DS of 'NaN' or 'inf' is not a usable window)."""
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _dicom_number(path: Path, ds, keyword: str, default: float) -> float:
    """A numeric DICOM attribute (its first value), `default` when absent or empty; BAD_DICOM naming it when not a
    finite number."""
    value = _first(ds.get(keyword))
    if value is None or value == "":
        return default
    if not _finite(value):
        raise ImageError(BAD_DICOM, path, f"{keyword} is {value!s}, not a finite number")
    return float(value)


def _check_dicom_frame(path: Path, ds, rows: int, cols: int) -> None:
    """An encapsulated JPEG frame is checked like a JPEG file before decoding (its own size, scan count): the
    decoder allocates what the frame header says, whatever Rows/Columns say."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    except Exception as e:  # pydicom raises several kinds on a broken item structure
        raise ImageError(TRUNCATED, path, f"DICOM encapsulated pixel data is corrupt: {type(e).__name__}: {e}") from e
    if not frame.startswith(_JPEG):
        return
    layout = jpeg_layout(path, frame, check_header=_check_header)
    if layout.height and (layout.width, layout.height) != (cols, rows):
        raise ImageError(BAD_DICOM, path, f"Rows/Columns say {cols}x{rows} but the embedded JPEG is "
                         f"{layout.width}x{layout.height}")


def _first(value):
    """The first of a multi-valued DICOM element (several windows may be offered; the first is the default)."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _dicom_cut_short(ds, file_size: int) -> bool:
    """True when the parsed dataset does not end exactly where the file does (pydicom stops quietly at EOF)."""
    from pydicom.dataelem import RawDataElement

    elements = list(ds.values())
    if not elements:
        return True  # nothing after the file meta header
    last = elements[-1]
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return False
    return last.value_tell + last.length != file_size
