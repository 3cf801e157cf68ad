"""What makes an executed notebook read as a report: no progress-bar frames, the config as the keys that differ,
qualitative figures of images that hold an attribute."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from skinseg import progress
from skinseg.config import Config
from skinseg.data.isic import ATTRIBUTES
from skinseg.notebook import config_table
from skinseg.predict.collect import PredictionSet


def test_bars_are_off_inside_quiet_and_the_environment_is_restored(capsys, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.enabled() and not progress.enabled(False)
    with progress.quiet():
        assert os.environ[progress.ENV] == "0" and not progress.enabled()
        assert list(progress.bar(range(3), desc="quiet bar")) == [0, 1, 2]
    assert progress.ENV not in os.environ and progress.enabled()
    assert "quiet bar" not in capsys.readouterr().err
    monkeypatch.setenv(progress.ENV, "1")
    with progress.quiet():
        pass
    assert os.environ[progress.ENV] == "1"


def test_config_table_holds_only_the_changed_keys_one_a_row():
    cfg = Config().replace(epochs=13, loss={"bce": 1.0, "log_jaccard": 1.0}, crop_size=128)
    table = config_table(cfg)
    assert list(table.columns) == ["value", "default"]
    assert set(table.index) == {"epochs", "loss", "crop_size"}
    assert table.loc["epochs", "value"] == "13" and table.loc["epochs", "default"] == str(Config().epochs)
    assert table.loc["loss", "value"] == "{bce: 1.0, log_jaccard: 1.0}" and table.loc["crop_size", "default"] == "null"
    assert config_table(Config()).empty


def _set() -> PredictionSet:
    """Four 4x4 images: 0 holds nothing and is predicted empty (mean_jaccard 1.00: the old 'best'); 1 holds
    pigment network found perfectly; 2 holds globules half found, with a false pigment network; 3 holds streaks
    missed."""
    n, s = 4, 4
    truth, pred = np.zeros((n, 5, s, s), bool), np.zeros((n, 5, s, s), bool)
    truth[1, 0, :2], pred[1, 0, :2] = True, True
    truth[2, 4, :2], pred[2, 4, :1], pred[2, 0, 3] = True, True, True
    truth[3, 2, :1] = True
    jac = np.ones((n, 5))
    jac[2, 4], jac[2, 0], jac[3, 2] = 0.5, 0.0, 0.0
    ids = [f"ISIC_{k:07d}" for k in range(n)]
    scores = pd.DataFrame(jac, index=pd.Index(ids, name="id"), columns=list(ATTRIBUTES))
    scores["mean_jaccard"] = jac.mean(1)
    return PredictionSet("val", ids, np.zeros((n, s, s, 3), np.uint8), truth, pred, scores=scores)


def test_images_are_ranked_by_the_attributes_they_hold_not_by_empty_agreement():
    preds = _set()
    score = preds.attribute_jaccard()
    assert np.isnan(score["ISIC_0000000"]) and score["ISIC_0000001"] == 1.0
    assert score["ISIC_0000002"] == pytest.approx(0.25) and score["ISIC_0000003"] == 0.0
    assert preds.scores["mean_jaccard"].idxmax() == "ISIC_0000000"  # what the figures used to show as best
    assert preds.ranked(2) == ["ISIC_0000001", "ISIC_0000002"]
    assert preds.ranked(3, worst=True) == ["ISIC_0000003", "ISIC_0000002", "ISIC_0000001"]


def test_qualitative_title_sits_above_the_column_headers():
    import matplotlib

    matplotlib.use("Agg")
    from skinseg import plots

    preds = _set()
    fig = plots.qualitative_rows(list(preds.images[:2]), list(preds.truth[:2]), list(preds.pred[:2]), preds.ids[:2],
                                 [1.0, 0.25], title="Best images (holding an attribute)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    headers = [ax.title.get_window_extent(renderer) for ax in fig.axes[:3]]
    assert all(title.y0 >= h.y1 for h in headers), (title, headers)
    assert "Jaccard 0.25" in fig.axes[3].get_title()


def test_the_experiment_log_is_what_results_csvs_say():
    """docs/experiments.md's tables are generated from results/*.csv: `make docs` after a run lands."""
    from skinseg.paths import PROJ_ROOT
    from skinseg.results import render_doc

    text = (PROJ_ROOT / "docs" / "experiments.md").read_text()
    assert "<!-- results: isic_cpu_architectures runs -->" in text and "<!-- sweeps -->" in text
    assert render_doc(text) == text, "docs/experiments.md is out of date with results/: run `make docs`"
    status = text.split("<!-- sweeps -->")[1].split("<!-- /sweeps -->")[0]
    assert "| isic_cpu_rare | isic_cpu.yaml | results/isic_cpu_rare.csv |" in status  # every study sweep, a row
    readme = (PROJ_ROOT / "README.md").read_text()
    assert "<!-- results: isic_cpu_architectures architectures -->" in readme
    assert render_doc(readme) == readme, "the README's results at a glance are stale: run `make docs`"


def test_the_readme_is_a_front_page():
    """At most 10 KB; the two commands, the own-data verbs and the GPU commands on its first screen (50 lines);
    every docs/ page it points to exists, and every page of docs/ is pointed to."""
    import re

    from skinseg.paths import PROJ_ROOT

    readme = (PROJ_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_000
    first_screen = "\n".join(readme.splitlines()[:50])
    for command in ("make report", "make test", "skinseg download", "skinseg train --config", "skinseg evaluate",
                    "skinseg predict", "params/isic.yaml", "torchrun --nproc_per_node"):
        assert command in first_screen, command
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    assert linked == {f"docs/{p.name}" for p in (PROJ_ROOT / "docs").glob("*.md")}
    assert (PROJ_ROOT / "CHANGELOG.md").is_file() and "(CHANGELOG.md)" in readme
    for page in (PROJ_ROOT / "docs").glob("*.md"):  # relative links inside docs/ resolve
        for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_results_blocks_are_filled_from_the_csv_and_a_missing_one_says_so(tmp_path):
    from skinseg.results import render_doc

    folder = tmp_path / "results"
    folder.mkdir()
    pd.DataFrame([{"run": "20261201-000000_unet_a", "model": "unet", "seed": 1, "epochs": 2,
                   "tune_last3": 0.25, "val_micro_overall": 0.5}]).to_csv(folder / "mine.csv", index=False)
    text = ("x\n<!-- results: mine runs -->\nstale\n<!-- /results -->\n"
            "<!-- results: other runs -->\n<!-- /results -->\n")
    out = render_doc(text, folder)
    assert "stale" not in out and "| a | 1 | 2 | 0.250 | 0.500 |" in out
    assert "no runs yet: results/other.csv does not exist" in out
    assert render_doc(out, folder) == out
