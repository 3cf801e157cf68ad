"""Dataset statistics: images, attribute prevalence, pixel fraction and RGB normalization per split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinseg.data.cache import SplitCache, build_cache
from skinseg.data.isic import ATTRIBUTES, find_splits


def cache_stats(cache: SplitCache, chunk: int = 256) -> dict:
    """Statistics of one cached split; prevalence and pixel fraction come from the original-size masks."""
    out: dict = {"images": len(cache)}
    if cache.present is not None:
        out["prevalence"] = {a: int(n) for a, n in zip(ATTRIBUTES, cache.present.sum(0))}
        out["pixel_fraction"] = {a: float(f) for a, f in zip(ATTRIBUTES, cache.fraction.mean(0))}
    images = cache.images
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(cache), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.float64) / 255.0
        for k in range(len(block)):
            top, left, h, w = cache.boxes[start + k]
            px = block[k, top : top + h, left : left + w].reshape(-1, 3)  # letterbox padding excluded
            total += px.sum(0)
            total_sq += (px**2).sum(0)
            count += len(px)
    mean = total / count
    out["rgb_mean"] = [round(float(v), 4) for v in mean]
    out["rgb_std"] = [round(float(v), 4) for v in np.sqrt(np.maximum(total_sq / count - mean**2, 0))]
    return out


def dataset_stats(root: str | Path, image_size: int = 256, resize_mode: str = "stretch",
                  progress: bool = True) -> dict:
    """Statistics of every split found below ``root``, keyed by split name."""
    return {
        name: cache_stats(build_cache(split, image_size, resize_mode, progress=progress))
        for name, split in find_splits(root).items()
    }


def stats_table(stats: dict) -> pd.DataFrame:
    """One row per split: image count, prevalence per attribute (count and %), mean pixel fraction, RGB mean/std."""
    rows = []
    for split, s in stats.items():
        row = {"split": split, "images": s["images"]}
        for a in ATTRIBUTES:
            if "prevalence" in s:
                row[f"{a} images"] = s["prevalence"][a]
                row[f"{a} %px"] = round(100 * s["pixel_fraction"][a], 2)
        row["rgb_mean"] = " ".join(f"{v:.3f}" for v in s["rgb_mean"])
        row["rgb_std"] = " ".join(f"{v:.3f}" for v in s["rgb_std"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
