"""Read any supported image file into a 2-D grayscale array (step 1 of the preprocessing contract).

`read_image(path)` returns uint8 or uint16 [H, W], C-contiguous, or raises `ImageError(code, path, message)`; it never
returns a half-decoded image and never lets a cv2, pydicom or OS exception escape untyped.

Formats are recognised by their bytes, not their names (a DICOM named .png is read as DICOM; text named .png is
`not_an_image`). Sizes are checked from the header before anything is decoded (`MIN_SIDE`, `MAX_PIXELS`).

PNG, JPEG, TIFF, BMP (OpenCV, IMREAD_UNCHANGED, so EXIF orientation is ignored and a TIFF gives its first page):
    8- and 16-bit gray kept as they are; colour to gray with cv2.cvtColor (BGR2GRAY; BGRA2GRAY drops alpha, so a
    transparent pixel counts with its stored colour); palette PNGs arrive as colour. Float or 32-bit images are
    `unsupported`. A PNG without IEND, a JPEG without an EOI marker after its scan, or a decoder failure on a file
    with a valid signature is `truncated`.
DICOM (pydicom; single frame, SamplesPerPixel 1, MONOCHROME1/2, any transfer syntax pydicom can decode here):
    pixel_array (pydicom applies BitsStored and the sign), then the modality LUT (Rescale Slope/Intercept or Modality
    LUT Sequence), then the first VOI LUT or window when present, then MONOCHROME1 is inverted so that high values are
    bright body as in MONOCHROME2. Mapping to integers:
      * 8-bit unsigned pixels with no rescale, no LUT and no window are returned as uint8 unchanged
        (MONOCHROME1: (2**BitsStored - 1) - value);
      * everything else is mapped linearly from its own [min, max] (after windowing and inversion) onto uint16
        0..65535, rounded to nearest.
    The Presentation LUT Shape is ignored (for MONOCHROME1 it restates the inversion).
A zero-byte file is `not_an_image` ('empty file (0 bytes)'); an error from the operating system is `unreadable`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cxr.runtime.errors import (
    BLANK, DICOM_NO_PIXELS, DICOM_UNSUPPORTED, NOT_AN_IMAGE, TOO_LARGE, TOO_SMALL, TRUNCATED, UNREADABLE, UNSUPPORTED,
    ImageError,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
UNSUPPORTED_SUFFIXES = frozenset({".gif", ".webp", ".jp2", ".j2k", ".jpx", ".heic", ".heif", ".avif"})
"""Image formats cxr does not read: such files still become rows (error `unsupported`), never silently skipped."""
MIN_SIDE = 32  # pixels; a side shorter than this is `too_small`
MAX_PIXELS = 100_000_000  # rows * columns above this is `too_large` (checked from the header, before decoding)
MAX_FILE_BYTES = 1 << 30  # files larger than this are `too_large` without being read

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
        with open(path, "rb") as f:
            head = f.read(132)
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
        with open(path, "rb") as f:
            head = f.read(132)
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


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(TOO_LARGE, path, f"file is {size / 2**30:.1f} GiB, more than the {MAX_FILE_BYTES >> 30} "
                             "GiB limit")
        with open(path, "rb") as f:
            data = f.read()
    except ImageError:
        raise
    except OSError as e:
        raise ImageError(UNREADABLE, path, f"cannot read the file: {e.strerror or e}") from e
    if not data:
        raise ImageError(NOT_AN_IMAGE, path, "empty file (0 bytes)")
    return data


def _unknown_bytes_message(path: Path, data: bytes) -> str:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return "named like DICOM but is not DICOM (no 'DICM' marker at byte 128)"
    return "not a PNG, JPEG, TIFF, BMP or DICOM file (unrecognised content)"


def _check_size(path: Path, rows: int, cols: int) -> None:
    if rows * cols > MAX_PIXELS:
        raise ImageError(TOO_LARGE, path, f"image is {cols}x{rows} pixels, more than the limit of {MAX_PIXELS:,}")
    if min(rows, cols) < MIN_SIDE:
        raise ImageError(TOO_SMALL, path, f"image is {cols}x{rows} pixels; each side must be at least {MIN_SIDE}")


# ---------------------------------------------------------------- PNG, JPEG, TIFF, BMP (OpenCV)

def _read_raster(path: Path, data: bytes, kind: str) -> np.ndarray:
    name = kind.upper()
    header = {"png": _png_header, "jpeg": _jpeg_header, "tiff": _tiff_header, "bmp": _bmp_header}[kind]
    size = header(path, data)  # raises TRUNCATED when the file visibly ends early
    if size is not None:
        _check_size(path, size[1], size[0])
    with _quiet_opencv():
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as e:
            image, detail = None, str(e).strip().splitlines()[-1]
        else:
            detail = ""
    if image is None:
        raise ImageError(TRUNCATED, path, f"{name} data is corrupt or truncated; the decoder failed {detail}".strip())
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


def _png_header(path: Path, data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(TRUNCATED, path, "PNG ends (or is corrupt) before its IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    _check_size(path, height, width)
    if data.rfind(b"IEND\xaeB`\x82") < 0:
        raise ImageError(TRUNCATED, path, "PNG is truncated: no IEND chunk at the end of the file")
    return width, height


def _jpeg_header(path: Path, data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG markers up to the first scan: size from SOFn; truncated when the file ends before a scan or
    has no EOI marker (FFD9) after it (trailing padding allowed: the EOI is searched from the end)."""
    size = None
    i, n = 2, len(data)
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
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 7 <= n:
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            size = (width, height) if height else None  # height 0: defined later by a DNL marker
            if size:
                _check_size(path, height, width)
        if marker == 0xDA:
            break
        i += length
    if data.rfind(b"\xff\xd9") < i:
        raise ImageError(TRUNCATED, path, "JPEG is truncated: no end-of-image marker after the image data")
    return size


def _tiff_header(path: Path, data: bytes) -> tuple[int, int] | None:
    """Width and length from the first IFD of a classic TIFF; None when not cheaply found (BigTIFF, odd layouts)."""
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] not in (b"*\x00", b"\x00*") or len(data) < 8:
        return None
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        raise ImageError(TRUNCATED, path, "TIFF is truncated: the file ends before its first directory")
    count = struct.unpack(order + "H", data[offset:offset + 2])[0]
    found = {}
    for k in range(count):
        entry = data[offset + 2 + 12 * k: offset + 14 + 12 * k]
        if len(entry) < 12:
            raise ImageError(TRUNCATED, path, "TIFF is truncated: the file ends inside its first directory")
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if typ == 3 else "I"), entry[8:10] if typ == 3 else entry[8:12])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _bmp_header(path: Path, data: bytes) -> tuple[int, int]:
    declared = struct.unpack("<I", data[2:6])[0]
    width, height = struct.unpack("<ii", data[18:26])
    if declared > len(data) and declared - len(data) > 2:  # some writers miscount by a padding word
        raise ImageError(TRUNCATED, path, f"BMP is truncated: {len(data)} of {declared} bytes")
    return abs(width), abs(height)


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
    _check_size(path, int(rows), int(cols))
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError, TypeError):
        available = False
    if not available:
        raise ImageError(DICOM_UNSUPPORTED, path, f"no decoder installed for transfer syntax {syntax_name} ({syntax})")
    bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
    if not syntax.is_compressed:
        expected = int(rows) * int(cols) * max(bits_allocated, 1) // 8
        if len(ds.PixelData) < expected:
            raise ImageError(TRUNCATED, path, f"DICOM is truncated: {len(ds.PixelData)} of {expected} bytes of pixel "
                             "data")
    try:
        pixels = ds.pixel_array
    except OSError as e:  # Pillow reports a cut-short JPEG as OSError
        code = TRUNCATED if "truncated" in str(e).lower() else DICOM_UNSUPPORTED
        raise ImageError(code, path, f"cannot decode {syntax_name} pixel data: {e}") from e
    if pixels.ndim != 2:
        raise ImageError(DICOM_UNSUPPORTED, path, f"DICOM pixel array has shape {pixels.shape}, not one 2-D frame")
    if pixels.dtype.kind == "f":
        raise ImageError(UNSUPPORTED, path, "DICOM with floating-point pixel data is not supported")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
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
            values = values * np.float32(slope) + np.float32(intercept)
    if has_voi:
        values = _apply_voi(path, values, ds, apply_voi_lut)
    if inverse:
        values = -values
    lo, hi = float(values.min()), float(values.max())
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
    if width is None or center is None or float(width) < 1:
        log.warning("%s: ignoring invalid DICOM window (center %s, width %s)", path, center, width)
        return values
    # DICOM PS3.3 C.11.2.1.2.1, up to the affine output range (the caller maps [min, max] to uint16 anyway).
    c, w = float(center), float(width)
    out = (values - np.float32(c - 0.5)) * np.float32(1.0 / (w - 1) if w > 1 else 1.0) + np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


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
