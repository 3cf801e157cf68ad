#!/usr/bin/env bash
# Train the GPU recipes at once on one GPU node and score each on the official validation split:
# params/isic_scratch.yaml and the isic_gpu sweep over params/isic.yaml (5 variants), 6 trainings sharing the GPU.
#
#   benchmarks/gpu_recipes.sh --data DIR [--out DIR] [--python PY] [--limit SECONDS] [--workers N] [--set K=V ...]
#
# --limit stops the trainings after SECONDS (each keeps its best.pt so far and is scored as it is, marked
# "unfinished"). Wall times are those of 6 runs sharing one GPU and its CPUs; gpu_check.sh times a recipe alone.
# Needs the environment gpu_check.sh prepares (PYTHONPATH with skinseg and its dependencies).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
DATA="" OUT_DIR="reports/gpu_recipes" PY="python3" LIMIT=100000 WORKERS=3 SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    *) echo "gpu_recipes.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -d "$DATA" ] || { echo "gpu_recipes.sh: --data DIR (the ISIC data root) is required" >&2; exit 2; }
DATA="$(cd "$DATA" && pwd)"
mkdir -p "$OUT_DIR/scratch"
start=$(date +%s)
# each in a process group of its own, so that --limit stops it with the trainings it started, and nothing else
setsid "$PY" -m skinseg sweep isic_gpu --base params/isic.yaml --runner cli --jobs 5 --out "$OUT_DIR/sweep" \
  --set "data_root=$DATA" --set "num_workers=$WORKERS" "${SETS[@]}" > "$OUT_DIR/sweep.log" 2>&1 &
SWEEP=$!
setsid "$PY" -m skinseg train --config params/isic_scratch.yaml --set "data_root=$DATA" --set "num_workers=$WORKERS" \
  --set "output_dir=$OUT_DIR/scratch/runs" --set run_name=isic_scratch "${SETS[@]}" > "$OUT_DIR/scratch.log" 2>&1 &
SCRATCH=$!
while kill -0 $SWEEP 2>/dev/null || kill -0 $SCRATCH 2>/dev/null; do
  if [ $(( $(date +%s) - start )) -ge "$LIMIT" ]; then
    echo "limit of $LIMIT s reached: stopping the trainings still running"
    kill -TERM -- -$SWEEP -$SCRATCH 2>/dev/null; sleep 3; kill -KILL -- -$SWEEP -$SCRATCH 2>/dev/null
    break
  fi
  sleep 2
done
wait 2>/dev/null
echo "trainings ended after $(( $(date +%s) - start )) s"
"$PY" - "$OUT_DIR" "$DATA" <<'PY'
import sys
from pathlib import Path
from skinseg.predict.evaluate import evaluate_checkpoint
from skinseg.runs import RunFolder, best_checkpoint, find_runs, read_metrics
print("| run | epochs | s/epoch (shared GPU) | wall s | best epoch | dev tuned | val tuned | PN | NN | streaks | MLC | globules | ended |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in find_runs(Path(sys.argv[1]), with_checkpoint=False):
    run = RunFolder(path)
    steps, epochs = read_metrics(path)
    if epochs.empty or epochs["val_tuned_jaccard"].isna().all():
        continue
    best = epochs.loc[epochs["val_tuned_jaccard"].idxmax()]
    wall = float(epochs["time"].max() - steps["time"].min()) if len(steps) else float("nan")
    try:  # the official validation split, thresholds tuned on dev, the run's TTA
        val = evaluate_checkpoint(best_checkpoint(path), sys.argv[2], "val").scores.to_official_json()
    except Exception as e:  # a run stopped during its first checkpoint write, say
        print(f"evaluate failed for {path}: {e}")
        val = None
    per = [f"{val[k]['jaccard']:.3f}" if val else "-" for k in
           ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")]
    end = run.end()
    print(f"| {path.parent.parent.name}/{path.name} | {len(epochs)}/{run.config()['epochs']} | "
          f"{(epochs['epoch_seconds'] + epochs['val_seconds'].fillna(0)).mean():.1f} | {wall:.0f} | "
          f"{int(best['epoch'])} | {best['val_tuned_jaccard']:.4f} | "
          f"{val['overall'] if val else float('nan'):.4f} | {' | '.join(per)} | "
          f"{end['reason'] if end else 'unfinished'} |", flush=True)
PY
