"""albumentations pipelines: train (geometry + mild colour jitter) and eval (normalization only)."""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from skinseg.config import Config  # noqa: E402


def eval_transform(cfg: Config) -> A.Compose:
    """Normalization (:meth:`Config.normalization`), then CHW tensors (masks too)."""
    mean, std = cfg.normalization()
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2(transpose_mask=True)])


def train_transform(cfg: Config) -> A.Compose:
    """Random crop (``crop_size``), flips, 90-degree and free rotations, affine scale, mild colour jitter.

    Each step has its own probability in the config (``aug_*_p``); a probability of 0 drops the step.
    With ``crop_size`` set, training sees random ``crop_size`` windows of the ``image_size`` image (full detail
    at the cost of a smaller input), while evaluation (``eval_transform``) keeps whole images.
    """
    steps = []
    if cfg.crop_size is not None and cfg.crop_size < cfg.image_size:
        steps.append(A.RandomCrop(cfg.crop_size, cfg.crop_size, p=1.0))
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
    mean, std = cfg.normalization()
    return A.Compose(steps + [A.Normalize(mean=mean, std=std), ToTensorV2(transpose_mask=True)])
