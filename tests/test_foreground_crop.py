"""crop_foreground_p: nnU-Net's foreground oversampling, class-balanced over the attributes an image holds."""

import numpy as np
import pytest

from skinseg.config import Config
from skinseg.data.augment import train_transform
from skinseg.errors import ConfigError

NO_AUG = dict(aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)


def _sample(size=128):
    """An image whose pixels encode their own position, and masks with a large pigment network (left half) and a
    2 x 2 px streak in the bottom-right corner: 0.2% of the positive area."""
    yy, xx = np.mgrid[:size, :size]
    image = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)
    mask = np.zeros((size, size, 5), np.uint8)
    mask[:, : size // 2, 0] = 1
    mask[-2:, -2:, 2] = 1
    return image, mask


def _crops(foreground_p, n=200, image=None, mask=None):
    t = train_transform(Config(image_size=128, crop_size=32, crop_foreground_p=foreground_p, **NO_AUG))
    image, mask = _sample() if image is None else (image, mask)
    out = []
    for seed in range(n):
        t.set_random_seed(seed)
        r = t(image=image, mask=mask)
        out.append(r["mask"].numpy())  # C x 32 x 32
    return np.stack(out)


def test_foreground_crops_give_a_rare_attribute_as_many_crops_as_a_common_one():
    crops = _crops(1.0)
    assert crops.shape == (200, 5, 32, 32)
    holds = crops.reshape(200, 5, -1).max(-1)
    # every crop holds one of the image's attributes: half of them drawn for the streak, half for the network
    assert holds[:, [0, 2]].max(1).all()
    assert 0.35 < holds[:, 2].mean() < 0.65
    assert 0.35 < holds[:, 0].mean()
    # plain random crops almost never find the 2 x 2 px corner (about 1 in 97 x 97 windows)
    assert _crops(0.0)[:, 2].reshape(200, -1).max(-1).mean() < 0.05
    # a mixture: about a third of the crops hold the streak at 0.66 (half of 0.66 are drawn for it), seeded
    mixed = _crops(0.66)
    assert 0.2 < mixed[:, 2].reshape(200, -1).max(-1).mean() < 0.5
    assert np.array_equal(mixed, _crops(0.66))


def test_foreground_crop_is_an_exact_window_seeded_and_random_without_foreground():
    image, mask = _sample()
    t = train_transform(Config(image_size=128, crop_size=32, crop_foreground_p=1.0, **NO_AUG))
    t.set_random_seed(7)
    a = t(image=image, mask=mask)
    t.set_random_seed(7)
    b = t(image=image, mask=mask)
    assert np.array_equal(a["mask"].numpy(), b["mask"].numpy())
    # the crop is the window of the whole image that its top-left pixel names (image pixels encode y, x)
    raw = train_transform(Config(image_size=128, crop_size=32, crop_foreground_p=1.0, mean=(0, 0, 0),
                                 std=(1 / 255, 1 / 255, 1 / 255), **NO_AUG))
    raw.set_random_seed(7)
    r = raw(image=image, mask=mask)
    y, x = int(round(r["image"][0, 0, 0].item())), int(round(r["image"][1, 0, 0].item()))
    assert np.array_equal(r["mask"].numpy(), mask[y:y + 32, x:x + 32].transpose(2, 0, 1))
    # an image with no attribute still gets crops of the right size (random ones)
    empty = _crops(1.0, n=50, image=image, mask=np.zeros_like(mask))
    assert empty.shape == (50, 5, 32, 32) and empty.max() == 0


def test_crop_foreground_p_is_checked():
    with pytest.raises(ConfigError, match="crop_foreground_p: applies to training crops; set crop_size"):
        Config(image_size=64, crop_foreground_p=0.33)
    with pytest.raises(ConfigError, match=r"crop_foreground_p: must be in \[0, 1\], got 1.5"):
        Config(image_size=64, crop_size=32, crop_foreground_p=1.5)
    names = [type(t).__name__ for t in train_transform(Config(image_size=64, crop_size=32,
                                                              crop_foreground_p=0.33)).transforms]
    assert names[0] == "OneOf"
