#!/usr/bin/env bash
# Table-1-style comparison on the embedded dataset, on CPU: naive US+SimSiam, US+SimSiam+inplace distillation,
# US-SimCLR, US-BYOL without aux head, US3L, and a randomly initialised backbone as the floor.
# Every method gets the same backbone, heads, data, iterations, widths and optimizer; only the method differs.
# Usage: scripts/ssl_table1.sh [OUT_DIR]
#   env: ITERS, BATCH, LR, SCHEDULE (cosine|constant), STEP_MODE (per_width|accumulate), IMAGE (px),
#        PARALLEL (concurrent runs), METHODS, THREADS, STEM (CIFAR stem true/false),
#        STYLE (embedded set: category | shape), PROJ_LAST_BN (true|false), EXTRA (more key=value overrides)
# Defaults = the setting whose results are committed in results/ssl_table1/ (see its README.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/results/ssl_table1}"
ITERS="${ITERS:-300}"
BATCH="${BATCH:-32}"
LR="${LR:-0.5}"
SCHEDULE="${SCHEDULE:-constant}"
STEP_MODE="${STEP_MODE:-per_width}"
IMAGE="${IMAGE:-16}"
PARALLEL="${PARALLEL:-2}"
THREADS="${THREADS:-1}"
CIFAR_STEM="${STEM:-false}"   # CIFAR stem at 32 px costs ~7x more on CPU; the ImageNet stem keeps this in minutes
METHODS="${METHODS:-simsiam_naive simsiam_inplace us3l simclr byol_noaux}"
STYLE="${STYLE:-category}"
PROJ_LAST_BN="${PROJ_LAST_BN:-false}"  # BYOL-style projector: with a final BN, outputs cannot collapse to a point
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
export US3L_DATASETS="${US3L_DATASETS:-${TMPDIR:-/tmp}/us3l_datasets}"  # generated images stay out of the results
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
COMMON=(model.arch=resnet18 model.cifar_stem=$CIFAR_STEM
  method.proj_hidden=512 method.proj_dim=128 method.proj_layers=3 method.proj_last_bn=$PROJ_LAST_BN method.pred_hidden=64
  sampling.num_widths=3 sampling.dynamic=false sampling.step_mode=$STEP_MODE
  group_reg.enabled=true data.dataset=embedded data.embedded_style=$STYLE data.image_size=$IMAGE data.batch_size=$BATCH
  data.embedded_train_per_class=128 data.embedded_val_per_class=64 data.embedded_image_size=32
  optim.lr=$LR optim.schedule=$SCHEDULE train.iterations=$ITERS train.checkpoint_every=0 train.log_every=20 train.progress=false
  train.num_threads=$THREADS train.seed=0 "${EXTRA_ARGS[@]}")
DATA_ROOT="$(python -c "from us3l.data.datasets import embedded_root; print(embedded_root('$STYLE'))")"
EVAL=(--widths 1.0 0.75 0.5 0.25 --dataset imagefolder --data-root "$DATA_ROOT"
  --image-size $IMAGE --recipe cifar --calib-batches 4 --batch-size 128 --probe-epochs 30 --threads "$THREADS")

# generate the dataset once, before parallel runs race for it
python -c "from us3l.data.datasets import prepare_embedded; prepare_embedded(None, 128, 64, 32, 0, '$STYLE')"

run_one() {
  local m="$1" dir="$OUT/$1"
  rm -rf "$dir"
  python "$ROOT/tools/pretrain.py" --config "$ROOT/configs/us3l_tiny_cpu.yaml" --output-dir "$dir" \
    "${COMMON[@]}" method.name="$m" > "$OUT/$m.train.log" 2>&1
  python "$ROOT/tools/eval_ssl.py" "$dir/final.pth" "${EVAL[@]}" --output "$OUT/$m.eval.json" --title "$m" \
    > "$OUT/$m.eval.log" 2>&1
  # keep the results small: drop the training checkpoints and TensorBoard files
  rm -rf "$dir"/*.pth "$dir"/tb
  echo "done $m"
}

# floor: the same backbone, randomly initialised (seed 0), never trained
python - "$OUT/random_init.pth" <<'PY'
import sys, torch
from us3l.models import build_us_model
from us3l.checkpoint.model_io import save_model_backbone
torch.manual_seed(0)
save_model_backbone(build_us_model("resnet18", 0, False), sys.argv[1], method="random_init")
PY
python "$ROOT/tools/eval_ssl.py" "$OUT/random_init.pth" "${EVAL[@]}" --output "$OUT/random_init.eval.json" \
  --title random_init > "$OUT/random_init.eval.log" 2>&1
rm -f "$OUT/random_init.pth"

running=0
for m in $METHODS; do
  run_one "$m" &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then wait -n; running=$((running - 1)); fi
done
wait

python "$ROOT/tools/ssl_table.py" "$OUT" $METHODS random_init
