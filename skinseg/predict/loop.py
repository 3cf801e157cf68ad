"""The one prediction loop and evaluation on it: :func:`predict_batches` (batch -> device -> channels_last ->
probabilities, checked finite) feeds :func:`evaluate_model` (the official metric at the ground truth's
resolution, the threshold sweep, presence scores), :func:`skinseg.predict.submission.write_submission` and
:func:`skinseg.predict.collect.collect_predictions`; :func:`at_original_size` maps a batch back to each image's
original size."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from skinseg.data.cache import SplitCache
from skinseg.data.isic import ATTRIBUTES
from skinseg.data.masks import read_mask
from skinseg.errors import NonFiniteOutputError
from skinseg.metrics import OfficialScore, ThresholdSweep, presence_auc
from skinseg.predict.decisions import GATE_CUTOFFS, decide, predict_probs
from skinseg.progress import bar as progress_bar
from skinseg.runtime import autocast
from skinseg.scoring import Scores


@dataclass
class PredictedBatch:
    """One batch through the model: the batch, its probabilities (and presence), and its targets on the device."""

    batch: dict
    probs: torch.Tensor
    presence: torch.Tensor | None
    target: torch.Tensor | None
    loss: torch.Tensor | None = None  # the batch's mean loss, on the device
    finite: torch.Tensor | None = None  # per image: are all its outputs finite (on the device)


@torch.no_grad()
def predict_batches(model: torch.nn.Module, loader, device: torch.device, tta: str = "none",
                    amp_dtype: torch.dtype | None = None, channels_last: bool = False, loss_fn=None,
                    progress: bool = False, desc: str = "predicting", check_finite: bool = True):
    """The one prediction loop: yields a :class:`PredictedBatch` per batch of ``loader``.

    Raises NonFiniteOutputError when the model's outputs are NaN or infinite; with ``check_finite=False`` the
    caller checks ``PredictedBatch.finite`` itself (evaluation does, once, so that it never waits for the GPU
    inside the loop).
    """
    model.eval()
    for batch in progress_bar(loader, desc=desc, leave=False, show=progress):
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["mask"].to(device, non_blocking=True) if "mask" in batch else None
        out, loss = None, None
        if loss_fn is not None and target is not None:
            with autocast(device, amp_dtype):
                out = model(x)
            loss = loss_fn(out, target).detach()
        probs, presence = predict_probs(model, x, tta, amp_dtype, output=out)
        finite = torch.isfinite(probs.flatten(1)).all(1)
        if presence is not None:
            finite &= torch.isfinite(presence).all(1)
        if check_finite:
            raise_non_finite([finite], [batch["id"]])
        yield PredictedBatch(batch, probs, presence, target, loss, finite)


def raise_non_finite(finite: list[torch.Tensor], ids: list[list[str]]) -> None:
    """NonFiniteOutputError naming the images whose outputs were not finite, if any (one host copy)."""
    flags = torch.cat(finite).cpu()
    if not bool(flags.all()):
        names = [name for batch in ids for name in batch]
        raise NonFiniteOutputError([names[k] for k in (~flags).nonzero().flatten().tolist()])


def at_original_size(cache: SplitCache, pb: PredictedBatch):
    """Yield (index, image id, probabilities 1 x C x H x W, presence 1 x C or None) per image of a batch,
    mapped back to the image's original size."""
    for k, index in enumerate(pb.batch["index"].tolist()):
        hw = tuple(int(v) for v in cache.original_hw[index])
        p = to_original(pb.probs[k], hw, tuple(int(v) for v in cache.boxes[index]))[None]
        pres = None if pb.presence is None else pb.presence[k : k + 1]
        yield index, cache.ids[index], p, pres


class OriginalMasks:
    """Ground-truth masks at original resolution, read once from disk and kept bit-packed in memory."""

    def __init__(self, cache: SplitCache, max_bytes: int = 512 * 2**20):
        self.cache, self.split = cache, cache.source_split()
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
    # image level, N x C: the image's score per attribute (peak probability, or the presence head's) and whether
    # its ground truth holds the attribute; for presence AUC (this process's images only under DDP)
    image_scores: np.ndarray | None = None
    image_present: np.ndarray | None = None

    def presence_auc(self) -> dict[str, float]:
        """Per-attribute image-level presence AUC (see :func:`skinseg.metrics.presence_auc`)."""
        return presence_auc(self.image_scores, self.image_present)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader, device: torch.device, thresholds=None, gates=None,
                   tta: str = "none", amp_dtype: torch.dtype | None = None, loss_fn=None, channels_last: bool = False,
                   originals: OriginalMasks | None = None, gate_cutoffs=GATE_CUTOFFS, progress: bool = False,
                   per_image: bool = False, reduce: bool = True) -> EvalResult:
    """Score a model on a loader with the official metric (streaming, on ``device``).

    Counts, threshold histograms, the loss and the finite checks stay on the device until the end: one host
    copy per evaluation, not one per batch.

    Probabilities are compared with the truth at its original resolution when the cache geometry differs.
    (:func:`skinseg.predict.evaluate.evaluate_checkpoint` does the same for a checkpoint file and a data root.)
    """
    cache: SplitCache = loader.dataset.cache
    classes = len(ATTRIBUTES)
    thresholds = [0.5] * classes if thresholds is None else list(thresholds)
    score = OfficialScore(classes)
    sweep = ThresholdSweep(classes, gate_cutoffs=gate_cutoffs)
    at_original = needs_original(cache)
    if at_original and originals is None:
        originals = OriginalMasks(cache)
    loss_sum, loss_n = torch.zeros((), dtype=torch.float64, device=device), 0
    rows: list[dict] = []
    finite, ids = [], []  # per batch: which images' outputs are finite (on the device), and their ids
    peaks, present = [], []  # per batch, on the device: image scores and presence, B x C
    for pb in predict_batches(model, loader, device, tta, amp_dtype, channels_last, loss_fn, progress, "evaluating",
                              check_finite=False):
        finite.append(pb.finite)
        ids.append(list(pb.batch["id"]))
        if pb.loss is not None:
            loss_sum += pb.loss.double() * len(pb.probs)
            loss_n += len(pb.probs)
        if not at_original:
            peaks.append(_image_score(pb.probs, pb.presence))
            present.append((pb.target > 0.5).flatten(2).any(-1))
            _accumulate(score, sweep, pb.probs, pb.target, pb.presence, thresholds, gates)
            if per_image:
                rows += _per_image(pb.batch, pb.probs, pb.target, pb.presence, thresholds, gates)
            continue
        for index, image_id, p, pres in at_original_size(cache, pb):
            t = originals.get(index).to(device)[None]
            peaks.append(_image_score(p, pres))
            present.append(t.flatten(2).any(-1))
            _accumulate(score, sweep, p, t, pres, thresholds, gates)
            if per_image:
                rows += _per_image({"id": [image_id], "index": [index]}, p, t, pres, thresholds, gates)
    if finite:
        raise_non_finite(finite, ids)
    if reduce:
        score.all_reduce()
        sweep.all_reduce()
    loss = float(loss_sum) / max(loss_n, 1) if loss_n else float("nan")
    images = (torch.cat(peaks).float().cpu().numpy(), torch.cat(present).cpu().numpy()) if peaks else (None, None)
    return EvalResult(score.compute(), sweep, loss, rows, *images)


def _image_score(probs: torch.Tensor, presence: torch.Tensor | None) -> torch.Tensor:
    """B x C image-level scores: the presence head's probability where trained, else the map's peak."""
    return presence.float() if presence is not None else probs.float().amax((-2, -1))


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
