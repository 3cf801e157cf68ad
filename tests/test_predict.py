"""skinseg.predict: submissions never replace what skinseg did not write; 0/1 masks are refused by the cache and
the scorer; non-finite outputs name their images; a diverged checkpoint is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error
from skinseg.checkpoint import load_checkpoint, save_checkpoint
from skinseg.cli import main
from skinseg.config import Config
from skinseg.data.cache import build_cache
from skinseg.data.isic import SPLIT_FOLDERS, get_split, mask_name
from skinseg.errors import DataError
from skinseg.runs import RunFolder


PROJ = Path(__file__).resolve().parents[1]


def test_predict_refuses_ground_truth_and_foreign_folders_and_replaces_its_own(small_root, tmp_path, tiny_run,
                                                                                capsys):
    best = str(RunFolder(tiny_run).best)
    images = small_root / "val" / SPLIT_FOLDERS["val"][0]
    truth = small_root / "val" / SPLIT_FOLDERS["val"][1]
    before = sorted(p.name for p in truth.iterdir())
    for out in (truth, truth / "sub"):
        err = one_line_error(capsys, ["predict", "--checkpoint", best, "--images", str(images), "--out", str(out)])
        assert "ground-truth folder" in err
    assert sorted(p.name for p in truth.iterdir()) == before
    # a folder whose files all look like masks, but that predict did not write
    foreign = tmp_path / "masks"
    foreign.mkdir()
    (foreign / mask_name("ISIC_0000100", "streaks")).write_bytes(b"not mine")
    err = one_line_error(capsys, ["predict", "--checkpoint", best, "--images", str(images), "--out", str(foreign)])
    assert "holds files that skinseg did not write there (no .skinseg-submission marker)" in err
    assert (foreign / mask_name("ISIC_0000100", "streaks")).exists()
    # its own folder is replaced, whole
    out = tmp_path / "submission"
    assert main(["predict", "--checkpoint", best, "--images", str(images), "--out", str(out)]) == 0
    (out / mask_name("ISIC_0000999", "streaks")).write_bytes(b"stale")
    assert main(["predict", "--checkpoint", best, "--images", str(images), "--out", str(out)]) == 0
    assert not (out / mask_name("ISIC_0000999", "streaks")).exists() and len(list(out.glob("*.png"))) == 10
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    # scoring the ground truth against itself is refused
    err = one_line_error(capsys, ["score", "--submission", str(truth), "--data", str(small_root), "--split", "val"])
    assert "ground-truth folder" in err


def _zero_one_masks(root: Path, split: str) -> Path:
    gt = root / split / SPLIT_FOLDERS[split][1]
    for p in gt.glob("*.png"):
        arr = np.asarray(Image.open(p))
        Image.fromarray((arr > 127).astype(np.uint8), mode="L").save(p)
    return gt


def test_zero_one_masks_are_an_error_in_the_cache_and_in_scoring(small_root, tmp_path, cache_root, tiny_run, capsys):
    gt = _zero_one_masks(small_root, "train")
    with pytest.raises(DataError, match=r"holds only the values 0 and 1.*0/255"):
        build_cache(get_split(small_root, "train"), size=32, progress=False)
    images = small_root / "val" / SPLIT_FOLDERS["val"][0]
    sub = tmp_path / "sub"
    assert main(["predict", "--checkpoint", str(RunFolder(tiny_run).best), "--images", str(images),
                 "--out", str(sub)]) == 0
    for p in sub.glob("*.png"):
        arr = np.asarray(Image.open(p))
        arr = np.zeros_like(arr)
        arr[0, 0] = 1
        Image.fromarray(arr, mode="L").save(p)
    err = one_line_error(capsys, ["score", "--submission", str(sub), "--data", str(small_root), "--split", "val"])
    assert "submission mask" in err and "0 and 1" in err
    assert gt.exists()


def test_evaluation_names_exactly_the_images_with_non_finite_outputs(small_root, cache_root):
    """Evaluation checks finiteness once, after the loop: it still names the one bad image of the second batch."""
    from skinseg.data.dataset import make_loader
    from skinseg.predict.loop import NonFiniteOutputError, evaluate_model
    from skinseg.models import create_model

    cfg = Config(data_root=str(small_root), image_size=32, batch_size=2, val_split="train")
    loader = make_loader(cfg, "train", train=False)
    model = create_model("unet", base_channels=8)
    calls = []

    def poison(module, inputs, out):
        calls.append(1)
        if len(calls) == 2:
            out = out.clone()
            out[1] = float("nan")
        return out

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteOutputError) as e:
        evaluate_model(model, loader, torch.device("cpu"))
    assert e.value.ids == [loader.dataset.cache.ids[3]] and len(calls) == 3  # the loop ran to its end


def test_evaluating_a_diverged_checkpoint_is_a_one_line_error(small_root, tiny_run, capsys):
    best = RunFolder(tiny_run).best
    state = load_checkpoint(best)
    state["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, best)
    err = one_line_error(capsys, ["evaluate", "--checkpoint", str(best), "--data", str(small_root)])
    assert "NaN or infinite" in err
