"""The real-data recipes (params/isic*.yaml) run end to end through `skinseg train`, shrunk to a tiny dataset.

Only the data, length and size are overridden; everything else (model, crops, presence head, EMA, losses,
schedule, dev hold-out, TTA) is the recipe's own, so a recipe that no longer parses or trains fails here.
"""
import json

import pytest
import yaml

from skinseg.cli import main
from skinseg.paths import PARAMS_DIR
from skinseg.checkpoint import load_checkpoint
from skinseg.runs import best_checkpoint

from conftest import write_split

SHRINK = {"isic_cpu.yaml": ["image_size=64", "crop_size=32"], "isic_cpu_scratch.yaml": ["image_size=64", "crop_size=32"],
          "isic_cpu_128.yaml": ["image_size=32"], "isic.yaml": ["image_size=64", "num_workers=0"],
          "isic_scratch.yaml": ["image_size=64", "encoder=convnext_atto", "num_workers=0"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHRINK))
def test_recipe_trains_through_the_cli(name, tmp_path, cache_root, capsys):
    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 12, seed=1)
    write_split(root, "val", [(48, 40)] * 2, seed=2, first_id=100)
    recipe = yaml.safe_load((PARAMS_DIR / name).read_text())
    sets = [f"data_root={root}", "epochs=1", "batch_size=2", f"output_dir={tmp_path / 'runs'}", "amp=off",
            *SHRINK[name]]
    assert main(["train", "--config", str(PARAMS_DIR / name), *sum((["--set", s] for s in sets), [])]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index('{\n  "run_dir"'):])
    state = load_checkpoint(best_checkpoint(summary["run_dir"]))
    kept = {k: v for k, v in recipe.items()
            if k not in {"data_root", "epochs", "batch_size", "amp", "num_workers", "encoder", "image_size",
                         "crop_size"}}
    assert {k: state["config"][k] for k in kept} == kept
    assert state["config"]["val_split"] == "dev" and len(summary["thresholds"]) == 5


@pytest.mark.slow
def test_gpu_recipe_runs_as_a_papermill_run_of_03_train(tmp_path, cache_root):
    import papermill as pm

    from skinseg.paths import NOTEBOOKS_DIR

    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 12, seed=1)
    write_split(root, "val", [(48, 40)] * 2, seed=2, first_id=100)
    params = {**yaml.safe_load((PARAMS_DIR / "isic.yaml").read_text()), "data_root": str(root), "epochs": 1,
              "batch_size": 2, "image_size": 64, "num_workers": 0, "amp": "off",
              "output_dir": str(tmp_path / "runs"), "run_name": "gpu_recipe"}
    pm.execute_notebook(str(NOTEBOOKS_DIR / "03_train.ipynb"), str(tmp_path / "03_train.ipynb"), parameters=params,
                        cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    (run,) = (tmp_path / "runs").iterdir()
    cfg = load_checkpoint(best_checkpoint(run))["config"]
    assert cfg["model"] == "unet-timm-attention" and cfg["encoder"] == "tf_efficientnet_lite2"
    assert cfg["pretrained"] and cfg["mean"] == [0.5, 0.5, 0.5]
