"""Reading run folders: metrics.csv as tables, the best epoch, the newest run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from skinseg.data.isic import ATTRIBUTES
from skinseg.paths import resolve


def read_metrics(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-step rows, per-epoch rows) of a run's metrics.csv."""
    df = pd.read_csv(Path(run_dir) / "metrics.csv")
    steps = df[df["kind"] == "step"].dropna(axis=1, how="all").reset_index(drop=True)
    epochs = df[df["kind"] == "epoch"].dropna(axis=1, how="all").reset_index(drop=True)
    return steps, epochs


def is_complete(run_dir: str | Path) -> bool:
    """A run is complete when its config's epochs are all logged, or it stopped early with a best.pt."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").exists() or not (run_dir / "metrics.csv").exists():
        return False
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    _, epochs = read_metrics(run_dir)
    if len(epochs) >= cfg["epochs"]:
        return True
    return (run_dir / "done").exists()


def latest_run(output_dir: str | Path = "runs", with_checkpoint: bool = True) -> Path:
    """The newest run folder below ``output_dir`` (by name, which starts with the time)."""
    root = resolve(output_dir)
    runs = sorted(p for p in root.rglob("metrics.csv")) if root and root.exists() else []
    runs = [p.parent for p in runs if not with_checkpoint or (p.parent / "best.pt").exists()]
    if not runs:
        raise FileNotFoundError(f"no run folders with a best.pt below {root}; train one first (03_train)")
    return max(runs, key=lambda p: (p.name, p.stat().st_mtime))


def run_summary(run_dir: str | Path) -> dict:
    """Best validation scores of a run (by tuned overall Jaccard when tuned, else at 0.5) and time per epoch."""
    import yaml

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    _, epochs = read_metrics(run_dir)
    key = "val_tuned_jaccard" if cfg.get("tune_thresholds", True) and "val_tuned_jaccard" in epochs else "val_jaccard"
    best = epochs.loc[epochs[key].idxmax()]
    row = {"run": run_dir.name, "model": cfg["model"], "epochs": len(epochs), "best_epoch": int(best["epoch"]),
           "best_val_jaccard": float(best[key]), "val_jaccard@0.5": float(best["val_jaccard"]),
           "seconds_per_epoch": float(epochs["epoch_seconds"].mean())}
    row.update({a: float(best[f"val_jaccard_{a}"]) for a in ATTRIBUTES})
    return row
