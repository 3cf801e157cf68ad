"""Checkpoint-level verbs: evaluate a checkpoint on a split, write a submission for a folder of images, combine
checkpoints into an ensemble, score a submission folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skinseg.config import Config, ConfigError
from skinseg.data.cache import build_cache
from skinseg.data.dataset import ISICDataset, make_loader
from skinseg.data.augment import eval_transform
from skinseg.data.isic import ATTRIBUTES, DataError, Split, get_split, list_image_ids
from skinseg.ensemble import KIND, ensemble_config, ensemble_from_state, is_ensemble, member_config
from skinseg.errors import CheckpointError
from skinseg.inference import EvalResult, evaluate, write_submission
from skinseg.metrics import Scores
from skinseg.models import model_from_config
from skinseg.train.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from skinseg.train.distributed import pick_amp, pick_device


def load_for_inference(checkpoint: str | Path, device: str = "auto"):
    """(model in eval mode, config, checkpoint state, device, amp dtype) from a checkpoint or ensemble file."""
    state = load_checkpoint(checkpoint)
    if is_ensemble(state):
        model, cfg = ensemble_from_state(state, str(checkpoint))
    else:
        cfg = member_config(state["config"], str(checkpoint))
        model = model_from_config(cfg)
        load_model_weights(model, state, checkpoint)
    model, dev, amp_dtype = _ready(model, cfg, device)
    return model, cfg, state, dev, amp_dtype


def _ready(model: torch.nn.Module, cfg: Config, device: str):
    """The model on its device in eval mode (channels_last when configured), the device and the amp dtype."""
    dev = pick_device(device)
    model = model.to(dev).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, _ = pick_amp(cfg.amp, dev)
    return model, dev, amp_dtype


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
    return evaluate(model, loader, dev, thresholds, gates, tta=tta or cfg.tta, amp_dtype=amp_dtype,
                    channels_last=cfg.channels_last, per_image=per_image, reduce=False)


def predict_folder(checkpoint, images_dir, out_dir, tta: str | None = None, device: str = "auto",
                   num_workers: int = 0) -> int:
    """Write a challenge submission for every ``ISIC_<id>.jpg`` in ``images_dir``."""
    model, cfg, state, dev, amp_dtype = load_for_inference(checkpoint, device)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    ids = list_image_ids(images_dir)
    if not ids:
        raise DataError(f"no ISIC_<7 digits>.jpg images in {images_dir}")
    cache = build_cache(Split("predict", images_dir, None, ids), cfg.image_size, cfg.resize_mode)
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
    if len(checkpoints) < 2:
        raise ConfigError("an ensemble needs at least two checkpoints")
    states = [load_checkpoint(p) for p in checkpoints]
    for p, s in zip(checkpoints, states):
        if is_ensemble(s):
            raise CheckpointError(f"{p} is itself an ensemble; list its member checkpoints instead")
    configs = [member_config(s["config"], str(p)) for p, s in zip(checkpoints, states)]
    cfg = ensemble_config(configs, tune_split).replace(tta=tta)
    state = {"kind": KIND, "config": cfg.to_dict(),
             "members": [{"source": str(p), "config": s["config"], "model": s["model"]}
                         for p, s in zip(checkpoints, states)]}
    model, dev, amp_dtype = _ready(ensemble_from_state(state, str(out))[0], cfg, device)
    loader = make_loader(cfg.replace(data_root=str(data_root), num_workers=num_workers), tune_split, train=False)
    result = evaluate(model, loader, dev, tta=tta, amp_dtype=amp_dtype, channels_last=cfg.channels_last)
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
    acc = OfficialScore()
    for image_id in truth.ids:
        hw = _png_hw(truth.mask_path(image_id, ATTRIBUTES[0]))
        t = [read_mask(truth.mask_path(image_id, a), hw)[0] for a in ATTRIBUTES]
        p = []
        for a in ATTRIBUTES:
            path = pred_dir / mask_name(image_id, a)
            if not path.exists():
                raise DataError(f"submission {pred_dir} lacks {path.name}")
            p.append(read_mask(path, hw)[0])
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
