#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the project needs (idempotent).
#   bash scripts/setup.sh          # runtime: backend, CLI, demo (bpy included: the demo writes a .blend)
# On machines without CUDA the CPU build of torch is installed FIRST, so that no dependency pulls the
# multi-gigabyte CUDA wheels; with an NVIDIA driver present the default (CUDA) torch is installed.
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
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    $PIP install "torch>=2.1"
else
    $PIP install "torch==${I3D_CPU_TORCH:-2.13.0}"
fi
$PIP install -e ".[test]"
.venv/bin/python -c "import torch, bpy, interactive3d; print('interactive3d set up: torch', torch.__version__, '| bpy', bpy.app.version_string)"
