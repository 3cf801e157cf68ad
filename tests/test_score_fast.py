"""score_submission (threaded reading, per-image counts) equals the official formula and keeps read_mask's checks."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_split
from skinseg.data.masks import read_mask
from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS, get_split, mask_name
from skinseg.errors import DataError
from skinseg.scoring import score_submission
from skinseg.metrics import official_score

SIZES = [(64, 48), (40, 40), (33, 57), (64, 48), (17, 23), (40, 40), (64, 48)]  # (width, height)


@pytest.fixture
def case(tmp_path):
    """A val split of mixed sizes and a seeded random submission for it: empty masks (shared file contents), 0/255
    noise, values other than 0 and 255, 1-bit PNGs and palette PNGs (these through read_mask)."""
    root, sub = tmp_path / "isic", tmp_path / "sub"
    ids = write_split(root, "val", SIZES, seed=3, first_id=10)
    sub.mkdir()
    rng = np.random.default_rng(0)
    for n, (image_id, (w, h)) in enumerate(zip(ids, SIZES)):
        for k, a in enumerate(ATTRIBUTES):
            kind = (n + k) % 5
            m = np.zeros((h, w), np.uint8)
            if kind in (1, 2, 4):
                m[rng.random((h, w)) < 0.2 * kind] = 255
            elif kind == 3:
                m = rng.choice(np.array([0, 100, 128, 200, 255], np.uint8), (h, w))
            im = Image.fromarray(m, mode="L")
            if kind == 4 and n % 2:
                im = im.convert("P")
            elif kind == 4:
                im = im.convert("1")
            im.save(sub / mask_name(image_id, a))
    return root, sub, ids


def _reference(root, sub, ids):
    truth = get_split(root, "val")
    preds, truths = [], []
    for image_id, (w, h) in zip(ids, SIZES):
        truths.append(np.stack([read_mask(truth.mask_path(image_id, a), (h, w))[0] for a in ATTRIBUTES]))
        preds.append(np.stack([read_mask(sub / mask_name(image_id, a), (h, w))[0] for a in ATTRIBUTES]))
    return official_score([torch.from_numpy(p) for p in preds], [torch.from_numpy(t) for t in truths])


def test_equals_the_official_formula_on_mixed_sizes(case):
    root, sub, ids = case
    got, want = score_submission(sub, root, "val").to_official_json(), _reference(root, sub, ids).to_official_json()
    assert got.keys() == want.keys()
    for key in got:
        if key == "overall":
            assert got[key] == pytest.approx(want[key], abs=1e-12)
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["overall"] < 1


def test_every_missing_file_is_named_in_image_order(case):
    root, sub, ids = case
    (sub / mask_name(ids[5], "globules")).unlink()
    (sub / mask_name(ids[2], "streaks")).unlink()
    # every missing file is named, in image order
    with pytest.raises(DataError, match=re.escape(f"submission {sub} lacks 2 of the 35 files of split 'val': "
                                                  f"{mask_name(ids[2], 'streaks')}, {mask_name(ids[5], 'globules')};")):
        score_submission(sub, root, "val")


def test_zero_one_masks_are_refused_with_the_file_named(case):
    root, sub, ids = case
    w, h = SIZES[3]
    m = np.zeros((h, w), np.uint8)
    m[0, 0] = 1
    path = sub / mask_name(ids[3], "milia_like_cyst")
    Image.fromarray(m, mode="L").save(path)
    with pytest.raises(DataError, match=re.escape(f"submission mask {path} holds only the values 0 and 1")):
        score_submission(sub, root, "val")
    gt = root / "val" / SPLIT_FOLDERS["val"][1] / mask_name(ids[1], "streaks")
    Image.fromarray(np.zeros((40, 40), np.uint8) + 1, mode="L").save(gt)
    with pytest.raises(DataError, match=re.escape(f"mask {gt} holds only the values 0 and 1")):  # earlier image
        score_submission(sub, root, "val")


def test_a_mask_of_another_size_is_refused_even_when_its_content_was_seen_empty(case):
    root, sub, ids = case
    Image.fromarray(np.zeros((48, 64), np.uint8), mode="L").save(sub / mask_name(ids[0], "pigment_network"))
    wrong = sub / mask_name(ids[1], "pigment_network")  # 40 x 40 image
    shutil.copyfile(sub / mask_name(ids[0], "pigment_network"), wrong)
    with pytest.raises(DataError, match=re.escape(f"submission mask {wrong} is 64x48 but its image is 40x40")):
        score_submission(sub, root, "val")


def test_a_file_that_is_not_a_png_is_refused_as_read_mask_does(case):
    root, sub, ids = case
    path = sub / mask_name(ids[4], "streaks")
    path.write_bytes(b"not a png")
    with pytest.raises(DataError, match=re.escape(f"submission mask {path} is corrupt or truncated")):
        score_submission(sub, root, "val")
