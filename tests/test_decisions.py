"""Decisions: the two operating points (micro-optimal, the leaderboard's; per-attribute-optimal), image-level
presence AUC, and notebook 05's rule that a decision variant is chosen on the tuning split, never on the split it
is reported on."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_line_error, tiny_config
from skinseg.cli import main
from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS
from skinseg.metrics import ThresholdSweep, presence_auc
from skinseg.scoring import Scores


def _two_attribute_sweep() -> ThresholdSweep:
    """Attribute 0: half the image, found perfectly. Attribute 1: 10 true pixels inside 50 predicted at 0.6
    (its best Jaccard is 0.2, below the overall, so the micro-optimal thresholds switch it off)."""
    h, w = 32, 32
    probs, target = torch.full((1, 2, h, w), 0.1), torch.zeros(1, 2, h, w)
    probs[0, 0, :, :16], target[0, 0, :, :16] = 0.9, 1
    probs[0, 1].view(-1)[:50] = 0.6
    target[0, 1].view(-1)[:10] = 1
    sweep = ThresholdSweep(classes=2)
    sweep.update(probs, target)
    return sweep


def test_per_attribute_thresholds_keep_an_attribute_the_micro_ones_switch_off():
    sweep = _two_attribute_sweep()
    micro, _, overall = sweep.tune()
    each = sweep.tune_each()
    # off: 512 / (512 + 10 missed) beats (512 + 10) / (512 + 50) with it on
    assert overall == pytest.approx(512 / 522) and micro[1] > 0.6
    assert each[1] == pytest.approx(0.6)  # the highest threshold that keeps its 10 of 50 pixels
    assert 0.1 < each[0] <= 0.9
    at_each = sweep.scores(each)
    assert list(at_each.jaccard.values()) == pytest.approx([1.0, 0.2])
    assert sweep.scores(micro).jaccard[ATTRIBUTES[1]] == pytest.approx(0.0)
    assert at_each.macro_jaccard == pytest.approx(0.6)
    assert at_each.macro_jaccard > sweep.scores(micro).macro_jaccard


def test_presence_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (40, 5)) / 4  # many ties
    present = rng.random((40, 5)) < 0.4
    present[:, 4] = False  # an attribute no image holds
    auc = presence_auc(scores, present)
    for c, a in enumerate(ATTRIBUTES[:4]):
        pos, neg = scores[present[:, c], c], scores[~present[:, c], c]
        pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
        assert auc[a] == pytest.approx(np.mean(pairs))
    assert np.isnan(auc["globules"])


def _scores(overall: float) -> Scores:
    per = {a: overall for a in ATTRIBUTES}
    return Scores(per, per, overall, overall, overall, overall)


def test_the_variant_is_chosen_on_the_tuning_split_not_on_the_reported_one(monkeypatch):
    """val (tuning) prefers micro thresholds without TTA; test prefers per-attribute with hflip: the chosen
    variant is val's, and the table reports test's scores for it."""
    import skinseg.predict.evaluate as ev

    prefer = {"val": ("micro", "none"), "test": ("per_attribute", "hflip")}

    class Result:
        def __init__(self, split, tta):
            self.split, self.tta = split, tta
            self.sweep = self

        def scores(self, thresholds):
            return _scores(self.score("0.5"))

        def score(self, name):
            return 0.5 if (name, self.tta) == prefer[self.split] else 0.2 + 0.01 * len(name)

        def presence_auc(self):
            return {a: 0.5 for a in ATTRIBUTES}

        # the evaluated split holds no streaks: its Jaccard is shown as absent, not as 1.000
        image_present = np.array([[1, 1, 0, 0, 1], [1, 0, 0, 1, 0]], dtype=bool)

    monkeypatch.setattr(ev, "evaluate_checkpoint", lambda ckpt, root, split, tta, device: Result(split, tta))
    monkeypatch.setattr(ev, "load_checkpoint", lambda path, mmap=False: {"thresholds": [0.5] * 5})
    monkeypatch.setattr(ev, "operating_points", lambda r, ckpt: {
        name: {"thresholds": [0.5] * 5, "scores": _scores(r.score(name))} for name in ("micro", "per_attribute")})
    variants = ev.decision_variants("ckpt", "root", "val", "test")
    assert variants.chosen == ("micro", "none")
    assert variants.table["chosen"].sum() == 1 and variants.table.loc[("micro", "none"), "chosen"]
    assert variants.table["evaluated overall"].idxmax() == ("per_attribute", "hflip")  # test would pick this
    assert variants.evaluated[variants.chosen].overall == variants.table.loc[("micro", "none"), "evaluated overall"]
    assert len(variants.table) == 9
    assert variants.holding == dict(zip(ATTRIBUTES, [2, 1, 0, 1, 1])) and variants.absent() == ["streaks"]
    table = variants.per_attribute()
    assert np.isnan(table.loc["streaks", "micro thresholds"]) and table.loc["streaks", "images holding it"] == 0
    # test's scores of the chosen TTA (none) at micro thresholds: 0.2 + 0.01 * len("micro")
    assert table.loc["globules", "micro thresholds"] == pytest.approx(0.25)
    assert table.loc["micro_average (overall)", "micro thresholds"] == pytest.approx(0.25)


@pytest.fixture
def run(small_root, tmp_path, cache_root):
    from skinseg.train import train

    return Path(train(tiny_config(small_root, tmp_path, epochs=3), progress=False)["run_dir"])


def test_evaluate_reports_both_operating_points_and_predict_writes_either(small_root, tmp_path, run, capsys):
    from skinseg.scoring import score_submission

    best = run / "best.pt"
    out = tmp_path / "val.json"
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(small_root), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "jaccard (per_attribute)" in printed and "presence AUC (image level): pigment_network" in printed
    scores = json.loads(out.read_text())
    micro, each = scores["operating_points"]["micro"], scores["operating_points"]["per_attribute"]
    assert scores["overall"] == micro["overall"] and set(scores["presence_auc"]) == set(ATTRIBUTES)
    # val is the split both were tuned on: each attribute at its own best is at least as good as at the micro ones
    for a in ATTRIBUTES:
        assert each[a]["jaccard"] >= micro[a]["jaccard"] - 1e-12, a
    images = str(small_root / "val" / SPLIT_FOLDERS["val"][0])
    for point, expected in (("micro", micro), ("per_attribute", each)):
        sub = tmp_path / f"sub_{point}"
        assert main(["predict", "--checkpoint", str(best), "--images", images, "--out", str(sub),
                     "--operating-point", point]) == 0
        assert score_submission(sub, small_root, "val").overall == pytest.approx(expected["overall"], abs=1e-9)


def test_a_checkpoint_without_per_attribute_thresholds_says_so(small_root, tmp_path, run, capsys):
    from skinseg.checkpoint import load_checkpoint

    state = load_checkpoint(run / "best.pt")
    state.pop("thresholds_per_attribute")
    old = tmp_path / "old.pt"
    torch.save(state, old)
    err = one_line_error(capsys, ["predict", "--checkpoint", str(old), "--images",
                                  str(small_root / "val" / SPLIT_FOLDERS["val"][0]), "--out", str(tmp_path / "s"),
                                  "--operating-point", "per_attribute"])
    assert "no per-attribute thresholds" in err and "--operating-point micro" in err
    assert main(["evaluate", "--checkpoint", str(old), "--data", str(small_root)]) == 0


@pytest.mark.parametrize("rule", ["best", "last"])
def test_a_run_writes_its_comparison_row_by_its_checkpoint_rule(tmp_path, cache_root, rule):
    import pandas as pd

    from conftest import write_split
    from skinseg.runs import RunFolder
    from skinseg.train import train

    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 8 + [(40, 48)] * 4, seed=1)
    write_split(root, "val", [(48, 40), (56, 42)], seed=2, first_id=100)
    results = tmp_path / "results" / "runs.csv"
    summary = train(tiny_config(root, tmp_path, epochs=4, dev_fraction=0.3, val_split="dev", checkpoint_rule=rule,
                                results_file=str(results)), progress=False)
    run = RunFolder(summary["run_dir"])
    row = pd.read_csv(results).iloc[0]
    _, epochs = run.metrics()
    assert row["run"] == run.path.name and row["checkpoint_rule"] == rule and row["epochs"] == 4
    assert row["checkpoint_epoch"] == (summary["best_epoch"] if rule == "best" else 4)
    assert row["tune_last3"] == pytest.approx(epochs["val_tuned_jaccard"].iloc[-3:].mean(), abs=1e-4)
    assert row["tune_peak"] == pytest.approx(summary["best_score"], abs=1e-4)
    # the chosen checkpoint scored again on dev at its micro thresholds gives the tuned score logged for its epoch
    logged = epochs.set_index("epoch").loc[row["checkpoint_epoch"], "val_tuned_jaccard"]
    assert row["dev_micro_overall"] == pytest.approx(logged, abs=1e-4)
    assert {"val_micro_overall", "val_each_macro", "dev_auc_pigment_network", "params"} <= set(row.index)
    assert json.loads(run.end_marker.read_text())["checkpoint_rule"] == rule
    # the row carries its curve and its config, so the study's figures need no run folder
    from skinseg.results import parse_curve, read_results

    curve = parse_curve(row["tune_curve"])
    assert list(curve.index) == [1, 2, 3, 4]
    assert curve.values == pytest.approx(epochs["val_tuned_jaccard"].to_numpy(), abs=1e-4)
    assert read_results(results)["config"].tolist() == [run.path.name.split("_", 2)[2]]  # no run_name: the folder's
    # both rules scored on val: the chosen one is the row's val score, the other its own checkpoint's
    from skinseg.predict.evaluate import evaluate_checkpoint

    other = run.best if rule == "last" else run.last
    assert row[f"val_micro_{rule}_pt"] == pytest.approx(row["val_micro_overall"], abs=1e-12)
    assert row[f"val_micro_{'best' if rule == 'last' else 'last'}_pt"] == pytest.approx(
        evaluate_checkpoint(other, root, "val").scores.overall, abs=1e-4)
    assert row["best_epoch"] == summary["best_epoch"]
    assert row["dev_seed"] == 42 and row["last_pt_thresholds"] == "own"  # dev_seed null: the hold-out of `seed`


def test_a_run_with_ema_scores_its_trained_weights_beside_the_average(tmp_path, cache_root):
    """What the EMA adds on one trajectory: last.pt keeps the trained weights beside the averaged ones, and the row
    scores them as the run scores its checkpoints (thresholds tuned on dev, applied on val)."""
    import pandas as pd

    from conftest import write_split
    from skinseg.checkpoint import load_checkpoint, save_checkpoint
    from skinseg.predict.evaluate import evaluate_checkpoint
    from skinseg.results import averaging_table, read_results
    from skinseg.runs import RunFolder
    from skinseg.train import train

    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 8 + [(40, 48)] * 4, seed=1)
    write_split(root, "val", [(48, 40), (56, 42)], seed=2, first_id=100)
    results = tmp_path / "results" / "ema.csv"
    summary = train(tiny_config(root, tmp_path, epochs=3, dev_fraction=0.3, val_split="dev", checkpoint_rule="last",
                                ema=0.9, results_file=str(results)), progress=False)
    run = RunFolder(summary["run_dir"])
    row = pd.read_csv(results).iloc[0]
    state = load_checkpoint(run.last)
    assert any(not torch.equal(state["model"][k], v) for k, v in state["train_model"].items()
               if v.is_floating_point())  # two sets of weights
    # the trained weights as a checkpoint of their own, scored by the public evaluation: the row's figures
    alone = tmp_path / "trained.pt"
    save_checkpoint({**state, "model": state["train_model"]}, alone)
    thresholds, _, tuned = evaluate_checkpoint(alone, root, "dev").sweep.tune()
    assert row["dev_micro_trained_last"] == pytest.approx(tuned, abs=1e-4)
    save_checkpoint({**state, "model": state["train_model"], "thresholds": thresholds}, alone)
    assert row["val_micro_trained_last"] == pytest.approx(evaluate_checkpoint(alone, root, "val").scores.overall,
                                                          abs=1e-4)
    shown = averaging_table(read_results(results))
    assert shown["dev at last.pt (EMA)"].iloc[0] == pytest.approx(row["dev_micro_overall"], abs=1e-4)
    assert shown["EMA - trained, val"].iloc[0] == pytest.approx(
        row["val_micro_last_pt"] - row["val_micro_trained_last"], abs=1e-4)
    # a run without EMA has no such columns, and the view of its table is empty
    plain = tmp_path / "results" / "plain.csv"
    train(tiny_config(root, tmp_path, epochs=1, dev_fraction=0.3, val_split="dev", results_file=str(plain)),
          progress=False)
    assert "val_micro_trained_last" not in pd.read_csv(plain) and averaging_table(read_results(plain)).empty


def test_each_checkpoint_carries_the_thresholds_tuned_on_its_own_weights(tmp_path, cache_root):
    """last.pt holds the thresholds tuned at its own epoch's validation, best.pt the best epoch's; a last.pt of
    an older run, which held the best epoch's, is scored for a row with thresholds tuned anew for its weights."""
    import pandas as pd

    from conftest import write_split
    from skinseg.checkpoint import load_checkpoint, save_checkpoint
    from skinseg.predict.evaluate import evaluate_checkpoint
    from skinseg.results import own_decision
    from skinseg.runs import RunFolder
    from skinseg.train import train

    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 8 + [(40, 48)] * 4, seed=1)
    write_split(root, "val", [(48, 40), (56, 42)], seed=2, first_id=100)
    summary = train(tiny_config(root, tmp_path, epochs=4, dev_fraction=0.3, val_split="dev", scheduler="none"),
                    progress=False)
    run = RunFolder(summary["run_dir"])
    _, epochs = run.metrics()
    logged = epochs.set_index("epoch")["val_tuned_jaccard"]
    last, best = load_checkpoint(run.last), load_checkpoint(run.best)
    assert last["thresholds_epoch"] == last["epoch"] == 4 and best["thresholds_epoch"] == best["epoch"]
    for path, state in ((run.last, last), (run.best, best)):
        assert evaluate_checkpoint(path, root, "dev").scores.overall == pytest.approx(logged[state["epoch"]], abs=1e-4)
    assert own_decision(run.last, root, "dev", tmp_path) == run.last  # its own already: no copy
    # a last.pt as runs wrote it before: the best epoch's (here: other) thresholds and no thresholds_epoch
    old = tmp_path / "old" / "last.pt"
    save_checkpoint({**{k: v for k, v in last.items() if k not in ("format", "thresholds_epoch")},
                     "thresholds": [0.97] * 5, "best": {**last["best"], "epoch": 1}}, old)
    assert evaluate_checkpoint(old, root, "dev").scores.overall != pytest.approx(logged[4], abs=1e-4)
    mended = own_decision(old, root, "dev", tmp_path)
    assert mended != old and load_checkpoint(mended)["thresholds_epoch"] == 4
    assert evaluate_checkpoint(mended, root, "dev").scores.overall == pytest.approx(logged[4], abs=1e-4)
    assert load_checkpoint(old)["thresholds"] == [0.97] * 5  # the run's own file is left as it was


def test_the_decision_table_shows_what_the_chosen_checkpoint_decides_with(tmp_path, cache_root):
    """Notebook 03's table: the thresholds of the checkpoint the run stands for, at both operating points, and
    the presence cut-offs of a model with a presence head, with the epoch that tuned them."""
    from conftest import write_split
    from skinseg.checkpoint import load_checkpoint
    from skinseg.predict.decisions import decision_table
    from skinseg.runs import chosen_checkpoint
    from skinseg.train import train

    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 8 + [(40, 48)] * 4, seed=1)
    summary = train(tiny_config(root, tmp_path, epochs=3, dev_fraction=0.3, val_split="dev", aux_head=True,
                                checkpoint_rule="last", scheduler="none"), progress=False)
    path = chosen_checkpoint(summary["run_dir"])
    state = load_checkpoint(path)
    table = decision_table(path)
    assert path.name == "last.pt" and table.attrs == {"epoch": 3, "tuned_at": 3}
    assert list(table.columns) == list(ATTRIBUTES)
    assert table.loc["threshold (micro)"].tolist() == pytest.approx(state["thresholds"])
    assert table.loc["threshold (per attribute)"].tolist() == pytest.approx(state["thresholds_per_attribute"])
    assert table.loc["presence cut-off"].tolist() == pytest.approx(state["gates"])
    plain = train(tiny_config(root, tmp_path, epochs=1, dev_fraction=0.3, val_split="dev", run_name="plain"),
                  progress=False)
    assert "presence cut-off" not in decision_table(chosen_checkpoint(plain["run_dir"])).index


def test_study_tables_group_architectures_with_their_seed_spread():
    import pandas as pd

    from skinseg.results import by_architecture, curves, presence_table, run_config, study_table

    rows = [dict(run=f"20261201-1{k}0000_{m}_{c}", config=None if k == 0 else c, model=m, encoder=e, pretrained=p,
                 seed=s, epochs=13, params=2e6, s_per_epoch=200.0, wall_min=w, checkpoint_rule="last",
                 checkpoint_epoch=13, tune_last3=d, tune_peak=d + 0.01, dev_micro_overall=d, dev_each_macro=0.1,
                 val_micro_overall=v, val_each_macro=0.12, tune_curve=curve)
            for k, (m, e, p, c, s, d, v, w, curve) in enumerate([
                ("unet", None, False, "a_unet", 42, 0.30, 0.31, 100.0, "1:0.2000 2:0.3000"),
                ("unet", None, False, "a_unet_seed7", 7, 0.34, 0.33, 110.0, ""),
                ("unet-timm-attention", "tf_efficientnet_lite0", True, "d_lite0", 42, 0.36, 0.35, 60.0,
                 "2:0.3500")])]
    table = pd.DataFrame(rows)
    assert run_config(table.iloc[0]) == "a_unet" and run_config(table.iloc[1]) == "a_unet_seed7"
    shown = study_table(table)
    assert shown["dev last-3"].tolist() == [0.36, 0.34, 0.30] and shown["params (M)"].iloc[0] == 2.0
    grouped = by_architecture(table).set_index("model")
    assert grouped.loc["unet", "seeds"] == 2 and grouped.loc["unet", "dev last-3"] == pytest.approx(0.32)
    assert grouped.loc["unet", "dev spread"] == pytest.approx(0.04)
    assert grouped.loc["unet", "val spread"] == pytest.approx(0.02)
    assert grouped.loc["unet-timm-attention", "dev spread"] == 0.0
    presence = presence_table(table.assign(dev_auc_streaks=[0.6, 0.7, 0.8], val_auc_streaks=[0.5, 0.9, 0.75]))
    assert list(presence.columns) == ["config", "seed", "dev AUC streaks", "val AUC streaks"]
    assert presence["val AUC streaks"].tolist() == [0.5, 0.9, 0.75]
    found = curves(table.assign(config=table.apply(run_config, axis=1)))
    assert list(found) == ["a_unet (seed 42)", "d_lite0 (seed 42)"]
    assert found["a_unet (seed 42)"].to_dict() == {1: 0.2, 2: 0.3}


def test_the_rules_table_says_which_thresholds_scored_last_pt():
    import pandas as pd

    from skinseg.results import rules_table

    table = pd.DataFrame(dict(config=["old_same", "old_other", "new", "no_last"], seed=42, epochs=13,
                              best_epoch=[13, 11, 11, 11], val_micro_best_pt=[0.3, 0.3, 0.3, 0.3],
                              val_micro_last_pt=[0.3, 0.28, 0.31, float("nan")],
                              last_pt_thresholds=[None, None, "own", "own"]))
    shown = rules_table(table)
    assert shown["config"].tolist() == ["old_same", "old_other", "new"]  # a run without last.pt: no row
    assert shown["last.pt thresholds"].tolist() == ["own", "best epoch's", "own"]
    assert shown["last - best"].tolist() == pytest.approx([0.0, -0.02, 0.01])


def test_a_run_wall_time_counts_the_parts_its_history_holds():
    import pandas as pd

    from skinseg.results import wall_minutes

    now = pd.DataFrame(dict(epoch_seconds=[60.0, 120.0], val_seconds=[30.0, float("nan")],
                            checkpoint_seconds=[6.0, 24.0]))
    assert wall_minutes(now) == pytest.approx(4.0)  # (60 + 30 + 6 + 120 + 0 + 24) s; an epoch without validation
    # a history written before checkpoint_seconds existed is summed from what it has, not refused
    assert wall_minutes(now.drop(columns="checkpoint_seconds")) == pytest.approx(3.5)


def test_the_decision_rule_is_read_from_a_checkpoint_in_one_place():
    from skinseg.config import Config
    from skinseg.errors import CheckpointError
    from skinseg.predict.decisions import DecisionRule

    state = {"thresholds": [0.3] * 5, "thresholds_per_attribute": [0.6, 0.7, 0.8, 0.9, 0.95], "gates": [0.1] * 5}
    head = Config(aux_head=True, tta="hflip")
    micro = DecisionRule.from_checkpoint(state, head, "x.pt")
    assert (micro.thresholds, micro.gates, micro.tta, micro.operating_point) == ([0.3] * 5, [0.1] * 5, "hflip", "micro")
    each = DecisionRule.from_checkpoint(state, head, "x.pt", "per_attribute", tta="none")
    assert each.thresholds == [0.6, 0.7, 0.8, 0.9, 0.95] and each.gates is None and each.tta == "none"
    assert DecisionRule.from_checkpoint(state, Config(), "x.pt").gates is None  # no presence head, no gates
    untuned = DecisionRule.from_checkpoint(state, head, "x.pt", tuned=False)
    assert untuned.thresholds == [0.5] * 5 and untuned.gates is None and untuned.operating_point == "untuned"
    with pytest.raises(CheckpointError, match="x.pt holds no per-attribute thresholds"):
        DecisionRule.from_checkpoint({**state, "thresholds_per_attribute": None}, head, "x.pt", "per_attribute")
    # that nothing else reads them: tests/test_structure.py
