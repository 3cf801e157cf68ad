"""Preprocessing cache: each split resized once into compact memory-mapped uint8 arrays.

Decoding multi-megapixel JPEGs every epoch starves a GPU. A split is decoded and resized once into
``<cache>/<split>-<size>-<mode>-<source>-<fingerprint>/`` holding

- ``images.npy``: N x S x S x 3 uint8
- ``masks.npy``: N x 5 x S x S/8 uint8, bit-packed along the last axis (absent for splits without ground truth)
- ``meta.json``: ids, original sizes, letterbox boxes, per-attribute presence and pixel fraction at original size.

``<source>`` is a hash of the split's folders, so caches of two data roots never share a name, and a build
only ever replaces older caches of its own source. The fingerprint covers the source files (names, sizes,
mtimes), the size and the resize mode, so any change rebuilds the cache. An open :class:`SplitCache` maps its
arrays once, so it keeps reading even if its folder is replaced meanwhile.

A build checks free space first, writes into a temporary folder with plain (not memory-mapped) writes, so a
full disk is an error rather than a SIGBUS, and renames the folder when complete: an interrupted or failed
build leaves nothing that a later run would mistake for a cache, and its leftovers are removed by the next.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from skinseg.choices import RESIZE_MODES
from skinseg.data.isic import ATTRIBUTES, Split, missing_masks, name_list
from skinseg.data.masks import read_mask
from skinseg.errors import DataError, DiskFullError, SkinsegWarning
from skinseg.files import (ensure_space, ensure_writable, is_disk_full, remove_dead_temp_files, space_message,
                           temp_sibling)
from skinseg.paths import cache_dir
from skinseg.progress import bar as progress_bar

CACHE_VERSION = 2


# ---- decoding ---------------------------------------------------------------------------
def read_image(path: Path, draft_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an RGB JPEG fully; returns it and its original (height, width).

    A corrupt or truncated file raises DataError naming it, and so does a JPEG whose data libjpeg reports as
    corrupt while still decoding it (flipped bytes: a warning that would otherwise give a colour-shifted image
    without a word). ``draft_size`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger
    than needed, most of the cost for the 4000+ px originals.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image {path} is missing") from None
    except OSError as e:
        raise DataError(f"image {path} cannot be read ({e.strerror or e}); check its permissions") from None
    if data.startswith(_JPEG):
        decoded = _decode_jpeg(path, data, draft_size)
        if decoded is not None:
            return decoded
    try:  # not a JPEG libjpeg-turbo converts to RGB itself (CMYK, a PNG named .jpg): Pillow
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if draft_size is not None and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return np.asarray(im.convert("RGB")), (height, width)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"image {path} is corrupt or truncated ({e}); re-extract or re-download it, or remove it from the split"
        ) from None


_JPEG = b"\xff\xd8\xff"
_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(SkinsegWarning(message), stacklevel=3)


def _decode_jpeg(path: Path, data: bytes, draft_size: int | None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """libjpeg-turbo (simplejpeg, strict: its warnings are errors); None for what it cannot convert to RGB, and
    where simplejpeg is not installed (a node without a package index: Pillow decodes, said once)."""
    try:
        import simplejpeg
    except ImportError:
        _say_once("simplejpeg is not installed: JPEGs are decoded by Pillow, which does not report corrupt JPEG "
                  "data (pip install simplejpeg)")
        return None

    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        # Pillow's draft: the largest of 1/8, 1/4, 1/2 that keeps both sides >= draft_size (libjpeg-turbo's other
        # M/8 scales would change the cached pixels)
        fit = max(1, min(width // draft_size, height // draft_size)) if draft_size else 1
        k = next(a for a in (8, 4, 2, 1) if fit >= a)
        image = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // k), min_width=-(-width // k),
                                       min_factor=k, strict=True)
        return image, (height, width)
    except ValueError as e:
        problem = str(e)
    try:
        simplejpeg.decode_jpeg(data, "RGB", strict=False)
    except ValueError:
        return None  # not decodable by libjpeg-turbo into RGB: Pillow decides
    raise DataError(f"image {path} holds corrupt JPEG data (libjpeg: {problem}); it would decode with damaged "
                    "pixels: re-extract or re-download it, or remove it from the split")


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


# ---- fingerprint ------------------------------------------------------------------------
def _source_dirs(split: Split) -> str:
    """The split's folders as resolved paths: a root reached through a symlink and through its real path is one
    source, with one cache."""
    mask_dir = split.mask_dir.resolve() if split.mask_dir else None
    return f"{split.image_dir.resolve()}|{mask_dir}"


def source_key(split: Split) -> str:
    """Short hash of the split's folders: caches of different data roots never share a folder name."""
    return hashlib.sha1(_source_dirs(split).encode()).hexdigest()[:8]


def fingerprint(split: Split, size: int, mode: str) -> str:
    """Hash of the source files (name, size, mtime), the cache size and resize mode, and the cache version."""
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{size}|{mode}|{_source_dirs(split)}".encode())
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
    _arrays: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_masks(self) -> bool:
        return self.present is not None

    def _array(self, name: str) -> np.ndarray:
        # mapped once and kept: the mapping outlives a later replacement of the folder
        if name not in self._arrays:
            try:
                self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"the cache {self.path} is damaged ({name}.npy: {e}); delete the folder to rebuild "
                                "it") from None
        return self._arrays[name]

    def __getstate__(self) -> dict:  # DataLoader workers started by spawn map their own view
        return {**self.__dict__, "_arrays": {}}

    @property
    def images(self) -> np.ndarray:
        return self._array("images")

    @property
    def packed_masks(self) -> np.ndarray:
        if not self.has_masks:
            raise DataError(f"split {self.split!r} ({self.path}) has no ground truth")
        return self._array("masks")

    def mask(self, index: int) -> np.ndarray:
        """5 x S x S uint8 0/1 masks of one image."""
        return np.unpackbits(self.packed_masks[index], axis=-1, count=self.size)

    def __len__(self) -> int:
        return len(self.ids)

    def source_split(self) -> Split:
        """The split of files this cache was built from (its folders, ids and file names, from ``meta.json``)."""
        meta = json.loads((self.path / "meta.json").read_text())
        mask_dir = Path(meta["mask_dir"]) if meta["mask_dir"] else None
        return Split(self.split, Path(meta["image_dir"]), mask_dir, tuple(self.ids), meta.get("image_names", {}))

    @classmethod
    def open(cls, path: Path) -> "SplitCache":
        """Open a built cache and map its arrays."""
        meta = json.loads((path / "meta.json").read_text())
        has = meta["present"] is not None
        cache = cls(
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
        cache._array("images")
        if has:
            cache._array("masks")
        return cache


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
    prefix = f"{split.name}-{size}-{mode}-{source_key(split)}"
    final = root / f"{prefix}-{fingerprint(split, size, mode)}"
    if (final / "meta.json").exists():
        return SplitCache.open(final)
    missing = missing_masks(split)
    if missing:
        raise DataError(f"{len(missing)} mask file(s) missing in {split.mask_dir}: {name_list(missing)}; every image "
                        "needs one PNG per attribute: re-extract the ground-truth zip")
    if not split.ids:
        raise DataError(f"split {split.name!r} in {split.image_dir} holds no ISIC_<7 digits>.jpg images")
    ensure_writable(root, "the cache folder", "set SKINSEG_CACHE_DIR to a writable folder")
    _remove_stale(root, prefix, keep=final.name)
    needed = cache_bytes(len(split.ids), size, split.has_masks)
    larger_disk = "Free space, or set SKINSEG_CACHE_DIR to a folder on a larger disk"
    ensure_space(root, needed, f"not enough disk space to cache split {split.name!r} at {size} px", larger_disk)
    tmp = temp_sibling(final, per_thread=True)  # concurrent builds of one split in threads of one process
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write(split, size, mode, tmp, workers, progress)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():
                raise
            # a concurrent build of the same files renamed its copy first (the rename onto a non-empty folder
            # fails): use that one
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise DiskFullError(f"disk full while caching split {split.name!r} at {size} px "
                                f"({space_message(root, needed)}); the partial cache was removed. {larger_disk}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SplitCache.open(final)


def cache_bytes(n: int, size: int, with_masks: bool) -> int:
    """Bytes a cache of ``n`` images at ``size`` px takes (images, bit-packed masks, headers)."""
    return n * size * size * 3 + (n * len(ATTRIBUTES) * size * (size // 8) if with_masks else 0) + 4096


def _remove_stale(root: Path, prefix: str, keep: str) -> None:
    """Drop older caches of the same source, split, size and mode (its files changed), and leftovers of dead
    builds of any cache in ``root``. Caches of other sources are never touched; an open SplitCache of a
    removed folder keeps reading its mapped arrays."""
    for p in root.glob(f"{prefix}-*"):
        if p.name != keep:  # a concurrent build of the same files may have just finished it
            shutil.rmtree(p, ignore_errors=True)
    remove_dead_temp_files(root)


class _NpyWriter:
    """Writes an .npy file one row at a time with plain writes: a full disk raises OSError (ENOSPC), where a
    memory-mapped write would kill the process with SIGBUS."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.f = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.f, {"descr": "|u1", "fortran_order": False, "shape": shape})

    def __setitem__(self, _k: int, row: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(row, dtype=np.uint8).tobytes())

    def close(self) -> None:
        """Flush to the disk (a full disk raises here at the latest) and close."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def _write(split: Split, size: int, mode: str, tmp: Path, workers: int | None, progress: bool) -> None:
    n = len(split.ids)
    images = _NpyWriter(tmp / "images.npy", (n, size, size, 3))
    masks = _NpyWriter(tmp / "masks.npy", (n, len(ATTRIBUTES), size, size // 8)) if split.has_masks else None
    writers = [w for w in (images, masks) if w is not None]
    try:
        meta = _write_rows(split, size, mode, images, masks, workers, progress)
        for w in writers:
            w.close()
    finally:
        for w in writers:
            w.f.close()
    # meta.json is written last: its presence marks a complete cache.
    (tmp / "meta.json").write_text(json.dumps(meta))


def _write_rows(split: Split, size: int, mode: str, images: _NpyWriter, masks: _NpyWriter | None,
                workers: int | None, progress: bool) -> dict:
    n = len(split.ids)
    original_hw, boxes, present, fraction = [], [], [], []
    odd_pixels, odd_files = 0, []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda i: _load_sample(split, i, size, mode), split.ids)
        bar = progress_bar(results, total=n, desc=f"caching {split.name} at {size}px", show=progress, unit="img")
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
    if odd_pixels:
        warnings.warn(
            f"{odd_pixels} mask pixel(s) in {len(odd_files)} image(s) of split {split.name!r} were neither 0 nor 255 "
            f"(first: {', '.join(odd_files[:5])}); binarized at > 127",
            stacklevel=3,
        )
    return {
        "version": CACHE_VERSION,
        "split": split.name,
        "size": size,
        "resize_mode": mode,
        "image_dir": str(split.image_dir),
        "mask_dir": str(split.mask_dir) if split.mask_dir else None,
        "ids": list(split.ids),
        "image_names": dict(split.image_names),
        "original_hw": original_hw,
        "boxes": boxes,
        "present": present if split.has_masks else None,
        "fraction": fraction if split.has_masks else None,
    }
