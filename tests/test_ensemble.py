"""Ensembles: averaged probabilities across input sizes, thresholds tuned again, evaluate/predict like a checkpoint."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skinseg.config import Config, ConfigError
from skinseg.predict.ensemble import ModelEnsemble, ensemble_config
from skinseg.train import train
from skinseg.checkpoint import load_checkpoint

from conftest import write_split


def test_members_see_their_own_input_size_and_probabilities_are_averaged():
    torch.manual_seed(0)
    a, b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
    ens = ModelEnsemble([a, b], sizes=[32, 16], size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        small = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
        pb = torch.sigmoid(F.interpolate(b(small), size=(32, 32), mode="bilinear", align_corners=False))
        expected = (torch.sigmoid(a(x)) + pb) / 2
        torch.testing.assert_close(torch.sigmoid(ens(x)), expected, atol=1e-5, rtol=1e-5)
        # one member twice is that member
        twice = ModelEnsemble([a, a], sizes=[32, 32], size=32)
        torch.testing.assert_close(torch.sigmoid(twice(x)), torch.sigmoid(a(x)), atol=1e-5, rtol=1e-5)


def test_members_must_agree_on_data_settings_and_dev_holdout():
    base = Config(dev_fraction=0.2, image_size=64)
    cfg = ensemble_config([base, base.replace(image_size=128, crop_size=64, model="unet-residual")], "dev")
    assert cfg.image_size == 128 and cfg.crop_size is None and cfg.model == "unet-residual"
    with pytest.raises(ConfigError, match="resize_mode"):
        ensemble_config([base, base.replace(resize_mode="pad")], "val")
    with pytest.raises(ConfigError, match=r"same dev split.*--tune-split val"):
        ensemble_config([base, base.replace(seed=7)], "dev")
    with pytest.raises(ConfigError, match="same dev split"):
        ensemble_config([Config(), Config()], "dev")
    assert ensemble_config([base, base.replace(seed=7)], "val").seed == 42
    # other seeds over one pinned dev hold-out can be tuned on dev
    assert ensemble_config([base, base.replace(seed=7, dev_seed=42)], "dev").holdout_seed == 42


@pytest.fixture
def two_runs(tmp_path, cache_root):
    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 6 + [(40, 48)] * 4, seed=1)
    write_split(root, "val", [(48, 40), (56, 42)], seed=2, first_id=100)
    common = dict(data_root=str(root), batch_size=2, epochs=1, base_channels=8, dev_fraction=0.3,
                  val_split="dev", output_dir=str(tmp_path / "runs"), channels_last=False)
    runs = [train(Config(image_size=32, run_name="a", **common), progress=False)["run_dir"],
            train(Config(image_size=64, crop_size=32, model="unet-residual", run_name="b", **common),
                  progress=False)["run_dir"]]
    return root, [os.path.join(r, "best.pt") for r in runs]


@pytest.mark.slow
def test_ensemble_file_evaluates_and_predicts_like_a_checkpoint(two_runs, tmp_path, capsys):
    from skinseg.cli import main
    from skinseg.predict.evaluate import evaluate_checkpoint
    from skinseg.scoring import score_submission

    root, checkpoints = two_runs
    out = tmp_path / "ens.pt"
    assert main(["ensemble", "--checkpoint", *checkpoints, "--data", str(root), "--out", str(out)]) == 0
    assert '"tune_split": "dev"' in capsys.readouterr().out
    state = load_checkpoint(out)
    assert state["kind"] == "ensemble" and len(state["members"]) == 2 and state["config"]["image_size"] == 64
    # scoring the dev split with the saved thresholds gives the tuned score the ensemble was built with
    dev = evaluate_checkpoint(out, root, "dev").scores.overall
    assert dev == pytest.approx(state["best"]["score"], abs=1e-9)
    assert dev >= state["best"]["score_at_0.5"] - 1e-9
    # the file does not depend on the member files
    for c in checkpoints:
        os.remove(c)
    sub = tmp_path / "submission"
    images = root / "val" / "ISIC2018_Task1-2_Validation_Input"
    assert main(["predict", "--checkpoint", str(out), "--images", str(images), "--out", str(sub)]) == 0
    assert len([n for n in os.listdir(sub) if not n.startswith(".")]) == 10
    assert score_submission(sub, root, "val").overall == pytest.approx(
        evaluate_checkpoint(out, root, "val").scores.overall, abs=1e-9)


@pytest.mark.slow
def test_ensemble_refuses_one_member_an_ensemble_member_and_a_foreign_holdout(two_runs, tmp_path, capsys):
    from skinseg.cli import main

    root, checkpoints = two_runs
    assert main(["ensemble", "--checkpoint", checkpoints[0], "--data", str(root), "--out", str(tmp_path / "e.pt")]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
    assert main(["ensemble", "--checkpoint", *checkpoints, "--data", str(root), "--out", str(tmp_path / "e.pt")]) == 0
    assert main(["ensemble", "--checkpoint", str(tmp_path / "e.pt"), checkpoints[0], "--data", str(root),
                 "--out", str(tmp_path / "f.pt")]) == 2
    assert "itself an ensemble" in capsys.readouterr().err
    other = train(Config.from_dict({**load_checkpoint(checkpoints[0])["config"], "seed": 3, "run_name": "c"}),
                  progress=False)["run_dir"]
    assert main(["ensemble", "--checkpoint", checkpoints[0], os.path.join(other, "best.pt"), "--data", str(root),
                 "--out", str(tmp_path / "g.pt")]) == 2
    assert "same dev split" in capsys.readouterr().err and not (tmp_path / "g.pt").exists()
