#!/usr/bin/env bash
# Fresh-install time of scripts/bootstrap.sh (core + Detectron2, no mmcv) at two commits, interleaved:
#   bash bench/bench_install.sh OLD_REF [ROUNDS]       (run from the repository root; default 2 rounds)
# Each run: an empty US3L_CACHE (so Detectron2's wheel is built too), `source scripts/bootstrap.sh`, then
# `import torch, detectron2, us3l`. OLD_REF runs from a temporary git worktree, the current checkout as NEW.
# The runs alternate (old new, old new, ...) because this VM's speed drifts by tens of percent within an hour.
set -euo pipefail
old_ref="${1:?usage: bench/bench_install.sh OLD_REF [ROUNDS]}"
rounds="${2:-2}"
repo="$(pwd)"
work="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add -q --detach "$work/old" "$old_ref"
echo "| round | $old_ref (s) | $(git rev-parse --short HEAD) (s) |"
echo "|---:|---:|---:|"
for round in $(seq "$rounds"); do
  row="| $round |"
  for root in "$work/old" "$repo"; do
    rm -rf "$work/cache"
    start=$(date +%s.%N)
    (cd "$root" && env -u VIRTUAL_ENV US3L_CACHE="$work/cache" \
      bash -c 'source scripts/bootstrap.sh && python -c "import torch, detectron2, us3l"') >"$work/log" 2>&1 \
      || { tail -20 "$work/log"; exit 1; }
    row="$row $(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.0f') |"
  done
  echo "$row"
done
