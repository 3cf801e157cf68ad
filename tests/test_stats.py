import json

import numpy as np
import pytest

from skinseg.cli import main
from skinseg.data.isic import ATTRIBUTES
from skinseg.data.stats import dataset_stats, stats_table


def test_stats_of_tiny_dataset(tiny_root, cache_root):
    stats = dataset_stats(tiny_root, image_size=32, progress=False)
    assert stats["train"]["images"] == 6 and stats["test"]["images"] == 2
    # ids 0..5: attribute k present when id % (k+2) == 0
    assert stats["train"]["prevalence"] == dict(zip(ATTRIBUTES, [3, 2, 2, 2, 1]))
    assert stats["train"]["pixel_fraction"]["pigment_network"] == pytest.approx(3 / 6 / 16, rel=0.05)
    assert "prevalence" not in stats["test"]
    assert all(0.4 < m < 0.6 for m in stats["train"]["rgb_mean"])  # uniform noise images
    assert all(0.05 < s < 0.3 for s in stats["train"]["rgb_std"])  # INTER_AREA averages the noise
    table = stats_table(stats)
    assert table.loc["val", "images"] == 3 and table.loc["train", "globules images"] == 1


def test_stats_command_prints_table_and_json(tiny_root, cache_root, capsys, tmp_path):
    out = tmp_path / "s.json"
    assert main(["stats", str(tiny_root), "--image-size", "32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pigment_network images" in text and '"prevalence"' in text
    assert json.loads(out.read_text())["val"]["images"] == 3


def test_stats_command_reports_a_bad_root(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    assert "ISIC2018_Task1-2_Training_Input" in capsys.readouterr().err


@pytest.mark.real
def test_real_training_split_prevalence(real_root):
    stats = dataset_stats(real_root, image_size=256, progress=False)
    assert stats["train"]["images"] == 2594 and stats["val"]["images"] == 100
    assert stats["train"]["prevalence"] == {
        "pigment_network": 1523, "negative_network": 190, "streaks": 100, "milia_like_cyst": 682, "globules": 603,
    }
    assert stats["val"]["prevalence"] == dict(zip(ATTRIBUTES, [73, 9, 6, 6, 19]))
    # cache round trip on real data: cached 256 px masks equal the source masks exactly
    from PIL import Image

    from skinseg.data.cache import build_cache
    from skinseg.data.isic import get_split

    split = get_split(real_root, "val")
    cache = build_cache(split, 256, progress=False)
    for i in (0, 57, 99):
        for a, attribute in enumerate(ATTRIBUTES):
            truth = np.asarray(Image.open(split.mask_path(cache.ids[i], attribute))) > 127
            np.testing.assert_array_equal(cache.mask(i)[a].astype(bool), truth)
        image = np.asarray(Image.open(split.image_path(cache.ids[i])).convert("RGB"))
        np.testing.assert_array_equal(cache.images[i], image)
