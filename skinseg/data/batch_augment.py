"""Batched augmentation on the training device (``augment_on: gpu``): flips, 90-degree rotations, a free rotation
and scale, and brightness/contrast jitter, applied to a whole batch at once.

The DataLoader workers then only crop, run the image-only nnU-Net steps and normalize
(:func:`skinseg.data.augment.train_transform`), which frees the CPUs that the per-sample albumentations
geometry keeps busy. The random draws come from a CPU ``torch.Generator`` (:func:`batch_generator`), so a batch's
augmentation is fixed by the seed, the epoch and the step, whatever the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from skinseg.config import Config

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as albumentations' and torchvision's contrast use


def batch_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` (e.g. seed, rank, epoch, step) through numpy's SeedSequence, so
    nearby keys give unrelated streams."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


@dataclass
class Draws:
    """One batch's random parameters, one entry per sample (CPU tensors); a sample whose coin said no holds the
    identity (no flip, 0 quarter turns, angle 0, scale 1, factors 1)."""

    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    quarter_turns: torch.Tensor  # int64, 0-3
    angle: torch.Tensor  # degrees
    scale: torch.Tensor
    brightness: torch.Tensor  # multiplies the 0-1 image
    contrast: torch.Tensor  # scales the distance to the image's mean grey


class BatchAugment:
    """The ``augment_on: cpu`` geometry and colour jitter of :func:`skinseg.data.augment.train_transform`, per
    sample but computed on the whole batch, on the batch's device.

    Images (Bx3xSxS, normalized) and masks (BxCxSxS, 0/1) get the same geometry: flips and quarter turns are exact
    permutations; the free rotation (within ``rotate_limit``) and scale (within 1 ± ``scale_limit``) form one
    affine matrix per sample, sampled with ``affine_grid`` + ``grid_sample`` (images bilinear, masks nearest so
    they stay exactly 0/1, both with reflection padding). The colour jitter acts on the 0-1 image
    (``x * std + mean``, clamped, then normalized again). Hue jitter is skipped: it needs an RGB-HSV round trip
    for a small shift (0.03 by default), so ``hue`` has no effect here.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        mean, std = cfg.normalization()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.grey = torch.tensor(_GREY, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(images, masks, self.draw(len(images), generator))

    def draw(self, n: int, generator: torch.Generator) -> Draws:
        """Every parameter of ``n`` samples, drawn on the CPU in a fixed order (the same count of draws whatever
        the coins say), so a seed fixes the whole batch."""
        cfg = self.cfg

        def coin(p: float) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=generator)

        hflip, vflip = coin(cfg.aug_flip_p), coin(cfg.aug_flip_p)
        quarter_turns = torch.where(coin(cfg.aug_rotate90_p), torch.randint(0, 4, (n,), generator=generator), 0)
        angle = torch.where(coin(cfg.aug_rotate_p), uniform(-cfg.rotate_limit, cfg.rotate_limit), 0.0)
        scale = torch.where(coin(cfg.aug_scale_p), uniform(1 - cfg.scale_limit, 1 + cfg.scale_limit), 1.0)
        colour = coin(cfg.aug_color_p)
        brightness = torch.where(colour, uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness), 1.0)
        contrast = torch.where(colour, uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast), 1.0)
        return Draws(hflip, vflip, quarter_turns, angle, scale, brightness, contrast)

    def apply(self, images: torch.Tensor, masks: torch.Tensor, d: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmentation ``d`` describes: flips, quarter turns, the affine warp, then the colour jitter. Each
        step runs on only the samples it changes (picked on the CPU, so no wait for the device)."""
        images, masks = _on(d.hflip, lambda t: t.flip(-1), images, masks)
        images, masks = _on(d.vflip, lambda t: t.flip(-2), images, masks)
        for k in (1, 2, 3):
            images, masks = _on(d.quarter_turns == k, lambda t, k=k: t.rot90(k, (-2, -1)), images, masks)
        warped = (d.angle != 0) | (d.scale != 1)
        if warped.any():
            pick = warped.nonzero().squeeze(1)
            grid = F.affine_grid(self.theta(d)[pick].to(images), [len(pick), *images.shape[1:]], align_corners=False)
            pick = pick.to(images.device)
            images = images.index_copy(0, pick, F.grid_sample(images[pick], grid, mode="bilinear",
                                                              padding_mode="reflection", align_corners=False))
            masks = masks.index_copy(0, pick, F.grid_sample(masks[pick], grid.to(masks.dtype), mode="nearest",
                                                            padding_mode="reflection", align_corners=False))
        return self._jitter(images, d), masks

    def theta(self, d: Draws) -> torch.Tensor:
        """Bx2x3 affine matrices (output to input coordinates, as ``affine_grid`` takes them) of the rotation by
        ``angle`` and the scale: identity where both are off. Images are square, so normalized coordinates need
        no aspect correction."""
        a = torch.deg2rad(d.angle)
        cos, sin = torch.cos(a) / d.scale, torch.sin(a) / d.scale
        zero = torch.zeros_like(a)
        return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)

    def _jitter(self, images: torch.Tensor, d: Draws) -> torch.Tensor:
        """Brightness then contrast on the 0-1 image of the samples whose colour coin said yes, as albumentations'
        ColorJitter does (each result clamped to 0-1), normalized again."""
        pick = ((d.brightness != 1) | (d.contrast != 1)).nonzero().squeeze(1)
        if not len(pick):
            return images
        mean, std, grey = self.mean.to(images), self.std.to(images), self.grey.to(images)
        brightness, contrast = (f[pick].to(images).view(-1, 1, 1, 1) for f in (d.brightness, d.contrast))
        pick = pick.to(images.device)
        x = (images[pick] * std + mean).clamp(0, 1)
        x = (x * brightness).clamp(0, 1)
        level = (x * grey).sum(1, keepdim=True).mean((-2, -1), keepdim=True)
        x = ((x - level) * contrast + level).clamp(0, 1)
        return images.index_copy(0, pick, (x - mean) / std)


def _on(pick: torch.Tensor, fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fn`` applied to the samples that ``pick`` (a CPU bool per sample) selects, the others as they were."""
    if not pick.any():
        return tensors
    index = pick.nonzero().squeeze(1).to(tensors[0].device)
    return tuple(t.index_copy(0, index, fn(t[index])) for t in tensors)
