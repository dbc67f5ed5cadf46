#!/usr/bin/env bash
# The main job on CPU: US3L pre-training -> BN calibration -> conversion -> Mask R-CNN at widths
# 1.0/0.75/0.5/0.25 -> COCO evaluation -> results/main/results.{md,csv,json} + ap_vs_gflops.png.
#   bash scripts/main.sh                 # Detectron2 (default)
#   bash scripts/main.sh --mmdet         # MMDetection
#   bash scripts/main.sh --help          # every option (widths, budgets, output folder, ...)
# The first call installs the pinned environment (scripts/bootstrap.sh, cached outside the repository);
# mmcv's compiled ops are built only for --mmdet.
set -euo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for _a in "$@"; do if [ "$_a" = --mmdet ]; then export US3L_WITH_MMCV=1; fi; done  # only MMDetection needs mmcv
# shellcheck disable=SC1091
source "$_here/bootstrap.sh"
cd "$_here/.."
exec python tools/run_main.py "$@"
