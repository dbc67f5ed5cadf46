#!/usr/bin/env bash
# The transfer table on CPU: random init, S-Net + SimSiam (naive, inplace), US3L and individually trained
# networks, each transferred to a slimmable Mask R-CNN at widths 1.0 / 0.75 / 0.5 / 0.25, backbone frozen and
# fine-tuned, 3 detector seeds -> OUT/results.{md,csv,json} + ap_vs_gflops.png, with the reading written from
# the rows (docs/transfer_benchmark.md).
#   bash scripts/transfer_table.sh runs/transfer            # default scale
#   bash scripts/transfer_table.sh runs/transfer --quick    # the whole road in minutes
#   bash scripts/transfer_table.sh OUT --scale 10 --num-gpus 1   # a GPU user: longer pre-training, larger pool
#   bash scripts/transfer_table.sh --help                   # every option
# Rerunning skips the stages that finished (resumable stage by stage); --force reruns them.
set -euo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for _a in "$@"; do if [ "$_a" = --mmdet ]; then export US3L_WITH_MMCV=1; fi; done  # only MMDetection needs mmcv
# shellcheck disable=SC1091
source "$_here/bootstrap.sh"
cd "$_here/.."
exec python tools/transfer_table.py "$@"
