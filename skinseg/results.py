"""``results/*.csv``: one comparison row per run, written by the run itself when training ends.

A run whose config names a ``results_file`` evaluates the checkpoint that stands for it (``checkpoint_rule``) on
its tuning split (dev, where it holds one out) and on the official validation split, at both operating points,
and appends one row: what was trained (model, encoder, pretrained, seed, epochs, parameters), what it cost
(seconds per epoch, wall), how it scored (the low-noise statistic — the mean tuned score of the last validations —
beside the peak, then overall, macro and per-attribute Jaccard on dev and val), and the rule that chose the
checkpoint. Numbers in the documentation come from these files, never typed by hand.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from skinseg.data.isic import ATTRIBUTES
from skinseg.files import write_atomic
from skinseg.paths import resolve
from skinseg.runs import LAST_VALIDATIONS, RunFolder, last_validations_mean


def run_row(run_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """The comparison row of a finished run (evaluates its chosen checkpoint on dev and val)."""
    from skinseg.checkpoint import load_checkpoint
    from skinseg.evaluation import evaluate_checkpoint, operating_points

    run = RunFolder(run_dir)
    cfg = run.config()
    checkpoint = run.chosen
    state = load_checkpoint(checkpoint, mmap=True)
    _, epochs = run.metrics()
    row: dict[str, Any] = {
        "run": run.path.name, "model": cfg["model"],
        "encoder": cfg["encoder"] if cfg["model"] == "unet-convnext-attention" else "",
        "pretrained": bool(cfg.get("pretrained")), "seed": cfg["seed"], "epochs": len(epochs),
        "params": sum(v.numel() for v in state["model"].values() if v.is_floating_point()),
        "s_per_epoch": float(epochs["epoch_seconds"].mean()),
        "wall_min": float((epochs["epoch_seconds"] + epochs["val_seconds"].fillna(0)
                           + epochs.get("checkpoint_seconds", 0).fillna(0)).sum() / 60),
        "checkpoint_rule": cfg.get("checkpoint_rule", "best"), "checkpoint_epoch": int(state["epoch"]),
        f"tune_last{LAST_VALIDATIONS}": last_validations_mean(run.path),
        "tune_peak": float(epochs["val_tuned_jaccard"].max()) if "val_tuned_jaccard" in epochs else float("nan"),
        "tune_split": cfg["val_split"],
    }
    root = cfg["data_root"]
    for split in dict.fromkeys((cfg["val_split"], "val")):
        result = evaluate_checkpoint(checkpoint, resolve(root), split)
        for name, point in operating_points(result, checkpoint).items():
            s, tag = point["scores"], f"{split}_{'micro' if name == 'micro' else 'each'}"
            row[f"{tag}_overall"], row[f"{tag}_macro"] = s.overall, s.macro_jaccard
            row.update({f"{tag}_{a}": s.jaccard[a] for a in ATTRIBUTES})
        row.update({f"{split}_auc_{a}": v for a, v in result.presence_auc().items()})
    return row


def append_row(results_file: str | Path, row: dict[str, Any]) -> Path:
    """Add ``row`` to a results CSV (a row of the same run replaced), written atomically."""
    path = resolve(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if len(table) and "run" in table:
        table = table[table["run"] != row["run"]]
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    text = io.StringIO()
    table.to_csv(text, index=False, float_format="%.4f")
    write_atomic(path, text.getvalue())
    return path
