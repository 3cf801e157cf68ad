import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_split
from skinseg.config import Config
from skinseg.data.augment import eval_transform
from skinseg.data.cache import SplitCache, build_cache, fingerprint, letterbox_box
from skinseg.data.dataset import ISICDataset
from skinseg.data.isic import ATTRIBUTES, DataError, SPLIT_FOLDERS, get_split
from skinseg.errors import DiskFullError


def test_cache_round_trip_keeps_ids_sizes_and_masks(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    cache = build_cache(split, size=32, mode="stretch", progress=False)
    assert cache.ids == list(split.ids)
    assert cache.images.shape == (6, 32, 32, 3) and cache.images.dtype == np.uint8
    assert cache.packed_masks.shape == (6, 5, 32, 4)
    assert cache.original_hw.tolist()[:3] == [[48, 64], [60, 80], [40, 40]]
    # attribute k is present when the id is divisible by k+2 (see conftest)
    expected = np.array([[n % (k + 2) == 0 for k in range(5)] for n in range(6)])
    np.testing.assert_array_equal(cache.present, expected)
    # the rectangle covers rows h/4..h/2 and cols w/4..w/2, i.e. 1/16 of the image
    np.testing.assert_allclose(cache.fraction[0, 0], 1 / 16, atol=1e-3)
    m = cache.mask(0)
    assert m.shape == (5, 32, 32) and set(np.unique(m)) <= {0, 1}
    assert m[0, 8:16, 8:16].all() and m[0].sum() == 64
    assert cache.mask(1)[0].sum() == 0


def test_cache_is_reused_and_rebuilt_when_sources_change(tiny_root, cache_root):
    split = get_split(tiny_root, "val")
    first = build_cache(split, size=32, progress=False)
    assert build_cache(split, size=32, progress=False).path == first.path
    other_size = build_cache(split, size=64, progress=False)
    other_mode = build_cache(split, size=32, mode="pad", progress=False)
    assert len({first.path, other_size.path, other_mode.path}) == 3
    img = split.image_path(split.ids[0])
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(img)
    os.utime(img, ns=(1, 1))
    rebuilt = build_cache(split, size=32, progress=False)
    assert rebuilt.path != first.path and not first.path.exists()
    assert rebuilt.images[0].max() == 0


def test_pad_mode_letterboxes_and_maps_back(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    cache = build_cache(split, size=32, mode="pad", progress=False)
    assert letterbox_box(48, 64, 32) == (4, 0, 24, 32)
    assert cache.boxes[0].tolist() == [4, 0, 24, 32]
    assert cache.images[0, :4].max() == 0 and cache.images[0, 28:].max() == 0
    probs = np.stack([cache.mask(0)[a].astype(np.float32) for a in range(5)])
    from skinseg.predict.loop import to_original

    back = to_original(torch.from_numpy(probs), (48, 64), tuple(int(v) for v in cache.boxes[0])).numpy()
    assert back.shape == (5, 48, 64)
    truth = np.asarray(Image.open(split.mask_path(split.ids[0], ATTRIBUTES[0]))) > 127
    inter = ((back[0] > 0.5) & truth).sum() / ((back[0] > 0.5) | truth).sum()
    assert inter > 0.8


@pytest.mark.parametrize("size", [384, 512])
def test_larger_cache_sizes(tiny_root, cache_root, size):
    cache = build_cache(get_split(tiny_root, "val"), size=size, progress=False)
    assert cache.images.shape == (3, size, size, 3) and cache.mask(0).shape == (5, size, size)


def test_split_without_ground_truth_caches_images_only(tiny_root, cache_root):
    cache = build_cache(get_split(tiny_root, "test"), size=32, progress=False)
    assert not cache.has_masks and cache.present is None
    assert cache.original_hw.tolist() == [[48, 64], [24, 32]]


# ---- bad input: one test per case, each leaves no cache behind ---------------------------------
def _no_cache_left(cache_root):
    return not cache_root.exists() or not any(p.name.endswith(("meta.json",)) for p in cache_root.rglob("*"))


def test_corrupt_jpeg_names_the_file(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    split.image_path("ISIC_0000003").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"ISIC_0000003\.jpg is corrupt or truncated"):
        build_cache(split, size=32, progress=False)
    assert _no_cache_left(cache_root) and not list(cache_root.glob(".*tmp*"))


def test_truncated_jpeg_names_the_file(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    path = split.image_path("ISIC_0000002")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"ISIC_0000002\.jpg is corrupt or truncated"):
        build_cache(split, size=32, progress=False)
    assert _no_cache_left(cache_root)


def test_missing_masks_are_all_listed(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    for name in ("ISIC_0000000_attribute_streaks.png", "ISIC_0000005_attribute_globules.png"):
        (split.mask_dir / name).unlink()
    with pytest.raises(DataError) as err:
        build_cache(split, size=32, progress=False)
    msg = str(err.value)
    assert "2 mask file(s) missing" in msg
    assert "ISIC_0000000_attribute_streaks.png" in msg and "ISIC_0000005_attribute_globules.png" in msg
    assert _no_cache_left(cache_root)


def test_mask_of_wrong_size(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(split.mask_path("ISIC_0000001", "globules"))
    with pytest.raises(DataError, match=r"ISIC_0000001_attribute_globules\.png is 10x10 but its image is 80x60"):
        build_cache(split, size=32, progress=False)
    assert _no_cache_left(cache_root)


def test_rgb_mask(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(split.mask_path("ISIC_0000000", "streaks"))
    with pytest.raises(DataError, match=r"ISIC_0000000_attribute_streaks\.png has mode RGB"):
        build_cache(split, size=32, progress=False)
    assert _no_cache_left(cache_root)


def test_mask_values_other_than_0_255_are_binarized_with_a_warning(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    m = np.zeros((48, 64), np.uint8)
    m[:10, :10] = 200  # 100 pixels, counted as foreground
    m[20:25, :10] = 100  # 50 pixels, counted as background
    Image.fromarray(m, mode="L").save(split.mask_path("ISIC_0000000", "streaks"))
    with pytest.warns(UserWarning, match=r"150 mask pixel\(s\) in 1 image.*ISIC_0000000.*binarized at > 127"):
        cache = build_cache(split, size=64, progress=False)
    np.testing.assert_allclose(cache.fraction[0, 2], 100 / (48 * 64))


def test_interrupted_build_is_rebuilt_next_time(tiny_root, cache_root, monkeypatch):
    import skinseg.data.cache as cache_mod

    split = get_split(tiny_root, "train")
    calls = {"n": 0}
    real = cache_mod._load_sample

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "_load_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(split, size=32, workers=1, progress=False)
    assert _no_cache_left(cache_root) and not list(cache_root.glob(".*"))
    # a build killed without cleanup (dead pid) leaves a temp folder: it is ignored and removed
    stale = cache_root / f".train-32-stretch-{fingerprint(split, 32, 'stretch')}.tmp-999999999"
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    monkeypatch.setattr(cache_mod, "_load_sample", real)
    cache = build_cache(split, size=32, progress=False)
    assert len(cache) == 6 and not stale.exists()
    assert json.loads((cache.path / "meta.json").read_text())["ids"][0] == "ISIC_0000000"
    again = SplitCache.open(cache.path)  # reopened from disk: the same ids and pixels
    assert again.ids == cache.ids and np.array_equal(again.images[0], cache.images[0])


def test_a_concurrent_build_that_finishes_first_is_used(tiny_root, cache_root, monkeypatch):
    """Two processes building the same cache: the one whose rename comes second (onto a non-empty folder, which
    fails) uses the other's copy instead of raising, and leaves no temporary folder."""
    import skinseg.data.cache as cache_mod

    split = get_split(tiny_root, "train")
    real_replace = os.replace
    finished = {}

    def other_build_renames_first(src, dst):
        shutil.copytree(src, dst)  # the other process's rename lands between our check and our rename
        (Path(dst) / "from_the_other_build").touch()
        finished["path"] = Path(dst)
        real_replace(src, dst)  # fails: the folder is not empty

    monkeypatch.setattr(cache_mod.os, "replace", other_build_renames_first)
    cache = build_cache(split, size=32, progress=False)
    assert cache.path == finished["path"] and (cache.path / "from_the_other_build").exists()
    assert len(cache) == 6 and cache.mask(0)[0].sum() == 64
    assert not list(cache_root.glob(".*"))
    # a rename that fails for another reason still raises, and leaves nothing behind
    shutil.rmtree(cache.path)

    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(cache_mod.os, "replace", denied)
    with pytest.raises(PermissionError):
        build_cache(split, size=32, progress=False)
    assert not list(cache_root.glob(".*")) and _no_cache_left(cache_root)


def test_a_second_data_root_at_the_same_size_leaves_the_first_roots_live_cache_alone(tmp_path, cache_root):
    a, b = tmp_path / "a", tmp_path / "b"
    write_split(a, "train", [(40, 32)] * 3, seed=1)
    write_split(b, "train", [(40, 32)] * 3, seed=7, first_id=10)
    cache_a = build_cache(get_split(a, "train"), size=32, progress=False)
    live = ISICDataset(cache_a, eval_transform(Config()))
    before = live[0]["mask"].clone()
    assert before.sum() > 0
    cache_b = build_cache(get_split(b, "train"), size=32, progress=False)
    assert cache_b.path != cache_a.path and cache_a.path.exists()
    assert sorted(p.name.split("-")[3] for p in cache_root.iterdir()) == sorted(
        {cache_a.path.name.split("-")[3], cache_b.path.name.split("-")[3]})  # two sources, two keys
    sample = live[0]
    assert "mask" in sample and torch.equal(sample["mask"], before)
    # a rebuild of root a (its files changed) replaces only a's cache; the open dataset keeps reading its mapping
    img = get_split(a, "train").image_path("ISIC_0000000")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(img)
    rebuilt = build_cache(get_split(a, "train"), size=32, progress=False)
    assert rebuilt.path != cache_a.path and not cache_a.path.exists() and cache_b.path.exists()
    assert torch.equal(live[0]["mask"], before)


def test_a_cache_that_does_not_fit_is_refused_before_writing(tiny_root, tmpfs, monkeypatch):
    disk = tmpfs("cache", size="64k")
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(disk))
    with pytest.raises(DiskFullError, match=r"not enough disk space.*MB free.*MB needed"):
        build_cache(get_split(tiny_root, "train"), size=256, progress=False)
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_during_the_cache_build_is_an_error_and_the_partial_cache_is_removed(tiny_root, tmpfs,
                                                                                                monkeypatch):
    import shutil as sh

    from skinseg.data import cache as cache_mod

    disk = tmpfs("cache", size="256k")
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(disk))
    real = sh.disk_usage
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=2**40))  # the check passes
    with pytest.raises(DiskFullError, match="disk full while caching split 'train'.*partial cache was removed"):
        build_cache(get_split(tiny_root, "train"), size=256, progress=False)
    assert list(disk.iterdir()) == []


def test_leftovers_of_dead_builds_are_removed_whatever_their_size(tiny_root, cache_root):
    cache_root.mkdir(parents=True, exist_ok=True)
    dead = cache_root / ".train-512-stretch-00000000-0000000000000000.tmp-999999999"
    dead.mkdir()
    (dead / "images.npy").write_bytes(b"x" * 10000)
    build_cache(get_split(tiny_root, "train"), size=32, progress=False)
    assert not dead.exists()


def test_unexpected_file_names_are_reported_and_upper_case_jpg_is_read(tmp_path, cache_root):
    root = tmp_path / "isic"
    write_split(root, "train", [(40, 32)] * 3, seed=1)
    img_dir = root / "train" / SPLIT_FOLDERS["train"][0]
    (img_dir / "ISIC_0000002.jpg").rename(img_dir / "ISIC_0000002.JPG")
    for name in ("photo.jpg", "ISIC_123.jpg", "notes.docx"):
        (img_dir / name).write_bytes(b"x")
    for name in ("LICENSE.txt", "ATTRIBUTION.txt", ".DS_Store", "ISIC_0000000_superpixels.png"):
        (img_dir / name).write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"skipped 3 file\(s\) not named ISIC_<7 digits>\.jpg: ISIC_123\.jpg, "
                                          r"notes\.docx, photo\.jpg"):
        split = get_split(root, "train")
    assert split.ids == ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002")
    cache = build_cache(split, size=32, progress=False)
    assert len(cache) == 3 and cache.images[2].any()


def test_two_files_for_one_image_id_are_an_error(tmp_path):
    root = tmp_path / "isic"
    write_split(root, "train", [(40, 32)] * 2, seed=1)
    img_dir = root / "train" / SPLIT_FOLDERS["train"][0]
    (img_dir / "ISIC_0000001.JPG").write_bytes((img_dir / "ISIC_0000001.jpg").read_bytes())
    with pytest.raises(DataError, match="two files for ISIC_0000001"):
        get_split(root, "train")


def test_an_empty_jpeg_and_a_16_bit_mask_name_their_files(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    split.image_path(split.ids[0]).write_bytes(b"")
    with pytest.raises(DataError, match=f"{split.ids[0]}.jpg is corrupt or truncated"):
        build_cache(split, size=32, progress=False)
    write_split(tiny_root, "train", [(64, 48)], seed=1)  # restore the image
    mask = split.mask_path(split.ids[0], ATTRIBUTES[0])
    Image.fromarray(np.full((48, 64), 65535, np.uint16)).save(mask)
    with pytest.raises(DataError, match=f"{mask.name} has mode I;16"):
        build_cache(get_split(tiny_root, "train"), size=32, progress=False)


def test_two_concurrent_cache_builds_of_one_split_agree(tiny_root, cache_root):
    from concurrent.futures import ThreadPoolExecutor

    split = get_split(tiny_root, "train")
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: build_cache(split, size=32, progress=False, workers=1), range(2))
    assert a.path == b.path and np.array_equal(a.images, b.images)
    assert not [p for p in cache_root.iterdir() if ".tmp-" in p.name]
