"""From logits to decisions: flip TTA, per-attribute thresholds, presence gating; evaluation with the
official metric at the ground truth's resolution; challenge submissions at each image's original size.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from skinseg.data.cache import SplitCache, read_mask
from skinseg.data.isic import ATTRIBUTES, MASK_RE, DataError, Split, mask_name
from skinseg.metrics import OfficialScore, Scores, ThresholdSweep

TTA_FLIPS = {"none": [()], "hflip": [(), (3,)], "hvflip": [(), (3,), (2,), (2, 3)]}
GATE_CUTOFFS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def split_output(output) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (output[0], output[1]) if isinstance(output, (tuple, list)) else (output, None)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, tta: str = "none",
                  amp_dtype: torch.dtype | None = None, output=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sigmoid probabilities B x C x H x W (and presence B x C with an aux head), averaged over flips.

    ``output``: the model's output on the unflipped images, when the caller already has it.
    """
    if tta not in TTA_FLIPS:
        raise ValueError(f"tta {tta!r} is not valid; choose one of {', '.join(TTA_FLIPS)}")
    probs, presence = 0.0, None
    flips = TTA_FLIPS[tta]
    for dims in flips:
        if not dims and output is not None:
            logits, pres = split_output(output)
        else:
            with autocast(images.device, amp_dtype):
                logits, pres = split_output(model(images.flip(dims) if dims else images))
        p = torch.sigmoid(logits.float())
        probs = probs + (p.flip(dims) if dims else p)
        if pres is not None:
            presence = (0.0 if presence is None else presence) + torch.sigmoid(pres.float())
    probs = probs / len(flips)
    return probs, None if presence is None else presence / len(flips)


def decide(probs: torch.Tensor, thresholds, presence: torch.Tensor | None = None, gates=None) -> torch.Tensor:
    """Binary masks from probabilities: per-attribute thresholds, and gating by presence when given."""
    thr = torch.as_tensor(thresholds, dtype=probs.dtype, device=probs.device).view(1, -1, 1, 1)
    masks = probs >= thr
    if presence is not None and gates is not None:
        cut = torch.as_tensor(gates, dtype=presence.dtype, device=presence.device).view(1, -1)
        masks = masks & (presence >= cut)[..., None, None]
    return masks


def source_split(cache: SplitCache) -> Split:
    meta = json.loads((cache.path / "meta.json").read_text())
    mask_dir = Path(meta["mask_dir"]) if meta["mask_dir"] else None
    return Split(cache.split, Path(meta["image_dir"]), mask_dir, tuple(cache.ids))


class OriginalMasks:
    """Ground-truth masks at original resolution, read once from disk and kept bit-packed in memory."""

    def __init__(self, cache: SplitCache, max_bytes: int = 512 * 2**20):
        self.cache, self.split = cache, source_split(cache)
        self.max_bytes, self.used = max_bytes, 0
        self.memo: dict[int, np.ndarray] = {}

    def get(self, index: int) -> torch.Tensor:
        h, w = (int(v) for v in self.cache.original_hw[index])
        if index in self.memo:
            return torch.from_numpy(np.unpackbits(self.memo[index], axis=-1, count=w).astype(bool))
        image_id = self.cache.ids[index]
        masks = np.stack([read_mask(self.split.mask_path(image_id, a), (h, w))[0] for a in ATTRIBUTES])
        packed = np.packbits(masks, axis=-1)
        if self.used + packed.nbytes <= self.max_bytes:
            self.memo[index] = packed
            self.used += packed.nbytes
        return torch.from_numpy(masks)


def to_original(probs: torch.Tensor, hw: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """C x S x S probabilities back to C x H x W of the original image (crop the letterbox, resize)."""
    top, left, h, w = box
    content = probs[:, top : top + h, left : left + w]
    if tuple(content.shape[1:]) == tuple(hw):
        return content
    return F.interpolate(content[None], size=tuple(hw), mode="bilinear", align_corners=False)[0]


def needs_original(cache: SplitCache) -> bool:
    """True when the cache geometry differs from the originals, so scoring must map probabilities back."""
    s = cache.size
    return cache.resize_mode != "stretch" or bool((cache.original_hw != s).any())


@dataclass
class EvalResult:
    """Scores at the given thresholds, the threshold sweep for tuning, and the mean loss."""

    scores: Scores
    sweep: ThresholdSweep
    loss: float = float("nan")
    per_image: list[dict] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, thresholds=None, gates=None,
             tta: str = "none", amp_dtype: torch.dtype | None = None, loss_fn=None, channels_last: bool = False,
             originals: OriginalMasks | None = None, gate_cutoffs=GATE_CUTOFFS, progress: bool = False,
             per_image: bool = False, reduce: bool = True) -> EvalResult:
    """Score a model on a loader with the official metric (streaming, on ``device``).

    Probabilities are compared with the truth at its original resolution when the cache geometry differs.
    """
    cache: SplitCache = loader.dataset.cache
    classes = len(ATTRIBUTES)
    thresholds = [0.5] * classes if thresholds is None else list(thresholds)
    score = OfficialScore(classes)
    sweep = ThresholdSweep(classes, gate_cutoffs=gate_cutoffs)
    at_original = needs_original(cache)
    if at_original and originals is None:
        originals = OriginalMasks(cache)
    model.eval()
    loss_sum, loss_n, rows = 0.0, 0, []
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=not progress):
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["mask"].to(device, non_blocking=True)
        out = None
        if loss_fn is not None:
            with autocast(device, amp_dtype):
                out = model(x)
            loss_sum += float(loss_fn(out, target)) * len(x)
            loss_n += len(x)
        probs, presence = predict_probs(model, x, tta, amp_dtype, output=out)
        if not at_original:
            _accumulate(score, sweep, probs, target, presence, thresholds, gates)
            if per_image:
                rows += _per_image(batch, probs, target, presence, thresholds, gates)
            continue
        for k, index in enumerate(batch["index"].tolist()):
            hw = tuple(int(v) for v in cache.original_hw[index])
            p = to_original(probs[k], hw, tuple(int(v) for v in cache.boxes[index]))[None]
            t = originals.get(index).to(device)[None]
            pres = None if presence is None else presence[k : k + 1]
            _accumulate(score, sweep, p, t, pres, thresholds, gates)
            if per_image:
                rows += _per_image({"id": [batch["id"][k]], "index": [index]}, p, t, pres, thresholds, gates)
    if reduce:
        score.all_reduce()
        sweep.all_reduce()
    return EvalResult(score.compute(), sweep, loss_sum / max(loss_n, 1) if loss_fn is not None else float("nan"),
                      rows)


def _accumulate(score, sweep, probs, target, presence, thresholds, gates) -> None:
    score.update(decide(probs, thresholds, presence, gates), target)
    sweep.update(probs, target, presence)


def _per_image(batch, probs, target, presence, thresholds, gates) -> list[dict]:
    rows = []
    pred = decide(probs, thresholds, presence, gates)
    t = target > 0.5
    inter = (pred & t).sum((-1, -2)).double()
    union = (pred | t).sum((-1, -2)).double()
    jac = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter)).cpu()
    for k in range(len(pred)):
        row = {"id": batch["id"][k], "index": int(batch["index"][k])}
        row.update({a: float(jac[k, c]) for c, a in enumerate(ATTRIBUTES)})
        row["mean_jaccard"] = float(jac[k].mean())
        rows.append(row)
    return rows


@torch.no_grad()
def write_submission(model: torch.nn.Module, loader, out_dir: str | Path, device: torch.device, thresholds,
                     gates=None, tta: str = "none", amp_dtype: torch.dtype | None = None,
                     channels_last: bool = False, progress: bool = True) -> int:
    """Write ``ISIC_<id>_attribute_<name>.png`` (L mode, 0/255, original size) for every image and attribute.

    Files go to a temporary sibling folder first and replace ``out_dir`` only when all are written.
    Returns the number of files written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        foreign = [p.name for p in out_dir.iterdir() if not MASK_RE.match(p.name)]
        if foreign:
            raise DataError(
                f"{out_dir} holds files that are not submission masks ({', '.join(sorted(foreign)[:3])}, ...); "
                "choose an empty or new folder (a previous submission there is replaced)"
            )
    cache: SplitCache = loader.dataset.cache
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    written = 0
    model.eval()
    try:
        for batch in tqdm(loader, desc="predicting", disable=not progress):
            x = batch["image"].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            probs, presence = predict_probs(model, x, tta, amp_dtype)
            for k, index in enumerate(batch["index"].tolist()):
                hw = tuple(int(v) for v in cache.original_hw[index])
                p = to_original(probs[k], hw, tuple(int(v) for v in cache.boxes[index]))[None]
                pres = None if presence is None else presence[k : k + 1]
                masks = decide(p, thresholds, pres, gates)[0].cpu().numpy()
                for c, attribute in enumerate(ATTRIBUTES):
                    Image.fromarray(masks[c].astype(np.uint8) * 255, mode="L").save(
                        tmp / mask_name(cache.ids[index], attribute))
                    written += 1
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
