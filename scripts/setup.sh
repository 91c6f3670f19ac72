#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the project needs (idempotent).
#   bash scripts/setup.sh          # runtime: backend, CLI, demo (bpy included: the demo writes a .blend)
# torch: any release from 2.10 to 2.14 (README, "Supported torch and Triton"). A torch already in .venv in
# that range is kept; I3D_TORCH=X.Y.Z asks for one. Otherwise: with an NVIDIA driver the newest CUDA build
# from PyPI; without one the CPU build, installed FIRST so that no dependency pulls gigabytes of CUDA wheels
# (PyTorch's CPU index when it is reachable, else a CPU wheel the machine carries in pip's find-links, else
# PyPI's build).
# Triton: a CUDA torch brings its own. A CPU torch brings none, so the Triton its CUDA twin pins is added
# (--no-deps) for the in-process kernel tests, and the other supported Tritons go to .venv/triton-layers/<v>
# (pip --target, no dependencies): tests/backend/test_hashgrid_triton.py compiles and interprets the kernels
# with each of them on this one torch.
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
TORCH_RANGE="torch>=2.10,<2.15"
TRITONS="3.6.0 3.7.1 3.8.0"   # what torch 2.10/2.11, 2.12/2.13 and 2.14 pin for CUDA
CPU_INDEX=https://download.pytorch.org/whl/cpu
have_torch() { .venv/bin/python -c "import torch, sys; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(0 if (2, 10) <= v < (2, 15) else 1)" 2>/dev/null; }
if [ -n "${I3D_TORCH:-${I3D_CPU_TORCH:-}}" ]; then   # I3D_CPU_TORCH: the older name, still honoured
    $PIP install "torch==${I3D_TORCH:-$I3D_CPU_TORCH}"
elif have_torch; then
    :
elif command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install "$TORCH_RANGE"
elif curl -sfI --max-time 5 "$CPU_INDEX/torch/" >/dev/null 2>&1; then
    $PIP install --index-url "$CPU_INDEX" "$TORCH_RANGE"
elif $PIP install --no-index --no-deps "$TORCH_RANGE" 2>/dev/null; then
    # a CPU wheel from find-links (its dependencies come from the index: installed torch satisfies the range,
    # so pip only adds what it needs)
    $PIP install "torch==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("torch"))')"
else
    $PIP install "$TORCH_RANGE"   # PyPI's CUDA build: runs on CPU too, gigabytes larger
fi
$PIP install -e ".[test]"
# the Triton a CUDA build of this torch would bring (a CPU build brings none)
TRITON_OF_TORCH=$(.venv/bin/python -c "
import torch
v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2])
print({(2, 10): '3.6.0', (2, 11): '3.6.0', (2, 12): '3.7.1', (2, 13): '3.7.1', (2, 14): '3.8.0'}[v])")
.venv/bin/python -c "import triton" 2>/dev/null || $PIP install --no-deps "triton==$TRITON_OF_TORCH"
HAVE_TRITON=$(.venv/bin/python -c "import triton; print(triton.__version__)")
for v in $TRITONS; do
    if [ "$v" != "$HAVE_TRITON" ] && [ ! -f ".venv/triton-layers/$v/triton/__init__.py" ]; then
        $PIP install --no-deps --target ".venv/triton-layers/$v" "triton==$v"
    fi
done
.venv/bin/python -c "import torch, triton, bpy, interactive3d; print('interactive3d set up: torch', torch.__version__, '| triton', triton.__version__, '| bpy', bpy.app.version_string)"
