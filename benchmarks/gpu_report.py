"""The one table of benchmarks/gpu_check.sh, from what it wrote in its output folder.

    python benchmarks/gpu_report.py OUT_DIR

Rows: training-step images/s per model and precision (train_step.jsonl), then per recipe (runs/<recipe>/) the
second epoch's end-to-end training images/s, its share of the step benchmark for the same model, precision,
batch and input size, and the epoch split into training, validation (with threshold tuning) and checkpoints.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from skinseg.runs import RunFolder, find_runs, read_metrics

PRECISION = {"bf16": "bf16", "fp16": "fp16", "off": "fp32"}


def model_spec(cfg: dict) -> str:
    return f"{cfg['model']}:{cfg['encoder']}" if cfg["model"] in ("unet-timm-attention", "unet-convnext-attention") and \
        cfg["encoder"] != "convnext_tiny" else cfg["model"]


def main(out: Path) -> None:
    steps = [json.loads(line) for line in (out / "train_step.jsonl").read_text().splitlines()] \
        if (out / "train_step.jsonl").exists() else []
    print("training step alone (forward + loss + backward + AdamW), synthetic batch on the GPU")
    print(f"| {'model':46s} | precision | batch | px  | images/s |")
    print(f"|{'-' * 48}|-----------|-------|-----|----------|")
    for r in steps:
        print(f"| {r['model']:46s} | {r['precision']:9s} | {r['batch']:5d} | {r['size']:3d} | {r['images_per_s']:8.0f} |")
    loader = out / "loader.txt"
    if loader.exists():
        print("\n" + loader.read_text().strip())
    print("\nrecipes, 2 epochs each (second epoch; validation includes threshold tuning)")
    print("| recipe | model | amp | batch | train px | images/s | % of step | train s | val s | ckpt s | val+ckpt % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe_dir in sorted(p for p in (out / "runs").glob("*") if p.is_dir()):
        runs = find_runs(recipe_dir, with_checkpoint=False)
        if not runs:
            print(f"| {recipe_dir.name} | (no run: see {recipe_dir.name}.log) |")
            continue
        cfg, epochs = RunFolder(runs[-1]).config(), read_metrics(runs[-1])[1]
        if len(epochs) < 2:
            print(f"| {recipe_dir.name} | (stopped after {len(epochs)} epoch(s)) |")
            continue
        e = epochs.iloc[1]
        size = cfg.get("crop_size") or cfg["image_size"]
        amp = PRECISION.get(cfg["amp"], "bf16")  # auto on a GPU: bf16 where supported
        match = [r for r in steps if r["model"] == model_spec(cfg) and r["precision"] == amp
                 and r["batch"] == cfg["batch_size"] and r["size"] == size]
        share = f"{100 * e['images_per_s'] / match[0]['images_per_s']:.0f}%" if match else "-"
        total = e["epoch_seconds"] + e["val_seconds"] + e["checkpoint_seconds"]
        overhead = 100 * (e["val_seconds"] + e["checkpoint_seconds"]) / total
        print(f"| {recipe_dir.name} | {model_spec(cfg)} | {cfg['amp']} | {cfg['batch_size']} | {size} | "
              f"{e['images_per_s']:.0f} | {share} | {e['epoch_seconds']:.1f} | {e['val_seconds']:.1f} | "
              f"{e['checkpoint_seconds']:.1f} | {overhead:.0f}% |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
