#!/usr/bin/env bash
# The main job on CPU: US3L pre-training -> ONE slimmable Mask R-CNN per seed -> COCO AP at 9 widths, 3 seeds,
# and the same with a randomly initialised backbone -> runs/main/results.{md,csv,json} + ap_vs_gflops.png.
#   bash scripts/main.sh                         # Detectron2 (default), outputs in runs/main (ignored by git)
#   bash scripts/main.sh --mmdet                 # MMDetection
#   bash scripts/main.sh --quick                 # pipeline check in minutes
#   bash scripts/main.sh --output results/main   # regenerate the committed reference results, on purpose
#   bash scripts/main.sh --help                  # every option (widths, seeds, budgets, folders, ...)
# The first call installs the pinned environment (scripts/bootstrap.sh, cached outside the repository);
# mmcv's compiled ops are built only for --mmdet.
set -euo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for _a in "$@"; do if [ "$_a" = --mmdet ]; then export US3L_WITH_MMCV=1; fi; done  # only MMDetection needs mmcv
# shellcheck disable=SC1091
source "$_here/bootstrap.sh"
cd "$_here/.."
exec python tools/run_main.py "$@"
