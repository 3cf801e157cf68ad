"""Shared fixtures: a tiny dataset in the official layout, written by hand so every case is controlled."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS, mask_name  # noqa: E402

REAL_ROOT = os.environ.get("SKINSEG_ISIC_ROOT")


def write_split(root: Path, split: str, sizes: list[tuple[int, int]], seed: int = 0, with_masks: bool = True,
                first_id: int = 0) -> list[str]:
    """Write images of the given (width, height) sizes with rectangle masks; attribute k present when id % (k+2) == 0."""
    rng = np.random.default_rng(seed)
    img_folder, gt_folder = SPLIT_FOLDERS[split]
    img_dir = root / split / img_folder
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir = root / split / gt_folder
    if with_masks:
        gt_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for n, (w, h) in enumerate(sizes):
        image_id = f"ISIC_{first_id + n:07d}"
        ids.append(image_id)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(img_dir / f"{image_id}.jpg", quality=90)
        if not with_masks:
            continue
        for k, attribute in enumerate(ATTRIBUTES):
            m = np.zeros((h, w), np.uint8)
            if (first_id + n) % (k + 2) == 0:
                m[h // 4 : h // 2, w // 4 : w // 2] = 255
            Image.fromarray(m, mode="L").save(gt_dir / mask_name(image_id, attribute))
    return ids


def tiny_config(root, tmp_path, **kw):
    """A config that trains in a second or two on the fixtures' data: 32 px, 8 base channels, 2 epochs."""
    from skinseg.config import Config

    base = dict(data_root=str(root), image_size=32, batch_size=2, epochs=2, base_channels=8, model="unet",
                output_dir=str(tmp_path / "runs"), optimizer="adam", lr=3e-3, scheduler="cosine")
    base.update(kw)
    return Config(**base)



def one_line_error(capsys, argv) -> str:
    """Run the CLI; it must exit 2 with one error line on stderr (after any progress bars) and no traceback.
    Returns that line."""
    from skinseg.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skinseg ")]
    assert "Traceback" not in err and len(lines) == 1 and err.endswith(lines[0]), err
    return lines[0]


class Tmpfs:
    """A small tmpfs mount (root only); skipped with the reason where mounting is not allowed."""

    def __init__(self, path: Path, size: str, read_only: bool = False):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root in a "
                        "container that allows mounts")

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def make(name: str, size: str = "4m", read_only: bool = False) -> Path:
        m = Tmpfs(tmp_path / name, size, read_only)
        mounts.append(m)
        return m.path

    yield make
    for m in mounts:
        m.unmount()




def crash_and_resume(make_cfg, runs: Path, monkeypatch) -> dict:
    """Train ``make_cfg(run_name="split")``, interrupted at the start of its second epoch, then resume it from its
    last.pt (``make_cfg(run_name="split", load=...)``); the resumed run's summary."""
    from skinseg.train import train
    from skinseg.train.loop import Trainer

    real_epoch = Trainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(run_name="split"), progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    run_dir = next(p for p in runs.iterdir() if p.name.endswith("split"))
    resumed = train(make_cfg(run_name="split", load=str(run_dir / "last.pt")), progress=False)
    assert resumed["run_dir"] == str(run_dir)
    return resumed


def assert_same_weights(run_a: str, run_b: str) -> None:
    """The final weights (last.pt) of two run folders are bit-identical."""
    from skinseg.checkpoint import load_checkpoint

    w1 = load_checkpoint(Path(run_a) / "last.pt")["model"]
    w2 = load_checkpoint(Path(run_b) / "last.pt")["model"]
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """train (6 images of mixed sizes), val (3) and test (2, images only) in the official layout."""
    root = tmp_path / "isic"
    write_split(root, "train", [(64, 48), (80, 60), (40, 40), (96, 72), (64, 48), (50, 70)], seed=1)
    write_split(root, "val", [(64, 48), (72, 54), (48, 64)], seed=2, first_id=100)
    write_split(root, "test", [(64, 48), (32, 24)], seed=3, with_masks=False, first_id=200)
    return root


@pytest.fixture
def small_root(tmp_path: Path) -> Path:
    """train (6 images, 48x40 and 40x48) and val (2) with masks: enough for a few training steps."""
    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 4 + [(40, 48)] * 2, seed=1)
    write_split(root, "val", [(48, 40), (56, 42)], seed=2, first_id=100)
    return root


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(path))
    return path


@pytest.fixture
def real_root() -> Path:
    if not REAL_ROOT:
        pytest.skip("SKINSEG_ISIC_ROOT not set (real ISIC 2018 data)")
    return Path(REAL_ROOT)


# ---- a tiny trained checkpoint -------------------------------------------------------------
def write_tiny_data(root: Path) -> Path:
    """Six train, three val and two test images 64-96 px wide (synthetic generator, else hand-drawn rectangles)."""
    try:
        from skinseg.data.synth import write_synthetic
    except ImportError:
        write_split(root, "train", [(64, 48), (80, 60), (96, 72), (72, 54), (64, 48), (88, 66)], seed=1)
        write_split(root, "val", [(64, 48), (72, 54), (80, 60)], seed=2, first_id=100)
        write_split(root, "test", [(64, 48), (96, 72)], seed=3, first_id=200)
    else:
        write_synthetic(root, n_train=6, n_val=3, n_test=2, seed=0, width_range=(64, 96), progress=False)
    return root


def train_tiny_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(best.pt of one epoch of a base-8 unet at 32 px, data root); SKINSEG_CACHE_DIR must point at a tmp folder."""
    from skinseg.config import Config
    from skinseg.train import train

    root = write_tiny_data(tmp_path / "isic")
    cfg = Config(data_root=str(root), model="unet", base_channels=8, image_size=32, epochs=1, batch_size=2,
                 optimizer="adam", lr=3e-3, scheduler="none", device="cpu", output_dir=str(tmp_path / "runs"))
    summary = train(cfg, progress=False)
    return Path(summary["run_dir"]) / "best.pt", root


def write_blocks(root, n=4):
    """32x32 images where attribute k, when present, is a bright block of its own colour at its own place."""
    from skinseg.data.isic import SPLIT_FOLDERS, mask_name

    img_dir, gt_dir = (root / "train" / f for f in SPLIT_FOLDERS["train"])
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for i in range(n):
        image = np.full((32, 32, 3), 40, np.uint8)
        for k, a in enumerate(ATTRIBUTES):
            m = np.zeros((32, 32), np.uint8)
            if (i + k) % 2 == 0:
                r, c = divmod(k, 3)
                m[4 + 14 * r : 12 + 14 * r, 2 + 10 * c : 10 + 10 * c] = 255
                image[m > 0] = colours[k]
            Image.fromarray(m, mode="L").save(gt_dir / mask_name(f"ISIC_{i:07d}", a))
        Image.fromarray(image).save(img_dir / f"ISIC_{i:07d}.jpg", quality=95)


def train_quietly(cfg):
    """Train ``cfg`` without progress bars; the training summary."""
    from skinseg.train import train

    return train(cfg, progress=False)


@pytest.fixture
def tiny_run(small_root, tmp_path, cache_root) -> Path:
    """The run folder of one epoch on ``small_root`` (the tiny config)."""
    return Path(train_quietly(tiny_config(small_root, tmp_path, epochs=1))["run_dir"])
