"""Each loss against values computed by hand."""
import math

import pytest
import torch

from skinseg.config import Config
from skinseg.losses import (CombinedLoss, bce_loss, focal_loss, log_jaccard_loss, micro_jaccard_loss,
                            soft_dice_loss, soft_jaccard_loss, tversky_loss)

# one attribute, four pixels; logit 0 -> p = 0.5, logit ln 3 -> p = 0.75
LOGITS = torch.tensor([math.log(3), 0.0, 0.0, -math.log(3)]).view(1, 1, 2, 2)
TARGET = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
P = [0.75, 0.5, 0.5, 0.25]


def test_soft_dice():
    inter = 0.75 + 0.5
    expected = 1 - (2 * inter + 1) / (sum(P) + 2 + 1)
    assert float(soft_dice_loss(LOGITS, TARGET)) == pytest.approx(expected)


def test_soft_jaccard():
    inter = 1.25
    expected = 1 - (inter + 1) / (sum(P) + 2 - inter + 1)
    assert float(soft_jaccard_loss(LOGITS, TARGET)) == pytest.approx(expected)


def test_log_jaccard():
    inter = 1.25
    expected = -math.log((inter + 1) / (sum(P) + 2 - inter + 1))
    assert float(log_jaccard_loss(LOGITS, TARGET)) == pytest.approx(expected)


def test_micro_jaccard_pools_attributes_and_images():
    """Two attributes in two images: soft counts are summed over both before the ratio (the overall score's
    shape), which differs from the mean of per-attribute Jaccards."""
    logits = torch.stack([LOGITS[0, 0], torch.full((2, 2), 4.0)]).unsqueeze(0).repeat(2, 1, 1, 1)
    target = torch.stack([TARGET[0, 0], torch.zeros(2, 2)]).unsqueeze(0).repeat(2, 1, 1, 1)
    p2 = 1 / (1 + math.exp(-4.0))
    inter = 2 * 1.25  # attribute 2 has no positives
    union = 2 * (sum(P) + 2 - 1.25) + 2 * 4 * p2
    assert float(micro_jaccard_loss(logits, target)) == pytest.approx(1 - (inter + 1) / (union + 1))
    per_attribute = float(soft_jaccard_loss(logits, target))
    assert abs(per_attribute - float(micro_jaccard_loss(logits, target))) > 0.05
    weighted = float(micro_jaccard_loss(logits, target, weights=torch.tensor([1.0, 0.0])))
    assert weighted == pytest.approx(1 - (inter + 1) / (2 * (sum(P) + 2 - 1.25) + 1))


def test_tversky():
    tp, fp, fn = 1.25, 0.75, 0.75
    expected = 1 - (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)
    assert float(tversky_loss(LOGITS, TARGET, alpha=0.3, beta=0.7)) == pytest.approx(expected)


def test_bce_and_pos_weight():
    per = [-math.log(0.75), -math.log(0.5), -math.log(0.5), -math.log(0.75)]
    assert float(bce_loss(LOGITS, TARGET)) == pytest.approx(sum(per) / 4)
    weighted = [3 * per[0], 3 * per[1], per[2], per[3]]
    assert float(bce_loss(LOGITS, TARGET, pos_weight=torch.tensor([3.0]))) == pytest.approx(sum(weighted) / 4)


def test_focal():
    # p_t: .75, .5, .5, .75; alpha_t: .25, .25, .75, .75
    pt = [0.75, 0.5, 0.5, 0.75]
    at = [0.25, 0.25, 0.75, 0.75]
    expected = sum(-a * (1 - p) ** 2 * math.log(p) for p, a in zip(pt, at)) / 4
    assert float(focal_loss(LOGITS, TARGET, gamma=2.0, alpha=0.25)) == pytest.approx(expected)
    assert float(focal_loss(LOGITS, TARGET, gamma=0.0, alpha=-1)) == pytest.approx(float(bce_loss(LOGITS, TARGET)))


def test_per_attribute_weights_and_combination():
    logits = torch.cat([LOGITS, torch.full_like(LOGITS, 5.0)], 1)
    target = torch.cat([TARGET, torch.ones_like(TARGET)], 1)
    d0 = float(soft_dice_loss(LOGITS, TARGET))
    d1 = float(soft_dice_loss(logits[:, 1:], target[:, 1:]))
    assert float(soft_dice_loss(logits, target, torch.tensor([3.0, 1.0]))) == pytest.approx((3 * d0 + d1) / 4)
    combo = CombinedLoss({"bce": 0.5, "dice": 2.0})
    expected = 0.5 * float(bce_loss(logits, target)) + 2.0 * float(soft_dice_loss(logits, target))
    assert float(combo(logits, target)) == pytest.approx(expected)


def test_presence_head_bce_is_added():
    cfg = Config(loss={"dice": 1.0}, aux_weight=0.5)
    loss = CombinedLoss.from_config(cfg)
    logits, target = LOGITS.repeat(1, 5, 1, 1), TARGET.repeat(1, 5, 1, 1)
    presence = torch.zeros(1, 5)  # p = .5 for an image where every attribute is present
    expected = float(soft_dice_loss(logits, target)) + 0.5 * math.log(2)
    assert float(loss((logits, presence), target)) == pytest.approx(expected)


def test_losses_run_in_fp32_under_autocast():
    x = LOGITS.repeat(2, 5, 4, 4).requires_grad_()
    t = TARGET.repeat(2, 5, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = CombinedLoss({"bce": 1, "dice": 1, "focal": 1, "tversky": 1, "jaccard": 1})(x.bfloat16(), t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_deep_supervision_scores_area_averaged_targets_with_halving_weights():
    target = torch.zeros(1, 1, 4, 4)
    target[..., 0] = 1.0  # a one-pixel-wide vertical line: area-averaged to 0.5 in the left half at 2x2
    full = torch.zeros(1, 1, 4, 4)  # p = 0.5 everywhere
    half = LOGITS  # p = .75, .5 / .5, .25 at 2x2
    full_dice = 1 - (2 * 2.0 + 1) / (8.0 + 4.0 + 1)  # inter 4 x .5, sums 16 x .5 and 4
    half_dice = 1 - (2 * (0.75 * 0.5 + 0.5 * 0.5) + 1) / (2.0 + 1.0 + 1)  # targets .5, 0 / .5, 0
    loss = CombinedLoss({"dice": 1.0})
    assert float(loss((full, None, [half]), target)) == pytest.approx((full_dice + 0.5 * half_dice) / 1.5)
    quarter = torch.zeros(1, 1, 1, 1)  # p = .5 against the line's area share at 1x1, 0.25
    quarter_dice = 1 - (2 * 0.125 + 1) / (0.5 + 0.25 + 1)
    expected = (full_dice + 0.5 * half_dice + 0.25 * quarter_dice) / 1.75
    assert float(loss((full, None, [half, quarter]), target)) == pytest.approx(expected)
    # the presence term is added once, unweighted by the scales
    presence = torch.zeros(1, 1)
    with_presence = CombinedLoss({"dice": 1.0}, aux_weight=0.5)((full, presence, [half]), target)
    assert float(with_presence) == pytest.approx((full_dice + 0.5 * half_dice) / 1.5 + 0.5 * math.log(2))
