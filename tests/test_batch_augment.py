"""augment_on gpu: the batch augmentation keeps image and masks aligned, is exact where it should be, seeded,
colour-only where it should be, and trains and resumes exactly (on the CPU here)."""

import pytest
import torch

from conftest import assert_same_weights, crash_and_resume, tiny_config
from skinseg.config import Config
from skinseg.data.augment import train_transform
from skinseg.data.batch_augment import BatchAugment, batch_generator
from skinseg.errors import ConfigError

GEOMETRY_OFF = dict(aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0)
COLOUR_OFF = dict(aug_color_p=0.0)


def _blobs(n=8, size=64, seed=0):
    """Masks (n x 5 x size x size, 0/1) of random ellipses off the centre, and images whose three channels are
    mask 0, normalized as the data pipeline does."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 5, size, size)
    for i in range(n):
        for c in range(5):
            cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.15) * size
            ry, rx = (torch.rand(2, generator=g) * 0.15 + 0.08) * size
            masks[i, c] = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()
    return masks


def _images(masks, aug):
    return (masks[:, :1].expand(-1, 3, -1, -1) - aug.mean) / aug.std


def test_image_and_masks_get_the_same_geometry():
    aug = BatchAugment(Config(aug_flip_p=1.0, aug_rotate90_p=1.0, aug_rotate_p=1.0, aug_scale_p=1.0, **COLOUR_OFF))
    masks = _blobs()
    images = _images(masks, aug)
    draws = aug.draw(len(masks), batch_generator(3))
    assert (draws.angle != 0).all() and (draws.scale != 1).all() and draws.quarter_turns.unique().numel() > 1
    out_images, out_masks = aug.apply(images, masks, draws)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)
    drawn = (out_images * aug.std + aug.mean) > 0.5  # each channel is mask 0, warped bilinearly
    warped = out_masks[:, 0].bool()
    for c in range(3):
        agreement = (drawn[:, c] == warped).float().mean()
        assert agreement >= 0.97, agreement
        # the blobs cover ~6% of the image, so also per sample: only a thin border may disagree
        iou = (drawn[:, c] & warped).sum((1, 2)) / (drawn[:, c] | warped).sum((1, 2))
        assert (iou >= 0.95).all(), iou


def test_flips_and_quarter_turns_are_exact_permutations():
    aug = BatchAugment(Config(aug_flip_p=0.5, aug_rotate90_p=0.5, aug_rotate_p=0.0, aug_scale_p=0.0, **COLOUR_OFF))
    masks = _blobs(n=16)
    images = torch.randn(16, 3, 64, 64)
    draws = aug.draw(16, batch_generator(5))
    assert 0 < draws.hflip.sum() < 16 and 0 < draws.vflip.sum() < 16 and len(draws.quarter_turns.unique()) == 4
    assert (draws.angle == 0).all() and (draws.scale == 1).all() and (draws.brightness == 1).all()
    out_images, out_masks = aug.apply(images, masks, draws)
    for i in range(16):
        for before, after in ((images[i], out_images[i]), (masks[i], out_masks[i])):
            expected = before.flip(-1) if draws.hflip[i] else before
            expected = expected.flip(-2) if draws.vflip[i] else expected
            assert torch.equal(after, expected.rot90(int(draws.quarter_turns[i]), (-2, -1))), i


def test_seeded():
    aug = BatchAugment(Config(aug_flip_p=0.5, aug_rotate_p=0.5, aug_scale_p=0.5, aug_color_p=0.5))
    masks = _blobs()
    images = torch.randn(8, 3, 64, 64)
    a = aug(images, masks, batch_generator(42, 0, 1, 7, 0))
    b = aug(images, masks, batch_generator(42, 0, 1, 7, 0))
    c = aug(images, masks, batch_generator(42, 0, 1, 7, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_colour_jitter_changes_images_only_on_the_0_1_scale():
    cfg = Config(aug_color_p=1.0, brightness=0.2, contrast=0.0, **GEOMETRY_OFF)
    aug = BatchAugment(cfg)
    masks = _blobs()
    images = (torch.rand(8, 3, 64, 64) * 0.5 + 0.2 - aug.mean) / aug.std  # 0.2-0.7: no clamping below
    draws = aug.draw(8, batch_generator(9))
    assert (draws.contrast == 1).all() and (draws.brightness != 1).all()
    out_images, out_masks = aug.apply(images, masks, draws)
    assert torch.equal(out_masks, masks)
    expected = ((images * aug.std + aug.mean) * draws.brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(out_images * aug.std + aug.mean, expected)
    # contrast pulls each image towards its own mean grey level, keeping that level
    aug = BatchAugment(cfg.replace(brightness=0.0, contrast=0.3))
    draws = aug.draw(8, batch_generator(9))
    out_images, out_masks = aug.apply(images, masks, draws)
    assert torch.equal(out_masks, masks) and (draws.contrast != 1).all()
    before, after = images * aug.std + aug.mean, out_images * aug.std + aug.mean
    grey = aug.grey
    torch.testing.assert_close((after * grey).sum(1).mean((1, 2)), (before * grey).sum(1).mean((1, 2)))
    spread = (after.std((1, 2, 3)) / before.std((1, 2, 3)))
    torch.testing.assert_close(spread, draws.contrast, rtol=1e-4, atol=1e-4)


def test_gpu_mode_leaves_only_crop_and_image_only_steps_to_the_workers():
    cfg = Config(image_size=64, crop_size=32, augment_on="gpu", aug_gamma_p=0.5, aug_noise_p=0.5)
    names = [type(t).__name__ for t in train_transform(cfg).transforms]
    assert names == ["RandomCrop", "RandomGamma", "GaussNoise", "Normalize", "ToTensorV2"]
    cpu_names = [type(t).__name__ for t in train_transform(cfg.replace(augment_on="cpu")).transforms]
    assert {"HorizontalFlip", "RandomRotate90", "Rotate", "Affine", "ColorJitter"} <= set(cpu_names)
    with pytest.raises(ConfigError, match="augment_on.*cpu, gpu"):
        Config(augment_on="cuda")


def test_training_with_gpu_augmentation_resumes_exactly(small_root, tmp_path, cache_root, monkeypatch):
    from skinseg.train import train

    def cfg(**kw):
        return tiny_config(small_root, tmp_path, aug_rotate_p=0.5, aug_color_p=0.5,
                           augment_on="gpu", accumulate=2, log_every=1, **kw)

    calls = []
    real_call = BatchAugment.__call__
    monkeypatch.setattr(BatchAugment, "__call__", lambda self, *a: (calls.append(1), real_call(self, *a))[1])
    straight = train(cfg(run_name="straight"), progress=False)
    assert len(calls) == 6  # 3 batches per epoch, each augmented on the device
    resumed = crash_and_resume(cfg, tmp_path / "runs", monkeypatch)
    assert resumed["epochs_run"] == 2
    assert_same_weights(straight["run_dir"], resumed["run_dir"])
