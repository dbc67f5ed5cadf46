#!/usr/bin/env bash
# Idempotent set-up of the pinned stack in a venv cached OUTSIDE the repository.
# Source it (`source scripts/bootstrap.sh`): it activates the venv, installing what is missing first.
# Cache location: $US3L_CACHE (default ~/.cache/us3l); the venv is keyed by requirements.txt + BOOTSTRAP_VERSION.
set -euo pipefail
_US3L_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
US3L_CACHE="${US3L_CACHE:-$HOME/.cache/us3l}"
BOOTSTRAP_VERSION=1  # bump when the install steps below change
_key="$( (cat "$_US3L_ROOT/requirements.txt"; echo "$BOOTSTRAP_VERSION") | sha256sum | cut -c1-12)"
US3L_VENV="$US3L_CACHE/venv-$_key"
_WHEELS="$US3L_CACHE/wheels"
_PY="${PYTHON:-python3}"
D2_VERSION=0.6
MMCV_VERSION=2.1.0

_log() { echo "[us3l-bootstrap] $*" >&2; }

_fetch_sdist() {  # name version -> downloads the sdist into the current folder (PyPI simple index)
  python - "$1" "$2" <<'PY'
import re, sys, urllib.request
name, ver = sys.argv[1:3]
index = (urllib.request.urlopen(f"https://pypi.org/simple/{name}/", timeout=120).read().decode())
for url in re.findall(r'href="([^"#]+)', index):
    fname = url.rsplit("/", 1)[-1]
    if fname.endswith(".tar.gz") and fname[: -len(".tar.gz")].replace("_", "-").endswith("-" + ver):
        urllib.request.urlretrieve(url, fname)
        print(fname)
        break
else:
    sys.exit(f"no sdist of {name}=={ver} on the package index")
PY
}

_build_detectron2_wheel() {
  # PyPI re-upload of Detectron2 0.6 without C++ sources: build pure Python, package model-zoo configs.
  local work; work="$(mktemp -d)"
  ( cd "$work"
    _fetch_sdist pb1-detectron2 "$D2_VERSION" >/dev/null
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

_build_mmcv_wheel() {
  # mmcv 2.1.0 with compiled ops; torch>=2.10 headers need C++20 (setup.py hard-codes c++17).
  local work; work="$(mktemp -d)"
  ( cd "$work"
    _fetch_sdist mmcv "$MMCV_VERSION" >/dev/null
    tar xzf mmcv-"$MMCV_VERSION".tar.gz
    cd mmcv-"$MMCV_VERSION"
    sed -i 's/-std=c++17/-std=c++20/g' setup.py
    _log "compiling mmcv $MMCV_VERSION ops (one time, ~15 min on 2 cores; cached in $_WHEELS)"
    MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      pip wheel --no-deps --no-build-isolation -w "$_WHEELS" . )
  rm -rf "$work"
}

mkdir -p "$US3L_CACHE"
exec 9>"$US3L_CACHE/.lock"
flock 9  # one installer at a time (parallel test runs / CI on the same machine)
if [ ! -f "$US3L_VENV/.complete" ]; then
  _log "creating $US3L_VENV"
  mkdir -p "$_WHEELS"
  rm -rf "$US3L_VENV"
  "$_PY" -m venv "$US3L_VENV"
  # shellcheck disable=SC1091
  source "$US3L_VENV/bin/activate"
  pip install -q --upgrade pip "setuptools<81" wheel ninja
  pip install -q torch==2.14.1 torchvision==0.29.1
  pip install -q -r "$_US3L_ROOT/requirements.txt"
  ls "$_WHEELS"/pb1_detectron2-"$D2_VERSION"-*.whl >/dev/null 2>&1 || _build_detectron2_wheel
  ls "$_WHEELS"/mmcv-"$MMCV_VERSION"*.whl >/dev/null 2>&1 || _build_mmcv_wheel
  pip install -q --no-deps "$_WHEELS"/pb1_detectron2-"$D2_VERSION"-*.whl "$_WHEELS"/mmcv-"$MMCV_VERSION"*.whl
  # detectron2's runtime deps (its wheel is installed --no-deps to keep torch pinned)
  pip install -q "iopath<0.1.10,>=0.1.7" "omegaconf>=2.1" "hydra-core>=1.1" yacs tabulate cloudpickle termcolor \
    black "addict" "rich" "opencv-python-headless" "terminaltables" "shapely" "scipy" packaging yapf future pydot
  touch "$US3L_VENV/.complete"
  _log "venv ready"
else
  # shellcheck disable=SC1091
  source "$US3L_VENV/bin/activate"
fi
# the project itself, editable (cheap; re-run so a fresh clone points the venv at itself)
if ! python -c "import us3l, os, sys; sys.exit(0 if os.path.realpath(us3l.__path__[0]).startswith('$_US3L_ROOT') else 1)" 2>/dev/null; then
  pip install -q --no-deps --no-build-isolation -e "$_US3L_ROOT"
fi
flock -u 9
exec 9>&-
set +euo pipefail
