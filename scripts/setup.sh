#!/usr/bin/env bash
# Set up Hurricane on a fresh Debian machine, then optionally run something:
#   bash scripts/setup.sh          install only
#   bash scripts/setup.sh demo     install, then run the main job on the embedded default
#   bash scripts/setup.sh test     install, then lint, format-check, type-check and run the
#                                  test suite (what CI runs)
# Installs the Debian packages below, and a virtual environment in .venv holding the local
# CPU build of PyTorch (installed first, so nothing pulls a CUDA build) and this project.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist openssh-server)
PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv python3-pip)
  PYTHON=/usr/bin/python3
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  echo "setup: installing $TORCH_PIN (CPU build) first"
  .venv/bin/pip install -q "$TORCH_PIN"
fi
echo "setup: installing hurricane-nas and its dependencies"
.venv/bin/pip install -q -e '.[dev,nncf]'

case "${1:-}" in
  "") echo "setup: done; run .venv/bin/hurricane --help" ;;
  demo) shift; exec .venv/bin/hurricane demo "$@" ;;
  test) shift
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
    exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "setup: unknown action '$1' (expected demo or test)" >&2; exit 2 ;;
esac
