#!/usr/bin/env bash
# What a newcomer waits for, from `git clone` with nothing installed (an empty US3L_CACHE each round):
#   bash bench/bench_fresh_clone.sh first [ROUNDS]  # `bash scripts/main.sh` until its first per-seed result line
#                                                   # (`..._evaluate: box AP ...`), then the job is stopped
#   bash bench/bench_fresh_clone.sh stack [ROUNDS]  # `US3L_WITH_MMCV=1 source scripts/bootstrap.sh`, then
#                                                   # us3l, detectron2, mmdet and mmcv's compiled nms from /
# Run from the repository root; it clones HEAD (commit first). One markdown row per round on stdout, seconds
# after the clone started; the run's output goes to a temporary log (its tail is printed on a failure).
set -euo pipefail
mode="${1:?usage: bench/bench_fresh_clone.sh first|stack [ROUNDS]}"
rounds="${2:-1}"
repo="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

stamped() {  # command... -> its output, each line prefixed with the seconds since $t0
  "$@" 2>&1 | while IFS= read -r line; do
    printf '%.1f %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$line"
  done
}
at() {  # pattern -> seconds of the first log line matching it
  grep -m1 -E "$1" "$work/log" | cut -d' ' -f1
}

case "$mode" in
  first) echo "| round | commit | install (s) | first per-seed result (s) |" ;;
  stack) echo "| round | commit | core + Detectron2 (s) | whole stack, imports checked (s) |" ;;
  *) echo "unknown mode $mode (first | stack)" >&2; exit 2 ;;
esac
echo "|---:|---|---:|---:|"
for round in $(seq "$rounds"); do
  rm -rf "$work/clone" "$work/cache"
  t0=$(date +%s.%N)
  git clone -q "$repo" "$work/clone"
  commit="$(git -C "$work/clone" rev-parse --short HEAD)"
  cd "$work/clone"
  if [ "$mode" = first ]; then
    # its own session, so that the whole job (bootstrap, runner, stage processes) stops at once
    setsid bash -c "$(declare -f stamped); t0=$t0; stamped env -u VIRTUAL_ENV US3L_CACHE='$work/cache' \
      bash scripts/main.sh" > "$work/log" &
    job=$!
    until grep -qE "_evaluate: box AP" "$work/log"; do
      kill -0 "$job" 2>/dev/null || { tail -20 "$work/log"; exit 1; }
      sleep 1
    done
    kill -- -"$job" 2>/dev/null || true
    wait "$job" 2>/dev/null || true
    echo "| $round | $commit | $(at 'venv ready') | $(at '_evaluate: box AP') |"
  else
    stamped env -u VIRTUAL_ENV US3L_CACHE="$work/cache" US3L_WITH_MMCV=1 bash -c 'source scripts/bootstrap.sh &&
      cd / && python -c "import us3l, detectron2, mmdet; from mmcv.ops import nms; print(\"imports ok\")"' \
      > "$work/log" || { tail -20 "$work/log"; exit 1; }
    grep -q "imports ok" "$work/log" || { tail -20 "$work/log"; exit 1; }
    echo "| $round | $commit | $(at 'venv ready') | $(at 'imports ok') |"
  fi
  cd "$repo"
done
