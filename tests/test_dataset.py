import numpy as np
import pytest
import torch

from skinseg.config import Config
from skinseg.data.dataset import dev_holdout, make_dataset, make_loader, rare_weights


def _cfg(root, **kw):
    return Config(data_root=str(root), image_size=32, batch_size=2, **kw)


def test_eval_samples_are_normalized_tensors_with_ids(tiny_root, cache_root):
    cfg = _cfg(tiny_root)
    ds = make_dataset(cfg, "val", train=False)
    s = ds[0]
    assert s["id"] == "ISIC_0000100" and s["index"] == 0
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (5, 32, 32) and s["mask"].dtype == torch.float32
    assert set(s["mask"].unique().tolist()) <= {0.0, 1.0} and s["mask"][0].sum() == 64
    raw = ds.cache.images[0].astype(np.float32) / 255
    mean, std = cfg.normalization()  # from scratch: the ISIC statistics
    assert mean[0] == pytest.approx(0.708)
    expected = (raw[..., 0] - mean[0]) / std[0]
    np.testing.assert_allclose(s["image"][0].numpy(), expected, atol=1e-5)


def test_train_augmentation_moves_image_and_mask_together(tiny_root, cache_root):
    cfg = _cfg(tiny_root, aug_flip_p=1.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
    aug = make_dataset(cfg, "train", train=True)[0]
    plain = make_dataset(cfg, "train", train=False)[0]
    # horizontal + vertical flip with p=1 is a 180-degree rotation
    torch.testing.assert_close(aug["mask"], plain["mask"].flip(1).flip(2))
    torch.testing.assert_close(aug["image"], plain["image"].flip(1).flip(2))


def test_crop_size_trains_on_windows_of_the_whole_image_and_evaluates_whole(tiny_root, cache_root):
    cfg = Config(data_root=str(tiny_root), image_size=64, crop_size=32, batch_size=2, aug_flip_p=0.0,
                 aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
    crop = make_dataset(cfg, "train", train=True)[0]
    whole = make_dataset(cfg, "train", train=False)[0]
    assert crop["image"].shape == (3, 32, 32) and crop["mask"].shape == (5, 32, 32)
    assert whole["image"].shape == (3, 64, 64) and whole["mask"].shape == (5, 64, 64)
    # the crop is an exact window of the whole image, and its mask the same window of the whole mask
    windows = [(y, x) for y in range(33) for x in range(33)
               if torch.equal(whole["image"][:, y:y + 32, x:x + 32], crop["image"])]
    assert len(windows) >= 1
    y, x = windows[0]
    torch.testing.assert_close(crop["mask"], whole["mask"][:, y:y + 32, x:x + 32])
    # crop_size equal to image_size is a no-op
    same = make_dataset(cfg.replace(crop_size=64), "train", train=True)[0]
    assert same["image"].shape == (3, 64, 64)


def test_default_train_pipeline_steps_in_order_and_binary_masks(tiny_root, cache_root):
    ds = make_dataset(_cfg(tiny_root), "train", train=True)
    a, b = ds[0], ds[0]
    for s in (a, b):
        assert set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names[:6] == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Rotate", "Affine", "ColorJitter"]


def test_split_without_masks_yields_images_only(tiny_root, cache_root):
    s = make_dataset(_cfg(tiny_root), "test", train=False)[1]
    assert "mask" not in s and s["image"].shape == (3, 32, 32) and s["id"] == "ISIC_0000201"


def test_loader_batches_and_is_seeded(tiny_root, cache_root):
    cfg = _cfg(tiny_root)

    def epoch(e, loader=None):
        loader = loader or make_loader(cfg, "train", train=True)
        loader.sampler.set_epoch(e)
        return [b for b in loader]

    first, again, other = epoch(0), epoch(0), epoch(1)
    ids = [i for b in first for i in b["id"]]
    assert ids == [i for b in again for i in b["id"]] and len(ids) == 6 and len(set(ids)) == 6
    assert ids != [i for b in other for i in b["id"]]
    # augmentation is seeded per (epoch, sample): identical tensors on a re-run, different in another epoch
    for a, b in zip(first, again):
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["mask"], b["mask"])
    assert not torch.equal(first[0]["image"], other[0]["image"])
    batch = next(iter(make_loader(cfg, "val", train=False)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 5, 32, 32)


def test_dev_holdout_is_seeded_stratified_and_disjoint():
    rng = np.random.default_rng(0)
    present = rng.random((1000, 5)) < np.array([0.59, 0.07, 0.04, 0.26, 0.23])
    dev = dev_holdout(present, 0.15, seed=1)
    assert np.array_equal(dev, dev_holdout(present, 0.15, seed=1))
    assert not np.array_equal(dev, dev_holdout(present, 0.15, seed=2))
    assert 140 <= len(dev) <= 160
    rare = np.flatnonzero(present[:, 2])  # streaks, the rarest
    share = np.isin(rare, dev).mean()
    assert 0.1 <= share <= 0.2


def test_dev_split_from_config(tiny_root, cache_root):
    cfg = _cfg(tiny_root, dev_fraction=0.34)
    train = make_dataset(cfg, "train", train=False)
    dev = make_dataset(cfg, "dev", train=False)
    assert len(train) + len(dev) == 6 and len(dev) >= 1
    assert not set(train.indices) & set(dev.indices)


def test_dev_seed_fixes_the_holdout_while_seed_varies(tmp_path, cache_root):
    from conftest import write_split

    write_split(tmp_path / "isic", "train", [(40, 40)] * 16, seed=5)

    def dev_ids(**kw):
        return make_dataset(_cfg(tmp_path / "isic", dev_fraction=0.5, **kw), "dev", train=False).indices

    by_seed = {s: tuple(dev_ids(seed=s)) for s in range(6)}
    assert len(set(by_seed.values())) > 1  # the hold-out follows `seed` by default ...
    for s in range(6):  # ... and `dev_seed` pins it, whatever `seed` is
        assert tuple(dev_ids(seed=s, dev_seed=3)) == by_seed[3]


def test_nnunet_photometric_steps_change_the_image_only(tiny_root, cache_root):
    geometry_off = dict(aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
    cfg = _cfg(tiny_root, aug_gamma_p=1.0, aug_blur_p=1.0, aug_noise_p=1.0, aug_lowres_p=1.0, **geometry_off)
    ds = make_dataset(cfg, "train", train=True)
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names[:4] == ["RandomGamma", "GaussianBlur", "GaussNoise", "Downscale"]
    aug, plain = ds[0], make_dataset(cfg, "train", train=False)[0]
    torch.testing.assert_close(aug["mask"], plain["mask"])  # masks untouched
    assert (aug["image"] - plain["image"]).abs().mean() > 0.01
    with pytest.raises(Exception, match="aug_blur_p"):
        _cfg(tiny_root, aug_blur_p=1.5)


def test_rare_weights_favour_the_rarest_present_attribute():
    present = np.zeros((8, 5), bool)
    present[:4, 0] = True  # 4 images with attribute 0
    present[4, 2] = True   # 1 image with attribute 2 (rarest)
    present[5, [0, 2]] = True  # both: the rarer one counts
    w = rare_weights(present)
    counts = present.sum(0)  # 5, 0, 2, 0, 0
    assert w[0] == pytest.approx(1.0) and w[6] == 1.0 and w[7] == 1.0
    assert w[4] == pytest.approx(np.sqrt(counts.max() / 2)) and w[5] == w[4]


def test_rare_sampler_oversamples_seeded_and_keeps_epoch_length(tmp_path, cache_root):
    from conftest import write_split

    root = tmp_path / "d"
    write_split(root, "train", [(32, 32)] * 24)  # attribute k on images whose id is a multiple of k + 2
    cfg = Config(data_root=str(root), image_size=32, batch_size=4, sampler="rare", aug_flip_p=0.0,
                 aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
    loader = make_loader(cfg, "train", train=True)
    present = loader.dataset.cache.present
    w = rare_weights(present)
    assert w.max() == pytest.approx(np.sqrt(12 / 4)) and w.min() == 1.0
    draws = []
    for epoch in range(40):
        loader.sampler.set_epoch(epoch)
        order = [i % 24 for i in loader.sampler]
        assert len(order) == 24
        draws += order
    again = list(loader.sampler)
    assert again == list(loader.sampler)  # seeded by epoch
    freq = np.bincount(draws, minlength=24) / len(draws)
    heavy, light = w > w.min(), w == w.min()
    # images holding a rare attribute are drawn more often per image than the rest, as the weights say
    assert freq[heavy].mean() > 1.3 * freq[light].mean()
    plain = make_loader(cfg.replace(sampler="shuffle"), "train", train=True)
    assert sorted(i % 24 for i in plain.sampler) == list(range(24))  # shuffle: each image once
