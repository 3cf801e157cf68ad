"""The overlay drawing and the prediction browser, driven headlessly; one run of a tiny trained checkpoint."""
from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import train_tiny_checkpoint
from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS
from skinseg.overlay import ATTRIBUTE_COLOURS, compare_overlay, legend_html, overlay
from skinseg.predict.collect import PredictionSet, collect_predictions
from skinseg.widgets import PredictionBrowser, overlay_png

ALPHA = 0.45


def blend(pixel, colour, alpha=ALPHA):
    return np.rint((1 - alpha) * np.asarray(pixel, float) + alpha * np.asarray(colour, float)).astype(np.uint8)


@pytest.fixture
def picture():
    """A 20 x 30 random image; pigment_network on rows 2-5 x cols 2-8, streaks on rows 10-16 x cols 5-25."""
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    masks = np.zeros((5, 20, 30), dtype=bool)
    masks[0, 2:6, 2:9] = True
    masks[2, 10:17, 5:26] = True
    return image, masks


# ---- overlay ------------------------------------------------------------------------------
def test_overlay_blends_attribute_colour_under_mask_and_leaves_the_rest(picture):
    image, masks = picture
    out = overlay(image, masks, alpha=ALPHA)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[3, 4] == blend(image[3, 4], ATTRIBUTE_COLOURS[0])).all()
    assert (out[12, 20] == blend(image[12, 20], ATTRIBUTE_COLOURS[2])).all()
    outside = ~masks.any(0)
    assert (out[outside] == image[outside]).all()
    assert (image == np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).all()  # not modified


def test_overlay_mixes_colours_where_attributes_overlap(picture):
    image, masks = picture
    masks[4, 3, 4] = True
    mix = (np.asarray(ATTRIBUTE_COLOURS[0]) + np.asarray(ATTRIBUTE_COLOURS[4])) / 2
    assert (overlay(image, masks)[3, 4] == blend(image[3, 4], mix)).all()


def test_overlay_draws_only_the_chosen_attributes(picture):
    image, masks = picture
    by_index = overlay(image, masks, attributes=[2])
    assert (by_index[3, 4] == image[3, 4]).all()
    assert (by_index[12, 20] == blend(image[12, 20], ATTRIBUTE_COLOURS[2])).all()
    assert (overlay(image, masks, attributes=["streaks"]) == by_index).all()
    assert (overlay(image, masks, attributes=[]) == image).all()
    with pytest.raises(ValueError, match="valid names"):
        overlay(image, masks, attributes=["streak"])


def test_overlay_alpha_zero_leaves_the_image_and_one_paints_the_colour(picture):
    image, masks = picture
    assert (overlay(image, masks, alpha=0.0) == image).all()
    assert (overlay(image, masks, alpha=1.0)[3, 4] == ATTRIBUTE_COLOURS[0]).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, masks, alpha=1.5)


def test_overlay_outline_colours_the_contour_and_not_the_inside(picture):
    image, masks = picture
    out = overlay(image, masks, outline=True)
    assert (out[2, 2] == ATTRIBUTE_COLOURS[0]).all() and (out[5, 8] == ATTRIBUTE_COLOURS[0]).all()
    assert (out[13, 15] == image[13, 15]).all()  # inside streaks
    assert (out[0, 0] == image[0, 0]).all()


def test_overlay_rejects_masks_of_another_size(picture):
    image, masks = picture
    with pytest.raises(ValueError, match="H x W"):
        overlay(image, masks[:, :10])


def test_compare_overlay_fills_truth_and_outlines_prediction(picture):
    image, truth = picture
    pred = np.zeros_like(truth)
    pred[0, 8:14, 10:20] = True
    assert (compare_overlay(image, truth, pred, "truth") == overlay(image, truth)).all()
    assert (compare_overlay(image, truth, pred, "prediction") == overlay(image, pred)).all()
    both = compare_overlay(image, truth, pred, "both")
    assert (both[3, 4] == blend(image[3, 4], ATTRIBUTE_COLOURS[0])).all()  # truth filled
    assert (both[8, 10] == ATTRIBUTE_COLOURS[0]).all()  # prediction contour
    assert (both[10, 12] == overlay(image, truth)[10, 12]).all()  # inside prediction: truth fill only
    with pytest.raises(ValueError, match="ground truth"):
        compare_overlay(image, None, pred, "both")
    with pytest.raises(ValueError, match="choose one of"):
        compare_overlay(image, truth, pred, "overlay")


def test_legend_names_every_attribute_with_its_colour():
    text = legend_html(note="filled: ground truth")
    for name, (r, g, b) in zip(ATTRIBUTES, ATTRIBUTE_COLOURS):
        assert name in text and f"rgb({r},{g},{b})" in text
    assert "filled: ground truth" in text
    assert "streaks" not in legend_html(attributes=[0, 1])


# ---- the browser, on hand-built sets ------------------------------------------------------
def make_set(split="val", n=5, size=16, seed=0, truth=True, first_id=0) -> PredictionSet:
    rng = np.random.default_rng(seed)
    ids = [f"ISIC_{first_id + i:07d}" for i in range(n)]
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    pred = rng.random((n, 5, size, size)) > 0.7
    masks = rng.random((n, 5, size, size)) > 0.7 if truth else None
    scores = None
    if truth:
        scores = pd.DataFrame(rng.random((n, 5)), index=pd.Index(ids, name="id"), columns=list(ATTRIBUTES))
        scores["mean_jaccard"] = scores[list(ATTRIBUTES)].mean(axis=1)
    return PredictionSet(split, ids, images, masks, pred, scores=scores)


def decode(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def test_overlay_png_is_upscaled_to_the_display_size():
    pset = make_set()
    out = decode(overlay_png(pset, 0, "prediction", alpha=0.0, size=64))
    assert out.shape == (64, 64, 3)
    assert (out == cv2.resize(pset.images[0], (64, 64), interpolation=cv2.INTER_LINEAR)).all()


def test_slider_changes_the_image_and_the_id_dropdown_follows():
    browser = PredictionBrowser(make_set())
    first = browser.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and browser.id_dropdown.value == "ISIC_0000000"
    browser.slider.value = 3
    assert browser.image.value != first
    assert browser.id_dropdown.value == "ISIC_0000003" and browser.image_id == "ISIC_0000003"
    browser.id_dropdown.value = "ISIC_0000001"
    assert browser.slider.value == 1
    assert "ISIC_0000001" in browser.status.value and "2 of 5" in browser.status.value


def test_next_and_previous_buttons_step_and_stop_at_the_ends():
    browser = PredictionBrowser(make_set())
    assert browser.prev_button.disabled
    shown = browser.image.value
    browser.next_button.click()
    assert browser.slider.value == 1 and browser.id_dropdown.value == "ISIC_0000001" and browser.image.value != shown
    browser.prev_button.click()
    browser.prev_button.click()
    assert browser.slider.value == 0
    for _ in range(10):
        browser.next_button.click()
    assert browser.slider.value == 4 and browser.next_button.disabled


def test_view_opacity_and_attribute_boxes_redraw_the_image():
    browser = PredictionBrowser(make_set())
    assert browser.view.options == ("ground truth", "prediction", "both") and browser.view.value == "both"
    seen = {browser.image.value}
    for view in ("ground truth", "prediction"):
        browser.view.value = view
        seen.add(browser.image.value)
    browser.opacity.value = 0.9
    seen.add(browser.image.value)
    browser.attribute_boxes["pigment_network"].value = False
    seen.add(browser.image.value)
    assert len(seen) == 5
    assert browser.shown_attributes == [1, 2, 3, 4]
    browser.opacity.value = 0.0
    pset = browser.current
    assert (decode(browser.image.value) == decode(overlay_png(pset, 0, "prediction", 0.0))).all()
    assert "filled: prediction" in browser.legend.value


def test_sort_worst_first_orders_by_mean_jaccard_ascending():
    pset = make_set()
    browser = PredictionBrowser(pset)
    browser.slider.value = 2
    browser.sort.value = "mean_jaccard"
    expected = list(pset.scores["mean_jaccard"].sort_values().index)
    assert list(browser.id_dropdown.options) == expected
    assert browser.slider.value == 0 and browser.image_id == pset.scores["mean_jaccard"].idxmin()
    browser.sort.value = "streaks"
    assert browser.image_id == pset.scores["streaks"].idxmin()
    browser.next_button.click()
    assert browser.image_id == pset.scores["streaks"].sort_values().index[1]
    browser.sort.value = "id"
    assert list(browser.id_dropdown.options) == pset.ids


def test_filter_keeps_images_with_the_attribute_and_first_n_cuts():
    pset = make_set(n=8)
    pset.pred[:, 2] = False
    pset.truth[:, 2] = False
    pset.truth[[1, 6], 2, 0, 0] = True
    pset.pred[4, 2, 3, 3] = True
    browser = PredictionBrowser(pset)
    browser.filter.value = "streaks"
    assert list(browser.id_dropdown.options) == ["ISIC_0000001", "ISIC_0000004", "ISIC_0000006"]
    assert browser.slider.max == 2
    browser.filter.value = "all"
    browser.sort.value = "mean_jaccard"
    browser.first_n.value = 3
    assert list(browser.id_dropdown.options) == list(pset.scores["mean_jaccard"].sort_values().index[:3])


def test_filter_that_matches_nothing_shows_a_message():
    pset = make_set()
    pset.pred[:, 3] = False
    pset.truth[:, 3] = False
    browser = PredictionBrowser(pset)
    browser.filter.value = "milia_like_cyst"
    assert browser.index is None and browser.image.value == b"" and "no image" in browser.status.value
    assert browser.next_button.disabled and browser.prev_button.disabled
    browser.filter.value = "all"
    assert browser.index == 0 and browser.image.value


def test_split_switch_updates_the_slider_and_a_split_without_truth_shows_prediction_only():
    sets = {"val": make_set("val", n=5), "test": make_set("test", n=3, seed=1, truth=False, first_id=200)}
    browser = PredictionBrowser(sets)
    browser.sort.value = "mean_jaccard"
    assert browser.slider.max == 4
    browser.split.value = "test"
    assert browser.slider.max == 2 and browser.id_dropdown.value == "ISIC_0000200"
    assert browser.view.options == ("prediction",) and browser.view.value == "prediction"
    assert browser.sort.disabled and browser.sort.value == "id"
    assert browser.table.value.count("—") >= 6  # no Jaccard, no truth share
    assert decode(browser.image.value).shape == (384, 384, 3)
    browser.next_button.click()
    assert browser.image_id == "ISIC_0000201"
    browser.split.value = "val"
    assert browser.slider.max == 4 and "ground truth" in browser.view.options and not browser.sort.disabled


def test_browser_table_shows_the_image_scores_and_it_displays():
    pset = make_set()
    browser = PredictionBrowser(pset, size=64)
    row = pset.scores.loc["ISIC_0000000"]
    assert f"{row['streaks']:.3f}" in browser.table.value and f"{row['mean_jaccard']:.3f}" in browser.table.value
    assert browser.widget.children and hasattr(browser, "_ipython_display_")
    assert decode(browser.image.value).shape == (64, 64, 3)


def test_prediction_set_rejects_mismatched_arrays():
    pset = make_set()
    with pytest.raises(ValueError, match="pred must be"):
        PredictionSet("val", pset.ids, pset.images, pset.truth, pset.pred[:, :3])
    with pytest.raises(ValueError, match="lack the column"):
        PredictionSet("val", pset.ids, pset.images, pset.truth, pset.pred, scores=pset.scores.drop(columns="globules"))


def test_collect_predictions_on_a_tiny_checkpoint_matches_evaluate(tmp_path, cache_root):
    from skinseg.predict.evaluate import evaluate_checkpoint
    from skinseg.checkpoint import load_checkpoint

    checkpoint, root = train_tiny_checkpoint(tmp_path)
    pset = collect_predictions(checkpoint, root, "val", device="cpu")
    assert all(re.fullmatch(r"ISIC_\d{7}", i) for i in pset.ids) and pset.ids == sorted(pset.ids)
    assert len(pset) == 3
    assert pset.images.shape == (3, 32, 32, 3) and pset.images.dtype == np.uint8
    assert pset.truth.shape == pset.pred.shape == (3, 5, 32, 32)
    assert pset.truth.dtype == pset.pred.dtype == bool
    assert pset.thresholds == pytest.approx(load_checkpoint(checkpoint)["thresholds"])
    rows = evaluate_checkpoint(checkpoint, root, "val", device="cpu", per_image=True).per_image
    expected = pd.DataFrame(rows).set_index("id")
    assert list(pset.scores.index) == list(expected.index) == pset.ids
    np.testing.assert_allclose(pset.scores["mean_jaccard"], expected["mean_jaccard"])
    np.testing.assert_allclose(pset.scores[list(ATTRIBUTES)], expected[list(ATTRIBUTES)])

    assert len(collect_predictions(checkpoint, root, "val", limit=2, device="cpu")) == 2
    shutil.rmtree(root / "test" / SPLIT_FOLDERS["test"][1])
    unlabelled = collect_predictions(checkpoint, root, "test", device="cpu")
    assert unlabelled.truth is None and unlabelled.scores is None and unlabelled.pred.shape == (2, 5, 32, 32)
    browser = PredictionBrowser({"val": pset, "test": unlabelled})
    browser.sort.value = "mean_jaccard"
    assert browser.image_id == pset.scores["mean_jaccard"].idxmin()
    browser.split.value = "test"
    assert browser.view.options == ("prediction",) and browser.slider.max == 1
