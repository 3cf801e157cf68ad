"""The official ISIC 2018 Task 2 layout: splits, image ids, attributes and file names."""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from skinseg.errors import DataError

# The one canonical attribute order, used by masks, model channels, metrics and submissions.
ATTRIBUTES: tuple[str, ...] = (
    "pigment_network",
    "negative_network",
    "streaks",
    "milia_like_cyst",
    "globules",
)

# split -> (image folder, ground-truth folder) as in the official zips.
SPLIT_FOLDERS: dict[str, tuple[str, str]] = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task2_Training_GroundTruth_v3"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task2_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task2_Test_GroundTruth"),
}
SPLITS: tuple[str, ...] = tuple(SPLIT_FOLDERS)

IMAGE_RE = re.compile(r"^ISIC_(\d{7})\.jpg$", re.IGNORECASE)
MASK_RE = re.compile(r"^ISIC_(\d{7})_attribute_([a-z_]+)\.png$")
# files the official image folders hold beside the images: not images, skipped without a word
OFFICIAL_EXTRAS = re.compile(r"^(ATTRIBUTION\.txt|LICENSE\.txt|ISIC_\d{7}_superpixels\.png)$", re.IGNORECASE)


def mask_name(image_id: str, attribute: str) -> str:
    """File name of one attribute mask, e.g. ``ISIC_0000000_attribute_streaks.png``."""
    return f"{image_id}_attribute_{attribute}.png"


@dataclass(frozen=True)
class Split:
    """One split on disk: its image folder, its optional mask folder and its sorted image ids."""

    name: str
    image_dir: Path
    mask_dir: Path | None
    ids: tuple[str, ...] = field(repr=False)
    # id -> file name, for images whose extension is not spelled ``.jpg`` (e.g. ``ISIC_0000003.JPG``)
    image_names: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_masks(self) -> bool:
        return self.mask_dir is not None

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self.image_names.get(image_id, f"{image_id}.jpg")

    def mask_path(self, image_id: str, attribute: str) -> Path:
        if self.mask_dir is None:
            raise DataError(f"split {self.name!r} has no ground truth folder")
        return self.mask_dir / mask_name(image_id, attribute)

    def __len__(self) -> int:
        return len(self.ids)


def _find_dir(root: Path, name: str, depth: int = 2) -> Path | None:
    """Find a folder called ``name`` at most ``depth`` levels below ``root`` (root itself is level 0)."""
    level = [root]
    for _ in range(depth + 1):
        for d in level:
            cand = d / name
            if cand.is_dir():
                return cand
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir()] if level else []
    return None


def scan_images(image_dir: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """Sorted image ids of a folder and the file names not spelled ``<id>.jpg``.

    Files that are neither ``ISIC_<7 digits>.jpg`` (any case) nor the official folders' extras (ATTRIBUTION.txt,
    LICENSE.txt, superpixel PNGs) nor hidden are skipped with a warning naming them. Two files for one id
    (``ISIC_0000001.jpg`` and ``ISIC_0000001.JPG``) are an error.
    """
    found: dict[str, str] = {}
    skipped = []
    for p in image_dir.iterdir():
        m = IMAGE_RE.match(p.name)
        if m:
            image_id = f"ISIC_{m.group(1)}"
            if image_id in found:
                raise DataError(f"{image_dir} holds two files for {image_id} ({found[image_id]} and {p.name}); "
                                "keep one")
            found[image_id] = p.name
        elif not (p.name.startswith(".") or OFFICIAL_EXTRAS.match(p.name)):
            skipped.append(p.name)
    if skipped:
        skipped.sort()
        listed = ", ".join(skipped[:10]) + (f", ... ({len(skipped) - 10} more)" if len(skipped) > 10 else "")
        warnings.warn(f"{image_dir}: skipped {len(skipped)} file(s) not named ISIC_<7 digits>.jpg: {listed}",
                      stacklevel=2)
    ids = tuple(sorted(found))
    return ids, {i: name for i, name in found.items() if name != f"{i}.jpg"}


def image_split(name: str, image_dir: Path, mask_dir: Path | None = None) -> Split:
    """A split of the images in ``image_dir`` (ground truth in ``mask_dir`` when given)."""
    ids, names = scan_images(image_dir)
    return Split(name, image_dir, mask_dir, ids, names)


def find_splits(root: str | Path) -> dict[str, Split]:
    """Locate every split of the official layout up to two levels below ``root``.

    Raises:
        DataError: when the root does not exist or holds none of the expected folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; pass the folder that holds the ISIC 2018 zips' folders")
    splits: dict[str, Split] = {}
    for name, (img_folder, gt_folder) in SPLIT_FOLDERS.items():
        image_dir = _find_dir(root, img_folder)
        if image_dir is None:
            continue
        mask_dir = _find_dir(root, gt_folder)
        splits[name] = image_split(name, image_dir, mask_dir)
    if not splits:
        looked = ", ".join(f for pair in SPLIT_FOLDERS.values() for f in pair)
        raise DataError(
            f"no ISIC 2018 Task 2 folders found up to two levels below {root}; looked for: {looked}. "
            "Run `skinseg download ROOT` or `skinseg synth ROOT`, or point data_root at the extracted zips."
        )
    return splits


def get_split(root: str | Path, name: str) -> Split:
    """One split by name (train, val, test), with a clear error when it is absent."""
    if name not in SPLIT_FOLDERS:
        raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    splits = find_splits(root)
    if name not in splits:
        raise DataError(
            f"split {name!r} not found below {root}: expected a folder {SPLIT_FOLDERS[name][0]!r}; "
            f"found splits: {', '.join(splits)}"
        )
    return splits[name]


def ground_truth_folder_of(path: str | Path) -> Path | None:
    """The official ground-truth folder that ``path`` is or lies inside (by its official name), else None."""
    path = Path(path).expanduser().resolve()
    names = {gt for _, gt in SPLIT_FOLDERS.values()}
    return next((p for p in (path, *path.parents) if p.name in names), None)


def name_list(names: list[str], limit: int = 8) -> str:
    """'a, b, c and 12 more': a list of file names that fits on one line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def missing_masks(split: Split) -> list[str]:
    """Every mask file the split should have but lacks, as file names."""
    if split.mask_dir is None:
        return []
    present = {p.name for p in split.mask_dir.iterdir()}
    return [mask_name(i, a) for i in split.ids for a in ATTRIBUTES if mask_name(i, a) not in present]
