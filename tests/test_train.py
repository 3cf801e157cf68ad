"""The trainer: overfitting, exact resume, per-batch onecycle, checkpoints, errors, submissions."""
import csv
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (assert_same_weights, crash_and_resume, one_line_error, tiny_config, train_quietly, write_blocks,
                      write_split)
from skinseg.checkpoint import load_checkpoint, load_model_weights
from skinseg.config import Config
from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS
from skinseg.errors import CheckpointError, ConfigError, DataError
from skinseg.models.registry import create_model
from skinseg.runs import RunFolder
from skinseg.train import TrainingError, train


def _cfg(root, tmp_path, **kw):
    """conftest's tiny config with augmentation on and a loss read at every step."""
    return tiny_config(root, tmp_path, **{**dict(aug_rotate_p=0.5, aug_color_p=0.5, channels_last=True,
                                                 log_every=1), **kw})


def _rows(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]


@pytest.mark.slow
def test_overfits_one_small_batch(tmp_path, cache_root):
    root = tmp_path / "overfit"
    write_blocks(root)
    cfg = _cfg(root, tmp_path, epochs=80, val_split="train", train_split="train", batch_size=4, lr=1e-2,
               aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0,
               scheduler="none", tune_thresholds=False, loss={"bce": 1.0, "dice": 1.0})
    summary = train(cfg, progress=False)
    scores = [float(r["val_jaccard"]) for r in _rows(summary["run_dir"], "epoch")]
    assert scores[0] < 0.1 and max(scores[-5:]) > 0.75 and max(scores[-5:]) > 5 * max(scores[:5])


def test_run_folder_contents(small_root, tmp_path, cache_root):
    summary = train(_cfg(small_root, tmp_path, log_every=1), progress=False)
    run = summary["run_dir"]
    assert sorted(os.listdir(run)) == [".lock", "best.pt", "config.yaml", "done.json", "last.pt", "metrics.csv"]
    assert Config.from_yaml(os.path.join(run, "config.yaml")).base_channels == 8
    steps, epochs = _rows(run, "step"), _rows(run, "epoch")
    assert len(steps) == 6 and len(epochs) == 2  # 6 images, batch 2, drop_last -> 3 steps per epoch
    assert {f"val_jaccard_{a}" for a in ATTRIBUTES} <= set(epochs[0])
    state = load_checkpoint(os.path.join(run, "last.pt"))
    assert state["epoch"] == 2 and state["step"] == 6 and len(state["thresholds"]) == 5
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "config", "history", "rng"}


def test_loss_is_read_every_log_every_steps_as_the_mean_since_the_last_read(small_root, tmp_path, cache_root,
                                                                           monkeypatch):
    from skinseg.train.loop import Trainer

    losses = []
    real_step = Trainer.train_step

    def recording_step(self, *args):
        loss = real_step(self, *args)
        losses.append(float(loss))
        return loss

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    summary = train(_cfg(small_root, tmp_path, log_every=2, epochs=2), progress=False)
    steps = _rows(summary["run_dir"], "step")
    # 3 steps per epoch: reads after step 2 (steps 1-2), at the epoch end (step 3), after 4, at the end (6)
    assert [int(r["step"]) for r in steps] == [2, 3, 4, 6]
    windows = [losses[0:2], losses[2:3], losses[3:4], losses[4:6]]
    for row, window in zip(steps, windows):
        assert float(row["loss"]) == pytest.approx(sum(window) / len(window), rel=1e-6)
    epochs = _rows(summary["run_dir"], "epoch")
    assert float(epochs[0]["train_loss"]) == pytest.approx(sum(losses[:3]) / 3, rel=1e-6)


def test_val_every_and_checkpoint_every(small_root, tmp_path, cache_root, monkeypatch):
    from skinseg import checkpoint as ckpt
    from skinseg.train import loop

    writes = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint",
                        lambda state, path: (writes.append((state["epoch"], path.name)), real_save(state, path)))
    summary = train(_cfg(small_root, tmp_path, epochs=5, val_every=2, checkpoint_every=3), progress=False)
    epochs = _rows(summary["run_dir"], "epoch")
    validated = [int(r["epoch"]) for r in epochs if r["val_jaccard"]]
    assert validated == [2, 4, 5]  # every 2nd epoch and the last
    assert all((float(r["val_seconds"]) > 0) == bool(r["val_jaccard"]) for r in epochs)  # time only when validated
    assert all(r["checkpoint_seconds"] != "" for r in epochs)
    lasts = [e for e, name in writes if name == "last.pt"]
    bests = [e for e, name in writes if name == "best.pt"]
    assert lasts == [3, 5] and set(bests) <= {2, 4, 5} and bests[0] == 2
    assert summary["best_epoch"] == bests[-1]
    assert ckpt.load_checkpoint(os.path.join(summary["run_dir"], "last.pt"))["epoch"] == 5


def test_ema_decay_warms_up_with_the_step_count(small_root, tmp_path, cache_root):
    from skinseg.train.optim import ema_model, ema_step

    warm, plain = (ema_model(torch.nn.Linear(2, 2), 0.999, w) for w in (True, False))
    assert warm.get_decay(ema_step(0)) == 0.0 == plain.get_decay(ema_step(0))  # the first average is the model
    assert warm.get_decay(ema_step(100)) == pytest.approx(1 - 101 ** (-2 / 3))  # 0.954
    assert warm.get_decay(ema_step(10**6)) == 0.999 and plain.get_decay(ema_step(5)) == 0.999
    # over 6 steps a warmed-up 0.999 average follows the weights; a plain one stays at the first step's copy
    runs = {}
    for warm in (True, False):
        summary = train(_cfg(small_root, tmp_path, ema=0.999, ema_warmup=warm, run_name=str(warm), epochs=2),
                        progress=False)
        state = load_checkpoint(os.path.join(summary["run_dir"], "last.pt"))
        runs[warm] = max(float((state["model"][k].float() - state["train_model"][k].float()).abs().max())
                         for k in state["model"] if state["model"][k].is_floating_point())
    assert runs[True] < 0.5 * runs[False]


def test_same_seed_same_metrics(small_root, tmp_path, cache_root):
    a = train(_cfg(small_root, tmp_path, run_name="a"), progress=False)
    b = train(_cfg(small_root, tmp_path, run_name="b"), progress=False)
    keys = ["train_loss", "val_loss", "val_jaccard", "val_tuned_jaccard"]
    assert [[r[k] for k in keys] for r in a["history"]] == [[r[k] for k in keys] for r in b["history"]]


def test_resume_is_exact(small_root, tmp_path, cache_root, monkeypatch):
    straight = train(_cfg(small_root, tmp_path, run_name="straight"), progress=False)
    resumed = crash_and_resume(lambda **kw: _cfg(small_root, tmp_path, **kw), tmp_path / "runs", monkeypatch)
    assert resumed["epochs_run"] == 2
    assert_same_weights(straight["run_dir"], resumed["run_dir"])
    assert len(_rows(resumed["run_dir"], "epoch")) == 2 and len(_rows(resumed["run_dir"], "step")) == 6


def test_onecycle_is_stepped_per_batch(small_root, tmp_path, cache_root):
    cfg = _cfg(small_root, tmp_path, scheduler="onecycle", epochs=3, lr=1e-2)
    lrs = [float(r["lr"]) for r in _rows(train(cfg, progress=False)["run_dir"], "step")]
    assert len(lrs) == 9 and len(set(lrs)) == 9  # a new lr after every batch, not every epoch
    ref = torch.optim.lr_scheduler.OneCycleLR(torch.optim.SGD([torch.zeros(1)], lr=1e-2), max_lr=1e-2,
                                              total_steps=9)
    expected = []
    for _ in range(9):
        ref.optimizer.step()
        ref.step()
        expected.append(ref.get_last_lr()[0])
    np.testing.assert_allclose(lrs[:8], expected[:8], rtol=1e-6)
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)


@pytest.mark.parametrize("scheduler", ["reduce_lr", "cosine_restart", "step", "exp"])
def test_other_schedulers_and_warmup_run(small_root, tmp_path, cache_root, scheduler):
    cfg = _cfg(small_root, tmp_path, scheduler=scheduler, warmup_epochs=1, epochs=2, step_size=1, t_max=1)
    lrs = [float(r["lr"]) for r in _rows(train(cfg, progress=False)["run_dir"], "step")]
    assert len(lrs) == 6 and lrs[0] < lrs[1] < lrs[2]  # linear warm-up over the first epoch's 3 steps


def _lr_per_step(scheduler: str, epochs: int = 4, spe: int = 3, scores=None, **kw) -> list[float]:
    """Learning rate after every optimizer step of a real Schedule (warm-up 1 epoch, lr 0.1, gamma 0.5)."""
    from skinseg.train.optim import Schedule

    cfg = Config(scheduler=scheduler, lr=0.1, warmup_epochs=1, epochs=epochs, step_size=1, t_max=1, gamma=0.5,
                 reduce_lr_patience=0, eta_min=1e-6, **kw)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    schedule = Schedule(cfg, opt, spe)
    lrs = []
    for epoch in range(epochs):
        for _ in range(spe):
            opt.step()
            schedule.after_batch()
            lrs.append(opt.param_groups[0]["lr"])
        schedule.after_epoch(0.5 if scores is None else scores[epoch])
    return lrs


def test_step_scheduler_halves_every_step_size_epochs_after_the_warm_up():
    lrs = _lr_per_step("step")
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.1)  # warm-up ends at the base lr
    np.testing.assert_allclose(lrs[3:], [0.1] * 2 + [0.05] * 3 + [0.025] * 3 + [0.0125], rtol=1e-9)


def test_exp_scheduler_decays_by_gamma_per_epoch_after_the_warm_up():
    lrs = _lr_per_step("exp")
    ratios = np.array(lrs[4:]) / np.array(lrs[3:-1])
    np.testing.assert_allclose(ratios, 0.5 ** (1 / 3), rtol=1e-9)  # gamma spread over the epoch's 3 steps
    assert lrs[3 + 3] == pytest.approx(lrs[3] * 0.5)


def test_reduce_lr_halves_when_the_score_stops_improving():
    lrs = _lr_per_step("reduce_lr", scores=[0.1, 0.2, 0.2, 0.2])  # improves, then flat (patience 0)
    assert lrs[2] == pytest.approx(0.1)
    assert lrs[3:6] == pytest.approx([0.1] * 3)  # after epoch 1 (first score): unchanged
    assert lrs[6:9] == pytest.approx([0.1] * 3)  # epoch 2 improved
    assert lrs[9:12] == pytest.approx([0.05] * 3)  # epoch 3 did not: halved


def test_cosine_restart_returns_to_the_base_lr_every_t_max_epochs():
    lrs = _lr_per_step("cosine_restart")
    after = lrs[3:]  # T_0 = 3 steps: 0.1 at every restart, decreasing in between
    assert after[0] < 0.1 and after[2] == pytest.approx(0.1) and after[5] == pytest.approx(0.1)
    assert after[3] > after[4]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop", "adabelief", "adagrad"])
def test_optimizers(optimizer):
    from skinseg.train.optim import build_optimizer

    model = torch.nn.Linear(3, 1)
    opt = build_optimizer(Config(optimizer=optimizer, lr=0.1), model)
    expected = {"adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "adabelief": "AdaBelief",
                "adagrad": "Adagrad"}[optimizer]
    assert type(opt).__name__ == expected and opt.param_groups[0]["lr"] == 0.1


def test_nan_loss_stops_with_a_clear_error_and_keeps_last_good_checkpoint(small_root, tmp_path, cache_root,
                                                                           monkeypatch):
    from skinseg import losses

    real = losses.CombinedLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, target):
        calls["n"] += 1
        value = real(self, output, target)
        return value * float("nan") if calls["n"] == 5 else value  # 2nd epoch, 2nd step

    monkeypatch.setattr(losses.CombinedLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last good checkpoint is .*last\.pt"):
        train(_cfg(small_root, tmp_path, tune_thresholds=False), progress=False)
    run = next((tmp_path / "runs").iterdir())
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_checkpoint_errors(small_root, tmp_path, cache_root):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    first = train(_cfg(small_root, tmp_path, epochs=1), progress=False)
    ckpt = os.path.join(first["run_dir"], "last.pt")
    with pytest.raises(CheckpointError, match=r"model 'unet' but this config trains 'unet-residual'"):
        train(_cfg(small_root, tmp_path, model="unet-residual", load=ckpt), progress=False)
    with pytest.raises(ConfigError, match="was trained with base_channels=8, epochs=1, but this config sets "
                                          "base_channels=16, epochs=2"):
        train(_cfg(small_root, tmp_path, base_channels=16, load=ckpt), progress=False)
    state = load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="do not fit"):  # a config that matches, weights that do not
        load_model_weights(create_model("unet", base_channels=16), state, ckpt)


def test_submission_files_are_named_sized_and_binary(small_root, tmp_path, cache_root):
    from skinseg.cli import main

    run = train(_cfg(small_root, tmp_path, epochs=1, resize_mode="pad"), progress=False)["run_dir"]
    images = small_root / "val" / "ISIC2018_Task1-2_Validation_Input"
    out = tmp_path / "submission"
    assert main(["predict", "--checkpoint", os.path.join(run, "best.pt"), "--images", str(images),
                 "--out", str(out), "--tta", "hflip"]) == 0
    names = sorted(os.listdir(out))
    assert names[0] == ".skinseg-submission"  # the marker that lets a later predict replace this folder
    assert names[1:] == sorted(f"ISIC_{i:07d}_attribute_{a}.png" for i in (100, 101) for a in ATTRIBUTES)
    # scored from the files, the submission gives what evaluate gives with the same thresholds and TTA
    from skinseg.predict.evaluate import evaluate_checkpoint
    from skinseg.scoring import score_submission

    from_files = score_submission(out, small_root, "val").overall
    assert from_files == pytest.approx(evaluate_checkpoint(os.path.join(run, "best.pt"), small_root, "val",
                                                           tta="hflip").scores.overall, abs=1e-9)
    # a second run replaces the submission; a folder with other files is refused, untouched
    assert main(["predict", "--checkpoint", os.path.join(run, "best.pt"), "--images", str(images),
                 "--out", str(out)]) == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    assert main(["predict", "--checkpoint", os.path.join(run, "best.pt"), "--images", str(images),
                 "--out", str(other)]) == 2
    assert os.listdir(other) == ["thesis.tex"]
    for i, size in ((100, (48, 40)), (101, (56, 42))):
        for a in ATTRIBUTES:
            im = Image.open(out / f"ISIC_{i:07d}_attribute_{a}.png")
            assert im.mode == "L" and im.size == size
            assert set(np.unique(np.asarray(im))) <= {0, 255}


def test_evaluate_writes_official_json(small_root, tmp_path, cache_root):
    import json

    from skinseg.cli import main

    run = train(_cfg(small_root, tmp_path, epochs=1), progress=False)["run_dir"]
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", os.path.join(run, "best.pt"), "--data", str(small_root),
                 "--split", "val", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    # the official scorer's shape at the micro operating point, the file scored, both operating points, presence AUC
    assert set(scores) == set(ATTRIBUTES) | {"micro_average", "macro_average", "overall", "split", "checkpoint",
                                             "operating_points", "presence_auc"}
    assert scores["checkpoint"] == os.path.join(run, "best.pt")
    assert set(scores["operating_points"]) == {"micro", "per_attribute"}
    assert scores["overall"] == scores["micro_average"]["jaccard"]
    assert 0.0 <= scores["overall"] <= 1.0 and not math.isnan(scores["overall"])
    best = load_checkpoint(os.path.join(run, "best.pt"))["best"]["score"]
    assert scores["overall"] == pytest.approx(best)  # same tuned thresholds, same split


def test_convnext_with_frozen_encoder_presence_head_and_ema(small_root, tmp_path, cache_root):
    from skinseg.models import model_from_config

    cfg = _cfg(small_root, tmp_path, model="unet-timm-attention", encoder="convnext_atto", epochs=1,
               freeze_encoder=1, aux_head=True, ema=0.9, loss={"focal": 1.0, "tversky": 1.0})
    run = train(cfg, progress=False)["run_dir"]
    state = load_checkpoint(os.path.join(run, "best.pt"))
    torch.manual_seed(cfg.seed)
    fresh = model_from_config(cfg).state_dict()
    trained = state["train_model"]
    enc = [k for k in fresh if k.startswith("encoder.") and fresh[k].is_floating_point()]
    dec = [k for k in fresh if k.startswith("decoder.") and k.endswith("weight")]
    assert enc and all(torch.equal(fresh[k], trained[k]) for k in enc)  # frozen for the only epoch
    assert any(not torch.equal(fresh[k], trained[k]) for k in dec)
    assert len(state["gates"]) == 5 and all(0.0 <= g <= 1.0 for g in state["gates"])
    assert any(not torch.equal(state["model"][k], trained[k]) for k in dec)  # EMA weights differ from raw


def test_cuda_out_of_memory_names_the_batch_size_and_what_to_try(small_root, tmp_path, cache_root, monkeypatch):
    from skinseg.models.base import SegmentationModel

    def oom(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SegmentationModel, "forward", oom)
    with pytest.raises(TrainingError, match=r"out of memory with batch_size 2 .*try batch_size 1 with accumulate 2"):
        train(_cfg(small_root, tmp_path), progress=False)


def test_worker_processes_give_the_same_batches(small_root, tmp_path, cache_root):
    from skinseg.data.dataset import make_loader

    def batches(workers):
        loader = make_loader(_cfg(small_root, tmp_path, num_workers=workers), "train", train=True)
        loader.sampler.set_epoch(3)
        return [b for b in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3  # 6 images, batch 2: the comparison below is never empty
    for a, b in zip(serial, parallel):
        assert a["id"] == b["id"]
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["mask"], b["mask"])


def test_train_or_reuse_reuses_a_finished_run_of_the_same_config_only(small_root, tmp_path, cache_root, capsys):
    from skinseg.train import train_or_reuse

    first = train(_cfg(small_root, tmp_path, epochs=1), progress=False)
    again = train_or_reuse(_cfg(small_root, tmp_path, epochs=1, run_name="other name", num_workers=0))
    assert again["reused"] and again["run_dir"] == first["run_dir"]
    assert "reusing the finished run" in capsys.readouterr().out
    for key in ("best_epoch", "best_score", "thresholds", "gates", "epochs_run"):
        assert again[key] == first[key], key
    changed = train_or_reuse(_cfg(small_root, tmp_path, epochs=1, lr=1e-2), progress=False)
    assert "reused" not in changed and changed["run_dir"] != first["run_dir"]
    wider = train_or_reuse(_cfg(small_root, tmp_path, epochs=1, base_channels=16), progress=False)
    assert "reused" not in wider  # the scratch U-Net takes base_channels: another model


def test_reuse_ignores_options_the_model_does_not_take(small_root, tmp_path, cache_root):
    from skinseg.runs import find_complete_run

    cfg = _cfg(small_root, tmp_path, epochs=1, model="unet-timm-attention", encoder="convnext_atto",
               channels_last=False)
    first = train(cfg, progress=False)
    # unet-timm-attention takes no base_channels: a run with another value is the same run
    assert str(find_complete_run(tmp_path / "runs", cfg.replace(base_channels=64).to_dict())) == first["run_dir"]
    assert find_complete_run(tmp_path / "runs", cfg.replace(encoder="convnext_femto").to_dict()) is None


def test_deep_supervision_trains_its_heads_and_evaluates_like_any_run(small_root, tmp_path, cache_root):
    import json

    from skinseg.cli import main
    from skinseg.models import model_from_config

    cfg = _cfg(small_root, tmp_path, epochs=1, deep_supervision=2, aux_head=True, loss={"bce": 1.0, "log_jaccard": 1.0})
    run = train(cfg, progress=False)["run_dir"]
    state = load_checkpoint(os.path.join(run, "best.pt"))
    torch.manual_seed(cfg.seed)
    fresh = model_from_config(cfg).state_dict()
    heads = [k for k in fresh if k.startswith("deep_heads.")]
    assert len(heads) == 4  # weight and bias of two heads
    assert all(not torch.equal(fresh[k], state["model"][k]) for k in heads if k.endswith("weight"))
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", os.path.join(run, "best.pt"), "--data", str(small_root),
                 "--split", "val", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["overall"] == pytest.approx(state["best"]["score"])


def test_training_on_all_empty_masks_is_refused(tmp_path, cache_root):
    root = tmp_path / "empty"
    write_split(root, "train", [(40, 32)] * 3, seed=1, first_id=1)  # ids 1..3: attribute k when id % (k+2) == 0
    write_split(root, "val", [(40, 32)], seed=2, first_id=100)
    for p in (root / "train" / SPLIT_FOLDERS["train"][1]).glob("*.png"):
        Image.fromarray(np.zeros((32, 40), np.uint8), mode="L").save(p)
    with pytest.raises(DataError, match="every mask of the training split .* is empty"):
        train_quietly(tiny_config(root, tmp_path, epochs=1))


def test_training_onto_a_full_disk_stops_with_one_line(small_root, tmp_path, cache_root, tmpfs, capsys):
    disk = tmpfs("runs", size="96k")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {small_root}\noutput_dir: {disk}\nimage_size: 32\nepochs: 1\nbatch_size: 2\n"
                   "base_channels: 8\n")
    err = one_line_error(capsys, ["train", "--config", str(cfg)])
    assert "disk full while writing checkpoint" in err


def test_nan_outputs_in_validation_stop_with_the_nan_loss_message(small_root, tmp_path, cache_root):
    from skinseg.train.loop import Trainer

    trainer = Trainer(tiny_config(small_root, tmp_path, epochs=2), progress=False)
    trainer.model.register_forward_hook(lambda m, i, out: out if m.training else out * float("nan"))
    with pytest.raises(TrainingError, match=r"validation outputs became NaN or infinite at epoch 1.*"
                                            r"no checkpoint was written yet\. Try a lower lr"):
        trainer.fit()


def test_non_ascii_paths_and_symlinked_data_roots_train(tmp_path, cache_root):
    root = tmp_path / "données ISIC — 2018"
    write_split(root, "train", [(40, 32)] * 4, seed=1)
    write_split(root, "val", [(40, 32)] * 2, seed=2, first_id=100)
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    summary = train_quietly(tiny_config(link, tmp_path / "sortie ü", epochs=1))
    assert RunFolder(summary["run_dir"]).is_complete()
