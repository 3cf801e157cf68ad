"""From logits to decisions: flip TTA, per-attribute thresholds, presence gating; evaluation of a model on a
loader with the official metric at the ground truth's resolution; challenge submissions at each image's
original size.

One prediction loop, :func:`predict_batches` (batch -> device -> channels_last -> probabilities, checked finite),
feeds :func:`evaluate_model`, :func:`write_submission` and :func:`skinseg.predictions.collect_predictions`;
:func:`at_original_size` maps a batch back to each image's original size.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from skinseg.data.cache import SplitCache, read_mask
from skinseg.data.isic import ATTRIBUTES, ground_truth_folder_of, mask_name
from skinseg.errors import DataError, DiskFullError, NonFiniteOutputError
from skinseg.files import (check_replaceable, ensure_writable, is_disk_full, replace_folder, space_message,
                           temp_sibling, write_marker)
from skinseg.metrics import OfficialScore, Scores, ThresholdSweep, presence_auc
from skinseg.progress import bar as progress_bar
from skinseg.runtime import autocast

TTA_FLIPS = {"none": [()], "hflip": [(), (3,)], "hvflip": [(), (3,), (2,), (2, 3)]}
GATE_CUTOFFS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SUBMISSION_MARKER = ".skinseg-submission"





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
    (:func:`skinseg.evaluation.evaluate_checkpoint` does the same for a checkpoint file and a data root.)
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


def check_submission_folder(out_dir: str | Path) -> Path:
    """Refuse an output folder that ``write_submission`` must not replace; returns it resolved.

    A submission folder is replaced only when skinseg made it (it holds the marker file ``.skinseg-submission``)
    or it is empty. Any folder of a split's ground truth (or below one) is refused outright.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    truth = ground_truth_folder_of(out_dir)
    if truth is not None:
        raise DataError(f"{out_dir} is {'inside ' if truth != out_dir else ''}the ground-truth folder {truth}; "
                        "a submission must go to a folder of its own (e.g. reports/submission)")
    check_replaceable(out_dir, SUBMISSION_MARKER, "the submission folder",
                      "choose a new or empty folder (a folder that skinseg wrote a submission into is replaced)")
    ensure_writable(out_dir.parent, "the folder of --out", "choose another --out")
    return out_dir


@torch.no_grad()
def write_submission(model: torch.nn.Module, loader, out_dir: str | Path, device: torch.device, thresholds,
                     gates=None, tta: str = "none", amp_dtype: torch.dtype | None = None,
                     channels_last: bool = False, progress: bool = True) -> int:
    """Write ``ISIC_<id>_attribute_<name>.png`` (L mode, 0/255, original size) for every image and attribute.

    Files go to a temporary sibling folder first and replace ``out_dir`` only when all are written (see
    :func:`check_submission_folder` for which folders may be replaced). Returns the number of files written.
    """
    out_dir = check_submission_folder(out_dir)
    cache: SplitCache = loader.dataset.cache
    tmp = temp_sibling(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    written = 0
    try:
        tmp.mkdir(parents=True)
        write_marker(tmp, SUBMISSION_MARKER, "written by skinseg predict; this folder may be replaced by it")
        for pb in predict_batches(model, loader, device, tta, amp_dtype, channels_last, progress=progress):
            for _, image_id, p, pres in at_original_size(cache, pb):
                masks = decide(p, thresholds, pres, gates)[0].cpu().numpy()
                for c, attribute in enumerate(ATTRIBUTES):
                    Image.fromarray(masks[c].astype(np.uint8) * 255, mode="L").save(tmp / mask_name(image_id, attribute))
                    written += 1
        replace_folder(tmp, out_dir)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"disk full while writing the submission ({space_message(out_dir.parent)}); "
                                f"{out_dir} was left as it was") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
