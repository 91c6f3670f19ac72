#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the project needs (idempotent).
#   bash scripts/setup.sh          # runtime: backend, CLI, demo (bpy included: the demo writes a .blend)
# On machines without CUDA the CPU build of torch is installed FIRST, so that no dependency pulls the
# multi-gigabyte CUDA wheels; with an NVIDIA driver present the CUDA build of the same version is installed.
# One torch version everywhere (I3D_TORCH, default 2.13.0): the test extra pins triton 3.7.1, the Triton
# that torch 2.13.0's CUDA wheel requires, and the CPU↔CUDA parity figures are for that pair.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" - <<'PYEOF'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"Python 3.11 is required (bpy 5.0.1 wheels exist only for 3.11); found {sys.version.split()[0]}. "
             "Set PYTHON=/path/to/python3.11.")
PYEOF
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
TORCH_VERSION=${I3D_TORCH:-${I3D_CPU_TORCH:-2.13.0}}  # I3D_CPU_TORCH: the older name, still honoured
$PIP install "torch==$TORCH_VERSION"
$PIP install -e ".[test]"
.venv/bin/python -c "import torch, bpy, interactive3d; print('interactive3d set up: torch', torch.__version__, '| bpy', bpy.app.version_string)"
