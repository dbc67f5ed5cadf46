#!/usr/bin/env bash
# The test command: installs the pinned stack into the cached venv if missing, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
python -m pytest -q -p no:cacheprovider --durations=15 "${@:-tests}"
