"""Attribute masks drawn over dermoscopy images: a colour per attribute, blending, contours and a legend.

Pure numpy/cv2 (no widgets), so notebooks, figures and the prediction browser draw masks the same way.
"""
from __future__ import annotations

import html
from typing import Iterable

import cv2
import numpy as np

from skinseg.data.isic import ATTRIBUTES

# Okabe & Ito's colour-blind-safe palette, in ATTRIBUTES order. Blue and yellow-ish hues first, because reds and
# browns vanish on skin.
ATTRIBUTE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),  # pigment_network: blue
    (230, 159, 0),  # negative_network: orange
    (0, 158, 115),  # streaks: bluish green
    (240, 228, 66),  # milia_like_cyst: yellow
    (204, 121, 167),  # globules: reddish purple
)
COMPARE_MODES = ("truth", "prediction", "both")


def attribute_indices(attributes: Iterable[int | str] | None, count: int = len(ATTRIBUTES)) -> list[int]:
    """Sorted channel indices from indices or attribute names; ``None`` means all ``count`` channels."""
    if attributes is None:
        return list(range(count))
    chosen = set()
    for a in attributes:
        if isinstance(a, str):
            if a not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {a!r}; valid names: {', '.join(ATTRIBUTES)}")
            a = ATTRIBUTES.index(a)
        if not 0 <= int(a) < count:
            raise ValueError(f"attribute index {a} is out of range; the masks have {count} channels")
        chosen.add(int(a))
    return sorted(chosen)


def _check(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, masks = np.asarray(image), np.asarray(masks)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 H x W x 3 RGB, got {image.dtype} {image.shape}")
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be C x H x W with the image's H x W {image.shape[:2]}, got {masks.shape}")
    if len(masks) > len(ATTRIBUTE_COLOURS):
        raise ValueError(f"masks have {len(masks)} channels but only {len(ATTRIBUTE_COLOURS)} colours are defined")
    return image, masks.astype(bool, copy=False)


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45, attributes: Iterable[int | str] | None = None,
            outline: bool = False, thickness: int = 1) -> np.ndarray:
    """Attribute masks drawn over an image, each in its ``ATTRIBUTE_COLOURS`` colour; the input is not modified.

    Args:
        image: uint8 H x W x 3 RGB.
        masks: C x H x W bool or 0/1, channels in ATTRIBUTES order.
        alpha: opacity of the fill: a covered pixel becomes ``(1 - alpha) * image + alpha * colour`` (rounded).
            Where several shown attributes overlap, ``colour`` is the mean of their colours.
        attributes: channel indices or attribute names to draw; None draws all.
        outline: draw each mask's contour (opaque, ``thickness`` px, holes included) instead of filling it.
        thickness: contour width in pixels.

    Returns:
        uint8 H x W x 3 RGB.
    """
    image, masks = _check(image, masks)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    shown = attribute_indices(attributes, len(masks))
    out = image.copy()
    if outline:
        for c in shown:
            contours, _ = cv2.findContours(masks[c].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, ATTRIBUTE_COLOURS[c], int(thickness))
        return out
    if not shown or alpha == 0.0:
        return out
    chosen = masks[shown]
    count = chosen.sum(0)
    covered = count > 0
    if not covered.any():
        return out
    colours = np.asarray(ATTRIBUTE_COLOURS, dtype=np.float64)[shown]
    mix = chosen[:, covered].T.astype(np.float64) @ colours / count[covered, None]  # P x 3
    blended = (1.0 - alpha) * image[covered].astype(np.float64) + alpha * mix
    out[covered] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def compare_overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, mode: str = "both",
                    alpha: float = 0.45, attributes: Iterable[int | str] | None = None,
                    thickness: int = 1) -> np.ndarray:
    """Ground truth and/or prediction over an image.

    ``mode`` is ``"truth"`` (filled truth), ``"prediction"`` (filled prediction) or ``"both"``: the truth filled
    and the prediction drawn as contours in the same colours on top, in one image, so misses (fill without a
    line) and false alarms (a line around unfilled skin) show at a glance.
    """
    if mode not in COMPARE_MODES:
        raise ValueError(f"mode {mode!r} is not valid; choose one of {', '.join(COMPARE_MODES)}")
    if mode == "prediction":
        return overlay(image, pred, alpha, attributes)
    if truth is None:
        raise ValueError(f"mode {mode!r} needs the ground truth, which this split lacks; use mode='prediction'")
    filled = overlay(image, truth, alpha, attributes)
    if mode == "truth":
        return filled
    return overlay(filled, pred, alpha, attributes, outline=True, thickness=thickness)


def legend_html(attributes: Iterable[int | str] | None = None, note: str | None = None) -> str:
    """Small HTML legend: a coloured swatch and the name of each attribute, then an optional note."""
    items = []
    for c in attribute_indices(attributes):
        r, g, b = ATTRIBUTE_COLOURS[c]
        items.append(
            '<span style="white-space:nowrap;margin-right:12px">'
            f'<span style="display:inline-block;width:12px;height:12px;background:rgb({r},{g},{b});'
            f'border:1px solid #555;vertical-align:middle;margin-right:4px"></span>{html.escape(ATTRIBUTES[c])}</span>'
        )
    if note:
        items.append(f'<span style="color:#666">{html.escape(note)}</span>')
    return f'<div class="skinseg-legend" style="font-size:12px;line-height:20px">{"".join(items)}</div>'
