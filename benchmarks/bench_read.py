"""Read + preprocess one 1024x1024 image per format, as cxr-score does it: read_image, then resize and equalize."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr.runtime.imaging import read_image
from cxr.runtime.preprocess import PreprocessConfig, preprocess_batch

CONFIG = PreprocessConfig(size=224)
FORMATS = ["png8", "jpeg", "png16", "dicom"]


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    """An uncompressed 12-bit-in-16 MONOCHROME2 DX image, as a detector would write it."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "BENCH"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory, chest_1024) -> dict[str, Path]:
    image, _ = chest_1024
    folder = tmp_path_factory.mktemp("read")
    wide = image.astype(np.uint16) * 16 + np.random.default_rng(0).integers(0, 16, image.shape, dtype=np.uint16)
    paths = {"png8": folder / "chest.png", "jpeg": folder / "chest.jpg", "png16": folder / "chest16.png",
             "dicom": folder / "chest.dcm"}
    cv2.imwrite(str(paths["png8"]), image)
    cv2.imwrite(str(paths["jpeg"]), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(paths["png16"]), wide)
    _write_dicom(paths["dicom"], wide)
    return paths


def _read_and_preprocess(path: Path) -> np.ndarray:
    return preprocess_batch([read_image(path)], CONFIG)


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_preprocess(benchmark, annotate, files, chest_1024, fmt):
    benchmark.group = "read"
    annotate(threads=cv2.getNumThreads(), images=1, format=fmt, pixels="1024x1024",
             file_bytes=files[fmt].stat().st_size, image_source=chest_1024[1])
    out = benchmark.pedantic(_read_and_preprocess, args=(files[fmt],), rounds=20, warmup_rounds=2)
    assert out.shape == (1, 1, 224, 224) and out.dtype == np.uint8
