"""Sweeps run through `skinseg train` processes (runner cli), several at once, and reuse finished runs."""
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skinseg import sweeps
from skinseg.errors import ConfigError


def _sweep(tmp_path, monkeypatch, small_root, files):
    params = tmp_path / "params"
    (params / "sweeps" / "mini").mkdir(parents=True)
    for name, values in files.items():
        (params / "sweeps" / "mini" / f"{name}.yaml").write_text(yaml.safe_dump(values))
    base = params / "base.yaml"
    base.write_text(yaml.safe_dump(dict(data_root=str(small_root), image_size=32, batch_size=2, epochs=1,
                                        base_channels=8, model="unet", channels_last=False)))
    monkeypatch.setattr(sweeps, "PARAMS_DIR", params)
    return base


@pytest.mark.slow
def test_cli_runner_trains_configs_in_parallel_and_reuses_them(small_root, tmp_path, cache_root, monkeypatch):
    base = _sweep(tmp_path, monkeypatch, small_root, {"a_plain": {}, "b_jaccard": {"loss": {"log_jaccard": 1.0}}})
    out = tmp_path / "out"
    table = sweeps.run_sweep("mini", base=base, out_dir=out, runner="cli", jobs=2, progress=False)
    assert sorted(table.index) == ["a_plain", "b_jaccard"] and (table["ended"] == "completed").all()
    assert yaml.safe_load((out / "b_jaccard.yaml").read_text())["loss"] == {"log_jaccard": 1.0}
    log = (out / "a_plain.log").read_text()
    assert "epoch 1:" in log and "\r" not in log and "it/s" not in log  # the epoch line, no progress-bar frames
    # the epoch line names each part of the epoch's time on its own
    assert re.search(r"epoch 1: train loss [\d.]+.*; training [\d.]+s, validation [\d.]+s, checkpoints [\d.]+s", log)
    runs = {name: sorted((out / name / "runs").iterdir()) for name in table.index}
    assert all(len(r) == 1 for r in runs.values())
    again = sweeps.run_sweep("mini", base=base, out_dir=out, runner="cli", jobs=2, progress=False)
    assert again.equals(table)  # nothing retrained
    assert all(sorted((out / name / "runs").iterdir()) == r for name, r in runs.items())


def test_cli_runner_names_the_log_of_a_failed_run(small_root, tmp_path, cache_root, monkeypatch):
    base = _sweep(tmp_path, monkeypatch, small_root, {"bad": {"data_root": str(tmp_path / "nowhere")}})
    with pytest.raises(RuntimeError, match=r"bad\.log"):
        sweeps.run_sweep("mini", base=base, out_dir=tmp_path / "out", runner="cli", progress=False)


def test_a_sweep_file_is_checked_merged_with_its_base(tmp_path):
    """crop_foreground_p needs crop_size: a sweep file may take crop_size from the base, and is named when the
    merged config is wrong (an unknown key too)."""
    f = tmp_path / "fg.yaml"
    f.write_text("crop_foreground_p: 0.33\n")
    merged = sweeps.run_parameters({"image_size": 64, "crop_size": 32}, f, None, tmp_path / "out")
    assert merged["crop_foreground_p"] == 0.33 and merged["crop_size"] == 32 and merged["run_name"] == "fg"
    with pytest.raises(sweeps.ConfigError, match=r"fg\.yaml.*crop_foreground_p: applies to training crops"):
        sweeps.run_parameters({"image_size": 64}, f, None, tmp_path / "out")
    f.write_text("crop_foregound_p: 0.33\n")
    with pytest.raises(sweeps.ConfigError, match=r"fg\.yaml.*crop_foregound_p"):
        sweeps.run_parameters({"image_size": 64, "crop_size": 32}, f, None, tmp_path / "out")


@pytest.mark.slow
def test_a_sweep_run_as_recorded_appends_its_rows_to_results_and_a_changed_one_does_not(
        small_root, tmp_path, cache_root, monkeypatch):
    """A sweep's table below the project is the results_file its record sets: each run of the sweep as recorded
    appends its row; an override of what a run learns keeps its rows in the sweep's own folder. A run found done
    whose row the file lacks gets it."""
    base = _sweep(tmp_path, monkeypatch, small_root, {"a": {}, "b": {"lr": 0.01}})
    target = tmp_path / "results" / "mini.csv"
    (tmp_path / "params" / "sweeps" / "mini" / "_sweep.yaml").write_text(
        f"base: base.yaml\noverrides:\n  results_file: {target}\n")
    assert sweeps.sweep_record("mini")[1] == {"results_file": str(target)}
    changed = sweeps.run_sweep("mini", overrides={"epochs": 2}, out_dir=tmp_path / "out2", runner="cli",
                               progress=False)
    assert not target.exists() and (tmp_path / "out2" / sweeps.COMPARISON_FILE).exists()
    own = pd.read_csv(tmp_path / "out2" / sweeps.OWN_RESULTS_FILE)
    assert sorted(own["config"]) == ["a", "b"] and (own["epochs"] == 2).all() and (changed["epochs"] == 2).all()
    table = sweeps.run_sweep("mini", overrides={"num_workers": 0}, out_dir=tmp_path / "out", runner="cli",
                             progress=False)
    written = pd.read_csv(target).set_index("config")
    assert sorted(written.index) == ["a", "b"] and (written["epochs"] == 1).all()
    assert written.loc["a", "tune_last3"] == pytest.approx(table.loc["a", "last3_val_jaccard"], abs=1e-4)
    assert 0 <= written.loc["b", "val_micro_overall"] <= 1
    # best first by the mean of the last three validations
    assert list(table.index) == list(table.sort_values("last3_val_jaccard", ascending=False).index)
    # a row lost from the file: the next sweep run finds the run done and writes its row again, training nothing
    pd.read_csv(target).query("config == 'a'").to_csv(target, index=False)
    sweeps.run_sweep("mini", out_dir=tmp_path / "out", runner="cli", progress=False)
    again = pd.read_csv(target).set_index("config")
    assert sorted(again.index) == ["a", "b"] and again.loc["b", "run"] == written.loc["b", "run"]
    assert sweeps.as_recorded("mini", base, {"device": "cpu"})
    assert not sweeps.as_recorded("mini", tmp_path / "other.yaml", None)


def test_a_record_with_the_old_table_key_is_refused_with_what_to_write(tmp_path, monkeypatch, small_root):
    _sweep(tmp_path, monkeypatch, small_root, {"a": {}})
    (tmp_path / "params" / "sweeps" / "mini" / "_sweep.yaml").write_text("base: base.yaml\ntable: results/x.csv\n")
    with pytest.raises(sweeps.ConfigError, match=r"_sweep\.yaml.*unknown: table.*`results_file:` under `overrides:`"):
        sweeps.sweep_record("mini")


def test_the_study_status_names_each_sweeps_runs_without_a_row_and_rows_of_other_runs(tmp_path, monkeypatch,
                                                                                      small_root):
    _sweep(tmp_path, monkeypatch, small_root, {"a": {}, "b": {"lr": 0.01}, "c": {"seed": 7}})
    target = tmp_path / "results" / "mini.csv"
    target.parent.mkdir()
    (tmp_path / "params" / "sweeps" / "mini" / "_sweep.yaml").write_text(
        f"base: base.yaml\noverrides:\n  results_file: {target}\n")
    (tmp_path / "params" / "sweeps" / "plain").mkdir()  # a sweep without a results file is no part of the study
    (tmp_path / "params" / "sweeps" / "plain" / "x.yaml").write_text("lr: 0.01\n")
    (tmp_path / "params" / "sweeps" / "plain" / "_sweep.yaml").write_text("base: base.yaml\n")
    row = sweeps.sweep_status().set_index("sweep").loc["mini"]  # no file yet: nothing written
    assert (row["runs"], row["rows written"], row["not run yet"]) == (3, 0, "a b c")
    # rows are matched by the run's config (its sweep file); a row of a run trained on its own is named apart
    pd.DataFrame({"run": ["20261202-010101_unet_b", "20261202-020202_unet_a_seed3"]}).to_csv(target, index=False)
    status = sweeps.sweep_status()
    assert list(status["sweep"]) == ["mini"]
    row = status.iloc[0]
    assert (row["rows written"], row["not run yet"], row["rows of other runs"]) == (1, "a c", "a_seed3")
    assert row["base"] == "base.yaml" and row["table"] == str(target)


def test_the_studys_sweeps_share_one_dev_split_and_pin_the_recipe_they_ran_on(tmp_path):
    """Runs of one study compare on dev only on one hold-out: every real-data sweep run resolves to dev seed 42,
    but the one recorded as run on another; and the sweeps on the CPU recipe keep the values their rows ran with
    (no EMA, chosen by the dev peak) after the recipe moved to EMA at its final checkpoint."""
    from skinseg.config import Config
    from skinseg.paths import PARAMS_DIR

    other = set()
    for folder in sorted((PARAMS_DIR / "sweeps").glob("isic*")):
        base, overrides = sweeps.sweep_record(folder.name)
        for member in sweeps.sweep_files(folder.name):
            params = sweeps.run_parameters({**sweeps.load_params(base), **overrides}, member, None, tmp_path)
            if Config.from_dict(params, source=str(member)).holdout_seed != 42:
                other.add(f"{folder.name}/{member.stem}")
            if base.name == "isic_cpu.yaml" and folder.name != "isic_cpu_ema":
                assert params["ema"] is None and params["checkpoint_rule"] == "best", member
    assert other == {"isic_cpu_rare/d_rare_sampler_17ep_seed7"}
    recipe = sweeps.load_params(PARAMS_DIR / "isic_cpu.yaml")
    assert (recipe["ema"], recipe["checkpoint_rule"], recipe["dev_seed"]) == (0.998, "last", 42)


def test_the_pretrained_sweeps_reference_is_the_architecture_comparisons_recipe_run(tmp_path):
    """docs/experiments.md compares isic_cpu_pretrained's runs with isic_cpu_architectures' d_convnext_lite0 in
    place of c_deep_supervision: the two merge to one config (all but where the run and its row go)."""
    def merged(sweep: str, stem: str) -> dict:
        return {k: v for k, v in _member(sweep, stem, tmp_path).items() if k != "results_file"}

    reference, member = merged("isic_cpu_architectures", "d_convnext_lite0"), merged("isic_cpu_pretrained",
                                                                                       "c_deep_supervision")
    assert reference == member
    assert (member["deep_supervision"], member["ema"], member["checkpoint_rule"], member["seed"]) == (3, None, "best",
                                                                                                      42)
    # and a run of that sweep differs from it in what its file says
    changed = merged("isic_cpu_pretrained", "g_log_jaccard")
    assert {k for k in changed if changed[k] != reference.get(k)} == {"loss"}


def _member(sweep: str, stem: str, out: Path) -> dict:
    """A sweep run's merged config as recorded, without where the run goes."""
    base, overrides = sweeps.sweep_record(sweep)
    [member] = [f for f in sweeps.sweep_files(sweep) if f.stem == stem]
    params = sweeps.run_parameters({**sweeps.load_params(base), **overrides}, member, None, out)
    return {k: v for k, v in params.items() if k not in {"output_dir", "run_name"}}


def _pretrained_member(stem: str, out: Path) -> dict:
    return _member("isic_cpu_pretrained", stem, out)


def _changed(a: dict, b: dict) -> set:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_the_pretrained_sweeps_runs_before_deep_supervision_have_a_control_of_their_own(tmp_path):
    """a_encoder_lr03 and b_upscale384 pin deep_supervision 0; i_no_deep_supervision is that base alone, so each
    differs from it in what its own file changes and the control differs from c_deep_supervision in that one key."""
    control = _pretrained_member("i_no_deep_supervision", tmp_path)
    assert control["deep_supervision"] == 0
    assert _changed(control, _pretrained_member("c_deep_supervision", tmp_path)) == {"deep_supervision"}
    assert _changed(control, _pretrained_member("a_encoder_lr03", tmp_path)) == {"encoder_lr_mult"}
    assert _changed(control, _pretrained_member("b_upscale384", tmp_path)) == {"image_size", "val_every"}


def test_the_encoder_learning_rate_runs_again_on_the_deep_supervision_reference(tmp_path):
    """j_encoder_lr03_ds is a_encoder_lr03's change on c_deep_supervision (the reference of d-h): it differs from c
    in encoder_lr_mult alone, and from a_encoder_lr03 in deep supervision alone; k_encoder_lr03_ds_seed7 is its
    second seed on the same dev split."""
    member = _pretrained_member("j_encoder_lr03_ds", tmp_path)
    assert (member["encoder_lr_mult"], member["deep_supervision"]) == (0.3, 3)
    assert _changed(_pretrained_member("c_deep_supervision", tmp_path), member) == {"encoder_lr_mult"}
    assert _changed(_pretrained_member("a_encoder_lr03", tmp_path), member) == {"deep_supervision"}
    second_seed = _pretrained_member("k_encoder_lr03_ds_seed7", tmp_path)
    assert _changed(member, second_seed) == {"seed"}
    assert (second_seed["seed"], second_seed["dev_seed"]) == (7, 42)


def test_the_epochs_question_compares_runs_that_differ_in_epochs_alone(tmp_path):
    """isic_cpu_ema's 17-epoch runs are the recipe with 17 epochs: c_ema998_17ep_seed42 differs from
    params/isic_cpu.yaml (the real report's run, its same-day control) in epochs alone, d_ema998_17ep_seed7 from
    its same-day control e_ema998_seed7_same_day likewise, and that control is b_ema998_seed7 again."""
    from skinseg.config import Config
    from skinseg.paths import PARAMS_DIR

    recipe = Config.from_dict(sweeps.load_params(PARAMS_DIR / "isic_cpu.yaml")).to_dict()
    recipe = {k: v for k, v in recipe.items() if k not in {"output_dir", "run_name"}}
    long42 = _member("isic_cpu_ema", "c_ema998_17ep_seed42", tmp_path)
    assert (long42["epochs"], recipe["epochs"]) == (17, 13)
    assert _changed(recipe, long42) == {"epochs", "results_file"}
    assert _changed(recipe, _member("isic_cpu_ema", "a_ema998_seed42", tmp_path)) == {"results_file"}
    control7 = _member("isic_cpu_ema", "e_ema998_seed7_same_day", tmp_path)
    assert _changed(control7, _member("isic_cpu_ema", "d_ema998_17ep_seed7", tmp_path)) == {"epochs"}
    assert _changed(control7, _member("isic_cpu_ema", "b_ema998_seed7", tmp_path)) == set()
    assert (control7["seed"], control7["dev_seed"]) == (7, 42)


@pytest.mark.parametrize("bad, words", [({"epochs": "abc"}, "--set: epochs='abc'"),
                                        ({"out_dir": "x"}, "--set: unknown key 'out_dir'"),
                                        ({"output_dir": "x"}, "--set output_dir")])
def test_a_sweep_refused_for_its_overrides_makes_no_folder(bad, words, tmp_path):
    """Every config of the sweep is checked with ``--set`` before its --out folder is made: a refusal names
    ``--set`` (the sweep's files are valid) and leaves nothing behind."""
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError) as caught:
        sweeps.run_sweep("architectures", overrides=bad, out_dir=out, progress=False)
    assert str(caught.value).startswith(words), caught.value
    assert not out.exists()
