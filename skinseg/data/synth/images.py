"""One synthetic ISIC-like sample: skin with vignetting and hairs, one irregular brown lesion and, independently with
the real training split's prevalence, the five attributes drawn as distinct textures. Like the real ground truth,
which was built from superpixels, every mask is a coarse blob around its texture, not the exact strokes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import cv2
import numpy as np

from skinseg.data.isic import ATTRIBUTES
from skinseg.errors import did_you_mean

# Fraction of ISIC 2018 Task 2 training images in which each attribute is present.
DEFAULT_PREVALENCE: dict[str, float] = {
    "pigment_network": 0.59,
    "negative_network": 0.07,
    "streaks": 0.04,
    "milia_like_cyst": 0.26,
    "globules": 0.23,
}

# Drawing happens at most at this size and is resized up: a 4000 px image then costs little more than a 1000 px one,
# and the textures keep the scale they have in downsampled real images.
WORK_MAX_SIDE = 1024
# Attribute regions are shaped at this coarse size, which both makes them blobby like superpixel masks and is cheap.
COARSE_MAX_SIDE = 160

# RGB anchors from light to dark skin; a random point on this path is the background tone.
_SKIN_TONES = np.array([[242, 208, 190], [226, 178, 150], [200, 145, 110], [160, 110, 80]], np.float32)


@dataclass(frozen=True)
class SynthSample:
    """One generated sample at its final size.

    Args:
        image: RGB image, uint8, H x W x 3.
        masks: one mask per attribute in ``ATTRIBUTES`` order, uint8 0/255, 5 x H x W.
        lesion: where the lesion is, bool, H x W (not part of the dataset; tests and figures use it).
    """

    image: np.ndarray
    masks: np.ndarray
    lesion: np.ndarray


@dataclass(frozen=True)
class _Lesion:
    """Lesion geometry at working resolution."""

    cx: float
    cy: float
    theta: np.ndarray  # outline angles
    radius: np.ndarray  # outline radius at each angle
    inside: np.ndarray  # bool H x W
    depth: np.ndarray  # float32 H x W: 0 at the border, 1 at the deepest point

    @property
    def mean_radius(self) -> float:
        return float(self.radius.mean())

    def outline(self, scale: float = 1.0) -> np.ndarray:
        """Outline points at ``scale`` times the radius, as int32 polygon for cv2."""
        x = self.cx + scale * self.radius * np.cos(self.theta)
        y = self.cy + scale * self.radius * np.sin(self.theta)
        return np.round(np.stack([x, y], 1)).astype(np.int32)


def resolve_prevalence(prevalence: Mapping[str, float] | None = None) -> dict[str, float]:
    """The default prevalence, updated with ``prevalence`` (attribute -> probability of being present).

    Raises:
        ValueError: for an unknown attribute name (with the closest valid one) or a probability outside [0, 1].
    """
    resolved = dict(DEFAULT_PREVALENCE)
    for name, p in (prevalence or {}).items():
        if name not in resolved:
            raise ValueError(f"unknown attribute {name!r} in prevalence{did_you_mean(name, ATTRIBUTES, cutoff=0.6)}; "
                             f"valid: {', '.join(ATTRIBUTES)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"prevalence of {name!r} must be a probability in [0, 1], got {p}")
        resolved[name] = float(p)
    return resolved


def draw_present(rng: np.random.Generator, prevalence: Mapping[str, float] | None = None) -> dict[str, bool]:
    """Draw which attributes an image shows, each independently with its prevalence (default: the real train split)."""
    probs = resolve_prevalence(prevalence)
    # One draw per attribute always, so that changing one probability leaves the other attributes' draws alone.
    u = rng.random(len(ATTRIBUTES))
    return {name: bool(u[i] < probs[name]) for i, name in enumerate(ATTRIBUTES)}


def generate_sample(
    rng: np.random.Generator, width: int, height: int, present: Mapping[str, bool]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one ISIC-like image and its attribute masks.

    Args:
        rng: the only source of randomness; the same generator state gives the same sample.
        width, height: output size in pixels.
        present: attribute -> whether to draw it; missing attributes are absent.

    Returns:
        ``(image, masks)``: RGB uint8 H x W x 3, and uint8 0/255 masks 5 x H x W in ``ATTRIBUTES`` order, non-empty
        exactly for the present attributes.
    """
    sample = render_sample(rng, width, height, present)
    return sample.image, sample.masks


def render_sample(rng: np.random.Generator, width: int, height: int, present: Mapping[str, bool]) -> SynthSample:
    """Like :func:`generate_sample`, but also returns the lesion region."""
    unknown = set(present) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; valid: {', '.join(ATTRIBUTES)}")
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small; use at least 16x16")
    scale = min(1.0, WORK_MAX_SIDE / max(width, height))
    w, h = max(16, round(width * scale)), max(16, round(height * scale))
    # Separate streams per part, so that one attribute's texture does not change when another is switched on or off.
    r_skin, r_lesion, r_hair, r_noise, *r_attr = rng.spawn(4 + len(ATTRIBUTES))

    img = _skin(r_skin, w, h)
    lesion = _lesion_geometry(r_lesion, w, h)
    _paint_lesion(r_lesion, img, lesion)
    masks = np.zeros((len(ATTRIBUTES), h, w), bool)
    for i, name in enumerate(ATTRIBUTES):
        if present.get(name, False):
            masks[i] = _PAINTERS[name](r_attr[i], img, lesion)
    _paint_hair(r_hair, img)
    _vignette(r_noise, img)
    img += 2.5 * r_noise.standard_normal(img.shape[:2], dtype=np.float32)[..., None]  # sensor noise
    image = np.clip(img, 0, 255).astype(np.uint8)

    inside = lesion.inside
    if (w, h) != (width, height):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        masks = np.stack([_resize_mask(m, width, height) for m in masks])
        inside = _resize_mask(inside, width, height)
    return SynthSample(image, masks.astype(np.uint8) * 255, inside)


# --------------------------------------------------------------------------------------------------------------------
# Drawing. Everything works on a float32 RGB canvas in [0, 255] at working resolution; ``unit`` is the short side.
# Full-frame 3-channel float operations dominate the cost, so every local effect works on its bounding box only.


def _unit(img: np.ndarray) -> float:
    return float(min(img.shape[:2]))


def _box(weight: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """Bounding box of the non-zero part of ``weight`` grown by ``margin``, as slices; None when all zero."""
    nz = weight if weight.dtype == np.uint8 else (weight > 0).view(np.uint8)
    x, y, bw, bh = cv2.boundingRect(nz)
    if bw == 0:
        return None
    h, w = weight.shape[:2]
    return slice(max(0, y - margin), min(h, y + bh + margin)), slice(max(0, x - margin), min(w, x + bw + margin))


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise, about ``cells`` bumps along the long side, roughly unit variance."""
    long_side = max(w, h)
    gw = max(2, round(cells * w / long_side))
    gh = max(2, round(cells * h / long_side))
    grid = rng.standard_normal((gh, gw, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels) if channels > 1 else out.reshape(h, w)


def _blend(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """img <- img + alpha * (colour - img) in place, within alpha's bounding box; colour: RGB triple or H x W x 3."""
    box = _box(alpha)
    if box is None:
        return
    colour = np.asarray(colour, np.float32)
    if colour.ndim == 3:
        colour = colour[box]
    part = img[box]
    part += alpha[box][..., None] * (colour - part)


def _blur(weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a mostly-zero float map, computed only around its non-zero part."""
    out = np.zeros(weight.shape, np.float32)
    box = _box(weight, int(np.ceil(3 * sigma)) + 1)
    if box is not None:
        out[box] = cv2.GaussianBlur(weight[box].astype(np.float32), (0, 0), sigma)
    return out


def _skin(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    # Real ISIC images are mostly light skin: bias the tone towards the light end.
    t = rng.beta(1.5, 3.0) * (len(_SKIN_TONES) - 1)
    k = min(int(t), len(_SKIN_TONES) - 2)
    base = _SKIN_TONES[k] + (t - k) * (_SKIN_TONES[k + 1] - _SKIN_TONES[k])
    base = base * rng.uniform(0.95, 1.04, 3).astype(np.float32)
    # Mostly brightness shading (uneven lighting, skin folds) with a little redness variation.
    shade = 1.0 + 0.06 * _smooth_noise(rng, w, h, 4) + 0.025 * _smooth_noise(rng, w, h, 30)
    tint = 0.02 * _smooth_noise(rng, w, h, 5, 3)
    return np.ascontiguousarray(base * (shade[..., None] + tint), dtype=np.float32)


def _lesion_geometry(rng: np.random.Generator, w: int, h: int) -> _Lesion:
    unit = min(w, h)
    cx = w / 2 + rng.normal(0, 0.06) * w
    cy = h / 2 + rng.normal(0, 0.06) * h
    r0 = rng.uniform(0.25, 0.38) * unit
    theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
    # A few low harmonics give the irregular, asymmetric outline of a nevus or melanoma.
    radius = np.ones_like(theta)
    for k in range(2, 8):
        radius += rng.uniform(0, 0.16 / k**0.6) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = r0 * np.clip(radius, 0.5, None)
    inside = np.zeros((h, w), np.uint8)
    probe = _Lesion(cx, cy, theta, radius, inside, inside)
    cv2.fillPoly(inside, [probe.outline()], 1)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    depth /= max(float(depth.max()), 1.0)
    return _Lesion(cx, cy, theta, radius, inside.astype(bool), depth)


def _paint_lesion(rng: np.random.Generator, img: np.ndarray, lesion: _Lesion) -> None:
    """Brown lesion, darker towards its centre, mottled, sometimes with a bluish-grey veil; slightly soft border."""
    sigma = max(0.6, 0.006 * _unit(img))
    box = _box(lesion.inside.view(np.uint8), int(np.ceil(3 * sigma)) + 1)
    bh, bw = lesion.depth[box].shape
    darkness = rng.uniform(0.0, 1.0)
    rim = np.array([170, 115, 80], np.float32) * (1 - 0.2 * darkness)
    centre = np.array([110, 68, 50], np.float32) * (1 - 0.4 * darkness)
    t = lesion.depth[box][..., None] ** 0.7
    colour = rim + t * (centre - rim)
    mottle = 0.10 * _smooth_noise(rng, bw, bh, 6) + 0.05 * _smooth_noise(rng, bw, bh, 24)
    colour *= 1 + mottle[..., None] + 0.03 * _smooth_noise(rng, bw, bh, 5, 3)
    if rng.random() < 0.25:
        _blend(colour, np.clip(0.6 * _smooth_noise(rng, bw, bh, 4), 0, 0.7), (115, 115, 135))
    alpha = cv2.GaussianBlur(lesion.inside[box].astype(np.float32), (0, 0), sigma) * rng.uniform(0.9, 1.0)
    part = img[box]
    part += alpha[..., None] * (colour - part)


def _coarse(img: np.ndarray) -> tuple[float, int, int]:
    """Scale and size of the coarse grid on which regions are shaped."""
    h, w = img.shape[:2]
    s = min(1.0, COARSE_MAX_SIDE / max(h, w))
    return s, max(8, round(w * s)), max(8, round(h * s))


def _sample_points(rng: np.random.Generator, lesion: _Lesion, n: int, min_depth: float = 0.15) -> np.ndarray:
    """``n`` random (x, y) points inside the lesion at least ``min_depth`` deep (working resolution)."""
    ys, xs = np.nonzero(lesion.depth >= min_depth)
    if len(xs) == 0:
        ys, xs = np.nonzero(lesion.inside)
    pick = rng.integers(0, len(xs), n)
    return np.stack([xs[pick], ys[pick]], 1).astype(np.float32)


def _blob_region(rng, img: np.ndarray, centres: np.ndarray, radii: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """A blobby region around ellipses at ``centres`` (radii in px), shaped at coarse resolution, within ``allowed``."""
    h, w = img.shape[:2]
    s, cw, ch = _coarse(img)
    field = np.zeros((ch, cw), np.float32)
    for (x, y), r in zip(centres, radii):
        axes = (max(1, round(r * s * rng.uniform(0.7, 1.3))), max(1, round(r * s * rng.uniform(0.7, 1.3))))
        cv2.ellipse(field, (round(x * s), round(y * s)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    field = cv2.GaussianBlur(field, (0, 0), max(0.5, 0.25 * float(np.mean(radii)) * s))
    # Wobbly edges, like a union of superpixels.
    field += 0.18 * _smooth_noise(rng, cw, ch, 10)
    region = (cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5) & allowed
    if not region.any():
        disc = np.zeros((h, w), np.uint8)
        x, y = centres[0]
        cv2.circle(disc, (round(x), round(y)), max(1, round(float(np.mean(radii)))), 1, -1)
        region = disc.astype(bool) & allowed
    return region if region.any() else allowed.copy()


def _voronoi_edges(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Cell borders of a jittered-grid Voronoi tessellation: the honeycomb of a network (uint8 0/1, H x W)."""
    gx, gy = np.meshgrid(np.arange(cell / 2, w + cell, cell), np.arange(cell / 2, h + cell, cell))
    gx = gx + rng.uniform(-0.4, 0.4, gx.shape) * cell
    gy = gy + rng.uniform(-0.4, 0.4, gy.shape) * cell
    keep = (gx >= 0) & (gx < w) & (gy >= 0) & (gy < h)
    seeds = np.full((h, w), 255, np.uint8)
    seeds[gy[keep].astype(int), gx[keep].astype(int)] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    edges = np.zeros((h, w), np.uint8)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edges


def _network_lines(rng, region: np.ndarray, cell: float, width: float) -> np.ndarray:
    """Soft network line strength (float32 0..1) over ``region``'s bounding box, zero elsewhere."""
    lines = np.zeros(region.shape, np.float32)
    box = _box(region.view(np.uint8))
    bh, bw = region[box].shape
    edges = _voronoi_edges(rng, bh, bw, cell)
    k = max(1, round(width))
    if k > 1:
        edges = cv2.dilate(edges, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    crop = edges.astype(np.float32)
    if width >= 2:
        crop = cv2.GaussianBlur(crop, (0, 0), 0.3 * width)
    # Lines fade in and out along the network, as a real network is never uniformly pigmented.
    crop *= np.clip(0.75 + 0.4 * _smooth_noise(rng, bw, bh, 6), 0.25, 1.0)
    lines[box] = crop
    return lines


def _soft(region: np.ndarray, sigma: float) -> np.ndarray:
    """Region as float weight with a soft inner edge (still zero outside), so textures fade in like real ones."""
    f = region.astype(np.float32)
    if sigma >= 0.5:
        f = np.clip(_blur(f, sigma) * f * 1.6, 0, 1)
    return f


def _paint_pigment_network(rng, img: np.ndarray, lesion: _Lesion) -> np.ndarray:
    """Reticular dark-brown honeycomb on a lighter brown background, in one to three patches of the lesion."""
    unit, r = _unit(img), lesion.mean_radius
    n = int(rng.integers(1, 4))
    centres = _sample_points(rng, lesion, n, 0.2)
    region = _blob_region(rng, img, centres, r * rng.uniform(0.35, 0.7, n), lesion.inside)
    weight = _soft(region, 0.01 * unit)
    _blend(img, 0.45 * weight, (180, 130, 95))  # lighter holes
    lines = _network_lines(rng, region, 0.045 * unit * rng.uniform(0.85, 1.15), 0.010 * unit)
    _blend(img, 0.9 * weight * lines, np.array([80, 48, 34]) * rng.uniform(0.75, 1.1))
    return region


def _paint_negative_network(rng, img: np.ndarray, lesion: _Lesion) -> np.ndarray:
    """Inverse network: thick light serpiginous lines around dark holes."""
    unit, r = _unit(img), lesion.mean_radius
    n = int(rng.integers(1, 3))
    centres = _sample_points(rng, lesion, n, 0.25)
    region = _blob_region(rng, img, centres, r * rng.uniform(0.3, 0.55, n), lesion.inside)
    weight = _soft(region, 0.01 * unit)
    _blend(img, 0.65 * weight, (85, 48, 42))  # dark holes
    lines = _network_lines(rng, region, 0.07 * unit * rng.uniform(0.85, 1.15), 0.018 * unit)
    _blend(img, 0.9 * weight * lines, (228, 200, 185))
    return region


def _paint_streaks(rng, img: np.ndarray, lesion: _Lesion) -> np.ndarray:
    """Dark radial lines across the border, pointing outward, along one arc of the rim."""
    h, w = img.shape[:2]
    unit, n = _unit(img), len(lesion.theta)
    start, span = int(rng.integers(0, n)), int(n * rng.uniform(0.12, 0.35))
    idx = (start + np.arange(span + 1)) % n
    # The mask band reaches a little beyond the first and last streak and past their tips, to hold them whole.
    wide = (start + np.arange(-3, span + 4)) % n
    band = np.zeros((h, w), np.uint8)
    cv2.fillPoly(band, [np.concatenate([lesion.outline(0.76)[wide], lesion.outline(1.36)[wide][::-1]])], 1)

    ink = np.zeros((h, w), np.float32)
    thick = max(1, round(0.009 * unit))
    thin = max(1, round(0.6 * thick))
    step = max(1, round(0.035 * unit / max(lesion.mean_radius, 1.0) / (2 * np.pi / n)))  # ~0.035 unit apart
    pseudopods = rng.random() < 0.4
    for i in idx[::step]:
        t = lesion.theta[i] + rng.normal(0, 0.02)
        direction = np.array([np.cos(t), np.sin(t)])
        radius = lesion.radius[i]
        p0, p1, p2 = (np.round([lesion.cx, lesion.cy] + f * radius * direction).astype(int)
                      for f in (0.82, 1.0, rng.uniform(1.08, 1.28)))
        # Thick across the border, thinner outside: streaks taper as they leave the lesion.
        cv2.line(ink, tuple(p0.tolist()), tuple(p1.tolist()), 1.0, thick, cv2.LINE_AA)
        cv2.line(ink, tuple(p1.tolist()), tuple(p2.tolist()), 1.0, thin, cv2.LINE_AA)
        if pseudopods:
            cv2.circle(ink, tuple(p2.tolist()), thick, 1.0, -1, cv2.LINE_AA)
    _blend(img, 0.9 * ink, (62, 40, 32))
    region = band.astype(bool)
    return region if region.any() else ink > 0


def _dot_clusters(rng, lesion: _Lesion, img: np.ndarray, n_clusters: int, dots: tuple[int, int], spread: float):
    """Dot centres (x, y) grouped in clusters inside the lesion (working resolution)."""
    h, w = img.shape[:2]
    pts = []
    for c in _sample_points(rng, lesion, n_clusters, 0.1):
        p = c + rng.normal(0, spread, (int(rng.integers(dots[0], dots[1] + 1)), 2))
        p = np.clip(np.round(p), 0, [w - 1, h - 1]).astype(int)
        p = p[lesion.inside[p[:, 1], p[:, 0]]]
        pts.append(p if len(p) else np.round(c[None]).astype(int))
    return np.concatenate(pts)


def _dots_region(rng, lesion: _Lesion, img: np.ndarray, pts: np.ndarray, halo: float, core: float) -> np.ndarray:
    """Blobby mask around dots: each dot grows a disc of radius ``halo`` and neighbours merge (superpixel-like).

    A disc of radius ``core`` around every dot is always included, so no drawn dot falls outside its mask.
    """
    grow = max(1, round(0.03 * _unit(img)))
    allowed = cv2.dilate(lesion.inside.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                                 (2 * grow + 1, 2 * grow + 1)))
    region = _blob_region(rng, img, pts.astype(np.float32), np.full(len(pts), halo), allowed.astype(bool))
    cores = np.zeros(region.shape, np.uint8)
    for x, y in pts:
        cv2.circle(cores, (int(x), int(y)), max(1, round(core)), 1, -1)
    return region | cores.astype(bool)


def _paint_dots(rng, img: np.ndarray, pts: np.ndarray, radii: np.ndarray, colour, glow: float) -> None:
    alpha = np.zeros(img.shape[:2], np.float32)
    for (x, y), r in zip(pts, radii):
        cv2.circle(alpha, (int(x), int(y)), max(1, round(r)), 1.0, -1, cv2.LINE_AA)
    if glow > 0:
        alpha = np.maximum(alpha, 0.6 * _blur(alpha, glow))
    _blend(img, 0.95 * alpha, np.asarray(colour, np.float32) * rng.uniform(0.95, 1.03))


def _paint_milia_like_cyst(rng, img: np.ndarray, lesion: _Lesion) -> np.ndarray:
    """Small bright white-yellowish round dots, a few per cluster, with a faint glow."""
    unit = _unit(img)
    pts = _dot_clusters(rng, lesion, img, int(rng.integers(1, 4)), (2, 7), 0.05 * unit)
    r = max(1.0, 0.009 * unit)
    region = _dots_region(rng, lesion, img, pts, 4.0 * r, 3.0 * r)
    _paint_dots(rng, img, pts, r * rng.uniform(0.8, 1.25, len(pts)), (250, 244, 205), glow=0.8 * r)
    return region


def _paint_globules(rng, img: np.ndarray, lesion: _Lesion) -> np.ndarray:
    """Dark brown to black round dots, larger than cysts, in dense clusters."""
    unit = _unit(img)
    pts = _dot_clusters(rng, lesion, img, int(rng.integers(1, 3)), (6, 16), 0.06 * unit)
    r = max(1.5, 0.017 * unit)
    region = _dots_region(rng, lesion, img, pts, 2.5 * r, 1.6 * r)
    colour = np.array([55, 33, 28]) * rng.uniform(0.6, 1.2)
    _paint_dots(rng, img, pts, r * rng.uniform(0.7, 1.3, len(pts)), colour, glow=0.0)
    return region


_PAINTERS = {
    "pigment_network": _paint_pigment_network,
    "negative_network": _paint_negative_network,
    "streaks": _paint_streaks,
    "milia_like_cyst": _paint_milia_like_cyst,
    "globules": _paint_globules,
}


def _paint_hair(rng: np.random.Generator, img: np.ndarray) -> None:
    """Zero to four dark, gently curved strands crossing the image (quadratic Bezier curves)."""
    h, w = img.shape[:2]
    n = int(rng.integers(0, 5))
    if n == 0:
        return
    ink = np.zeros((h, w), np.float32)
    t = np.linspace(0, 1, 48)[:, None]
    for _ in range(n):
        p0, p2 = rng.uniform(-0.1, 1.1, (2, 2)) * [w, h]
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.15, 2) * np.linalg.norm(p2 - p0)
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        thickness = max(1, round(min(h, w) * rng.uniform(0.002, 0.005)))
        cv2.polylines(ink, [np.round(curve).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA)
    _blend(img, 0.85 * ink, (35, 25, 20))


def _vignette(rng: np.random.Generator, img: np.ndarray) -> None:
    """Dark corners of a round dermoscope field of view."""
    h, w = img.shape[:2]
    rx = ((np.arange(w, dtype=np.float32) - w / 2) / (w / 2)) ** 2
    ry = ((np.arange(h, dtype=np.float32) - h / 2) / (h / 2)) ** 2
    r = np.sqrt(ry[:, None] + rx[None, :]) * np.float32(1 / np.sqrt(2))
    r0, strength = rng.uniform(0.55, 0.8), rng.uniform(0.3, 0.95)
    ramp = np.clip((r - np.float32(r0)) * np.float32(1 / (1 - r0)), 0, 1)
    img *= (1 - np.float32(strength) * ramp * ramp * (3 - 2 * ramp))[..., None]


def _resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a bool mask smoothly (linear, then threshold), never losing a non-empty mask."""
    up = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128
    if mask.any() and not up.any():
        up = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return up
