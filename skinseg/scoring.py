"""The official ISIC 2018 Task 2 score without torch: the formula from pixel counts, and the scoring of a
submission folder (what ``skinseg score`` runs; it imports numpy, OpenCV and PIL, nothing more).

Per image and attribute: binarize truth and prediction, count TP, FP, FN, TN and divide them by the image's
pixel count, so every image weighs the same whatever its size; sum over all images. Per-attribute Jaccard =
TP / (TP + FP + FN) and Dice = 2TP / (2TP + FP + FN) from that attribute's sums (1.0 when TP + FP + FN = 0).
The overall score, the leaderboard number, is the micro average: the Jaccard of the sums over all images and
all attributes. The macro average (mean of per-attribute Jaccards) is reported beside it.

:func:`normalized_counts` and :func:`scores_from_counts` are the formula's one home. They take numpy arrays or
torch tensors and run the same operations on either: :mod:`skinseg.metrics` streams them on the device during
training and evaluation, this module runs them on numpy.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skinseg.data.isic import ATTRIBUTES, Split, get_split, ground_truth_folder_of, mask_name, name_list
from skinseg.data.masks import MaskReader
from skinseg.errors import DataError, SkinsegWarning


def _is_numpy(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic, float, int))


def _ratio(num, den):
    """num / den, and 1 where den is 0 (an empty truth predicted empty is a perfect score)."""
    if _is_numpy(num):
        return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)
    import torch  # a tensor came in, so torch is loaded already

    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(num))


def normalized_counts(both, pred, truth, pixels):
    """4 x C sums over images of TP, FP, FN and TN, each image's divided by its pixel count (the official
    normalization). ``both`` (positive in prediction and truth), ``pred`` and ``truth`` are B x C pixel counts;
    ``pixels`` each image's pixel count (B, or one number). numpy arrays, or tensors (kept on their device)."""
    if _is_numpy(both):
        tp, pred, truth = (np.asarray(x, dtype=np.float64) for x in (both, pred, truth))
        pixels = pixels if isinstance(pixels, int) else np.asarray(pixels, dtype=np.float64).reshape(-1, 1)
        stack = np.stack
    else:
        import torch

        tp, pred, truth = (torch.as_tensor(x).double() for x in (both, pred, truth))
        if not isinstance(pixels, int):
            pixels = torch.as_tensor(pixels, dtype=torch.float64, device=tp.device).reshape(-1, 1)
        stack = torch.stack
    fp, fn = pred - tp, truth - tp
    tn = pixels - tp - fp - fn
    return (stack([tp, fp, fn, tn]) / pixels).sum(1)


@dataclass
class Scores:
    """Per-attribute and averaged Jaccard/Dice of one evaluation."""

    jaccard: dict[str, float]
    dice: dict[str, float]
    micro_jaccard: float
    micro_dice: float
    macro_jaccard: float
    macro_dice: float

    @property
    def overall(self) -> float:
        """The leaderboard number: micro-averaged Jaccard."""
        return self.micro_jaccard

    def to_official_json(self) -> dict:
        """Shaped like the official scorer's output."""
        out: dict = {a: {"jaccard": self.jaccard[a], "dice": self.dice[a]} for a in self.jaccard}
        out["micro_average"] = {"jaccard": self.micro_jaccard, "dice": self.micro_dice}
        out["macro_average"] = {"jaccard": self.macro_jaccard, "dice": self.macro_dice}
        out["overall"] = self.micro_jaccard
        return out

    def table(self) -> str:
        """Per-attribute Jaccard and Dice, then the micro (overall) and macro averages, as aligned text."""
        rows = [(a, self.jaccard[a], self.dice[a]) for a in self.jaccard]
        rows += [("micro_average (overall)", self.micro_jaccard, self.micro_dice),
                 ("macro_average", self.macro_jaccard, self.macro_dice)]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':<{width}}  jaccard    dice"]
        lines += [f"{name:<{width}}  {j:7.4f}  {d:6.4f}" for name, j, d in rows]
        return "\n".join(lines)

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Flat columns for metrics.csv."""
        row = {f"{prefix}jaccard_{a}": v for a, v in self.jaccard.items()}
        row.update({f"{prefix}dice_{a}": v for a, v in self.dice.items()})
        row.update({f"{prefix}jaccard": self.micro_jaccard, f"{prefix}dice": self.micro_dice,
                    f"{prefix}macro_jaccard": self.macro_jaccard})
        return row


def scores_from_counts(tp, fp, fn, attributes: tuple[str, ...] = ATTRIBUTES) -> Scores:
    """Scores from per-attribute sums of normalized TP, FP and FN (numpy arrays, or tensors: read on the CPU)."""
    if _is_numpy(tp):
        tp, fp, fn = (np.asarray(t, dtype=np.float64) for t in (tp, fp, fn))
    else:
        tp, fp, fn = (t.double().cpu() for t in (tp, fp, fn))
    jac = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    T, P, N = tp.sum(), fp.sum(), fn.sum()
    return Scores(
        jaccard={a: float(v) for a, v in zip(attributes, jac)},
        dice={a: float(v) for a, v in zip(attributes, dice)},
        micro_jaccard=float(_ratio(T, T + P + N)),
        micro_dice=float(_ratio(2 * T, 2 * T + P + N)),
        macro_jaccard=float(jac.mean()),
        macro_dice=float(dice.mean()),
    )


def score_submission(pred_dir: str | Path, data_root: str | Path, split: str = "val") -> Scores:
    """Official score of a submission folder (``ISIC_<id>_attribute_<name>.png``) against a split's ground
    truth, read from the files as the challenge's scorer would.

    Images are read by a pool of threads with the checks of :func:`~skinseg.data.masks.read_mask`; the first
    error in image order is the one raised.
    """
    truth = get_split(data_root, split)
    if not truth.has_masks:
        raise DataError(f"split {split!r} below {data_root} has no ground truth to score against")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"submission folder {pred_dir} does not exist")
    gt = ground_truth_folder_of(pred_dir)
    if gt is not None:
        raise DataError(f"{pred_dir} is {'inside ' if gt != pred_dir.resolve() else ''}the ground-truth folder {gt}, "
                        "not a submission; pass the folder that `skinseg predict` wrote")
    _check_submission_files(pred_dir, truth)
    reader = MaskReader()
    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1) + 1)  # one more than the cores: file reads wait
    try:
        rows = list(pool.map(lambda image_id: _image_counts(reader, truth, pred_dir, image_id), truth.ids))
    finally:
        pool.shutdown(cancel_futures=True)
    if not rows:
        return scores_from_counts(*np.zeros((3, len(ATTRIBUTES))))
    tp, fp, fn, _ = normalized_counts(*(np.array(column) for column in zip(*rows)))
    return scores_from_counts(tp, fp, fn)


class SubmissionWarning(SkinsegWarning):
    """Files in a submission folder that the split does not ask for (ignored by the score)."""


def _check_submission_files(pred_dir: Path, truth: Split) -> None:
    """DataError listing every file the submission lacks; a warning naming the files it holds beyond the split's."""
    expected = {mask_name(i, a) for i in truth.ids for a in ATTRIBUTES}
    present = {p.name for p in pred_dir.iterdir() if not p.name.startswith(".")}
    missing = sorted(expected - present)
    if missing:
        raise DataError(f"submission {pred_dir} lacks {len(missing)} of the {len(expected)} files of split "
                        f"{truth.name!r}: {name_list(missing)}; every image needs one PNG per attribute "
                        "(`skinseg predict` writes them all)")
    extra = sorted(present - expected)
    if extra:
        warnings.warn(SubmissionWarning(f"{len(extra)} file(s) in {pred_dir} are not part of a submission for split "
                                        f"{truth.name!r} and were not scored: {name_list(extra)}"), stacklevel=2)


def _image_counts(reader: MaskReader, truth: Split, pred_dir: Path, image_id: str
                  ) -> tuple[list[int], list[int], list[int], int]:
    """One image's pixel counts per attribute: positive in both, in the submission, in the truth; and its pixels."""
    t0, hw, n0 = reader.read(truth.mask_path(image_id, ATTRIBUTES[0]), None, "mask")
    truths = [(t0, n0)] + [reader.read(truth.mask_path(image_id, a), hw, "mask")[::2] for a in ATTRIBUTES[1:]]
    both, pred_positives = [], []
    for a, (t, _) in zip(ATTRIBUTES, truths):
        # every file was checked present (_check_submission_files); one removed since, read_mask names
        p, _, positives = reader.read(pred_dir / mask_name(image_id, a), hw, "submission mask")
        pred_positives.append(positives)
        both.append(0 if p is None or t is None else np.count_nonzero(np.logical_and(p, t, out=p)))
    return both, pred_positives, [n for _, n in truths], hw[0] * hw[1]
