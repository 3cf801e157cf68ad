"""Checkpoint-level verbs: evaluate a checkpoint on a split, write a submission for a folder of images, combine
checkpoints into an ensemble, score a submission folder."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from skinseg.checkpoint import (DecisionRule, check_ensemble_target, decision_thresholds, ensemble_from_state,
                                ensemble_state, load_checkpoint, load_for_inference, load_members, ready_for_inference,
                                save_checkpoint)
from skinseg.data.augment import eval_transform
from skinseg.data.cache import build_cache, read_mask
from skinseg.data.dataset import ISICDataset, make_loader
from skinseg.data.isic import (ATTRIBUTES, Split, get_split, ground_truth_folder_of, image_split, mask_name,
                                name_list)
from skinseg.ensemble import ensemble_config
from skinseg.errors import DataError, SkinsegWarning
from skinseg.inference import EvalResult, check_submission_folder, evaluate_model, write_submission
from skinseg.metrics import OfficialScore, Scores


def evaluate_checkpoint(checkpoint, data_root, split: str = "val", tta: str | None = None, tuned: bool = True,
                        device: str = "auto", per_image: bool = False, num_workers: int = 0,
                        operating_point: str = "micro") -> EvalResult:
    """Official score of a checkpoint on a split, with its tuned thresholds at ``operating_point`` (and, at the
    micro one, its gates) unless ``tuned=False`` (0.5 everywhere). The result's sweep scores any other
    thresholds exactly (:func:`operating_points`)."""
    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    cfg = cfg.replace(data_root=str(data_root), num_workers=num_workers)
    loader = make_loader(cfg, split, train=False)
    if not loader.dataset.cache.has_masks:
        raise DataError(f"split {split!r} below {data_root} has no ground truth; use `skinseg predict` instead")
    rule = DecisionRule.from_checkpoint(state, cfg, checkpoint, operating_point, tuned, tta)
    return evaluate_model(model, loader, dev, rule.thresholds, rule.gates, tta=rule.tta, amp_dtype=amp_dtype,
                          channels_last=cfg.channels_last, per_image=per_image, reduce=False)


def operating_points(result: EvalResult, checkpoint) -> dict[str, dict]:
    """The scores of an evaluation (at the micro operating point) at both operating points, with their
    thresholds: ``micro`` (tuned for the overall score, the leaderboard's) and ``per_attribute`` (each
    attribute's own best, what per-attribute and macro figures in later papers use), when the checkpoint has it.
    The per-attribute scores come from the evaluation's threshold histograms: exact, ungated. ``checkpoint``: a
    path, or the checkpoint's state already loaded (a mapping)."""
    state = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint, mmap=True)
    out = {"micro": {"thresholds": decision_thresholds(state, "micro", checkpoint), "scores": result.scores}}
    if state.get("thresholds_per_attribute") is not None:
        each = decision_thresholds(state, "per_attribute", checkpoint)
        out["per_attribute"] = {"thresholds": each, "scores": result.sweep.scores(each)}
    return out


def evaluation_json(result: EvalResult, checkpoint, split: str) -> dict:
    """What ``skinseg evaluate --json`` writes: the official scorer's shape at the micro operating point, then
    both operating points with their thresholds, and the per-attribute presence AUC."""
    points = operating_points(result, checkpoint)
    out = result.scores.to_official_json()
    out["split"] = split
    out["operating_points"] = {name: {"thresholds": p["thresholds"], **p["scores"].to_official_json()}
                               for name, p in points.items()}
    out["presence_auc"] = result.presence_auc()
    return out


def predict_folder(checkpoint, images_dir, out_dir, tta: str | None = None, device: str = "auto",
                   num_workers: int = 0, operating_point: str = "micro", tuned: bool = True) -> int:
    """Write a challenge submission for every ``ISIC_<id>.jpg`` in ``images_dir``, at the checkpoint's
    thresholds of ``operating_point`` (the leaderboard's ``micro``, or ``per_attribute``); 0.5 everywhere when
    not ``tuned``."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    check_submission_folder(out_dir)  # before any work
    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    rule = DecisionRule.from_checkpoint(state, cfg, checkpoint, operating_point, tuned, tta)
    split = image_split("predict", images_dir)
    if not split.ids:
        raise DataError(f"no ISIC_<7 digits>.jpg images in {images_dir}")
    cache = build_cache(split, cfg.image_size, cfg.resize_mode)
    loader = make_loader(cfg.replace(num_workers=num_workers), "test", train=False,
                         dataset=ISICDataset(cache, eval_transform(cfg)))
    return write_submission(model, loader, out_dir, dev, rule.thresholds, rule.gates, tta=rule.tta,
                            amp_dtype=amp_dtype, channels_last=cfg.channels_last)


def build_ensemble(checkpoints: list[str | Path], data_root: str | Path, out: str | Path, tune_split: str = "dev",
                   tta: str = "none", device: str = "auto", num_workers: int = 0) -> dict:
    """Combine checkpoints into an ensemble file, its per-attribute thresholds tuned on ``tune_split`` with the
    official score. Returns a summary: the ensemble file, tuned thresholds, and the scores on the tune split.
    """
    out = check_ensemble_target(out, checkpoints)  # before any work
    states, configs = load_members(checkpoints)
    cfg = ensemble_config(configs, tune_split).replace(tta=tta)
    state = ensemble_state(checkpoints, states, cfg)
    model, dev, amp_dtype = ready_for_inference(ensemble_from_state(state, str(out))[0], cfg, device)
    loader = make_loader(cfg.replace(data_root=str(data_root), num_workers=num_workers), tune_split, train=False)
    result = evaluate_model(model, loader, dev, tta=tta, amp_dtype=amp_dtype, channels_last=cfg.channels_last)
    thresholds, _, score = result.sweep.tune()
    state.update(thresholds=thresholds, thresholds_per_attribute=result.sweep.tune_each(), gates=[0.0] * cfg.classes,
                 best={"score": score, "split": tune_split, "score_at_0.5": result.scores.overall})
    save_checkpoint(state, out)
    return {"ensemble": str(out), "members": [str(p) for p in checkpoints], "tune_split": tune_split,
            "thresholds": thresholds, "tuned_score": score, "score_at_0.5": result.scores.overall}


def score_submission(pred_dir: str | Path, data_root: str | Path, split: str = "val") -> Scores:
    """Official score of a submission folder (``ISIC_<id>_attribute_<name>.png``) against a split's ground
    truth, read from the files as the challenge's scorer would.

    Images are read by a pool of threads with the checks of :func:`~skinseg.data.cache.read_mask`; the first
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
    reader = _MaskReader()
    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1) + 1)  # one more than the cores: file reads wait
    try:
        rows = list(pool.map(lambda image_id: _image_counts(reader, truth, pred_dir, image_id), truth.ids))
    finally:
        pool.shutdown(cancel_futures=True)
    acc = OfficialScore()
    if rows:
        acc.add(*(np.array(column) for column in zip(*rows)))
    return acc.compute()


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


_PNG = b"\x89PNG\r\n\x1a\n"


class _MaskReader:
    """Reads masks as :func:`read_mask` does (bool, > 127), decoding a file content that is an empty mask once.

    Masks are decoded by OpenCV, which releases the GIL; anything it does not decode to an 8-bit single-channel
    array, and any mask that fails a check, goes through :func:`read_mask`, for its result or its error.
    """

    def __init__(self):
        self.empty: dict[bytes, tuple[int, int]] = {}  # file content -> size, for masks without a positive pixel

    def read(self, path: Path, hw: tuple[int, int] | None, what: str) -> tuple[np.ndarray | None, tuple[int, int], int]:
        """The mask as bool H x W (None when it is empty), its (height, width) and its count of positive pixels;
        ``hw`` None takes the mask's own size."""
        try:
            data = path.read_bytes()
        except OSError:
            data = b""  # read_mask names the file in its error
        size = self.empty.get(data)
        if size is not None and size == (hw or size):
            return None, size, 0
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data.startswith(_PNG) else None
        plain = arr is not None and arr.ndim == 2 and arr.dtype == np.uint8  # what PIL reads as mode L or 1
        hw = hw or (arr.shape if plain else _png_hw(path))
        if plain and arr.shape == hw:
            mask = arr > 127
            positives = np.count_nonzero(mask)
            if positives:
                return mask, hw, positives
            if not arr.any():
                self.empty[data] = hw
                return None, hw, 0
        # not an 8-bit single-channel PNG of its image's size, or no value above 127 but some above 0 (0/1 masks are
        # an error): read_mask gives the result or the error
        mask = read_mask(path, hw, what)[0]
        positives = np.count_nonzero(mask)
        return (mask if positives else None), hw, positives


def _image_counts(reader: _MaskReader, truth: Split, pred_dir: Path, image_id: str
                  ) -> tuple[list[int], list[int], list[int], int]:
    """One image's pixel counts per attribute: positive in both, in the submission, in the truth; and its pixels."""
    t0, hw, n0 = reader.read(truth.mask_path(image_id, ATTRIBUTES[0]), None, "mask")
    truths = [(t0, n0)] + [reader.read(truth.mask_path(image_id, a), hw, "mask")[::2] for a in ATTRIBUTES[1:]]
    both, pred_positives = [], []
    for a, (t, _) in zip(ATTRIBUTES, truths):
        path = pred_dir / mask_name(image_id, a)
        if not path.exists():
            raise DataError(f"submission {pred_dir} lacks {path.name}")
        p, _, positives = reader.read(path, hw, "submission mask")
        pred_positives.append(positives)
        both.append(0 if p is None or t is None else np.count_nonzero(np.logical_and(p, t, out=p)))
    return both, pred_positives, [n for _, n in truths], hw[0] * hw[1]


def _png_hw(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


THRESHOLD_VARIANTS = ("0.5", "micro", "per_attribute")


def decision_variants(checkpoint, data_root, tuning_split: str, evaluated_split: str,
                      tta_modes=("none", "hflip", "hvflip"), device: str = "auto") -> "DecisionVariants":
    """Every decision variant of a checkpoint — thresholds (0.5, micro-tuned, per-attribute-tuned) x TTA —
    scored on the tuning split and on the evaluated split, one row each; the variant is chosen on the tuning
    split (its overall score), never on the split it is reported on.

    Returns the table (columns ``<split role> overall`` / ``macro``, and ``chosen``), the evaluated split's
    :class:`Scores` per variant and its presence AUC per TTA mode.
    """
    state = load_checkpoint(checkpoint, mmap=True)
    scores: dict[str, dict[tuple[str, str], Scores]] = {"tuning": {}, "evaluated": {}}
    auc: dict[str, dict[str, float]] = {}
    for role, split in (("tuning", tuning_split), ("evaluated", evaluated_split)):
        for tta in tta_modes:
            result = evaluate_checkpoint(checkpoint, data_root, split, tta=tta, device=device)
            points = operating_points(result, state)
            if role == "evaluated":
                auc[tta] = result.presence_auc()
                holding = dict(zip(ATTRIBUTES, (int(n) for n in np.asarray(result.image_present).sum(0))))
            scores[role][("0.5", tta)] = result.sweep.scores([0.5] * len(ATTRIBUTES))
            for name, point in points.items():
                scores[role][(name, tta)] = point["scores"]
    table = pd.DataFrame({key: {f"{role} {what}": getattr(scores[role][key], attr)
                                for role in ("tuning", "evaluated")
                                for what, attr in (("overall", "overall"), ("macro", "macro_jaccard"))}
                          for key in scores["tuning"]}).T
    table.index.names = ["thresholds", "TTA"]
    chosen = choose_variant(table)
    table["chosen"] = [key == chosen for key in table.index]
    return DecisionVariants(table, chosen, scores["evaluated"], auc, holding)


@dataclass
class DecisionVariants:
    """Decision variants of a checkpoint (see :func:`decision_variants`)."""

    table: pd.DataFrame  # one row per (thresholds, TTA): tuning and evaluated split, overall and macro
    chosen: tuple[str, str]  # chosen on the tuning split
    evaluated: dict[tuple[str, str], Scores]  # the evaluated split's scores per variant
    presence_auc: dict[str, dict[str, float]]  # the evaluated split's presence AUC per TTA mode
    holding: dict[str, int] = field(default_factory=dict)  # images of the evaluated split holding each attribute

    def absent(self) -> list[str]:
        """The attributes no image of the evaluated split holds: their Jaccard (1 for an empty prediction of an empty
        mask, 0 for any false positive) says nothing about the model."""
        return [a for a in ATTRIBUTES if self.holding.get(a, 1) == 0]

    def per_attribute(self) -> pd.DataFrame:
        """The evaluated split's Jaccard per attribute at both operating points, with the chosen TTA, the number of
        images holding each attribute and its presence AUC; an absent attribute's Jaccard is NaN (shown as absent)."""
        tta, absent = self.chosen[1], self.absent()
        columns = {f"{name} thresholds": {**{a: (np.nan if a in absent else v) for a, v in s.jaccard.items()},
                                          "micro_average (overall)": s.micro_jaccard, "macro_average": s.macro_jaccard}
                   for (name, t), s in self.evaluated.items() if t == tta and name != "0.5"}
        columns["presence AUC"] = self.presence_auc[tta]
        if self.holding:
            columns["images holding it"] = self.holding
        return pd.DataFrame(columns)


def choose_variant(table: pd.DataFrame) -> tuple[str, str]:
    """The (thresholds, TTA) row with the best tuning-split overall score; ties go to the simpler variant
    (0.5 before tuned, no TTA before flips), the order the rows come in."""
    return table["tuning overall"].idxmax()


def operating_points_table(result: EvalResult, checkpoint) -> pd.DataFrame:
    """Per-attribute Jaccard, micro and macro averages at each operating point, with the thresholds, one
    column per operating point."""
    columns = {}
    for name, point in operating_points(result, checkpoint).items():
        s = point["scores"]
        columns[f"jaccard ({name})"] = {**s.jaccard, "micro_average (overall)": s.micro_jaccard,
                                        "macro_average": s.macro_jaccard}
        columns[f"threshold ({name})"] = dict(zip(ATTRIBUTES, point["thresholds"]))
    return pd.DataFrame(columns)


def scores_table(scores: Scores) -> pd.DataFrame:
    """Per-attribute Jaccard and Dice, then the micro (overall) and macro averages."""
    rows = {a: {"jaccard": scores.jaccard[a], "dice": scores.dice[a]} for a in ATTRIBUTES}
    rows["micro_average (overall)"] = {"jaccard": scores.micro_jaccard, "dice": scores.micro_dice}
    rows["macro_average"] = {"jaccard": scores.macro_jaccard, "dice": scores.macro_dice}
    return pd.DataFrame(rows).T
