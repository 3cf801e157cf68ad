"""Sweeps run through `skinseg train` processes (runner cli), several at once, and reuse finished runs."""
import pandas as pd
import pytest
import yaml

from skinseg import sweeps


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
def test_a_sweep_run_as_recorded_writes_its_table_to_results_and_a_changed_one_does_not(
        small_root, tmp_path, cache_root, monkeypatch):
    """The comparison table goes to the record's `table:` (below the project) only when the sweep ran with the
    values its files pin; an override of what a run learns keeps it in the sweep's own folder."""
    base = _sweep(tmp_path, monkeypatch, small_root, {"a": {}, "b": {"lr": 0.01}})
    (tmp_path / "params" / "sweeps" / "mini" / "_sweep.yaml").write_text(
        f"base: base.yaml\ntable: {tmp_path / 'results' / 'sweep_mini.csv'}\n")
    target = tmp_path / "results" / "sweep_mini.csv"
    changed = sweeps.run_sweep("mini", overrides={"epochs": 2}, out_dir=tmp_path / "out2", runner="cli",
                               progress=False)
    assert not target.exists() and (tmp_path / "out2" / sweeps.COMPARISON_FILE).exists()
    assert (changed["epochs"] == 2).all()
    table = sweeps.run_sweep("mini", overrides={"num_workers": 0}, out_dir=tmp_path / "out", runner="cli",
                             progress=False)
    written = pd.read_csv(target, index_col="config")
    assert sorted(written.index) == ["a", "b"]
    assert written.loc["a", "last3_val_jaccard"] == pytest.approx(table.loc["a", "last3_val_jaccard"], abs=1e-4)
    # best first by the mean of the last three validations
    assert list(table.index) == list(table.sort_values("last3_val_jaccard", ascending=False).index)
    assert sweeps.as_recorded("mini", base, {"device": "cpu"})
    assert not sweeps.as_recorded("mini", tmp_path / "other.yaml", None)
