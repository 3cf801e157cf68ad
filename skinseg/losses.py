"""Segmentation losses, computed in fp32 even under autocast.

All take logits and 0/1 targets of shape B x C x H x W and return a scalar. Region losses (dice, jaccard,
tversky, log_jaccard) are computed per attribute over the whole batch (nnU-Net's batch dice), then averaged
with optional per-attribute weights; micro_jaccard pools the attributes too, as the leaderboard's overall score.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from skinseg.config import Config

SMOOTH = 1.0


def _weighted_mean(per_class: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_class.mean()
    return (per_class * weights).sum() / weights.sum()


def soft_dice_loss(logits, target, weights=None, smooth: float = SMOOTH):
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + t.sum((0, 2, 3))
    return _weighted_mean(1 - (2 * inter + smooth) / (denom + smooth), weights)


def _soft_overlap(logits, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft intersection and union per attribute, summed over the whole batch."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    inter = (p * t).sum((0, 2, 3))
    return inter, p.sum((0, 2, 3)) + t.sum((0, 2, 3)) - inter


def soft_jaccard_loss(logits, target, weights=None, smooth: float = SMOOTH):
    inter, union = _soft_overlap(logits, target)
    return _weighted_mean(1 - (inter + smooth) / (union + smooth), weights)


def log_jaccard_loss(logits, target, weights=None, smooth: float = SMOOTH):
    """-log of the batch-pooled soft Jaccard per attribute (Chen et al., ISIC 2018 Task 2, 5th place): steep
    where the overlap is small, so attributes the model still misses weigh more than with 1 - Jaccard."""
    inter, union = _soft_overlap(logits, target)
    return _weighted_mean(-torch.log((inter + smooth) / (union + smooth)), weights)


def micro_jaccard_loss(logits, target, weights=None, smooth: float = SMOOTH):
    """1 - soft Jaccard pooled over the batch *and* the attributes: the shape of the leaderboard's overall
    score (sums of per-pixel-normalized TP/FP/FN over all images and attributes; images of one batch share a
    size). ``weights`` scale each attribute's soft counts."""
    inter, union = _soft_overlap(logits, target)
    if weights is not None:
        inter, union = inter * weights, union * weights
    return 1 - (inter.sum() + smooth) / (union.sum() + smooth)


def tversky_loss(logits, target, weights=None, alpha: float = 0.3, beta: float = 0.7, smooth: float = SMOOTH):
    """Tversky: alpha weighs false positives, beta false negatives (beta > alpha favours recall)."""
    p = torch.sigmoid(logits.float())
    t = target.float()
    tp = (p * t).sum((0, 2, 3))
    fp = (p * (1 - t)).sum((0, 2, 3))
    fn = ((1 - p) * t).sum((0, 2, 3))
    return _weighted_mean(1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth), weights)


def bce_loss(logits, target, weights=None, pos_weight: torch.Tensor | None = None):
    pw = None if pos_weight is None else pos_weight.view(1, -1, 1, 1).to(logits.device)
    per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pw, reduction="none")
    return _weighted_mean(per.mean((0, 2, 3)), weights)


def focal_loss(logits, target, weights=None, gamma: float = 2.0, alpha: float = 0.25):
    """Sigmoid focal loss (Lin et al. 2017); alpha weighs positives, 1 - alpha negatives; alpha < 0 disables it."""
    x, t = logits.float(), target.float()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return _weighted_mean(loss.mean((0, 2, 3)), weights)


class CombinedLoss(nn.Module):
    """Weighted sum of named losses, e.g. ``{"bce": 1.0, "dice": 1.0}``, plus the presence BCE of the aux head.

    Args:
        terms: loss name -> weight.
        attribute_weights: optional per-attribute weights for every term.
        pos_weight: optional per-attribute positive weight for bce.
        aux_weight: weight of the presence BCE when the model returns presence logits.
    """

    def __init__(self, terms: dict[str, float], attribute_weights=None, pos_weight=None,
                 focal_gamma: float = 2.0, focal_alpha: float = 0.25, tversky_alpha: float = 0.3,
                 tversky_beta: float = 0.7, aux_weight: float = 0.2):
        super().__init__()
        self.terms = {k: float(v) for k, v in terms.items() if v}
        unknown = set(self.terms) - set(LOSS_FUNCTIONS)
        if unknown:
            raise ValueError(f"unknown loss(es) {sorted(unknown)}; valid: {', '.join(LOSS_FUNCTIONS)}")
        self.register_buffer("weights", None if attribute_weights is None else torch.tensor(attribute_weights))
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(pos_weight))
        self.options = {
            "focal": {"gamma": focal_gamma, "alpha": focal_alpha},
            "tversky": {"alpha": tversky_alpha, "beta": tversky_beta},
            "bce": {"pos_weight": None},
        }
        self.aux_weight = aux_weight

    @classmethod
    def from_config(cls, cfg: Config) -> "CombinedLoss":
        return cls(cfg.loss, cfg.attribute_weights, cfg.pos_weight, cfg.focal_gamma, cfg.focal_alpha,
                   cfg.tversky_alpha, cfg.tversky_beta, cfg.aux_weight)

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        """``output``: mask logits, ``(mask logits, presence logits)``, or with deep supervision ``(mask logits,
        presence logits or None, [logits at 1/2, 1/4, ... resolution])``. Each lower resolution is scored against
        the target area-averaged to its size (the fraction of each cell an attribute covers: a thin streak stays
        visible where nearest-neighbour down-sampling would drop it), with nnU-Net's weights 1, 1/2, 1/4, ...
        normalised to sum to 1."""
        logits, presence, deep = (*output, [])[:3] if isinstance(output, (tuple, list)) else (output, None, [])
        with torch.autocast(device_type=logits.device.type, enabled=False):
            total = self._masks(logits, target)
            if deep:
                scale_weights = [0.5**k for k in range(len(deep) + 1)]
                total = total * scale_weights[0]
                for w, small in zip(scale_weights[1:], deep):
                    total = total + w * self._masks(small, F.interpolate(target.float(), size=small.shape[-2:],
                                                                         mode="area"))
                total = total / sum(scale_weights)
            if presence is not None and self.aux_weight:
                has = (target.flatten(2).amax(-1) > 0.5).float()
                total = total + self.aux_weight * F.binary_cross_entropy_with_logits(presence.float(), has)
        return total

    def _masks(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = None if self.weights is None else self.weights.float()
        total = logits.new_zeros((), dtype=torch.float32)
        for name, w in self.terms.items():
            opts = dict(self.options.get(name, {}))
            if name == "bce":
                opts["pos_weight"] = None if self.pos_weight is None else self.pos_weight.float()
            total = total + w * LOSS_FUNCTIONS[name](logits, target, weights, **opts)
        return total


LOSS_FUNCTIONS = {
    "bce": bce_loss,
    "dice": soft_dice_loss,
    "jaccard": soft_jaccard_loss,
    "log_jaccard": log_jaccard_loss,
    "micro_jaccard": micro_jaccard_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
}
