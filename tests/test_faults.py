"""The fault suite: what a user meets — bad values, bad files, kills, a full disk, read-only folders — is survived
with a one-line error naming the file or key and with nothing lost or half-written.

Kills run training in a child process and SIGKILL it (at seeded random times, or inside a checkpoint write);
resuming must end bit-identical to an uninterrupted run. Disk-full and read-only cases mount a small tmpfs,
and are skipped (with the reason) where the test cannot mount one.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error as _one_line_error, tiny_config as _cfg, write_blocks, write_split
from skinseg.checkpoint import checkpoint_epoch, load_checkpoint, save_checkpoint
from skinseg.cli import main
from skinseg.config import Config
from skinseg.data.cache import build_cache
from skinseg.data.dataset import ISICDataset
from skinseg.data.augment import eval_transform
from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS, get_split, mask_name
from skinseg.errors import CheckpointError, ConfigError, DataError, DiskFullError, TrainingError
from skinseg.runs import RunFolder, latest_run

PROJ = Path(__file__).resolve().parents[1]


def _train(cfg):
    from skinseg.train import train

    return train(cfg, progress=False)


# ---- 1. caches of two data roots ------------------------------------------------------------
def test_a_second_data_root_at_the_same_size_leaves_the_first_roots_live_cache_alone(tmp_path, cache_root):
    a, b = tmp_path / "a", tmp_path / "b"
    write_split(a, "train", [(40, 32)] * 3, seed=1)
    write_split(b, "train", [(40, 32)] * 3, seed=7, first_id=10)
    cache_a = build_cache(get_split(a, "train"), size=32, progress=False)
    live = ISICDataset(cache_a, eval_transform(Config()))
    before = live[0]["mask"].clone()
    assert before.sum() > 0
    cache_b = build_cache(get_split(b, "train"), size=32, progress=False)
    assert cache_b.path != cache_a.path and cache_a.path.exists()
    assert sorted(p.name.split("-")[3] for p in cache_root.iterdir()) == sorted(
        {cache_a.path.name.split("-")[3], cache_b.path.name.split("-")[3]})  # two sources, two keys
    sample = live[0]
    assert "mask" in sample and torch.equal(sample["mask"], before)
    # a rebuild of root a (its files changed) replaces only a's cache; the open dataset keeps reading its mapping
    img = get_split(a, "train").image_path("ISIC_0000000")
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(img)
    rebuilt = build_cache(get_split(a, "train"), size=32, progress=False)
    assert rebuilt.path != cache_a.path and not cache_a.path.exists() and cache_b.path.exists()
    assert torch.equal(live[0]["mask"], before)


# ---- 2. early stopping ends a run ----------------------------------------------------------
def test_early_stop_writes_the_end_marker_and_sweeps_count_the_run(small_root, tmp_path, cache_root):
    from skinseg.runs import find_complete_run
    from skinseg.sweeps import curves

    cfg = _cfg(small_root, tmp_path / "sweep" / "a", epochs=8, patience=1, lr=1e-12, scheduler="none",
               tune_thresholds=False, aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0,
               aug_color_p=0.0)
    cfg = cfg.replace(output_dir=str(tmp_path / "sweep" / "a" / "runs"))
    summary = _train(cfg)
    assert summary["epochs_run"] == 2  # no improvement at epoch 2 with patience 1
    run = RunFolder(summary["run_dir"])
    assert run.end() == {"reason": "early_stop", "epochs_run": 2, "best_epoch": 1,
                         "best_score": pytest.approx(summary["best_score"]), "checkpoint_rule": "best",
                         "last3_mean": pytest.approx(run.metrics()[1]["val_jaccard"].mean())}  # untuned run
    assert run.is_complete()
    assert find_complete_run(Path(cfg.output_dir), cfg.to_dict()) == run.path
    assert list(curves(tmp_path / "sweep")) == ["a"]


def test_a_run_killed_while_writing_its_final_checkpoint_is_not_complete(small_root, tmp_path, cache_root):
    """metrics.csv logs the final epoch before last.pt is written: a kill in between leaves every epoch logged."""
    summary = _train(_cfg(small_root, tmp_path, epochs=2))
    run = RunFolder(summary["run_dir"])
    assert run.is_complete()
    run.end_marker.unlink()
    assert run.is_complete()  # as a run from before the end marker existed: its last.pt holds the final epoch
    state = load_checkpoint(run.last)
    save_checkpoint({**{k: v for k, v in state.items() if k != "format"}, "epoch": 1}, run.last)
    assert len(run.metrics()[1]) == 2 and not run.is_complete()


# ---- 3, 4, 10. config values ----------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("t_max", 2.5), ("dev_seed", 1.9), ("patience", 1.5), ("epochs", 2.5),
                                        ("epochs", True), ("batch_size", False), ("lr", float("nan")),
                                        ("lr", float("inf")), ("grad_clip", float("nan")), ("mean", [0.5, "x", 0.5]),
                                        ("loss", {"bce": True})])
def test_bad_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        Config.from_dict({key: value})


def test_whole_floats_and_numeric_strings_still_read_as_integers():
    cfg = Config.from_dict({"t_max": 3.0, "dev_seed": "7", "epochs": 4.0})
    assert (cfg.t_max, cfg.dev_seed, cfg.epochs) == (3, 7, 4)


def test_yaml_nan_and_booleans_are_refused_from_a_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: .nan\n")
    assert "lr" in _one_line_error(capsys, ["train", "--config", str(cfg)])
    cfg.write_text("epochs: true\n")
    assert "epochs" in _one_line_error(capsys, ["train", "--config", str(cfg)])


def test_classes_other_than_five_is_refused_at_config_time():
    with pytest.raises(ConfigError, match="classes: 3 is not supported.*must be 5"):
        Config(classes=3)


# ---- 5. device and AMP on a machine without a GPU -------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("overrides, words", [(["device=cuda"], "no CUDA GPU"),
                                             (["amp=fp16", "device=cpu"], "fp16 needs a CUDA GPU")])
def test_no_gpu_is_a_one_line_error(small_root, tmp_path, cache_root, capsys, overrides, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {small_root}\noutput_dir: {tmp_path / 'runs'}\nimage_size: 32\nepochs: 1\n")
    err = _one_line_error(capsys, ["train", "--config", str(cfg)] + [a for o in overrides for a in ("--set", o)])
    assert words in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- 6. predict never deletes what it did not write -----------------------------------------
@pytest.fixture
def tiny_run(small_root, tmp_path, cache_root):
    return Path(_train(_cfg(small_root, tmp_path, epochs=1))["run_dir"])


def test_predict_refuses_ground_truth_and_foreign_folders_and_replaces_its_own(small_root, tmp_path, tiny_run,
                                                                                capsys):
    best = str(RunFolder(tiny_run).best)
    images = small_root / "val" / SPLIT_FOLDERS["val"][0]
    truth = small_root / "val" / SPLIT_FOLDERS["val"][1]
    before = sorted(p.name for p in truth.iterdir())
    for out in (truth, truth / "sub"):
        err = _one_line_error(capsys, ["predict", "--checkpoint", best, "--images", str(images), "--out", str(out)])
        assert "ground-truth folder" in err
    assert sorted(p.name for p in truth.iterdir()) == before
    # a folder whose files all look like masks, but that predict did not write
    foreign = tmp_path / "masks"
    foreign.mkdir()
    (foreign / mask_name("ISIC_0000100", "streaks")).write_bytes(b"not mine")
    err = _one_line_error(capsys, ["predict", "--checkpoint", best, "--images", str(images), "--out", str(foreign)])
    assert "holds files that skinseg did not write there (no .skinseg-submission marker)" in err
    assert (foreign / mask_name("ISIC_0000100", "streaks")).exists()
    # its own folder is replaced, whole
    out = tmp_path / "submission"
    assert main(["predict", "--checkpoint", best, "--images", str(images), "--out", str(out)]) == 0
    (out / mask_name("ISIC_0000999", "streaks")).write_bytes(b"stale")
    assert main(["predict", "--checkpoint", best, "--images", str(images), "--out", str(out)]) == 0
    assert not (out / mask_name("ISIC_0000999", "streaks")).exists() and len(list(out.glob("*.png"))) == 10
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    # scoring the ground truth against itself is refused
    err = _one_line_error(capsys, ["score", "--submission", str(truth), "--data", str(small_root), "--split", "val"])
    assert "ground-truth folder" in err


# ---- 7. kills between and during checkpoint writes -------------------------------------------
def test_a_kill_between_last_and_best_is_repaired_on_resume(small_root, tmp_path, cache_root, monkeypatch):
    """last.pt records a new best epoch whose best.pt write never happened: resume rewrites best.pt from last.pt."""
    import skinseg.train.loop as loop

    real_save = loop.save_checkpoint
    calls = []

    def killed_at_a_later_best(state, path):
        calls.append(state["epoch"])
        if Path(path) == RunFolder(Path(path).parent).best and state["epoch"] >= 2:
            raise KeyboardInterrupt  # the process dies between last.pt and best.pt
        return real_save(state, path)

    root = tmp_path / "blocks"
    write_blocks(root, n=8)  # learnable: the score keeps improving
    monkeypatch.setattr(loop, "save_checkpoint", killed_at_a_later_best)
    cfg = _cfg(root, tmp_path, epochs=6, lr=1e-2, val_split="train", batch_size=4, aug_flip_p=0.0,
               aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
    with pytest.raises(KeyboardInterrupt):  # a later epoch improved the score: the kill landed
        _train(cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    run = RunFolder(latest_run(tmp_path / "runs"))
    last = load_checkpoint(run.last)
    assert last["best"]["epoch"] == last["epoch"] >= 2
    assert checkpoint_epoch(run.best) < last["epoch"]  # stale: the state the issue describes
    stale_tmp = run.path / ".best.pt.tmp-999999999"
    stale_tmp.write_bytes(b"x" * 1000)  # what a kill -9 inside a write leaves
    summary = _train(cfg.replace(load=str(run.last)))
    assert not stale_tmp.exists()
    best = load_checkpoint(run.best)
    assert best["epoch"] == summary["best_epoch"] == best["best"]["epoch"]
    assert best["best"]["score"] == pytest.approx(summary["best_score"])


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
    import torch
    torch.set_num_threads(1)
    cfg_values, kill = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    if kill:
        import builtins
        import skinseg.files as ck  # every checkpoint write goes through skinseg.files.write_atomic
        writes = {"n": 0}
        real_open, real_replace = builtins.open, os.replace

        class HalfWriter:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
            def write(self, data):
                self.f.write(bytes(data)[: len(data) // 2]); self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            def flush(self): self.f.flush()
            def fileno(self): return self.f.fileno()

        def open_(path, mode="r", *a, **k):
            f = real_open(path, mode, *a, **k)
            if ".pt.tmp-" in str(path) and "w" in mode:
                writes["n"] += 1
                if writes["n"] == kill["write"] and kill["point"] == "mid_write":
                    return HalfWriter(f)
            return f

        def replace_(src, dst):
            if str(dst).endswith(".pt") and writes["n"] == kill["write"] and kill["point"] == "before_rename":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
            if str(dst).endswith(".pt") and writes["n"] == kill["write"] and kill["point"] == "after_rename":
                os.kill(os.getpid(), signal.SIGKILL)

        ck.open = open_
        ck.os.replace = replace_
    from skinseg.config import Config
    from skinseg.train import train
    summary = train(Config.from_dict(cfg_values), progress=False)
    print(json.dumps({"run_dir": summary["run_dir"], "best_epoch": summary["best_epoch"]}))
""")


def _child(cfg: Config, kill: dict | None = None, kill_after: float | None = None, watch: Path | None = None):
    """Run training in a child process; SIGKILL it ``kill_after`` s after a run folder appears below ``watch``.
    Returns the exit code."""
    env = {**os.environ, "PYTHONPATH": str(PROJ)}
    p = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), json.dumps(kill)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and not list(watch.glob("*/metrics.csv")):
            time.sleep(0.02)
        time.sleep(kill_after)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode in (0, -signal.SIGKILL), err[-2000:]
    return p.returncode


def _every_checkpoint_loads(run_dir: Path) -> None:
    for pt in run_dir.glob("*.pt"):
        load_checkpoint(pt)  # raises on a half-written file


def _weights(path: Path) -> dict:
    state = load_checkpoint(path)
    return {**state["model"], **{f"train/{k}": v for k, v in (state["train_model"] or {}).items()}}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _resume_until_done(cfg: Config, out: Path, **first_kill) -> RunFolder:
    """Start a run (with the given kill), then resume from last.pt until it completes; a kill before the first
    last.pt means a fresh start."""
    code = _child(cfg, **first_kill, watch=out)
    # the first child must have been killed (inside a checkpoint write, or at its random time), or the test
    # proves nothing
    assert code == -signal.SIGKILL, f"the child finished without being killed ({first_kill})"
    for _ in range(6):
        runs = sorted(out.iterdir()) if out.exists() else []
        run = RunFolder(runs[-1]) if runs else None
        if run and run.is_complete():
            return run
        if run and run.last.exists():
            _every_checkpoint_loads(run.path)
            _child(cfg.replace(load=str(run.last)))
        else:
            if run:
                import shutil

                shutil.rmtree(run.path)
            _child(cfg)
    raise AssertionError("the run did not complete after six resumes")


@pytest.fixture
def reference(small_root, tmp_path, cache_root):
    """An uninterrupted run in a child process (same thread count as the killed ones), with EMA, gradient
    accumulation and warm-up: all of their state must survive a kill."""
    cfg = _cfg(small_root, tmp_path, epochs=4, lr=1e-2, output_dir=str(tmp_path / "reference"), run_name="x",
               ema=0.9, accumulate=2, warmup_epochs=1.0)
    assert _child(cfg) == 0
    run = RunFolder(latest_run(tmp_path / "reference"))
    return cfg, run


@pytest.mark.slow
def test_kills_at_random_times_then_resume_end_bit_identical(reference, tmp_path):
    cfg, ref = reference
    rng = random.Random(2018)
    # the reference's training time, from its log's creation to its end marker: kills land inside it
    seconds = ref.end_marker.stat().st_mtime - (ref.path / "metrics.csv").stat().st_ctime
    for trial in range(3):
        out = tmp_path / f"killed{trial}"
        run = _resume_until_done(cfg.replace(output_dir=str(out)), out, kill_after=rng.uniform(0.05, 0.7) * seconds)
        assert _same(_weights(run.last), _weights(ref.last))
        assert _same(_weights(run.best), _weights(ref.best))
        assert not list(run.path.glob(".*.tmp-*"))
        assert len(run.metrics()[1]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid_write", "before_rename", "after_rename"])
def test_kills_inside_checkpoint_writes_leave_loadable_files_and_resume_bit_identical(reference, tmp_path, point):
    cfg, ref = reference
    write = random.Random(point).randint(2, 6)  # a seeded choice among the run's checkpoint writes
    out = tmp_path / point
    run = _resume_until_done(cfg.replace(output_dir=str(out)), out, kill={"write": write, "point": point})
    _every_checkpoint_loads(run.path)
    assert _same(_weights(run.last), _weights(ref.last))
    assert _same(_weights(run.best), _weights(ref.best))
    assert checkpoint_epoch(run.best) == load_checkpoint(run.last)["best"]["epoch"]
    assert not list(run.path.glob(".*.tmp-*"))
    # the log holds every epoch once, and the steps of the uninterrupted run (a kill between the checkpoint writes
    # and the epoch's row loses no row)
    assert run.metrics()[1]["epoch"].tolist() == [1, 2, 3, 4]
    assert run.metrics()[0]["step"].tolist() == ref.metrics()[0]["step"].tolist()


# ---- 8. masks saved as 0/1 -------------------------------------------------------------------
def _zero_one_masks(root: Path, split: str) -> Path:
    gt = root / split / SPLIT_FOLDERS[split][1]
    for p in gt.glob("*.png"):
        arr = np.asarray(Image.open(p))
        Image.fromarray((arr > 127).astype(np.uint8), mode="L").save(p)
    return gt


def test_zero_one_masks_are_an_error_in_the_cache_and_in_scoring(small_root, tmp_path, cache_root, tiny_run, capsys):
    gt = _zero_one_masks(small_root, "train")
    with pytest.raises(DataError, match=r"holds only the values 0 and 1.*0/255"):
        build_cache(get_split(small_root, "train"), size=32, progress=False)
    images = small_root / "val" / SPLIT_FOLDERS["val"][0]
    sub = tmp_path / "sub"
    assert main(["predict", "--checkpoint", str(RunFolder(tiny_run).best), "--images", str(images),
                 "--out", str(sub)]) == 0
    for p in sub.glob("*.png"):
        arr = np.asarray(Image.open(p))
        arr = np.zeros_like(arr)
        arr[0, 0] = 1
        Image.fromarray(arr, mode="L").save(p)
    err = _one_line_error(capsys, ["score", "--submission", str(sub), "--data", str(small_root), "--split", "val"])
    assert "submission mask" in err and "0 and 1" in err
    assert gt.exists()


def test_training_on_all_empty_masks_is_refused(tmp_path, cache_root):
    root = tmp_path / "empty"
    write_split(root, "train", [(40, 32)] * 3, seed=1, first_id=1)  # ids 1..3: attribute k when id % (k+2) == 0
    write_split(root, "val", [(40, 32)], seed=2, first_id=100)
    for p in (root / "train" / SPLIT_FOLDERS["train"][1]).glob("*.png"):
        Image.fromarray(np.zeros((32, 40), np.uint8), mode="L").save(p)
    with pytest.raises(DataError, match="every mask of the training split .* is empty"):
        _train(_cfg(root, tmp_path, epochs=1))


# ---- 9. a full disk ---------------------------------------------------------------------------
def test_a_cache_that_does_not_fit_is_refused_before_writing(tiny_root, tmpfs, monkeypatch):
    disk = tmpfs("cache", size="64k")
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(disk))
    with pytest.raises(DiskFullError, match=r"not enough disk space.*MB free.*MB needed"):
        build_cache(get_split(tiny_root, "train"), size=256, progress=False)
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_during_the_cache_build_is_an_error_and_the_partial_cache_is_removed(tiny_root, tmpfs,
                                                                                                monkeypatch):
    import shutil as sh

    from skinseg.data import cache as cache_mod

    disk = tmpfs("cache", size="256k")
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(disk))
    real = sh.disk_usage
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda p: real(p)._replace(free=2**40))  # the check passes
    with pytest.raises(DiskFullError, match="disk full while caching split 'train'.*partial cache was removed"):
        build_cache(get_split(tiny_root, "train"), size=256, progress=False)
    assert list(disk.iterdir()) == []


def test_leftovers_of_dead_builds_are_removed_whatever_their_size(tiny_root, cache_root):
    cache_root.mkdir(parents=True, exist_ok=True)
    dead = cache_root / ".train-512-stretch-00000000-0000000000000000.tmp-999999999"
    dead.mkdir()
    (dead / "images.npy").write_bytes(b"x" * 10000)
    build_cache(get_split(tiny_root, "train"), size=32, progress=False)
    assert not dead.exists()


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_old_checkpoint(tmpfs):
    disk = tmpfs("runs", size="2m")
    old = {"epoch": 1, "model": {"w": torch.zeros(10)}}
    save_checkpoint(old, disk / "last.pt")
    with pytest.raises(DiskFullError, match=r"disk full while writing checkpoint .*last\.pt.*previous last\.pt is kept"):
        save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(2**19)}}, disk / "last.pt")  # 2 MB
    assert load_checkpoint(disk / "last.pt")["epoch"] == 1
    assert [p.name for p in disk.iterdir()] == ["last.pt"]


def test_training_onto_a_full_disk_stops_with_one_line(small_root, tmp_path, cache_root, tmpfs, capsys):
    disk = tmpfs("runs", size="96k")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {small_root}\noutput_dir: {disk}\nimage_size: 32\nepochs: 1\nbatch_size: 2\n"
                   "base_channels: 8\n")
    err = _one_line_error(capsys, ["train", "--config", str(cfg)])
    assert "disk full while writing checkpoint" in err


# ---- 10. NaN first seen in validation ---------------------------------------------------------
def test_nan_outputs_in_validation_stop_with_the_nan_loss_message(small_root, tmp_path, cache_root):
    from skinseg.train.loop import Trainer

    trainer = Trainer(_cfg(small_root, tmp_path, epochs=2), progress=False)
    trainer.model.register_forward_hook(lambda m, i, out: out if m.training else out * float("nan"))
    with pytest.raises(TrainingError, match=r"validation outputs became NaN or infinite at epoch 1.*"
                                            r"no checkpoint was written yet\. Try a lower lr"):
        trainer.fit()


def test_evaluation_names_exactly_the_images_with_non_finite_outputs(small_root, cache_root):
    """Evaluation checks finiteness once, after the loop: it still names the one bad image of the second batch."""
    from skinseg.data.dataset import make_loader
    from skinseg.inference import NonFiniteOutputError, evaluate_model
    from skinseg.models import create_model

    cfg = Config(data_root=str(small_root), image_size=32, batch_size=2, val_split="train")
    loader = make_loader(cfg, "train", train=False)
    model = create_model("unet", base_channels=8)
    calls = []

    def poison(module, inputs, out):
        calls.append(1)
        if len(calls) == 2:
            out = out.clone()
            out[1] = float("nan")
        return out

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteOutputError) as e:
        evaluate_model(model, loader, torch.device("cpu"))
    assert e.value.ids == [loader.dataset.cache.ids[3]] and len(calls) == 3  # the loop ran to its end


def test_evaluating_a_diverged_checkpoint_is_a_one_line_error(small_root, tiny_run, capsys):
    best = RunFolder(tiny_run).best
    state = load_checkpoint(best)
    state["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, best)
    err = _one_line_error(capsys, ["evaluate", "--checkpoint", str(best), "--data", str(small_root)])
    assert "NaN or infinite" in err


# ---- 11. one line where a traceback was -------------------------------------------------------
def test_read_only_folders_are_one_line_errors(small_root, tmp_path, tiny_run, tmpfs, capsys, monkeypatch):
    ro = tmpfs("ro", size="64k", read_only=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {small_root}\nimage_size: 32\nepochs: 1\n")
    err = _one_line_error(capsys, ["train", "--config", str(cfg), "--set", f"output_dir={ro}"])
    assert "output_dir" in err and "not writable" in err
    best = str(RunFolder(tiny_run).best)
    images = str(small_root / "val" / SPLIT_FOLDERS["val"][0])
    err = _one_line_error(capsys, ["predict", "--checkpoint", best, "--images", images, "--out", str(ro / "sub")])
    assert "not writable" in err
    import skinseg.evaluation as ev

    called = []
    monkeypatch.setattr(ev, "evaluate_checkpoint", lambda *a, **k: called.append(1))
    err = _one_line_error(capsys, ["evaluate", "--checkpoint", best, "--data", str(small_root),
                                   "--json", str(ro / "s.json")])
    assert "--json" in err and not called  # refused before the evaluation
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(ro / "cache"))
    err = _one_line_error(capsys, ["cache", str(small_root), "--image-size", "32"])
    assert "cache folder" in err and "SKINSEG_CACHE_DIR" in err


def test_set_values_that_are_not_yaml_are_one_line_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\n")
    err = _one_line_error(capsys, ["train", "--config", str(cfg), "--set", "loss={bce: [1"])
    assert "--set" in err and "not valid YAML" in err


def test_report_params_are_resolved_from_the_working_directory(tmp_path, capsys, monkeypatch):
    import skinseg.report as report

    err = _one_line_error(capsys, ["report", "--params", "no/such.yaml"])
    assert "no/such.yaml" in err and "no such file" in err
    seen = {}
    monkeypatch.setattr(report, "build_report", lambda params, data, **k: seen.setdefault("params", params) and {
        "html": "x", "pdf": None, "seconds": 0.0})
    (tmp_path / "mine.yaml").write_text("epochs: 1\n")
    monkeypatch.chdir(tmp_path)
    main(["report", "--params", "mine.yaml", "--no-pdf"])
    assert Path(seen["params"]) == tmp_path / "mine.yaml"


def test_report_options_reach_build_report(tmp_path, monkeypatch):
    import skinseg.report as report
    from skinseg.paths import IMAGES_DIR, REPORTS_DIR

    calls = []
    monkeypatch.setattr(report, "build_report", lambda params, data, **k: calls.append(k) or {
        "html": "x", "pdf": None, "seconds": 0.0})
    monkeypatch.chdir(tmp_path)
    main(["report", "--no-pdf", "--out", "real", "--sweep", "isic_gpu", "--sweep-set", "epochs=1",
          "--sweep-set", "base_channels=16", "--update-images", "pics"])
    main(["report", "--no-pdf", "--update-images"])
    main(["report", "--no-pdf"])
    first, second, third = calls
    assert first["out_dir"] == tmp_path / "real" and first["images_dir"] == tmp_path / "pics"
    assert first["sweep"] == "isic_gpu" and first["sweep_overrides"] == {"epochs": 1, "base_channels": 16}
    assert second["images_dir"] == IMAGES_DIR and "sweep" not in second and "sweep_overrides" not in second
    assert third["images_dir"] is None and third["out_dir"] == REPORTS_DIR


def test_a_corrupt_checkpoint_message_does_not_suggest_weights_only_false(tmp_path, small_root, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 10)
    for argv in (["evaluate", "--checkpoint", str(bad), "--data", str(small_root)],):
        err = _one_line_error(capsys, argv)
        assert "corrupt" in err and "weights_only" not in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "skinseg-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "refusing" in str(e.value) and "weights_only" not in str(e.value)


# ---- 12. image names ---------------------------------------------------------------------------
def test_unexpected_file_names_are_reported_and_upper_case_jpg_is_read(tmp_path, cache_root):
    root = tmp_path / "isic"
    write_split(root, "train", [(40, 32)] * 3, seed=1)
    img_dir = root / "train" / SPLIT_FOLDERS["train"][0]
    (img_dir / "ISIC_0000002.jpg").rename(img_dir / "ISIC_0000002.JPG")
    for name in ("photo.jpg", "ISIC_123.jpg", "notes.docx"):
        (img_dir / name).write_bytes(b"x")
    for name in ("LICENSE.txt", "ATTRIBUTION.txt", ".DS_Store", "ISIC_0000000_superpixels.png"):
        (img_dir / name).write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"skipped 3 file\(s\) not named ISIC_<7 digits>\.jpg: ISIC_123\.jpg, "
                                          r"notes\.docx, photo\.jpg"):
        split = get_split(root, "train")
    assert split.ids == ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002")
    cache = build_cache(split, size=32, progress=False)
    assert len(cache) == 3 and cache.images[2].any()


def test_two_files_for_one_image_id_are_an_error(tmp_path):
    root = tmp_path / "isic"
    write_split(root, "train", [(40, 32)] * 2, seed=1)
    img_dir = root / "train" / SPLIT_FOLDERS["train"][0]
    (img_dir / "ISIC_0000001.JPG").write_bytes((img_dir / "ISIC_0000001.jpg").read_bytes())
    with pytest.raises(DataError, match="two files for ISIC_0000001"):
        get_split(root, "train")


# ---- what held before: kept tested ---------------------------------------------------------------
def test_an_empty_jpeg_and_a_16_bit_mask_name_their_files(tiny_root, cache_root):
    split = get_split(tiny_root, "train")
    split.image_path(split.ids[0]).write_bytes(b"")
    with pytest.raises(DataError, match=f"{split.ids[0]}.jpg is corrupt or truncated"):
        build_cache(split, size=32, progress=False)
    write_split(tiny_root, "train", [(64, 48)], seed=1)  # restore the image
    mask = split.mask_path(split.ids[0], ATTRIBUTES[0])
    Image.fromarray(np.full((48, 64), 65535, np.uint16)).save(mask)
    with pytest.raises(DataError, match=f"{mask.name} has mode I;16"):
        build_cache(get_split(tiny_root, "train"), size=32, progress=False)


def test_non_ascii_paths_and_symlinked_data_roots_train(tmp_path, cache_root):
    root = tmp_path / "données ISIC — 2018"
    write_split(root, "train", [(40, 32)] * 4, seed=1)
    write_split(root, "val", [(40, 32)] * 2, seed=2, first_id=100)
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    summary = _train(_cfg(link, tmp_path / "sortie ü", epochs=1))
    assert RunFolder(summary["run_dir"]).is_complete()


def test_python_tags_in_yaml_are_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in _one_line_error(capsys, ["train", "--config", str(cfg)])


def test_two_concurrent_cache_builds_of_one_split_agree(tiny_root, cache_root):
    from concurrent.futures import ThreadPoolExecutor

    split = get_split(tiny_root, "train")
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: build_cache(split, size=32, progress=False, workers=1), range(2))
    assert a.path == b.path and np.array_equal(a.images, b.images)
    assert not [p for p in cache_root.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_two_trainings_into_one_output_folder_get_a_folder_each(small_root, tmp_path, cache_root):
    cfg = _cfg(small_root, tmp_path, epochs=1, run_name="same")
    env = {**os.environ, "PYTHONPATH": str(PROJ)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), "null"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    dirs = {json.loads(o[0].strip().splitlines()[-1])["run_dir"] for o in outs}
    assert len(dirs) == 2 and all(RunFolder(d).is_complete() for d in dirs)
