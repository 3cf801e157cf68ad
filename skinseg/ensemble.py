"""Ensembles of trained checkpoints: probabilities averaged over members, thresholds tuned again on a hold-out.

Members may differ in architecture and input size: each sees the input resized to its own ``image_size`` and its
logits are resized back before the sigmoid probabilities are averaged. The ensemble file (written and read by
:mod:`skinseg.checkpoint`) holds every member's config and weights plus the thresholds tuned for the ensemble,
so ``skinseg evaluate`` and ``skinseg predict`` take it like any checkpoint
(``skinseg.evaluation.build_ensemble`` makes it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skinseg.config import Config
from skinseg.errors import ConfigError
from skinseg.inference import split_output

_EPS = 1e-6


class ModelEnsemble(nn.Module):
    """Mean of the members' sigmoid probabilities, returned as logits (so TTA, thresholds and scoring apply)."""

    def __init__(self, members: list[nn.Module], sizes: list[int], size: int):
        super().__init__()
        if not members or len(members) != len(sizes):
            raise ValueError("an ensemble needs one input size per member, and at least one member")
        self.members = nn.ModuleList(members)
        self.sizes, self.size = list(sizes), size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        probs = 0.0
        for member, s in zip(self.members, self.sizes):
            hw = (round(h * s / self.size), round(w * s / self.size))
            xi = x if hw == (h, w) else F.interpolate(x, size=hw, mode="bilinear", antialias=True,
                                                      align_corners=False)
            logits, _ = split_output(member(xi))
            logits = logits.float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = probs + torch.sigmoid(logits)
        return torch.logit((probs / len(self.members)).clamp(_EPS, 1 - _EPS))


def ensemble_config(configs: list[Config], tune_split: str) -> Config:
    """The config an ensemble runs under: the members' common data settings at the largest input size.

    Raises ConfigError when members cannot be combined, or when ``tune_split`` is ``dev`` and the members
    did not hold out the same dev images (tuning on images a member trained on would inflate the score).
    """
    if len(configs) < 2:
        raise ConfigError("an ensemble needs at least two checkpoints")
    first = configs[0]
    for name in ("classes", "resize_mode", "mean", "std"):
        values = {str(getattr(c.resolved(), name)) for c in configs}
        if len(values) > 1:
            raise ConfigError(f"ensemble members differ in {name} ({', '.join(sorted(values))}); "
                              "combine checkpoints trained with the same value")
    if tune_split == "dev":
        holdouts = {(c.dev_fraction, c.holdout_seed, c.train_split) for c in configs}
        if len(holdouts) > 1 or first.dev_fraction == 0.0:
            raise ConfigError(
                "tuning on dev needs members that all held out the same dev split (same dev_fraction > 0, "
                f"dev_seed (else seed) and train_split); got (dev_fraction, dev seed, train_split) = "
                f"{sorted(holdouts)}. Tune on val instead (--tune-split val), or train members with one dev_seed."
            )
    primary = max(configs, key=lambda c: c.image_size)
    return primary.replace(aux_head=False, crop_size=None)
