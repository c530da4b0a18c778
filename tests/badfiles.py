"""Generated image files for tests: broken files with the error code each must give, and small valid ones.

Nothing here needs ../shared/data: images are numpy gradients written with cv2, DICOMs are written with pydicom.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from cxr.runtime import errors


def chest_like(height: int = 256, width: int = 256, dtype=np.uint8) -> np.ndarray:
    """A chest-like gray image: bright body in the middle, dark border, a little texture; never constant."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    r = np.sqrt(((yy - cy) / (0.45 * height)) ** 2 + ((xx - cx) / (0.4 * width)) ** 2)
    body = np.clip(1.0 - r, 0.0, 1.0)
    texture = 0.05 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = np.clip(0.1 + 0.8 * body + texture, 0.0, 1.0)
    top = np.iinfo(dtype).max
    return np.rint(img * top).astype(dtype)


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("cv2 could not encode a PNG")
    return buf.tobytes()


def _jpeg_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("cv2 could not encode a JPEG")
    return buf.tobytes()


def _webp_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".webp", image)
    # an OpenCV built without libwebp: a WebP header is enough, cxr refuses the format from its signature
    return buf.tobytes() if ok else b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG signature and an IHDR (8-bit gray) with a valid CRC claiming width x height, a token IDAT, and IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2",
                frames: int = 1, extra: dict | None = None, transfer_syntax: str | None = None,
                pixel_data: bytes | None = None) -> Path:
    """Write a DICOM, by default uncompressed (explicit VR little endian); `pixels` [H, W] or [F, H, W] uint8/uint16,
    or None for a file without PixelData (rows/columns then 256). `pixel_data` replaces the PixelData bytes (e.g.
    encapsulated frames for a compressed `transfer_syntax`); `extra` sets further attributes."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if pixels is None:
        ds.Rows, ds.Columns = 256, 256
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    else:
        bits = 8 if pixels.dtype == np.uint8 else 16
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = np.ascontiguousarray(pixels).tobytes() if pixel_data is None else pixel_data
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write broken or unusable image files into `folder`; return {filename: expected ImageError code}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = _png_bytes(chest_like())
    jpeg = _jpeg_bytes(chest_like())
    files: dict[str, tuple[bytes | None, str]] = {
        "empty.png": (b"", errors.NOT_AN_IMAGE),
        "truncated.png": (png[: len(png) // 2], errors.TRUNCATED),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], errors.TRUNCATED),
        "notes.png": (b"These are my notes, not an image.\n" * 20, errors.NOT_AN_IMAGE),
        "random.dcm": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                       errors.NOT_AN_IMAGE),
        "tiny.png": (_png_bytes(np.full((1, 1), 200, np.uint8)), errors.TOO_SMALL),
        "constant.png": (_png_bytes(np.full((256, 256), 128, np.uint8)), errors.BLANK),
        "huge.png": (huge_png_bytes(), errors.TOO_LARGE),
        "scan.webp": (_webp_bytes(chest_like()), errors.UNSUPPORTED),  # a real image in a format cxr refuses
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    write_dicom(folder / "nopixels.dcm", None)
    write_dicom(folder / "multiframe.dcm", np.stack([chest_like(64, 64)] * 3), frames=3)
    expected = {name: code for name, (_, code) in files.items()}
    expected["nopixels.dcm"] = errors.DICOM_NO_PIXELS
    expected["multiframe.dcm"] = errors.DICOM_UNSUPPORTED
    return expected


def write_good_files(folder: Path) -> list[str]:
    """Write small valid images of different kinds into `folder`; return their file names (sorted)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gray8 = chest_like(256, 224)
    gray16 = chest_like(240, 256, np.uint16)
    rgb = cv2.cvtColor(chest_like(200, 200), cv2.COLOR_GRAY2BGR)
    rgba = cv2.cvtColor(chest_like(128, 128), cv2.COLOR_GRAY2BGRA)
    (folder / "gray8.png").write_bytes(_png_bytes(gray8))
    (folder / "gray16.png").write_bytes(_png_bytes(gray16))
    (folder / "rgb.jpg").write_bytes(_jpeg_bytes(rgb))
    (folder / "rgba.png").write_bytes(_png_bytes(rgba))
    write_dicom(folder / "mono2.dcm", chest_like(128, 160, np.uint16))
    write_dicom(folder / "IM0001", chest_like(96, 96))  # extensionless DICOM, as scanners often write them
    return sorted(p.name for p in folder.iterdir())
