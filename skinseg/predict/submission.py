"""Challenge submissions: one ``ISIC_<id>_attribute_<name>.png`` per image and attribute at the image's original
size, written whole into a folder that skinseg owns (:func:`write_submission`), for a folder of images and a
checkpoint (:func:`predict_folder`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinseg.data.augment import eval_transform
from skinseg.data.cache import SplitCache, build_cache
from skinseg.data.dataset import ISICDataset, make_loader
from skinseg.data.isic import ATTRIBUTES, ground_truth_folder_of, image_split, mask_name
from skinseg.errors import DataError, DiskFullError
from skinseg.files import (check_replaceable, ensure_writable, is_disk_full, replace_folder, space_message,
                           temp_sibling, write_marker)
from skinseg.predict.decisions import DecisionRule, decide
from skinseg.predict.load import load_for_inference
from skinseg.predict.loop import at_original_size, predict_batches

SUBMISSION_MARKER = ".skinseg-submission"


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
