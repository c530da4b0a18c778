"""Training augmentation for other hospitals (albumentations): zoom, shift and rotation move image and masks
together; a fluid-like opacity at a lung's base (drawn inside the lung masks, which keep the anatomical lung), edge
enhancement (unsharp mask), local contrast equalization (CLAHE), contrast, brightness, gamma, blur, noise and JPEG
re-compression change the image alone. No horizontal flip:
the heart lies on the patient's left, and a flipped film is not a plausible input.

The photometric changes act on the equalized image the model takes: before the global equalization of the
preprocessing contract, monotonic changes (gamma, contrast, brightness) would be undone by it. Each sample's draw is a
pure function of (seed, epoch, index), so runs are reproducible with any number of workers and resume exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from albumentations.core.transforms_interface import ImageOnlyTransform


class Augmenter:
    """`augmenter(image uint8 [S, S], masks uint8 [3, S, S], seed_sequence) -> (image, masks)`."""

    def __init__(self, options: Mapping[str, Any], size: int):
        import albumentations as A
        import cv2

        self.options = dict(options)
        o = self.options
        geometric = []
        if o.get("aug_scale") or o.get("aug_stretch") or o.get("aug_translate") or o.get("rotation_degrees"):
            s, t, r = (float(o.get("aug_scale", 0)), float(o.get("aug_translate", 0)),
                       float(o.get("rotation_degrees", 0)))
            v = float(o.get("aug_stretch", 0))
            # the two axes' zooms are drawn apart (albumentations' default): the ratio of horizontal extents, the
            # CTR, is unchanged by either; a stretch widens the vertical range only
            geometric.append(A.Affine(scale={"x": (1 - s, 1 + s), "y": (1 - s - v, 1 + s + v)}, keep_ratio=False,
                                      translate_percent=(-t, t), rotate=(-r, r),
                                      interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0))
        # after the moves (it follows the moved lungs), before the film's processing; drawn from its own seed (below)
        self.opacity = BasalOpacity(p=float(o["aug_opacity"])) if o.get("aug_opacity") else None
        if self.opacity is not None:
            geometric.append(self.opacity)
        photometric = []
        if o.get("aug_sharpen"):  # before the intensity changes: the edge enhancement of a processing pipeline
            photometric.append(A.UnsharpMask(blur_limit=(3, 11), sigma_limit=(1.0, 3.0), alpha=(0.3, 1.0),
                                             threshold=0, p=float(o["aug_sharpen"])))
        if o.get("aug_clahe"):
            photometric.append(A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(8, 8), p=float(o["aug_clahe"])))
        if o.get("aug_brightness") or o.get("aug_contrast"):
            photometric.append(A.RandomBrightnessContrast(brightness_limit=float(o.get("aug_brightness", 0)),
                                                          contrast_limit=float(o.get("aug_contrast", 0)), p=0.5))
        if o.get("aug_gamma"):
            g = float(o["aug_gamma"])
            photometric.append(A.RandomGamma(gamma_limit=(100 * (1 - g), 100 * (1 + g)), p=0.5))
        if o.get("aug_blur"):
            photometric.append(A.GaussianBlur(sigma_limit=(0.3, 1.2), blur_limit=0, p=float(o["aug_blur"])))
        if o.get("aug_noise"):
            photometric.append(A.GaussNoise(std_range=(0.0, float(o["aug_noise"])), p=0.5))
        if o.get("aug_jpeg"):
            photometric.append(A.ImageCompression(quality_range=(int(o["aug_jpeg"]), 95), p=0.5))
        self.size = size
        self.transform = A.Compose(geometric + photometric, seed=0)
        self.independent = o.get("aug_draws", "joint") == "independent"

    def __call__(self, image: np.ndarray, masks: np.ndarray, seed: np.random.SeedSequence
                 ) -> tuple[np.ndarray, np.ndarray]:
        transforms = self.transform.transforms
        states = seed.generate_state(2 + len(transforms))  # a prefix: states[0] is generate_state(1)[0]
        self.transform.set_random_seed(int(states[0]))
        # Compose seeds every transform alike, so each takes its turn on the same uniform draw as the others (the
        # 'joint' draws every run so far was made with); the opacity always gets a seed of its own, and with
        # aug_draws 'independent' every other transform too
        if self.opacity is not None:
            self.opacity.set_random_seed(int(states[1]))
        if self.independent:
            for i, t in enumerate(transforms):
                if t is not self.opacity:
                    t.set_random_seed(int(states[2 + i]))
        out = self.transform(image=image, masks=list(masks))
        return np.ascontiguousarray(out["image"], np.uint8), np.stack(out["masks"]).astype(np.uint8)


class BasalOpacity(ImageOnlyTransform):
    """A fluid-like opacity filling the base of one lung or both, as pleural effusion or basal consolidation shows on
    films of sicker patients (portable AP films above all), which the masked training sources rarely hold.

    Below a level drawn between 45% and 90% of the lung's height, the lung (its mask widened by about 2% of the side
    and softened) is blended towards the soft tissue's brightness (the heart's median, else the film's 85th
    percentile) by 40-90%, with a soft upper edge. The masks are not changed: they keep the anatomical lung, so the
    decoder learns to draw the lung's extent, and the ratio its width, under the opacity. A film without lung masks
    is left as it is.
    """

    def __init__(self, p: float = 0.5):
        super().__init__(p=p)

    @property
    def targets_as_params(self) -> list[str]:
        return ["masks"]

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        import cv2

        masks = np.asarray(data["masks"])
        image = np.asarray(data["image"]).reshape(masks.shape[1:])
        size = masks.shape[-1]
        rng = self.random_generator
        which = rng.integers(3)  # left lung, right lung, both
        lungs = [i for i, k in ((1, 0), (2, 1)) if which in (k, 2)]
        alpha = np.zeros(masks.shape[1:], np.float32)
        rows = np.arange(masks.shape[1], dtype=np.float32)[:, None]
        sigma = 0.02 * size
        for i in lungs:
            ys = np.flatnonzero(masks[i].any(axis=1))
            if ys.size < 2:
                continue
            level = ys[0] + rng.uniform(0.45, 0.9) * (ys[-1] - ys[0])
            region = cv2.GaussianBlur((masks[i] > 0).astype(np.float32), (0, 0), sigma)
            region = np.clip(region * 2.0, 0.0, 1.0)  # widened by about sigma, soft at its border
            below = 1.0 / (1.0 + np.exp(-(rows - level) / (0.5 * sigma)))
            alpha = np.maximum(alpha, rng.uniform(0.4, 0.9) * region * below)
        heart = image[masks[0] > 0]
        target = float(np.median(heart)) if heart.size else float(np.percentile(image, 85))
        return {"alpha": alpha, "target": target}

    def apply(self, img: np.ndarray, alpha: np.ndarray, target: float, **params) -> np.ndarray:
        a = alpha.reshape(alpha.shape + (1,) * (img.ndim - 2))
        out = img.astype(np.float32) * (1.0 - a) + target * a
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()
