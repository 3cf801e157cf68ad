"""The run folder, one module that writes it and reads it back.

A run folder ``<output_dir>/<time>_<model>_<name>/`` holds

- ``config.yaml``: the run's config,
- ``metrics.csv``: a row every ``log_every`` optimizer steps (``kind=step``) and one per epoch (``kind=epoch``),
- ``last.pt`` (every ``checkpoint_every`` epochs and the last) and ``best.pt`` (each time the validation score improves),
- ``done.json``: the end marker, written when training ends — all epochs run or stopped early — naming why,
- ``.lock``: held (``flock``) by the one process training in the folder; the system drops it when that process ends.

``config.yaml`` and ``metrics.csv`` always describe what the weights went through: one process trains in a folder
at a time, a resumed run must keep the config it was trained with (:data:`MAY_CHANGE_ON_RESUME` aside, which are
written into config.yaml), and resuming restores the epoch rows that a kill during a checkpoint write left out.

Nothing else names these files: the trainer, sweeps, the report and the notebooks ask this module.
"""
from __future__ import annotations

import csv
import io
from contextlib import contextmanager
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from skinseg.data.isic import ATTRIBUTES
from skinseg.errors import DataError, RunInUse
from skinseg.files import os_error, remove_dead_temp_files, write_atomic
from skinseg.paths import resolve

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
END_MARKER = "done.json"
LOCK_FILE = ".lock"
# keys that do not change what a run learns: runs differing only in these are the same run
IGNORED_WHEN_COMPARING = ("output_dir", "run_name", "load", "num_workers", "log_every", "checkpoint_every",
                          "results_file")
# keys a resumed run may set differently from its config.yaml (which then records the new values): where the run
# and its data live and how it is run, not what the weights go through
MAY_CHANGE_ON_RESUME = IGNORED_WHEN_COMPARING + ("data_root", "device", "compile", "checkpoint_rule")
# what an epoch's wall time is made of, as metrics.csv records it (checkpoint_seconds came later)
EPOCH_TIME_COLUMNS = ("epoch_seconds", "val_seconds", "checkpoint_seconds")
CSV_COLUMNS = (
    ["kind", "epoch", "step", "time", "loss", "lr", "train_loss", "val_loss", "epoch_seconds", "images_per_s",
     "val_seconds", "checkpoint_seconds"]
    + [f"val_jaccard_{a}" for a in ATTRIBUTES] + [f"val_dice_{a}" for a in ATTRIBUTES]
    + ["val_jaccard", "val_dice", "val_macro_jaccard", "val_tuned_jaccard", "val_tuned_macro_jaccard"]
)


class RunFolder:
    """One run folder: its files, its metrics log and its end marker."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    def __del__(self) -> None:
        self.unlock()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- the files -----------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def best(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def last(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def end_marker(self) -> Path:
        return self.path / END_MARKER

    # ---- writing ---------------------------------------------------------------------------
    @staticmethod
    def new_path(output_dir: str | Path, model: str, name: str) -> Path:
        """The folder name a new run would get (the time first, so that names sort by age)."""
        root = resolve(output_dir)
        return root / f"{datetime.now():%Y%m%d-%H%M%S}_{model}_{name}"

    @classmethod
    def create(cls, path: Path, config_yaml: str) -> "RunFolder":
        """Make a new run folder at ``path`` (or ``path-2``, ``-3`` ... when taken) with its config and an empty log.

        The trainer has checked that ``path.parent`` (its output_dir) is writable before building its caches."""
        suffix, run = 1, path
        while True:
            try:
                run.mkdir(parents=True)
                break
            except FileExistsError:  # another training started in the same second
                suffix += 1
                run = Path(f"{path}-{suffix}")
        folder = cls(run)
        folder.lock()
        with folder.writing(CONFIG_FILE):
            write_atomic(folder.config_file, config_yaml)
            with open(folder.metrics_file, "w", newline="") as f:
                csv.DictWriter(f, CSV_COLUMNS).writeheader()
        return folder

    def lock(self) -> None:
        """Become the one process training in this folder; RunInUse when another one is (a second resume of the
        same last.pt). Held until :meth:`unlock` or the end of the process, a kill included."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one writer at a time is then the user's to keep
            return
        with self.writing(LOCK_FILE):
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunInUse(f"run folder {self.path} is being trained by another process (pid {holder}); wait for it "
                           "to end (or stop it) before resuming, or train a new run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @contextmanager
    def writing(self, name: str):
        """Context: an OSError while writing ``name`` becomes a one-line user error (full disk, read-only)."""
        try:
            yield
        except OSError as e:
            raise os_error(e, f"{self.path / name}", self.path,
                           "the run's files are as they were before this write; free space or make the folder "
                           "writable, then resume from last.pt (config key `load`)") from None

    def update_config(self, config_yaml: str) -> None:
        """Record a resumed run's new values of :data:`MAY_CHANGE_ON_RESUME` keys."""
        with self.writing(CONFIG_FILE):
            write_atomic(self.config_file, config_yaml)

    def log(self, row: dict[str, Any]) -> None:
        row = {"time": f"{time.time():.3f}", **row}
        with self.writing(METRICS_FILE), open(self.metrics_file, "a", newline="") as f:
            csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore").writerow(row)

    def truncate_metrics(self, step: int, epoch: int, history: list[dict[str, Any]] | None = None) -> None:
        """Make metrics.csv end at a checkpoint's step and epoch: rows past them go (a resumed run logs them
        again), and epoch rows the checkpoint's ``history`` holds but the log lacks come back (a kill during the
        checkpoint writes comes before the epoch's row is logged)."""
        if not self.metrics_file.exists():
            return
        with open(self.metrics_file, newline="") as f:
            rows = [r for r in csv.DictReader(f)
                    if (r["kind"] == "step" and int(r["step"]) <= step)
                    or (r["kind"] == "epoch" and int(r["epoch"]) <= epoch)]
        logged = {int(r["epoch"]) for r in rows if r["kind"] == "epoch"}
        for row in history or []:
            if row.get("kind") == "epoch" and int(row["epoch"]) <= epoch and int(row["epoch"]) not in logged:
                rows.append({"time": "", **row})
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with self.writing(METRICS_FILE):
            write_atomic(self.metrics_file, text.getvalue())

    def mark_done(self, reason: str, epochs_run: int, best_epoch: int, best_score: float,
                  checkpoint_rule: str = "best") -> None:
        """Write the end marker: training is over (``reason``: completed or early_stop), and which checkpoint
        stands for the run (``checkpoint_rule``), with the low-noise statistic beside the peak."""
        with self.writing(END_MARKER):
            write_atomic(self.end_marker, json.dumps({
                "reason": reason, "epochs_run": epochs_run, "best_epoch": best_epoch, "best_score": best_score,
                "checkpoint_rule": checkpoint_rule, f"last{LAST_VALIDATIONS}_mean": last_validations_mean(self.path)}))

    def clear_done(self) -> None:
        """A resumed run is running again: it is not done until it ends."""
        with self.writing(END_MARKER):
            self.end_marker.unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> None:
        """Delete the temporary files (``files.temp_sibling``) of processes that no longer run (a kill during a
        write)."""
        remove_dead_temp_files(self.path)

    # ---- reading ---------------------------------------------------------------------------
    @property
    def chosen(self) -> Path:
        """The checkpoint that stands for the run, by its config's ``checkpoint_rule`` (best.pt by default)."""
        return self.last if self.config().get("checkpoint_rule", "best") == "last" else self.best

    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text())

    def metrics(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per-step rows, per-epoch rows) of metrics.csv."""
        df = pd.read_csv(self.metrics_file)
        steps = df[df["kind"] == "step"].dropna(axis=1, how="all").reset_index(drop=True)
        epochs = df[df["kind"] == "epoch"].dropna(axis=1, how="all").reset_index(drop=True)
        return steps, epochs

    def end(self) -> dict[str, Any] | None:
        """The end marker's content, or None while the run has not ended (or was killed)."""
        try:
            return json.loads(self.end_marker.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_complete(self) -> bool:
        """Training ended (all epochs, or an early stop) and left a best checkpoint.

        Runs from before the end marker existed count as complete when their last checkpoint holds the final
        epoch (not when metrics.csv logs it: a kill during the checkpoint write comes after that row).
        """
        if not self.best.exists() or not self.metrics_file.exists() or not self.config_file.exists():
            return False
        if self.end() is not None:
            return True
        from skinseg.checkpoint import checkpoint_epoch

        return self.last.exists() and (checkpoint_epoch(self.last) or 0) >= self.config()["epochs"]


# ---- module-level readers (what notebooks and sweeps call) -----------------------------------
def read_metrics(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-step rows, per-epoch rows) of a run's metrics.csv."""
    return RunFolder(run_dir).metrics()


def is_complete(run_dir: str | Path) -> bool:
    return RunFolder(run_dir).is_complete()


def best_checkpoint(run_dir: str | Path) -> Path:
    """The best checkpoint of a run folder."""
    return RunFolder(run_dir).best


def chosen_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint that stands for a run (its ``checkpoint_rule``: best.pt or last.pt)."""
    return RunFolder(run_dir).chosen


LAST_VALIDATIONS = 3  # the low-noise statistic: the mean tuned score of this many last validations


def last_validations_mean(run_dir: str | Path, k: int = LAST_VALIDATIONS) -> float:
    """Mean tuned validation score (dev, where the run holds one out) of the run's last ``k`` validations: far
    less noisy than the peak of a curve that moves by a few hundredths from epoch to epoch."""
    return last_mean(RunFolder(run_dir).metrics()[1], k)


def last_mean(epochs, k: int = LAST_VALIDATIONS) -> float:
    """:func:`last_validations_mean` of an already-read epoch table."""
    key = "val_tuned_jaccard" if "val_tuned_jaccard" in epochs and epochs["val_tuned_jaccard"].notna().any() \
        else "val_jaccard"
    scores = epochs[key].dropna()
    return float(scores.iloc[-k:].mean()) if len(scores) else float("nan")


def find_runs(output_dir: str | Path, with_checkpoint: bool = True) -> list[Path]:
    """Every run folder below ``output_dir`` (any depth), optionally only those with a best checkpoint."""
    root = resolve(output_dir)
    if root is None or not root.exists():
        return []
    runs = [p.parent for p in root.rglob(METRICS_FILE) if (p.parent / CONFIG_FILE).exists()]
    return sorted(r for r in runs if not with_checkpoint or RunFolder(r).best.exists())


def latest_run(output_dir: str | Path = "runs", with_checkpoint: bool = True) -> Path:
    """The newest run folder below ``output_dir`` (by name, which starts with the time)."""
    runs = find_runs(output_dir, with_checkpoint)
    if not runs:
        raise DataError(f"no run folders with a {BEST_CHECKPOINT} below {resolve(output_dir)}; "
                                "train one first (03_train or `skinseg train`)")
    return max(runs, key=lambda p: (p.name, p.stat().st_mtime))


def config_changes(saved: dict[str, Any], cfg) -> list[tuple[str, Any, Any]]:
    """(key, value the run was trained with, value of ``cfg``) for every key a resume may not change: all but
    :data:`MAY_CHANGE_ON_RESUME` and the options the run's model does not take."""
    from skinseg.config import Config
    from skinseg.models.registry import unused_options

    have = Config.from_dict({**Config().to_dict(), **saved}, source="the checkpoint's config").resolved().to_dict()
    want = cfg.resolved().to_dict()
    skip = set(MAY_CHANGE_ON_RESUME) | unused_options(want["model"])
    return [(k, have[k], want[k]) for k in want if k not in skip and have[k] != want[k]]


def find_complete_run(output_dir: str | Path, params: dict[str, Any]) -> Path | None:
    """The newest complete run directly below ``output_dir`` trained with the same config as ``params`` (up to
    :data:`IGNORED_WHEN_COMPARING` and the model options its model does not take; config keys added after a run
    was made take their defaults)."""
    from skinseg.config import Config
    from skinseg.errors import ConfigError
    from skinseg.models.registry import unused_options

    root = Path(output_dir)
    if not root.exists():
        return None
    wanted = Config.from_dict(params).resolved().to_dict()  # runs store their resolved normalization
    ignored = set(IGNORED_WHEN_COMPARING) | unused_options(wanted["model"])
    wanted = {k: v for k, v in wanted.items() if k not in ignored}
    for path in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        run = RunFolder(path)
        if not run.is_complete():
            continue
        try:
            have = Config.from_dict({**Config().to_dict(), **run.config()}).resolved().to_dict()
        except ConfigError:  # a run made by another version of skinseg
            continue
        if {k: v for k, v in have.items() if k not in ignored} == wanted:
            return path
    return None


def run_summary(run_dir: str | Path) -> dict:
    """A run's mean tuned validation score over its last three validations, its best validation scores (by tuned
    overall Jaccard when tuned, else at 0.5) and time per epoch."""
    folder = RunFolder(run_dir)
    cfg = folder.config()
    _, epochs = folder.metrics()
    key = "val_tuned_jaccard" if cfg.get("tune_thresholds", True) and "val_tuned_jaccard" in epochs else "val_jaccard"
    best = epochs.loc[epochs[key].idxmax()]
    end = folder.end()
    row = {"run": folder.path.name, "model": cfg["model"], "epochs": len(epochs), "val_split": cfg.get("val_split"),
           f"last{LAST_VALIDATIONS}_val_jaccard": last_mean(epochs),
           "best_epoch": int(best["epoch"]),
           "best_val_jaccard": float(best[key]), "val_jaccard@0.5": float(best["val_jaccard"]),
           "seconds_per_epoch": float(epochs["epoch_seconds"].mean()),
           "ended": end["reason"] if end else "unfinished"}
    row.update({a: float(best[f"val_jaccard_{a}"]) for a in ATTRIBUTES})
    return row
