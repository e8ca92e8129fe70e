#!/usr/bin/env bash
# A Python venv with torch for the PyTorch side-by-sides, created if VENV_DIR has none. The PyPI
# torch wheel is the CUDA build, ~5.4 GB installed; it runs on CPU.
# usage: scripts/torch_venv.sh VENV_DIR
set -euo pipefail
venv="${1:?usage: scripts/torch_venv.sh VENV_DIR}"
if [ ! -x "$venv/bin/python" ]; then
  echo "bench: creating $venv with torch (about 5.4 GB)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch numpy
fi
