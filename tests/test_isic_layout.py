import shutil

import pytest

from skinseg.data.isic import ATTRIBUTES, DataError, find_splits, get_split, missing_masks


def test_attribute_order_is_canonical():
    assert ATTRIBUTES == ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")


def test_splits_found_two_levels_below_root(tiny_root):
    splits = find_splits(tiny_root)
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].ids[:2] == ("ISIC_0000000", "ISIC_0000001") and len(splits["train"]) == 6
    assert splits["val"].has_masks and not splits["test"].has_masks
    # the same data one level deeper still resolves (extracted zips inside a folder)
    deeper = tiny_root.parent / "outer"
    shutil.copytree(tiny_root, deeper / "isic")
    assert len(find_splits(deeper)["val"]) == 3


def test_root_without_expected_folders_names_them(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DataError) as err:
        find_splits(tmp_path)
    assert "ISIC2018_Task1-2_Training_Input" in str(err.value)
    assert "ISIC2018_Task2_Validation_GroundTruth" in str(err.value)


def test_missing_split_and_unknown_split(tiny_root):
    shutil.rmtree(tiny_root / "test")
    with pytest.raises(DataError, match="'test' not found"):
        get_split(tiny_root, "test")
    with pytest.raises(DataError, match="valid splits"):
        get_split(tiny_root, "holdout")


def test_missing_masks_lists_every_file(tiny_root):
    split = get_split(tiny_root, "train")
    (split.mask_dir / "ISIC_0000001_attribute_streaks.png").unlink()
    (split.mask_dir / "ISIC_0000004_attribute_globules.png").unlink()
    assert missing_masks(split) == ["ISIC_0000001_attribute_streaks.png", "ISIC_0000004_attribute_globules.png"]
