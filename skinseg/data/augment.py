"""albumentations pipelines: train (geometry + mild colour jitter, unless ``augment_on: gpu`` moves those to
the device) and eval (normalization only)."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from skinseg.config import Config  # noqa: E402

# Per-sample OpenCV calls on 256 px images gain nothing from OpenCV's own thread pool, and on a many-core node
# every DataLoader worker (and the main process) starting one thread per core only adds contention.
cv2.setNumThreads(1)


def eval_transform(cfg: Config) -> A.Compose:
    """Normalization (:meth:`Config.normalization`), then CHW tensors (masks too)."""
    mean, std = cfg.normalization()
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2(transpose_mask=True)])


def train_transform(cfg: Config) -> A.Compose:
    """Random crop (``crop_size``), flips, 90-degree and free rotations, affine scale, mild colour jitter, and
    optionally nnU-Net's gamma, blur, noise and low-resolution steps (``aug_gamma_p`` ... ``aug_lowres_p``).

    Each step has its own probability in the config (``aug_*_p``); a probability of 0 drops the step.
    With ``crop_size`` set, training sees random ``crop_size`` windows of the ``image_size`` image (full detail
    at the cost of a smaller input), while evaluation (``eval_transform``) keeps whole images.
    With ``augment_on: gpu`` the flips, rotations, scale and colour jitter are left out here: the trainer applies
    them to whole batches on the device (:class:`skinseg.data.batch_augment.BatchAugment`). The crop and the
    nnU-Net steps stay here: the crop sets the batch's size, and the nnU-Net steps change the image only (no pixel
    moves), so running them before the geometry and colour jitter instead of after keeps image and masks aligned.
    """
    steps = []
    if cfg.crop_size is not None and cfg.crop_size < cfg.image_size:
        steps.append(_crop(cfg.crop_size, cfg.crop_foreground_p))
    if cfg.augment_on == "cpu":
        steps += _geometry_and_colour(cfg)
    # nnU-Net's photometric set (its default ranges, for 0..255 images): image only, masks untouched
    if cfg.aug_gamma_p > 0:
        steps.append(A.RandomGamma(gamma_limit=(70, 150), p=cfg.aug_gamma_p))
    if cfg.aug_blur_p > 0:
        steps.append(A.GaussianBlur(blur_limit=0, sigma_limit=(0.5, 1.0), p=cfg.aug_blur_p))
    if cfg.aug_noise_p > 0:
        steps.append(A.GaussNoise(std_range=(0.0, 0.05), p=cfg.aug_noise_p))
    if cfg.aug_lowres_p > 0:  # simulated low resolution: nearest-neighbour down to 50-100%, cubic back up
        steps.append(A.Downscale(scale_range=(0.5, 1.0), p=cfg.aug_lowres_p,
                                 interpolation_pair={"downscale": cv2.INTER_NEAREST, "upscale": cv2.INTER_CUBIC}))
    mean, std = cfg.normalization()
    return A.Compose(steps + [A.Normalize(mean=mean, std=std), ToTensorV2(transpose_mask=True)])


class ForegroundCrop(A.CropNonEmptyMaskIfExists):
    """nnU-Net's foreground crop: an attribute drawn at random among those the image holds, then a random pixel
    of it, and a crop window that contains that pixel at a random place (a random crop where the image holds
    none). albumentations' own version draws the pixel from all attributes at once, so on ISIC the pigment
    network (78% of the positive area) would take most of the crops."""

    def _preprocess_mask(self, mask: np.ndarray) -> np.ndarray:
        mask = super()._preprocess_mask(mask)
        if mask.ndim == 3:
            present = np.flatnonzero(mask.any(axis=(0, 1)))
            if len(present):
                return mask[..., self.py_random.choice(present.tolist())]
        return mask


def _crop(size: int, foreground_p: float) -> A.BasicTransform:
    """A random ``size`` crop; with ``foreground_p`` > 0 that share of the crops is a :class:`ForegroundCrop`."""
    if foreground_p <= 0:
        return A.RandomCrop(size, size, p=1.0)
    if foreground_p >= 1:
        return ForegroundCrop(size, size, p=1.0)
    return A.OneOf([ForegroundCrop(size, size, p=foreground_p), A.RandomCrop(size, size, p=1 - foreground_p)], p=1.0)


def _geometry_and_colour(cfg: Config) -> list[A.BasicTransform]:
    """The per-sample flips, rotations, scale and colour jitter of ``augment_on: cpu``."""
    steps = []
    if cfg.aug_flip_p > 0:
        steps += [A.HorizontalFlip(p=cfg.aug_flip_p), A.VerticalFlip(p=cfg.aug_flip_p)]
    if cfg.aug_rotate90_p > 0:
        steps.append(A.RandomRotate90(p=cfg.aug_rotate90_p))
    if cfg.aug_rotate_p > 0:
        steps.append(A.Rotate(limit=cfg.rotate_limit, border_mode=cv2.BORDER_REFLECT_101, p=cfg.aug_rotate_p))
    if cfg.aug_scale_p > 0:
        steps.append(
            A.Affine(scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit), border_mode=cv2.BORDER_REFLECT_101,
                     p=cfg.aug_scale_p)
        )
    if cfg.aug_color_p > 0:
        steps.append(
            A.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, saturation=0.0, hue=cfg.hue,
                          p=cfg.aug_color_p)
        )
    return steps
