#!/usr/bin/env bash
# One-call GPU check (under 8 minutes on an H100): set up, train-step benchmark on the GPU, then 2 epochs of
# unet-convnext-attention on the real data with AMP; prints images/s and the validation score.
#   benchmarks/gpu_check.sh [DATA_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
ROOT="${1:-${SKINSEG_ISIC_ROOT:-}}"
for c in shared/data/isic2018_256 ../shared/data/isic2018_256; do
  [ -z "$ROOT" ] && [ -d "$c" ] && ROOT="$(cd "$c" && pwd)"
done
[ -n "$ROOT" ] || { echo "no ISIC data found: pass DATA_ROOT or set SKINSEG_ISIC_ROOT" >&2; exit 2; }
OUT="${OUT:-reports/gpu_check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
time make setup >/dev/null
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
time .venv/bin/python benchmarks/train_step.py --device cuda --steps 5 --batch 8 | tee "$OUT/train_step.txt"
time .venv/bin/python -m skinseg train --config params/isic.yaml --set "data_root=$ROOT" --set epochs=2 \
  --set output_dir="$OUT/runs" --set num_workers=8 --set warmup_epochs=0 | tee "$OUT/train.json"
RUN=$(ls -d "$OUT"/runs/*/ | tail -1)
.venv/bin/python - "$RUN" <<'PY'
import sys
from skinseg.runs import read_metrics
for _, r in read_metrics(sys.argv[1])[1].iterrows():
    print(f"epoch {int(r['epoch'])}: {r['images_per_s']:.1f} images/s, {r['epoch_seconds']:.1f} s, "
          f"val (dev) official jaccard {r['val_jaccard']:.4f}, tuned {r['val_tuned_jaccard']:.4f}")
PY
BEST=$(.venv/bin/python -c "import sys; from skinseg.runs import best_checkpoint; print(best_checkpoint(sys.argv[1]))" "$RUN")
.venv/bin/python -m skinseg evaluate --checkpoint "$BEST" --data "$ROOT" --split val --json "$OUT/val.json"
