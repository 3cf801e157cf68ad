"""The synthetic dataset on disk, in the official ISIC 2018 Task 2 layout: :func:`write_synthetic` (``skinseg synth``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS, SPLITS, mask_name
from skinseg.data.synth.images import draw_present, generate_sample, resolve_prevalence
from skinseg.errors import ConfigError, DataError
from skinseg.files import (check_replaceable, ensure_writable, remove_dead_temp_files, replace_folder, temp_sibling,
                           write_marker)
from skinseg.paths import SYNTH_DEFAULTS
from skinseg.progress import bar as progress_bar

# First image id of each split. Fixed offsets keep a split's ids independent of the other splits' sizes.
ID_OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000}
MAX_IMAGES_PER_SPLIT = 1_000_000
JPEG_QUALITY = 90
# left in each split folder the generator wrote: the mark that it may replace that folder
SYNTH_MARKER = ".skinseg-synthetic"


def write_synthetic(
    out: str | os.PathLike,
    n_train: int = SYNTH_DEFAULTS["n_train"],
    n_val: int = SYNTH_DEFAULTS["n_val"],
    n_test: int = SYNTH_DEFAULTS["n_test"],
    seed: int = SYNTH_DEFAULTS["seed"],
    width_range: tuple[int, int] = tuple(SYNTH_DEFAULTS["width_range"]),
    sizes: Sequence[tuple[int, int]] | None = None,
    prevalence: Mapping[str, float] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write a synthetic dataset in the official ISIC 2018 Task 2 layout below ``out``.

    Every split goes to ``out/<split>/<image folder>/ISIC_<id>.jpg`` and
    ``out/<split>/<ground-truth folder>/ISIC_<id>_attribute_<name>.png`` with the folder names of the official zips,
    the test split with its ground truth. Each split is written to a hidden temporary folder and renamed into place
    when complete, replacing an older one that this generator wrote (it holds the ``.skinseg-synthetic`` marker; any
    other folder there, such as a download, is refused before anything is written): an interrupted run leaves no
    half-written split. A split of 0 images is not written (an older one there stays).

    Args:
        out: root folder, created if needed.
        n_train, n_val, n_test: images per split.
        seed: the same seed gives byte-identical files; image ``i`` of a split depends only on (seed, split, i).
        width_range: image width, uniform in [low, high]; height is 3/4 of it, as in most dermoscopy images.
        sizes: explicit (width, height) list cycled through instead of ``width_range``.
        prevalence: attribute -> probability of being present, overriding the real train split's defaults.
        progress: show a progress bar.

    Returns:
        split -> number of images written.
    """
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if not 0 <= n < MAX_IMAGES_PER_SPLIT:
            raise ConfigError(f"n_{split} (--n-{split}): images in the split, from 0 to {MAX_IMAGES_PER_SPLIT - 1}; got {n}")
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed (--seed): a whole number from 0 to 2**32 - 1; got {seed}")
    if sizes is None:
        if len(width_range) != 2 or not 32 <= width_range[0] <= width_range[1] <= 16384:
            raise ConfigError(f"width_range (--width-range): low,high image widths with 32 <= low <= high <= 16384, "
                              f"e.g. 300,900; got {','.join(str(v) for v in width_range)}")
    elif not sizes:
        raise ConfigError("sizes must hold at least one (width, height), or be None to use width_range")
    probs = resolve_prevalence(prevalence)

    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"output folder {root} is a file; name a new folder (or one that `skinseg synth` wrote)")
    # a split folder is replaced only when this generator wrote it: a downloaded dataset there stays untouched
    for split, n in counts.items():
        if n:
            check_replaceable(root / split, SYNTH_MARKER, "split folder",
                              "write the synthetic data to another folder (e.g. data/synthetic)")
    ensure_writable(root, "output folder", "choose another output folder")
    # Leftovers of a killed run (and of older versions' ``.<split>.*.partial``); the inner folders have neutral
    # names, so nothing ever reads them as a split.
    remove_dead_temp_files(root)
    for stale in root.glob(".*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    with progress_bar(total=sum(counts.values()), desc="synthetic ISIC", unit="img", show=progress) as bar:
        for split, n in counts.items():
            if n:
                _write_split(root, split, n, seed, width_range, sizes, probs, bar)
    return counts


def _write_split(root, split, n, seed, width_range, sizes, probs, bar) -> None:
    tmp = temp_sibling(root / split)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        image_dir, mask_dir = tmp / "images", tmp / "masks"
        image_dir.mkdir()
        mask_dir.mkdir()
        for index in range(n):
            image_id = f"ISIC_{ID_OFFSETS[split] + index:07d}"
            r_present, r_size, r_draw = np.random.default_rng([seed, SPLITS.index(split), index]).spawn(3)
            if sizes is not None:
                width, height = sizes[index % len(sizes)]
            else:
                width = int(r_size.integers(width_range[0], width_range[1] + 1))
                height = round(width * 3 / 4)
            image, masks = generate_sample(r_draw, width, height, draw_present(r_present, probs))
            _write_sample(image_dir, mask_dir, image_id, image, masks)
            bar.update()
        image_folder, mask_folder = SPLIT_FOLDERS[split]
        image_dir.rename(tmp / image_folder)
        mask_dir.rename(tmp / mask_folder)
        write_marker(tmp, SYNTH_MARKER, "written by skinseg synth; `skinseg synth` may replace this folder")
        replace_folder(tmp, root / split)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_sample(image_dir: Path, mask_dir: Path, image_id: str, image: np.ndarray, masks: np.ndarray) -> None:
    # imencode + write_bytes instead of imwrite: works for any path cv2 cannot open itself (non-ASCII on Windows).
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {image_id}.jpg")
    (image_dir / f"{image_id}.jpg").write_bytes(jpg.tobytes())
    for name, mask in zip(ATTRIBUTES, masks):
        ok, png = cv2.imencode(".png", mask)  # single channel uint8 -> 8-bit grayscale ("L") PNG
        if not ok:
            raise OSError(f"could not encode {mask_name(image_id, name)}")
        (mask_dir / mask_name(image_id, name)).write_bytes(png.tobytes())
