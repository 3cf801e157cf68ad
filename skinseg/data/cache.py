"""Preprocessing cache: each split resized once into compact memory-mapped uint8 arrays.

Decoding multi-megapixel JPEGs every epoch starves a GPU. A split is decoded and resized once into
``<cache>/<split>-<size>-<mode>-<fingerprint>/`` holding

- ``images.npy``: N x S x S x 3 uint8
- ``masks.npy``: N x 5 x S x S/8 uint8, bit-packed along the last axis (absent for splits without ground truth)
- ``meta.json``: ids, original sizes, letterbox boxes, per-attribute presence and pixel fraction at original size.

The fingerprint covers the source files (names, sizes, mtimes), the size and the resize mode, so any change
rebuilds the cache. A build writes into a temporary folder and renames it when complete, so an interrupted
build leaves nothing that a later run would mistake for a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from skinseg.data.isic import ATTRIBUTES, DataError, Split, missing_masks
from skinseg.paths import cache_dir

CACHE_VERSION = 1
RESIZE_MODES = ("stretch", "pad")


# ---- decoding ---------------------------------------------------------------------------
def read_image(path: Path, draft_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an RGB JPEG fully; returns it and its original (height, width).

    A corrupt or truncated file raises DataError naming it. ``draft_size`` lets libjpeg decode at 1/2, 1/4
    or 1/8 scale when the image is much larger than needed, most of the cost for the 4000+ px originals.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if draft_size is not None and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return np.asarray(im.convert("RGB")), (height, width)
    except FileNotFoundError:
        raise DataError(f"image {path} is missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"image {path} is corrupt or truncated ({e}); re-extract or re-download it, or remove it from the split"
        ) from None


def read_mask(path: Path, expected_hw: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Decode one attribute mask as bool HxW; returns it and the count of pixels that were not 0 or 255."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"mask {path} is missing") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"mask {path} is corrupt or truncated ({e}); re-extract it") from None
    if mode not in ("L", "1", "P") or arr.ndim != 2:
        raise DataError(
            f"mask {path} has mode {mode} (shape {arr.shape}); expected a single-channel 8-bit (L) PNG with "
            "values 0/255 — convert it, e.g. Image.open(p).convert('L')"
        )
    if mode == "1":
        arr = arr.astype(np.uint8) * 255
    if arr.shape != expected_hw:
        raise DataError(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image is {expected_hw[1]}x{expected_hw[0]} "
            "(width x height); masks must have their image's size"
        )
    odd = int(np.count_nonzero((arr != 0) & (arr != 255)))
    return arr > 127, odd


# ---- geometry ---------------------------------------------------------------------------
def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the content inside a size x size letterboxed canvas."""
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def resize_to_cache(arr: np.ndarray, size: int, mode: str, is_mask: bool = False) -> np.ndarray:
    """Resize an HxW(xC) array to size x size by stretching or letterboxing."""
    height, width = arr.shape[:2]
    src = arr.astype(np.uint8) * 255 if is_mask else arr
    if mode == "stretch":
        box = (0, 0, size, size)
    else:
        box = letterbox_box(height, width, size)
    top, left, h, w = box
    interp = cv2.INTER_AREA if (h < height or w < width) else cv2.INTER_LINEAR
    resized = cv2.resize(src, (w, h), interpolation=interp)
    if mode == "pad":
        canvas = np.zeros((size, size) + src.shape[2:], dtype=np.uint8)
        canvas[top : top + h, left : left + w] = resized
        resized = canvas
    return resized > 127 if is_mask else resized


def to_original_size(maps: np.ndarray, original_hw: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Map C x S x S float maps (e.g. probabilities) from cache geometry back to C x H x W of the original image."""
    top, left, h, w = box
    height, width = original_hw
    content = maps[:, top : top + h, left : left + w]
    if content.shape[1:] == (height, width):
        return content
    out = cv2.resize(np.ascontiguousarray(content.transpose(1, 2, 0)), (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, -1).transpose(2, 0, 1)


# ---- fingerprint ------------------------------------------------------------------------
def fingerprint(split: Split, size: int, mode: str) -> str:
    """Hash of the source files (name, size, mtime), the cache size and resize mode, and the cache version."""
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{size}|{mode}|{split.image_dir.resolve()}|{split.mask_dir}".encode())
    dirs = [split.image_dir] + ([split.mask_dir] if split.mask_dir else [])
    for d in dirs:
        with os.scandir(d) as it:
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
        for name, nbytes, mtime in entries:
            h.update(f"{name}|{nbytes}|{mtime}\n".encode())
    return h.hexdigest()[:16]


# ---- the cache --------------------------------------------------------------------------
@dataclass
class SplitCache:
    """A built cache of one split; arrays are memory-mapped, so opening it costs nothing."""

    path: Path
    split: str
    ids: list[str]
    original_hw: np.ndarray  # N x 2 (height, width)
    boxes: np.ndarray  # N x 4 (top, left, h, w) content box in cache geometry
    present: np.ndarray | None  # N x 5 bool, at original resolution
    fraction: np.ndarray | None  # N x 5 float, mask pixel fraction at original resolution
    size: int
    resize_mode: str

    @property
    def has_masks(self) -> bool:
        return (self.path / "masks.npy").exists()

    @property
    def images(self) -> np.ndarray:
        return np.load(self.path / "images.npy", mmap_mode="r")

    @property
    def packed_masks(self) -> np.ndarray:
        return np.load(self.path / "masks.npy", mmap_mode="r")

    def mask(self, index: int) -> np.ndarray:
        """5 x S x S uint8 0/1 masks of one image."""
        return np.unpackbits(self.packed_masks[index], axis=-1, count=self.size)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def open(cls, path: Path) -> "SplitCache":
        meta = json.loads((path / "meta.json").read_text())
        has = meta["present"] is not None
        return cls(
            path=path,
            split=meta["split"],
            ids=meta["ids"],
            original_hw=np.asarray(meta["original_hw"], dtype=np.int64).reshape(-1, 2),
            boxes=np.asarray(meta["boxes"], dtype=np.int64).reshape(-1, 4),
            present=np.asarray(meta["present"], dtype=bool).reshape(-1, len(ATTRIBUTES)) if has else None,
            fraction=np.asarray(meta["fraction"], dtype=np.float64).reshape(-1, len(ATTRIBUTES)) if has else None,
            size=meta["size"],
            resize_mode=meta["resize_mode"],
        )


def _load_sample(split: Split, image_id: str, size: int, mode: str):
    # The draft decode may be smaller than the original; the true size comes from the header.
    image, image_full_hw = read_image(split.image_path(image_id), draft_size=size * 2)
    image_small = resize_to_cache(image, size, mode)
    if not split.has_masks:
        return image_small, image_full_hw, None, None, None, 0
    masks, present, fraction, odd_total = [], [], [], 0
    for attribute in ATTRIBUTES:
        path = split.mask_path(image_id, attribute)
        m, odd = read_mask(path, image_full_hw)
        odd_total += odd
        present.append(bool(m.any()))
        fraction.append(float(m.mean()))
        masks.append(np.packbits(resize_to_cache(m, size, mode, is_mask=True), axis=-1))
    return image_small, image_full_hw, np.stack(masks), present, fraction, odd_total


def build_cache(split: Split, size: int = 256, mode: str = "stretch", root: Path | None = None,
                workers: int | None = None, progress: bool = True) -> SplitCache:
    """Build (or reuse) the cache of one split; see the module docstring."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {mode!r} is not valid; choose one of {', '.join(RESIZE_MODES)}")
    if size % 8:
        raise ValueError(f"cache size {size} must be a multiple of 8")
    root = Path(root) if root is not None else cache_dir()
    final = root / f"{split.name}-{size}-{mode}-{fingerprint(split, size, mode)}"
    if (final / "meta.json").exists():
        return SplitCache.open(final)
    missing = missing_masks(split)
    if missing:
        listed = "\n  ".join(missing)
        raise DataError(
            f"{len(missing)} mask file(s) missing in {split.mask_dir}:\n  {listed}\n"
            "every image needs one PNG per attribute; re-extract the ground-truth zip"
        )
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root, split.name, size, mode)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write(split, size, mode, tmp, workers, progress)
        os.replace(tmp, final) if not final.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SplitCache.open(final)


def _remove_stale(root: Path, split_name: str, size: int, mode: str) -> None:
    """Drop older caches of the same split/size/mode (the fingerprint changed) and leftovers of dead builds."""
    for p in root.glob(f"{split_name}-{size}-{mode}-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{split_name}-{size}-{mode}-*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _write(split: Split, size: int, mode: str, tmp: Path, workers: int | None, progress: bool) -> None:
    n = len(split.ids)
    if n == 0:
        raise DataError(f"split {split.name!r} in {split.image_dir} holds no ISIC_<7 digits>.jpg images")
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    masks = None
    if split.has_masks:
        masks = np.lib.format.open_memmap(
            tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, len(ATTRIBUTES), size, size // 8)
        )
    original_hw, boxes, present, fraction = [], [], [], []
    odd_pixels, odd_files = 0, []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda i: _load_sample(split, i, size, mode), split.ids)
        bar = tqdm(results, total=n, desc=f"caching {split.name} at {size}px", disable=not progress, unit="img")
        for k, (img, hw, m, pres, frac, odd) in enumerate(bar):
            images[k] = img
            original_hw.append(list(hw))
            boxes.append(list(letterbox_box(*hw, size)) if mode == "pad" else [0, 0, size, size])
            if masks is not None:
                masks[k] = m
                present.append(pres)
                fraction.append(frac)
                if odd:
                    odd_pixels += odd
                    odd_files.append(split.ids[k])
    images.flush()
    del images
    if masks is not None:
        masks.flush()
        del masks
    if odd_pixels:
        warnings.warn(
            f"{odd_pixels} mask pixel(s) in {len(odd_files)} image(s) of split {split.name!r} were neither 0 nor 255 "
            f"(first: {', '.join(odd_files[:5])}); binarized at > 127",
            stacklevel=3,
        )
    meta = {
        "version": CACHE_VERSION,
        "split": split.name,
        "size": size,
        "resize_mode": mode,
        "image_dir": str(split.image_dir),
        "mask_dir": str(split.mask_dir) if split.mask_dir else None,
        "ids": list(split.ids),
        "original_hw": original_hw,
        "boxes": boxes,
        "present": present if split.has_masks else None,
        "fraction": fraction if split.has_masks else None,
    }
    # meta.json is written last: its presence marks a complete cache.
    (tmp / "meta.json").write_text(json.dumps(meta))
