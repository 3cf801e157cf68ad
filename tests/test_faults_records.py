"""The fault suite, records: a run folder's config.yaml and metrics.csv always describe what its weights went
through, and what a command reads is what the user meant (the split, the data, the paths they typed).

One process trains in a run folder at a time; a resume keeps the run's config or refuses; a kill during the
checkpoint writes loses no row of metrics.csv.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error, tiny_config, train_quietly
from skinseg.checkpoint import load_checkpoint
from skinseg.cli import main
from skinseg.data.isic import SPLIT_FOLDERS, get_split
from skinseg.errors import CheckpointError, RunInUse
from skinseg.runs import RunFolder

PROJ = Path(__file__).resolve().parents[1]


def _rows(run: RunFolder) -> list[dict]:
    with open(run.metrics_file, newline="") as f:
        return list(csv.DictReader(f))


def _epochs(run: RunFolder) -> list[int]:
    return [int(r["epoch"]) for r in _rows(run) if r["kind"] == "epoch"]


def _steps(run: RunFolder) -> list[int]:
    return [int(r["step"]) for r in _rows(run) if r["kind"] == "step"]


def _params(tmp_path: Path, root: Path, **extra) -> Path:
    """A params YAML for the tiny runs (as a user would write one)."""
    values = {"data_root": str(root), "image_size": 32, "batch_size": 2, "epochs": 2, "base_channels": 8,
              "optimizer": "adam", "lr": 3e-3, "output_dir": str(tmp_path / "runs"), "log_every": 1, **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    return path


@pytest.fixture
def finished(small_root, tmp_path, cache_root):
    """A finished 2-epoch run."""
    return RunFolder(train_quietly(tiny_config(small_root, tmp_path, log_every=1))["run_dir"])


# ---- the dev split -----------------------------------------------------------------------------
def test_evaluating_dev_without_a_dev_holdout_is_refused(small_root, finished, capsys):
    err = one_line_error(capsys, ["evaluate", "--checkpoint", str(finished.best), "--data", str(small_root),
                                  "--split", "dev"])
    assert "no dev hold-out (dev_fraction: 0)" in err


# ---- resuming ---------------------------------------------------------------------------------
def test_a_resume_with_another_config_is_refused_and_the_record_stays(small_root, tmp_path, finished, capsys):
    params = _params(tmp_path, small_root)
    config_before, rows_before = finished.config_file.read_text(), _rows(finished)
    err = one_line_error(capsys, ["train", "--config", str(params), "--set", "epochs=4", "--set", "lr=0.5",
                                  "--set", "image_size=64", "--set", f"load={finished.last}"])
    assert "was trained with image_size=32, epochs=2, lr=0.003, but this config sets image_size=64, epochs=4, lr=0.5" in err
    assert finished.config_file.read_text() == config_before and _rows(finished) == rows_before
    # what may change on a resume (how it runs, not what it learns) is recorded in config.yaml
    assert main(["train", "--config", str(params), "--set", "epochs=2", "--set", "num_workers=1",
                 "--set", f"load={finished.last}"]) == 0
    assert finished.config()["num_workers"] == 1 and _epochs(finished) == [1, 2]


def test_a_second_process_cannot_resume_a_run_that_is_training(small_root, tmp_path, cache_root, finished):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from skinseg.runs import RunFolder; r = RunFolder(sys.argv[1]); "
         "r.lock(); print('locked', flush=True); time.sleep(60)", str(finished.path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJ)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        rows = _rows(finished)
        with pytest.raises(RunInUse, match=f"pid {holder.pid}"):
            train_quietly(tiny_config(small_root, tmp_path, log_every=1, load=str(finished.last)))
        assert _rows(finished) == rows
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with its process, even one killed with SIGKILL
    summary = train_quietly(tiny_config(small_root, tmp_path, log_every=1, load=str(finished.last)))
    assert summary["run_dir"] == str(finished.path)


def test_a_kill_after_the_last_checkpoint_write_loses_no_metrics_row(small_root, tmp_path, cache_root,
                                                                      monkeypatch):
    import skinseg.train.loop as loop

    reference = RunFolder(train_quietly(tiny_config(small_root, tmp_path, epochs=3, log_every=1, run_name="ref"))["run_dir"])
    real_save = loop.save_checkpoint

    def killed_after_writing_last_of_epoch_2(state, path):
        real_save(state, path)
        if state["epoch"] == 2 and Path(path).name == "last.pt":
            raise KeyboardInterrupt  # SIGKILL here: last.pt holds epoch 2, its row is not logged yet

    monkeypatch.setattr(loop, "save_checkpoint", killed_after_writing_last_of_epoch_2)
    cfg = tiny_config(small_root, tmp_path, epochs=3, log_every=1, run_name="killed")
    with pytest.raises(KeyboardInterrupt):
        train_quietly(cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    run = RunFolder(next(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("killed")))
    assert _epochs(run) == [1]  # the state the audit found
    train_quietly(cfg.replace(load=str(run.last)))
    assert _epochs(run) == [1, 2, 3] and _steps(run) == _steps(reference)
    kept = {k: v for k, v in _rows(run)[-1].items() if k not in ("time", "epoch_seconds", "images_per_s",
                                                                   "val_seconds", "checkpoint_seconds")}
    ref = {k: v for k, v in _rows(reference)[-1].items() if k in kept}
    assert kept == ref  # the final epoch's losses and scores are the uninterrupted run's


def test_a_run_killed_before_its_first_checkpoint_says_so_and_is_cleaned(small_root, tmp_path, cache_root,
                                                                         capsys, monkeypatch):
    from skinseg.train.loop import Trainer

    def killed_in_the_first_epoch(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_quietly(tiny_config(small_root, tmp_path))
    monkeypatch.undo()
    run = RunFolder(next((tmp_path / "runs").iterdir()))
    leftover = run.path / ".last.pt.tmp-999999999"
    leftover.write_bytes(b"half a checkpoint")  # what a SIGKILL inside the first write leaves
    params = _params(tmp_path, small_root)
    err = one_line_error(capsys, ["train", "--config", str(params), "--set", f"load={run.last}"])
    assert "stopped before writing it" in err and "new run" in err
    assert not leftover.exists()


def test_a_checkpoint_missing_a_key_is_a_one_line_error(small_root, tmp_path, finished, capsys):
    state = load_checkpoint(finished.best)
    for key in ("thresholds", "model"):
        broken = tmp_path / f"no_{key}.pt"
        torch.save({k: v for k, v in state.items() if k != key}, broken)
        err = one_line_error(capsys, ["evaluate", "--checkpoint", str(broken), "--data", str(small_root)])
        assert f"lacks {key}" in err
        err = one_line_error(capsys, ["predict", "--checkpoint", str(broken), "--images",
                                      str(small_root / "val" / SPLIT_FOLDERS["val"][0]), "--out", str(tmp_path / "sub")])
        assert f"lacks {key}" in err
    torch.save({**state, "thresholds": [0.5, 0.5]}, tmp_path / "short.pt")
    err = one_line_error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "short.pt"), "--data", str(small_root)])
    assert "thresholds must be 5 numbers" in err
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, tmp_path / "no_optimizer.pt")
    with pytest.raises(CheckpointError, match="lacks optimizer, which resuming needs"):
        train_quietly(tiny_config(small_root, tmp_path, load=str(tmp_path / "no_optimizer.pt")))


def test_resuming_on_a_read_only_or_full_disk_is_one_line_and_keeps_the_log(small_root, tmp_path, cache_root,
                                                                           tmpfs, capsys):
    disk = tmpfs("disk", size="32m")
    run = RunFolder(train_quietly(tiny_config(small_root, tmp_path, output_dir=str(disk), log_every=1))["run_dir"])
    params = _params(tmp_path, small_root, output_dir=str(disk))
    log = run.metrics_file.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    err = one_line_error(capsys, ["train", "--config", str(params), "--set", f"load={run.last}"])
    assert "not writable" in err and str(run.path) in err
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    filler = disk / "filler"
    with open(filler, "wb") as f:  # fill the disk to its last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    err = one_line_error(capsys, ["train", "--config", str(params), "--set", f"load={run.last}"])
    assert "disk full" in err or "free" in err
    assert run.metrics_file.read_bytes() == log


# ---- what is read --------------------------------------------------------------------------------
def test_corrupt_jpeg_data_is_a_data_error_naming_the_file(tiny_root, cache_root, capsys):
    image = tiny_root / "train" / SPLIT_FOLDERS["train"][0] / "ISIC_0000003.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(image, quality=90)
    data = bytearray(image.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 20] = bytes(b ^ 0xFF for b in data[middle:middle + 20])  # 20 flipped bytes
    image.write_bytes(bytes(data))
    # Pillow decodes it without a word
    with Image.open(image) as im:
        im.load()
    err = one_line_error(capsys, ["cache", str(tiny_root), "--image-size", "32"])
    assert str(image) in err and "corrupt JPEG data" in err
    assert not [p for p in cache_root.iterdir() if p.name.startswith("train-")]


def test_a_root_through_a_symlink_shares_the_cache_of_its_real_path(tiny_root, tmp_path, cache_root):
    from skinseg.data.cache import build_cache

    link = tmp_path / "link"
    link.symlink_to(tiny_root)
    real = build_cache(get_split(tiny_root, "train"), 32, progress=False)
    built = (real.path / "meta.json").stat().st_mtime_ns
    via_link = build_cache(get_split(link, "train"), 32, progress=False)
    again = build_cache(get_split(tiny_root, "train"), 32, progress=False)
    assert via_link.path == real.path == again.path
    assert (real.path / "meta.json").stat().st_mtime_ns == built  # never rebuilt
    assert len([p for p in cache_root.iterdir() if p.name.startswith("train-")]) == 1


def test_score_warns_about_files_that_are_not_part_of_the_submission(small_root, tmp_path, finished, capsys):
    sub = tmp_path / "sub"
    images = small_root / "val" / SPLIT_FOLDERS["val"][0]
    assert main(["predict", "--checkpoint", str(finished.best), "--images", str(images), "--out", str(sub)]) == 0
    (sub / "ISIC_0009999_attribute_streaks.png").write_bytes((sub / "ISIC_0000100_attribute_streaks.png").read_bytes())
    (sub / "notes.txt").write_text("x")
    capsys.readouterr()
    assert main(["score", "--submission", str(sub), "--data", str(small_root)]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("skinseg score: warning:")]
    assert len(warned) == 1 and "2 file(s)" in warned[0] and "notes.txt" in warned[0]
    assert "ISIC_0009999_attribute_streaks.png" in warned[0]


def test_command_line_paths_are_taken_from_the_working_directory(small_root, tmp_path, finished, capsys,
                                                                 monkeypatch):
    """Relative paths typed on the command line are the user's, for every verb (none exists below the project)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "data").symlink_to(small_root)
    (work / "best.pt").write_bytes(finished.best.read_bytes())
    (work / "base.yaml").write_text(_params(tmp_path, small_root).read_text())
    monkeypatch.chdir(work)
    assert not (PROJ / "data" / "val").exists() or (PROJ / "data").resolve() != small_root
    assert main(["evaluate", "--checkpoint", "best.pt", "--data", "data", "--json", "scores.json"]) == 0
    assert (work / "scores.json").exists()
    assert main(["predict", "--checkpoint", "best.pt", "--images", f"data/val/{SPLIT_FOLDERS['val'][0]}",
                 "--out", "sub"]) == 0
    assert main(["score", "--submission", "sub", "--data", "data"]) == 0
    assert main(["stats", "data", "--image-size", "32"]) == 0
    assert main(["train", "--config", "base.yaml", "--set", "epochs=1", "--set", "output_dir=myruns"]) == 0
    assert len(list((work / "myruns").iterdir())) == 1
    err = one_line_error(capsys, ["sweep", "architectures", "--base", "missing.yaml"])
    assert str(work / "missing.yaml") in err


def test_without_simplejpeg_pillow_decodes_and_says_once_that_corruption_goes_unseen(tiny_root, monkeypatch):
    import skinseg.data.cache as cache

    image = tiny_root / "train" / SPLIT_FOLDERS["train"][0] / "ISIC_0000000.jpg"
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import fails, as on a node without it
    monkeypatch.setattr(cache, "_SAID", set())
    with pytest.warns(UserWarning, match="simplejpeg is not installed") as said:
        pixels, hw = cache.read_image(image)
        cache.read_image(image)
    assert len(said) == 1 and pixels.shape == (*hw, 3) == (48, 64, 3)
    with Image.open(image) as im:
        assert np.array_equal(pixels, np.asarray(im.convert("RGB")))
