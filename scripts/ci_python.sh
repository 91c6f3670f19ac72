#!/usr/bin/env bash
# CI: the protocol and backend fast tests (-m "not slow") on another Python with numpy 2 (issue 24 item 3).
#   bash scripts/ci_python.sh 3.12      # or 3.13
#   bash scripts/ci_python.sh 3.12 --build-only   # only the venv (.ci/run builds both while the main suite runs)
# Builds .venv/py<version> (idempotent): torch 2.10-2.14 from the package index (for 3.12/3.13 that is the
# CUDA build, which runs on CPU too), numpy >= 2, then this checkout with the texture extra and the test tools
# in pip's ordinary resolution, which must keep both. Python comes from PATH or pyenv (~/.pyenv/versions).
# On 3.12 (the GPU images' Python) also the GPU acceptance dry run, from a kit built for cp312.
set -euo pipefail
cd "$(dirname "$0")/.."
V="${1:?usage: ci_python.sh 3.12|3.13 [--build-only]}"
BUILD_ONLY=${2:-}
PY=""
for cand in $(ls -d "$HOME"/.pyenv/versions/"$V".*/bin/python 2>/dev/null | sort -V -r) "$(command -v "python$V" 2>/dev/null)"; do
    # a pyenv shim exists even where that version is not selected: take the first that really runs it
    if [ -n "$cand" ] && "$cand" -c "import sys; sys.exit(0 if sys.version.startswith('$V.') else 1)" 2>/dev/null; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then echo "ci_python: no Python $V in ~/.pyenv/versions or on PATH" >&2; exit 1; fi
VENV=".venv/py$V"
t0=$SECONDS
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    $PIP install "torch>=2.10,<2.15" "numpy>=2"
fi
# the heavy part (torch) is all --build-only does: the checkout's own install writes into the source tree,
# which the main suite's set-up is installing at the same time
[ "$BUILD_ONLY" = --build-only ] && { echo "ci_python: torch for $VENV ready in $((SECONDS - t0)) s"; exit 0; }
$PIP install -e ".[texture]" pytest hypothesis plyfile "backports.zstd; python_version<'3.14'"
"$VENV/bin/python" -c "
import sys, numpy, torch
print(f'ci_python: Python {sys.version.split()[0]}, numpy {numpy.__version__}, torch {torch.__version__}')
sys.exit(0 if int(numpy.__version__.split('.')[0]) >= 2 else 'numpy was downgraded below 2')"
echo "ci_python: $VENV ready in $((SECONDS - t0)) s"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" tests/protocol tests/backend
if [ "$V" = 3.12 ]; then  # the GPU images' Python: the acceptance dry run from a kit built for cp312
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/scripts/test_gpu_acceptance.py
fi
