#!/usr/bin/env bash
# Idempotent set-up of the pinned stack in a venv cached OUTSIDE the repository.
# Source it (`source scripts/bootstrap.sh`): it activates the venv, installing what is missing first.
# Cache location: $US3L_CACHE (default ~/.cache/us3l); the venv is keyed by requirements.txt + BOOTSTRAP_VERSION;
# built wheels (Detectron2, mmcv) stay in $US3L_CACHE/wheels across venv keys.
# Order: torch + core + Detectron2 first (the Detectron2 path is usable then); mmcv's compiled ops, which only
# MMDetection needs, are built when US3L_WITH_MMCV=1 (scripts/test.sh, scripts/main.sh --mmdet) and cached.
# Source packages come through pip, so its configuration (mirrors, proxies, find-links) is honoured.
set -euo pipefail
_T0=$SECONDS
_US3L_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
US3L_CACHE="${US3L_CACHE:-$HOME/.cache/us3l}"
BOOTSTRAP_VERSION=2  # bump when the install steps below change
_key="$( (cat "$_US3L_ROOT/requirements.txt"; echo "$BOOTSTRAP_VERSION") | sha256sum | cut -c1-12)"
US3L_VENV="$US3L_CACHE/venv-$_key"
_WHEELS="$US3L_CACHE/wheels"
_PY="${PYTHON:-python3}"
D2_VERSION=0.6
MMCV_VERSION=2.1.0

_log() { echo "[us3l-bootstrap] $*" >&2; }

_fetch_sdist() {  # name version -> downloads the source archive into the current folder, through pip
  # (the user's pip configuration: index / extra indexes, find-links, proxies, certificates)
  pip download -q --no-deps --no-binary :all: --no-build-isolation "$1==$2" -d . >/dev/null 2>&1 \
    || _fetch_sdist_with_pip_finder "$1" "$2"
}

_fetch_sdist_with_pip_finder() {  # name version -> the same, for archives `pip download` refuses to prepare
  # pip refuses a PyPI sdist whose metadata names a URL dependency (pb1-detectron2's "all" extra): ask pip's own
  # package finder, with the same configuration, for the archive and download it with pip's session
  python - "$1" "$2" <<'PY'
import os, sys
from pip._internal.commands import create_command
from pip._vendor.packaging.specifiers import SpecifierSet

name, version = sys.argv[1:3]
cmd = create_command("download")
options, _ = cmd.parse_args(["--no-deps", "--no-binary", ":all:", f"{name}=={version}"])
with cmd.main_context():
    session = cmd.get_default_session(options)
    best = cmd._build_package_finder(options=options, session=session).find_best_candidate(
        name, SpecifierSet(f"=={version}")).best_candidate
    if best is None or not best.link.filename.endswith((".tar.gz", ".zip")):
        sys.exit(f"no source archive of {name}=={version} on the configured package indexes (pip config list)")
    with session.get(best.link.url.split("#")[0], stream=True) as r, open(best.link.filename, "wb") as f:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            f.write(chunk)
PY
}

_pip_install_parallel() {  # pip install arguments -> ONE resolve, then the plan installed by one pip per core
  # Installing ~5.5 GB of wheels (torch's CUDA build) is CPU-bound unpacking in a single pip process; the
  # resolved plan (pip's --dry-run --report, with the user's pip configuration) split by archive size into one
  # --no-deps group per core installs disjoint packages side by side. `pip check` then verifies the result.
  local plan jobs pids=() p rc=0
  plan="$(mktemp -d)"; jobs="$(nproc)"
  pip install -q --dry-run --report "$plan/report.json" "$@"
  python - "$plan" "$jobs" <<'PY'
import json, os, sys, urllib.parse, urllib.request

plan, jobs = sys.argv[1], int(sys.argv[2])
sizes = []
for item in json.load(open(os.path.join(plan, "report.json")))["install"]:
    url = urllib.parse.urlparse(item["download_info"]["url"])
    path = urllib.request.url2pathname(url.path) if url.scheme == "file" else ""
    size = os.path.getsize(path) if path and os.path.isfile(path) else 1 << 20  # remote: size unknown
    sizes.append((size, f'{item["metadata"]["name"]}=={item["metadata"]["version"]}'))
groups, totals = [[] for _ in range(jobs)], [0] * jobs
for size, spec in sorted(sizes, reverse=True):  # largest first, each to the lightest group
    i = totals.index(min(totals))
    groups[i].append(spec)
    totals[i] += size
for i, group in enumerate(g for g in groups if g):
    with open(os.path.join(plan, f"group{i}.txt"), "w") as f:
        f.write("\n".join(group) + "\n")
PY
  for p in "$plan"/group*.txt; do
    pip install -q --no-deps -r "$p" &
    pids+=("$!")
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  rm -rf "$plan"
  [ "$rc" = 0 ] || { _log "error: a pip install group failed (see above)"; return 1; }
  pip check >&2 || { _log "error: the installed packages are inconsistent (pip check, above)"; return 1; }
}

_build_detectron2_wheel() {
  # PyPI re-upload of Detectron2 0.6 without C++ sources: build pure Python, package model-zoo configs.
  local work; work="$(mktemp -d)"
  ( cd "$work"
    _fetch_sdist_with_pip_finder pb1-detectron2 "$D2_VERSION" >/dev/null  # `pip download` refuses it (9 s lost)
    tar xzf pb1[-_]detectron2-*.tar.gz
    cd pb1[-_]detectron2-"$D2_VERSION"
    python - <<'PY'
import re, pathlib, shutil
setup = pathlib.Path("setup.py")
src = setup.read_text()
src = re.sub(r"ext_modules\s*=\s*get_extensions\(\)", "ext_modules=[]", src)
setup.write_text(src)
zoo = pathlib.Path("detectron2/model_zoo/configs")
if zoo.is_dir() and not pathlib.Path("configs").exists():
    shutil.move(str(zoo), "configs")
t = pathlib.Path("detectron2/data/transforms/transform.py")
t.write_text(t.read_text().replace("Image.LINEAR", "Image.BILINEAR"))
pathlib.Path("detectron2/_C.py").write_text(
    '"""Stand-in for the C++ extension, which this build does not ship (no deformable/rotated ops)."""\n\n\n'
    'def get_compiler_version():\n    return "none (built without C++ ops)"\n\n\n'
    'def get_cuda_version():\n    return "none"\n\n\n'
    'def has_cuda():\n    return False\n')
PY
    pip wheel --no-deps --no-build-isolation -w "$_WHEELS" . >/dev/null )
  rm -rf "$work"
}

_precompile_mmcv_header() {
  # In the mmcv source folder: precompile pytorch_cpp_helper.hpp (torch's headers), which 63 of mmcv's 77 op
  # sources include first; parsing it was most of each compile (nms.cpp: 41 s -> 7.8 s, both with -g). The flags
  # must be the build's own, so a first build_ext with a compiler that refuses to compile writes build.ninja
  # and stops; GCC then picks up the .gch next to the header. A .gch it cannot use is ignored (no harm).
  local cxx="${CXX:-c++}" refuse ninja_file cflags post
  refuse="$(pwd)/.refuse-cxx"
  printf '#!/bin/sh\nfor a in "$@"; do [ "$a" = -c ] && exit 1; done\nexec %s "$@"\n' "$cxx" > "$refuse"
  chmod +x "$refuse"
  CXX="$refuse" MMCV_WITH_OPS=1 FORCE_CUDA=0 python setup.py build_ext >/dev/null 2>&1 || true
  ninja_file="$(ls build/temp*/build.ninja 2>/dev/null | head -1)"
  if [ -n "$ninja_file" ]; then
    cflags="$(sed -n 's/^cflags = //p' "$ninja_file")"
    post="$(sed -n 's/^post_cflags = //p' "$ninja_file")"
    # shellcheck disable=SC2086  # word splitting of the build's own flag lists is intended
    "$cxx" $cflags -x c++-header mmcv/ops/csrc/common/pytorch_cpp_helper.hpp \
      -o mmcv/ops/csrc/common/pytorch_cpp_helper.hpp.gch $post \
      || { _log "precompiled header failed; compiling without it"; rm -f mmcv/ops/csrc/common/*.gch; }
  fi
  rm -rf build "$refuse"
}

_build_mmcv_wheel() {
  # mmcv 2.1.0 with compiled ops; torch>=2.10 headers need C++20 (setup.py hard-codes c++17). No debug info
  # (-g0: Python's flags add -g, which doubled each compile and made a 32 MB wheel) and a precompiled header.
  local work; work="$(mktemp -d)"
  ( cd "$work"
    _fetch_sdist mmcv "$MMCV_VERSION" >/dev/null
    tar xzf mmcv-"$MMCV_VERSION".tar.gz
    cd mmcv-"$MMCV_VERSION"
    sed -i 's/-std=c++17/-std=c++20/g' setup.py
    export CFLAGS="${CFLAGS:-} -g0"
    _precompile_mmcv_header
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      pip wheel --no-deps --no-build-isolation -w "$_WHEELS" . )
  rm -rf "$work"
}

mkdir -p "$US3L_CACHE"
exec 9>"$US3L_CACHE/.lock"
flock 9  # one installer at a time (parallel test runs / CI on the same machine)
if [ ! -f "$US3L_VENV/.complete" ]; then
  _log "creating $US3L_VENV (torch, core, Detectron2; mmcv later, only for MMDetection)"
  mkdir -p "$_WHEELS"
  rm -rf "$US3L_VENV"
  "$_PY" -m venv "$US3L_VENV"
  # shellcheck disable=SC1091
  source "$US3L_VENV/bin/activate"
  pip install -q --upgrade pip "setuptools<81" wheel ninja
  # the requirements (torch pinned there) with detectron2's runtime deps (its wheel goes in --no-deps to keep
  # torch pinned) and MMDetection's, in one resolve
  _pip_install_parallel -r "$_US3L_ROOT/requirements.txt" \
    "iopath<0.1.10,>=0.1.7" "omegaconf>=2.1" "hydra-core>=1.1" yacs tabulate cloudpickle termcolor \
    black "addict" "rich" "opencv-python-headless" "terminaltables" "shapely" "scipy" packaging yapf future pydot
  ls "$_WHEELS"/pb1_detectron2-"$D2_VERSION"-*.whl >/dev/null 2>&1 || _build_detectron2_wheel
  pip install -q --no-deps "$_WHEELS"/pb1_detectron2-"$D2_VERSION"-*.whl
  pip install -q --no-deps --no-build-isolation -e "$_US3L_ROOT"
  touch "$US3L_VENV/.complete"
  _log "venv ready for the core and Detectron2 ($((SECONDS - _T0)) s)"
else
  # shellcheck disable=SC1091
  source "$US3L_VENV/bin/activate"
fi
if [ "${US3L_WITH_MMCV:-0}" = 1 ] && [ ! -f "$US3L_VENV/.mmcv" ]; then
  if ! ls "$_WHEELS"/mmcv-"$MMCV_VERSION"*.whl >/dev/null 2>&1; then
    _log "MMDetection needs mmcv's compiled ops: building mmcv $MMCV_VERSION once (3-5 min on 2 quiet cores, then" \
         "cached in $_WHEELS); the Detectron2 path does not need it"
    _build_mmcv_wheel
  fi
  pip install -q --no-deps "$_WHEELS"/mmcv-"$MMCV_VERSION"*.whl
  touch "$US3L_VENV/.mmcv"
  _log "mmcv installed ($((SECONDS - _T0)) s)"
fi
# the project itself, editable: checked from another folder (the current one would always "find" us3l)
# (find_spec locates the package as `import us3l` would, without importing torch: ~3 s less per call)
_where() {
  (cd / && python -c "import importlib.util as u, os; print(os.path.realpath(u.find_spec('us3l').submodule_search_locations[0]))" \
    2>/dev/null) || true
}
if [ "$(_where)" != "$(realpath "$_US3L_ROOT/us3l")" ]; then
  pip install -q --no-deps --no-build-isolation -e "$_US3L_ROOT"
  if [ "$(_where)" != "$(realpath "$_US3L_ROOT/us3l")" ]; then
    _log "error: after 'pip install -e $_US3L_ROOT', python outside the repository imports us3l from" \
         "'$(_where)', not $_US3L_ROOT/us3l"
    flock -u 9
    return 1 2>/dev/null || exit 1
  fi
fi
flock -u 9
exec 9>&-
set +euo pipefail
