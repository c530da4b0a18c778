"""The torch side of the data: a Dataset over `Sample`s that yields exactly what the exported model takes.

Each image is read with cxr.runtime.imaging.read_image and preprocessed with cxr.runtime.preprocess.preprocess_image
(the one contract, never reimplemented here), giving uint8 [1, S, S]. Training adds a random rotation of up to N
degrees on the uint8 image; the angle is a pure function of (seed, epoch, index), so augmentation is the same with any
number of workers and an interrupted run resumes with the very same angles.

An image that cannot be read never crashes a run and is never dropped silently: the cache pass (`preload`) reports
and drops it up front; without a cache, `__getitem__` returns ok=False for it (logged with its path) and the loop masks
it out and counts it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cxr.runtime.preprocess import PreprocessConfig, preprocess_image
from cxr.train.errors import TrainError

log = logging.getLogger(__name__)

READ_ERRORS = (OSError, ValueError)  # plus cxr.runtime.errors.ImageError, which callers catch via load_preprocessed


def load_preprocessed(path, preprocess: PreprocessConfig) -> np.ndarray:
    """Read one file and apply the preprocessing contract: uint8 [S, S]. Raises ImageError/ValueError/OSError."""
    from cxr.runtime.imaging import read_image

    return preprocess_image(read_image(path), preprocess)


def _image_errors() -> tuple[type[BaseException], ...]:
    from cxr.runtime.errors import ImageError

    return (ImageError, *READ_ERRORS)


def preload(samples: Sequence, preprocess: PreprocessConfig, workers: int = 2
            ) -> tuple[dict[int, np.ndarray], list[dict[str, str]]]:
    """Read and preprocess every sample once (threads: decoding releases the GIL).

    Returns (cache: sample index -> uint8 [S, S], failures: [{"path", "error"}]). Failures are logged, one line each.
    """
    errors = _image_errors()

    def one(i: int):
        try:
            return i, load_preprocessed(samples[i].path, preprocess), None
        except errors as exc:
            return i, None, str(exc)

    cache: dict[int, np.ndarray] = {}
    failures: list[dict[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, image, err in pool.map(one, range(len(samples))):
            if err is None:
                cache[i] = image
            else:
                log.warning("skipping unreadable image %s: %s", samples[i].path, err)
                failures.append({"path": str(samples[i].path), "error": err})
    return cache, failures


def load_masks(paths, size: int) -> np.ndarray:
    """Three mask files -> uint8 0/1 [3, size, size]: each resized like the image (INTER_AREA) and thresholded at
    128 (the masks are 8-bit and anti-aliased). Raises ValueError naming a file that cannot be read."""
    from cxr.runtime.errors import ImageError
    from cxr.runtime.imaging import read_image
    from cxr.runtime.preprocess import PreprocessConfig, resize, to_uint8

    out = np.zeros((3, size, size), np.uint8)
    config = PreprocessConfig(size=size)
    for i, path in enumerate(paths):
        try:
            gray = to_uint8(read_image(path), config)
        except (ImageError, OSError, ValueError) as exc:
            raise TrainError(f"mask {path}: cannot be read ({exc})") from None
        out[i] = resize(gray, config) >= 128
    return out


def preload_masks(samples: Sequence, size: int, workers: int = 2) -> dict[int, np.ndarray]:
    """Masks of every sample that has them: sample index -> uint8 0/1 [3, S, S]."""
    todo = [i for i, s in enumerate(samples) if getattr(s, "masks", None)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(todo, pool.map(lambda i: load_masks(samples[i].masks, size), todo)))


def rotation_angle(seed: int, epoch: int, index: int, max_degrees: float) -> float:
    """The training rotation of sample `index` in `epoch`: uniform in [-max_degrees, max_degrees], seeded."""
    if max_degrees <= 0:
        return 0.0
    rng = np.random.default_rng([seed, epoch, index])
    return float(rng.uniform(-max_degrees, max_degrees))


def rotate_uint8(image: np.ndarray, degrees: float, nearest: bool = False) -> np.ndarray:
    """Rotate uint8 [S, S] about its centre (bilinear, corners filled with 0, as torchvision's RandomRotation fill;
    `nearest` for masks)."""
    if degrees == 0.0:
        return image
    h, w = image.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class CxrDataset(Dataset):
    """Samples -> (image uint8 [1, S, S], label float32 [], ok bool [], index int64 []) and, when `masks` is given
    (the segmentation head is on), also (masks uint8 [3, S, S], has_mask bool [])."""

    def __init__(self, samples: Sequence, preprocess: PreprocessConfig, *, train: bool = False,
                 rotation_degrees: float = 0.0, seed: int = 0, cache: dict[int, np.ndarray] | None = None,
                 masks: dict[int, np.ndarray] | None = None, augmentation: dict | None = None):
        self.samples = list(samples)
        self.preprocess = preprocess
        self.train = train
        self.rotation_degrees = float(rotation_degrees) if train else 0.0
        self.seed = seed
        self.cache = cache
        self.masks = masks
        self.epoch = 0
        self.augment = None
        if train and augmentation and any(v for k, v in augmentation.items() if k != "rotation_degrees"):
            from cxr.train.augment import Augmenter

            self.augment = Augmenter({**augmentation, "rotation_degrees": self.rotation_degrees}, preprocess.size)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's DataLoader iterator is created (workers copy the dataset then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> np.ndarray:
        return np.array([int(s.label) for s in self.samples], np.int64)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        ok = True
        if self.cache is not None and index in self.cache:
            image = self.cache[index]
        else:
            try:
                image = load_preprocessed(sample.path, self.preprocess)
            except _image_errors() as exc:
                log.warning("unreadable image %s left out of this batch: %s", sample.path, exc)
                image = np.zeros((self.preprocess.size, self.preprocess.size), np.uint8)
                ok = False
        size = self.preprocess.size
        mask = None if self.masks is None else self.masks.get(index)
        has_mask = ok and mask is not None
        mask = mask if has_mask else np.zeros((3, size, size), np.uint8)
        if ok and self.augment is not None:
            image, mask = self.augment(image, mask, np.random.SeedSequence([self.seed, self.epoch, index]))
        elif ok and self.rotation_degrees > 0:
            angle = rotation_angle(self.seed, self.epoch, index, self.rotation_degrees)
            image = rotate_uint8(image, angle)
            if has_mask:
                mask = np.stack([rotate_uint8(m, angle, nearest=True) for m in mask])
        out = (torch.from_numpy(np.ascontiguousarray(image))[None], torch.tensor(float(sample.label)),
               torch.tensor(ok), torch.tensor(index, dtype=torch.int64))
        if self.masks is None:
            return out
        return out + (torch.from_numpy(np.ascontiguousarray(mask)), torch.tensor(has_mask))
