"""Checkpoint-level verbs: evaluate a checkpoint on a split, write a submission for a folder of images, combine
checkpoints into an ensemble, score a submission folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skinseg.checkpoint import (ensemble_from_state, ensemble_state, load_for_inference, load_members,
                               ready_for_inference, save_checkpoint)
from skinseg.data.augment import eval_transform
from skinseg.data.cache import build_cache
from skinseg.data.dataset import ISICDataset, make_loader
from skinseg.data.isic import ATTRIBUTES, get_split, ground_truth_folder_of, image_split
from skinseg.ensemble import ensemble_config
from skinseg.errors import DataError
from skinseg.inference import EvalResult, check_submission_folder, evaluate_model, write_submission
from skinseg.metrics import Scores


def evaluate_checkpoint(checkpoint, data_root, split: str = "val", tta: str | None = None, tuned: bool = True,
                        device: str = "auto", per_image: bool = False, num_workers: int = 0) -> EvalResult:
    """Official score of a checkpoint on a split, with its tuned thresholds (and gates) unless ``tuned=False``."""
    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    cfg = cfg.replace(data_root=str(data_root), num_workers=num_workers)
    loader = make_loader(cfg, split, train=False)
    if not loader.dataset.cache.has_masks:
        raise DataError(f"split {split!r} below {data_root} has no ground truth; use `skinseg predict` instead")
    thresholds = state["thresholds"] if tuned else [0.5] * cfg.classes
    gates = state["gates"] if tuned and cfg.aux_head else None
    return evaluate_model(model, loader, dev, thresholds, gates, tta=tta or cfg.tta, amp_dtype=amp_dtype,
                          channels_last=cfg.channels_last, per_image=per_image, reduce=False)


def predict_folder(checkpoint, images_dir, out_dir, tta: str | None = None, device: str = "auto",
                   num_workers: int = 0) -> int:
    """Write a challenge submission for every ``ISIC_<id>.jpg`` in ``images_dir``."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    check_submission_folder(out_dir)  # before any work
    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    split = image_split("predict", images_dir)
    if not split.ids:
        raise DataError(f"no ISIC_<7 digits>.jpg images in {images_dir}")
    cache = build_cache(split, cfg.image_size, cfg.resize_mode)
    loader = make_loader(cfg.replace(num_workers=num_workers), "test", train=False,
                         dataset=ISICDataset(cache, eval_transform(cfg)))
    gates = state["gates"] if cfg.aux_head else None
    return write_submission(model, loader, out_dir, dev, state["thresholds"], gates, tta=tta or cfg.tta,
                            amp_dtype=amp_dtype, channels_last=cfg.channels_last)


def build_ensemble(checkpoints: list[str | Path], data_root: str | Path, out: str | Path, tune_split: str = "dev",
                   tta: str = "none", device: str = "auto", num_workers: int = 0) -> dict:
    """Combine checkpoints into an ensemble file, its per-attribute thresholds tuned on ``tune_split`` with the
    official score. Returns a summary: the ensemble file, tuned thresholds, and the scores on the tune split.
    """
    states, configs = load_members(checkpoints)
    cfg = ensemble_config(configs, tune_split).replace(tta=tta)
    state = ensemble_state(checkpoints, states, cfg)
    model, dev, amp_dtype = ready_for_inference(ensemble_from_state(state, str(out))[0], cfg, device)
    loader = make_loader(cfg.replace(data_root=str(data_root), num_workers=num_workers), tune_split, train=False)
    result = evaluate_model(model, loader, dev, tta=tta, amp_dtype=amp_dtype, channels_last=cfg.channels_last)
    thresholds, _, score = result.sweep.tune()
    state.update(thresholds=thresholds, gates=[0.0] * cfg.classes,
                 best={"score": score, "split": tune_split, "score_at_0.5": result.scores.overall})
    save_checkpoint(state, out)
    return {"ensemble": str(out), "members": [str(p) for p in checkpoints], "tune_split": tune_split,
            "thresholds": thresholds, "tuned_score": score, "score_at_0.5": result.scores.overall}


def score_submission(pred_dir: str | Path, data_root: str | Path, split: str = "val") -> Scores:
    """Official score of a submission folder (``ISIC_<id>_attribute_<name>.png``) against a split's ground
    truth, read from the files as the challenge's scorer would."""
    from skinseg.data.cache import read_mask
    from skinseg.data.isic import mask_name
    from skinseg.metrics import OfficialScore

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
    acc = OfficialScore()
    for image_id in truth.ids:
        hw = _png_hw(truth.mask_path(image_id, ATTRIBUTES[0]))
        t = [read_mask(truth.mask_path(image_id, a), hw)[0] for a in ATTRIBUTES]
        p = []
        for a in ATTRIBUTES:
            path = pred_dir / mask_name(image_id, a)
            if not path.exists():
                raise DataError(f"submission {pred_dir} lacks {path.name}")
            p.append(read_mask(path, hw, what="submission mask")[0])
        acc.update(torch.from_numpy(np.stack(p)), torch.from_numpy(np.stack(t)))
    return acc.compute()


def _png_hw(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


def scores_table(scores: Scores) -> pd.DataFrame:
    """Per-attribute Jaccard and Dice, then the micro (overall) and macro averages."""
    rows = {a: {"jaccard": scores.jaccard[a], "dice": scores.dice[a]} for a in ATTRIBUTES}
    rows["micro_average (overall)"] = {"jaccard": scores.micro_jaccard, "dice": scores.micro_dice}
    rows["macro_average"] = {"jaccard": scores.macro_jaccard, "dice": scores.macro_dice}
    return pd.DataFrame(rows).T
