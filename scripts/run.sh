#!/usr/bin/env bash
# One entry point for a fresh Debian + Python 3.11 machine:
#   bash scripts/run.sh demo   # set up, then run the demo (phantom slide, bundled model)
#   bash scripts/run.sh test   # set up, then run the whole test suite headless
# Set-up is idempotent: the virtual environment in .venv is reused while pyproject.toml
# and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${WSI_DETECT_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

need_python() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "run.sh: Python >= 3.10 is needed ('$PY' is missing or older); set PYTHON=..." >&2
    exit 2
  fi
}

setup_venv() {
  need_python
  local stamp="$VENV/.install-stamp"
  local want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "== setting up $VENV (first run takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local extra=()
  # A local CPU wheel of torch avoids pulling GBs of CUDA packages from the registry.
  for d in /opt/wheels "$ROOT/wheels"; do [ -d "$d" ] && extra+=(--find-links "$d"); done
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${extra[@]}" -c constraints.txt -e ".[napari,test]"
  echo "$want" > "$stamp"
}

# GUI tests need an X server with OpenGL (Mesa); install what is missing when we can.
ensure_display_packages() {
  local pkgs=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0
    libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
    libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing display packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "run.sh: GUI tests need: sudo apt-get install ${missing[*]}" >&2
    echo "run.sh: running without them; GUI tests will be skipped." >&2
  fi
}

with_display() {
  if [ -n "${DISPLAY:-}" ]; then
    "$@"
  elif command -v xvfb-run >/dev/null; then
    xvfb-run -a -s "-screen 0 1600x1000x24" "$@"
  else
    QT_QPA_PLATFORM=offscreen "$@"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup)
    setup_venv ;;
  demo)
    setup_venv
    "$VENV/bin/wsi-detect" demo "$@" ;;
  test)
    setup_venv
    ensure_display_packages
    "$VENV/bin/ruff" check src tests scripts
    set +e
    with_display "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
    rc=$?
    set -e
    # pytest's "no tests collected" (5) is a failure of the suite too.
    exit $rc ;;
  *)
    echo "usage: bash scripts/run.sh {demo|test|setup} [args...]" >&2
    exit 2 ;;
esac
