#!/usr/bin/env bash
# The test command: installs the pinned stack into the cached venv if missing, lints (ruff), runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export US3L_WITH_MMCV=1  # the suite covers MMDetection too: build / install mmcv's ops if missing
source scripts/bootstrap.sh
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
ruff check .  # lint first (rules in pyproject.toml): cheap, and a failure names file:line
python -m pytest -q -p no:cacheprovider --durations=15 "${@:-tests}"
