"""Kills and resumes, and the checkpoint file: a run killed at random times or inside a checkpoint write
resumes from last.pt to end bit-identical to an uninterrupted one (training runs in a child process that is
SIGKILLed); a kill between last.pt and best.pt is repaired; early stopping ends a run; a full disk keeps the
old checkpoint; two trainings into one folder get a folder each; a corrupt checkpoint is one line."""

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

import pytest
import torch

from conftest import one_line_error, tiny_config, train_quietly, write_blocks
from skinseg.checkpoint import checkpoint_epoch, load_checkpoint, save_checkpoint
from skinseg.config import Config
from skinseg.errors import CheckpointError, DiskFullError
from skinseg.runs import RunFolder, latest_run


PROJ = Path(__file__).resolve().parents[1]


def test_early_stop_writes_the_end_marker_and_sweeps_count_the_run(small_root, tmp_path, cache_root):
    from skinseg.runs import find_complete_run
    from skinseg.sweeps import curves

    cfg = tiny_config(small_root, tmp_path / "sweep" / "a", epochs=8, patience=1, lr=1e-12, scheduler="none",
               tune_thresholds=False, aug_flip_p=0.0, aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0,
               aug_color_p=0.0)
    cfg = cfg.replace(output_dir=str(tmp_path / "sweep" / "a" / "runs"))
    summary = train_quietly(cfg)
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
    summary = train_quietly(tiny_config(small_root, tmp_path, epochs=2))
    run = RunFolder(summary["run_dir"])
    assert run.is_complete()
    run.end_marker.unlink()
    assert run.is_complete()  # as a run from before the end marker existed: its last.pt holds the final epoch
    state = load_checkpoint(run.last)
    save_checkpoint({**{k: v for k, v in state.items() if k != "format"}, "epoch": 1}, run.last)
    assert len(run.metrics()[1]) == 2 and not run.is_complete()


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
    cfg = tiny_config(root, tmp_path, epochs=6, lr=1e-2, val_split="train", batch_size=4, aug_flip_p=0.0,
               aug_rotate90_p=0.0, aug_rotate_p=0.0, aug_scale_p=0.0, aug_color_p=0.0)
    with pytest.raises(KeyboardInterrupt):  # a later epoch improved the score: the kill landed
        train_quietly(cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    run = RunFolder(latest_run(tmp_path / "runs"))
    last = load_checkpoint(run.last)
    assert last["best"]["epoch"] == last["epoch"] >= 2
    assert checkpoint_epoch(run.best) < last["epoch"]  # stale: the state the issue describes
    stale_tmp = run.path / ".best.pt.tmp-999999999"
    stale_tmp.write_bytes(b"x" * 1000)  # what a kill -9 inside a write leaves
    summary = train_quietly(cfg.replace(load=str(run.last)))
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
    cfg = tiny_config(small_root, tmp_path, epochs=4, lr=1e-2, output_dir=str(tmp_path / "reference"), run_name="x",
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


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_old_checkpoint(tmpfs):
    disk = tmpfs("runs", size="2m")
    old = {"epoch": 1, "model": {"w": torch.zeros(10)}}
    save_checkpoint(old, disk / "last.pt")
    with pytest.raises(DiskFullError, match=r"disk full while writing checkpoint .*last\.pt.*previous last\.pt is kept"):
        save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(2**19)}}, disk / "last.pt")  # 2 MB
    assert load_checkpoint(disk / "last.pt")["epoch"] == 1
    assert [p.name for p in disk.iterdir()] == ["last.pt"]


def test_a_corrupt_checkpoint_message_does_not_suggest_weights_only_false(tmp_path, small_root, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 10)
    for argv in (["evaluate", "--checkpoint", str(bad), "--data", str(small_root)],):
        err = one_line_error(capsys, argv)
        assert "corrupt" in err and "weights_only" not in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "skinseg-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "refusing" in str(e.value) and "weights_only" not in str(e.value)


@pytest.mark.slow
def test_two_trainings_into_one_output_folder_get_a_folder_each(small_root, tmp_path, cache_root):
    cfg = tiny_config(small_root, tmp_path, epochs=1, run_name="same")
    env = {**os.environ, "PYTHONPATH": str(PROJ)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), "null"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    dirs = {json.loads(o[0].strip().splitlines()[-1])["run_dir"] for o in outs}
    assert len(dirs) == 2 and all(RunFolder(d).is_complete() for d in dirs)
