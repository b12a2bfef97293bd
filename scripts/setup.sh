#!/usr/bin/env bash
# Set up mouse-facelift on Debian 12 / Python 3.11: system libraries (as root) and .venv.
#   bash scripts/setup.sh          # pipeline + tests
#   bash scripts/setup.sh --gpu    # also gsplat (CUDA machines)
# Idempotent: rerunning only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # OSMesa: headless CPU rendering for pyrender; EGL for GPU machines; graphviz for the DAG picture.
  pkgs="python3-venv libosmesa6 libgl1 libegl1 graphviz"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# pyrender's metadata pins PyOpenGL==3.1.0, which cannot render with OSMesa; we run it with
# PyOpenGL 3.1.10 (pinned in pyproject.toml), so pyrender itself is installed without deps.
.venv/bin/python -m pip install -q --no-deps pyrender==0.1.45
if [ "${1:-}" = "--gpu" ]; then
  .venv/bin/python -m pip install -q gsplat==1.5.3
fi
.venv/bin/python -c "import workflow_scripts, model, pyrender, torch, av, cv2, h5py; print('mouse-facelift environment ready: torch', torch.__version__)"
