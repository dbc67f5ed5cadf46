#!/usr/bin/env bash
# The test command: installs the pinned stack into the cached venv if missing, lints (ruff, import contracts),
# runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export US3L_WITH_MMCV=1  # the suite covers MMDetection too: build / install mmcv's ops if missing
source scripts/bootstrap.sh
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
ruff check .  # lint first (rules in pyproject.toml): cheap, and a failure names file:line
lint-imports  # import contracts (pyproject.toml): layers point down, no cycles, no library module imports CLI code
# two test processes (pytest-xdist), one per core, one torch thread each (two threads each oversubscribe the cores:
# +10 CPU-minutes measured); a test file stays in one process (its module fixtures are built once)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -p no:cacheprovider -n "${US3L_TEST_WORKERS:-2}" --dist loadfile --durations=15 "${@:-tests}"
