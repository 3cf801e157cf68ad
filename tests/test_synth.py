"""The synthetic ISIC-like dataset: official layout, determinism, sizes, masks, prevalence, textures, atomic writes."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from skinseg.data import synth
from skinseg.data.isic import ATTRIBUTES, IMAGE_RE, MASK_RE, SPLIT_FOLDERS, find_splits, mask_name, missing_masks
from skinseg.data.synth import (
    DEFAULT_PREVALENCE,
    draw_present,
    generate_sample,
    render_sample,
    resolve_prevalence,
    write_synthetic,
)

SMALL = (64, 96)
ALL = {a: True for a in ATTRIBUTES}


def _write(root: Path, **kwargs) -> dict[str, int]:
    args = dict(n_train=3, n_val=2, n_test=2, width_range=SMALL, progress=False) | kwargs
    return write_synthetic(root, **args)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    _write(root)
    return root


def test_layout_matches_the_official_folders_and_file_names(small_root: Path):
    assert sorted(p.name for p in small_root.iterdir()) == ["test", "train", "val"]
    all_ids = []
    for split, (img_folder, gt_folder) in SPLIT_FOLDERS.items():
        # the official folders, and the marker that lets `skinseg synth` replace what it wrote
        assert sorted(p.name for p in (small_root / split).iterdir()) == sorted([img_folder, gt_folder,
                                                                                 ".skinseg-synthetic"])
        images = sorted(p.name for p in (small_root / split / img_folder).iterdir())
        assert all(IMAGE_RE.match(n) for n in images)
        ids = [n[:-4] for n in images]
        masks = sorted(p.name for p in (small_root / split / gt_folder).iterdir())
        assert all(MASK_RE.match(n) for n in masks)
        assert masks == sorted(mask_name(i, a) for i in ids for a in ATTRIBUTES)
        all_ids += ids
    assert len(all_ids) == 7 and len(set(all_ids)) == 7
    splits = find_splits(small_root)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 2, "test": 2}
    assert all(s.has_masks and missing_masks(s) == [] for s in splits.values())


def test_returns_counts_and_skips_empty_splits(tmp_path: Path):
    assert _write(tmp_path, n_train=2, n_val=0, n_test=1) == {"train": 2, "val": 0, "test": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path, small_root: Path):
    _write(tmp_path / "a")
    _write(tmp_path / "b", seed=1)
    assert _files(tmp_path / "a") == _files(small_root)
    b = _files(tmp_path / "b")
    assert b.keys() == _files(small_root).keys()
    assert all(b[k] != v for k, v in _files(small_root).items() if k.endswith(".jpg"))


def test_an_image_does_not_depend_on_how_many_others_are_generated(tmp_path: Path, small_root: Path):
    _write(tmp_path, n_train=1, n_val=1, n_test=0)
    for rel, data in _files(tmp_path).items():
        assert (small_root / rel).read_bytes() == data


def test_sizes_are_4_to_3_within_the_width_range(small_root: Path):
    widths = []
    for p in small_root.rglob("*.jpg"):
        w, h = Image.open(p).size
        assert SMALL[0] <= w <= SMALL[1]
        assert h == round(w * 3 / 4)
        widths.append(w)
    assert len(set(widths)) > 1


def test_explicit_sizes_are_cycled(tmp_path: Path):
    sizes = [(80, 60), (50, 70)]
    _write(tmp_path, n_train=3, n_val=0, n_test=0, sizes=sizes)
    got = [Image.open(p).size for p in sorted(tmp_path.rglob("*.jpg"))]
    assert got == [(80, 60), (50, 70), (80, 60)]


def test_masks_are_binary_L_images_of_the_image_size(small_root: Path):
    for split, (img_folder, gt_folder) in SPLIT_FOLDERS.items():
        for jpg in (small_root / split / img_folder).iterdir():
            size = Image.open(jpg).size
            for a in ATTRIBUTES:
                mask = Image.open(small_root / split / gt_folder / mask_name(jpg.stem, a))
                assert mask.mode == "L" and mask.size == size
                assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


@pytest.mark.parametrize("prob, expect_nonempty", [(1.0, True), (0.0, False)])
def test_prevalence_one_and_zero_give_all_present_and_all_absent(tmp_path: Path, prob, expect_nonempty):
    _write(tmp_path, n_train=3, n_val=0, n_test=0, prevalence={a: prob for a in ATTRIBUTES})
    for png in tmp_path.rglob("*.png"):
        assert bool(np.asarray(Image.open(png)).any()) is expect_nonempty, png.name


def test_masks_are_non_empty_exactly_for_present_attributes():
    rng = np.random.default_rng(3)
    for k in range(12):
        present = {a: bool(rng.random() < 0.5) for a in ATTRIBUTES}
        image, masks = generate_sample(np.random.default_rng(k), 72, 54, present)
        assert image.shape == (54, 72, 3) and image.dtype == np.uint8
        assert masks.shape == (5, 54, 72) and masks.dtype == np.uint8
        assert set(np.unique(masks).tolist()) <= {0, 255}
        assert [bool(m.any()) for m in masks] == [present[a] for a in ATTRIBUTES]


def test_generate_sample_is_deterministic_and_upscales_large_sizes():
    a = generate_sample(np.random.default_rng(5), 80, 60, ALL)
    b = generate_sample(np.random.default_rng(5), 80, 60, ALL)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    image, masks = generate_sample(np.random.default_rng(5), synth.WORK_MAX_SIDE + 300, 700, ALL)
    assert image.shape == (700, synth.WORK_MAX_SIDE + 300, 3)
    assert all(m.any() for m in masks) and set(np.unique(masks).tolist()) <= {0, 255}


def test_prevalence_over_many_draws_matches_the_real_training_split():
    n = 300
    counts = np.zeros(len(ATTRIBUTES))
    for k in range(n):
        present = draw_present(np.random.default_rng([11, k]))
        _, masks = generate_sample(np.random.default_rng([12, k]), 32, 24, present)
        counts += masks.reshape(len(ATTRIBUTES), -1).any(1)
    for a, c in zip(ATTRIBUTES, counts):
        p = DEFAULT_PREVALENCE[a]
        assert abs(c / n - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1 / n, (a, c / n, p)


def test_prevalence_override_is_validated():
    assert resolve_prevalence({"streaks": 0.5})["streaks"] == 0.5
    assert resolve_prevalence()["pigment_network"] == 0.59
    with pytest.raises(ValueError, match="did you mean 'streaks'"):
        resolve_prevalence({"streak": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_prevalence({"globules": 1.5})


def _components(mask: np.ndarray) -> int:
    return cv2.connectedComponents((mask > 0).astype(np.uint8))[0] - 1


def test_masks_are_coarse_blobs_in_or_at_the_rim_of_the_lesion():
    w, h = 200, 150
    for k in range(6):
        s = render_sample(np.random.default_rng(k), w, h, ALL)
        rim = cv2.dilate(s.lesion.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(0.12 * h)) > 0
        for a, m in zip(ATTRIBUTES, s.masks > 0):
            assert (m & rim).sum() >= 0.9 * m.sum(), a
            if a != "streaks":  # streaks point outward, so half their band lies outside the lesion
                assert (m & s.lesion).sum() >= 0.6 * m.sum(), a
        pn = s.masks[0] > 0
        assert pn.sum() >= 0.01 * w * h
        assert _components(pn) <= 3
        # Superpixel-like: a blob's outline is short for its area, unlike thin strokes or scattered dots.
        perimeter = sum(cv2.arcLength(c, True) for c in cv2.findContours(
            pn.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0])
        assert perimeter**2 / pn.sum() < 60


def _brightness(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(2)


def _lesion_rest(sample, masks: np.ndarray) -> np.ndarray:
    """Lesion pixels away from every mask: plain lesion to compare textures with."""
    near = cv2.dilate((masks > 0).any(0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return sample.lesion & ~near


def test_cysts_are_bright_and_globules_dark_inside_their_masks():
    for k in range(4):
        cyst = render_sample(np.random.default_rng(k), 256, 192, {"milia_like_cyst": True})
        v = _brightness(cyst.image)
        rest = _lesion_rest(cyst, cyst.masks)
        assert np.percentile(v[cyst.masks[3] > 0], 98) > np.percentile(v[rest], 98) + 40

        glob = render_sample(np.random.default_rng(k), 256, 192, {"globules": True})
        v = _brightness(glob.image)
        rest = _lesion_rest(glob, glob.masks)
        assert np.percentile(v[glob.masks[4] > 0], 5) < np.percentile(v[rest], 5) - 8


def test_networks_add_local_contrast_inside_their_masks():
    for k in range(4):
        for index, name in ((0, "pigment_network"), (1, "negative_network")):
            s = render_sample(np.random.default_rng(k), 256, 192, {name: True})
            v = _brightness(s.image)
            local_var = cv2.blur(v * v, (7, 7)) - cv2.blur(v, (7, 7)) ** 2
            inside = cv2.erode(s.masks[index], np.ones((7, 7), np.uint8)) > 0
            assert np.median(local_var[inside]) > 4 * np.median(local_var[_lesion_rest(s, s.masks)]), name


@pytest.mark.parametrize("index, name", list(enumerate(ATTRIBUTES)))
def test_each_texture_changes_the_image_only_inside_its_mask(index, name):
    # Every part draws from its own random stream, so the same seed with and without the attribute isolates it.
    darker = {"streaks", "globules"}
    for k in range(3):
        without = _brightness(render_sample(np.random.default_rng(k), 192, 144, {}).image)
        s = render_sample(np.random.default_rng(k), 192, 144, {name: True})
        diff = _brightness(s.image) - without
        changed = np.abs(diff) > 10
        inside = s.masks[index] > 0
        assert changed.sum() >= 0.02 * inside.sum()
        assert changed[inside].sum() == changed.sum()
        if name in darker:
            assert diff[inside].mean() < -3
        if name == "milia_like_cyst":
            assert diff[inside].mean() > 3


def test_an_interrupted_write_leaves_no_partial_split(tmp_path: Path, monkeypatch):
    _write(tmp_path, n_train=2, n_val=0, n_test=0)
    before = _files(tmp_path)
    real_write = synth.writer._write_sample
    calls = {"n": 0}

    def failing_write(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # train (3 images) completes, val fails on its first image
            raise KeyboardInterrupt
        real_write(*args)

    monkeypatch.setattr(synth.writer, "_write_sample", failing_write)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, n_train=3, n_val=2, n_test=2, seed=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no val, no temporary folder
    after = _files(tmp_path)
    assert len([k for k in after if k.endswith(".jpg")]) == 3  # the completed split replaced the old one
    assert after != before


def test_leftovers_of_a_killed_run_are_invisible_and_cleaned(tmp_path: Path):
    stale = tmp_path / ".train.abc.partial" / "images"
    stale.mkdir(parents=True)
    _write(tmp_path, n_train=1, n_val=0, n_test=0)
    assert not (tmp_path / ".train.abc.partial").exists()


def test_bad_arguments_say_what_is_wrong(tmp_path: Path):
    with pytest.raises(ValueError, match="width_range"):
        write_synthetic(tmp_path, width_range=(10, 5), progress=False)
    with pytest.raises(ValueError, match="n_val"):
        write_synthetic(tmp_path, n_val=-1, progress=False)
    with pytest.raises(ValueError, match="unknown attributes"):
        generate_sample(np.random.default_rng(0), 64, 48, {"streak": True})
