#!/usr/bin/env bash
# GPU acceptance: one command on one CUDA GPU (H100/H200), no network, at most 8 minutes.
#
#   bash scripts/gpu_acceptance.sh [--wheels DIR] [--report FILE] [--python PY] [--dry-run]
#
# 1. installs from DIR (default: wheels/, or $I3D_WHEELS) whatever the image lacks, offline
#    (pip --no-index --find-links DIR); see docs/benchmarks.md for how to fill DIR with `pip download`;
# 2. runs the fast paths' self-tests on the GPU and records which backend each component uses;
# 3. runs every `gpu`-marked test (CUDA kernels against their torch twins);
# 4. the Stage I benchmark: SD-2.1-sized UNet + VAE in fp16 with random weights, 256² renders, batch 1 and 4,
#    gsplat (scripts/bench/stage1.py --gpu);
# 5. the Stage II benchmark: hash-grid samples/s per backend, a nerfacc-marched distillation step, marching
#    cubes at 256³ (scripts/bench/stage2.py);
# and writes everything, with a PASS/FAIL line per part, to one report file (default gpu_acceptance_report.txt).
#
# --dry-run runs the same plan on a CPU in seconds: nothing is installed (the report lists what would be),
# the gpu tests are collected and skip, the benchmarks run their --smoke sizes. tests/scripts checks it in CI.
#
# Each part has its own time limit (install 60 s, self-tests 60 s, gpu tests 150 s, Stage I 120 s,
# Stage II 90 s: 8 minutes in all); a part that overruns is killed and marked FAIL, the others still run.
# Exit status: 0 when every part passed, 1 otherwise, 2 on bad usage.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${I3D_WHEELS:-$ROOT/wheels}"
REPORT="$ROOT/gpu_acceptance_report.txt"
PY=""
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --report) REPORT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_acceptance: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
cd "$ROOT" || exit 2
mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
FAILED=0
export PYTHONUNBUFFERED=1

say() { echo "$*" | tee -a "$REPORT"; }

# part NAME LIMIT_S CMD...: run CMD with a time limit, its output into the report, PASS/FAIL after it
part() {
    local name="$1" limit="$2"; shift 2
    say ""
    say "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT"
    local rc=${PIPESTATUS[0]}
    local verdict=PASS
    if [ "$rc" -ne 0 ]; then verdict="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"; FAILED=1; fi
    say "--- $name: $verdict in $((SECONDS - t0)) s"
    SUMMARY+=("$name: $verdict")
}
SUMMARY=()

say "Interactive3D GPU acceptance — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "mode: $([ $DRY -eq 1 ] && echo 'dry run (CPU, nothing installed, benchmark smoke sizes)' || echo 'GPU')"
say "python: $PY"
if [ $DRY -eq 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        say "no CUDA GPU visible to $PY (nvidia-smi and torch.cuda.is_available()); use --dry-run on a CPU machine"
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$REPORT"
fi

# -- 1. offline install of what the image lacks ------------------------------------------------------
# import name → distribution name; torch itself is never installed here (the GPU image brings its CUDA build)
NEEDED="gsplat:gsplat nerfacc:nerfacc diffusers:diffusers transformers:transformers zmq:pyzmq msgpack:msgpack trimesh:trimesh skimage:scikit-image PIL:pillow triton:triton pytest:pytest hypothesis:hypothesis plyfile:plyfile"
MISSING=()
for pair in $NEEDED; do
    mod="${pair%%:*}"; dist="${pair##*:}"
    "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('$mod') else 1)" 2>/dev/null || MISSING+=("$dist")
done
"$PY" -c "import interactive3d" 2>/dev/null || MISSING+=("interactive3d")  # this checkout, installed -e
install() {  # runs in a child bash (under `timeout`): reads the exported MISSING_LIST, DRY, WHEELS, PY, ROOT
    if [ -z "$MISSING_LIST" ]; then echo "nothing to install: every package is importable"; return 0; fi
    echo "missing: $MISSING_LIST"
    if [ "$DRY" -eq 1 ]; then echo "dry run: would run pip install --no-index --find-links $WHEELS $MISSING_LIST"; return 0; fi
    if [ ! -d "$WHEELS" ]; then echo "no wheel folder at $WHEELS (see docs/benchmarks.md)"; return 1; fi
    local dists="${MISSING_LIST//interactive3d/}"
    if [ -n "${dists// /}" ]; then
        # shellcheck disable=SC2086  # one word per distribution
        "$PY" -m pip install --no-index --find-links "$WHEELS" $dists || return 1
    fi
    # the project itself, without touching torch or fetching anything
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -e "$ROOT" || return 1
}
MISSING_LIST="${MISSING[*]}"
export MISSING_LIST DRY WHEELS PY ROOT
part "install (offline, from $WHEELS)" 60 bash -c "$(declare -f install); install"

# -- 2. fast-path self-tests on the device -------------------------------------------------------------
DEVICE=$([ $DRY -eq 1 ] && echo cpu || echo cuda)
part "fast paths on $DEVICE" 60 "$PY" -c "
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(levelname)s %(name)s: %(message)s')
from interactive3d.backend.service.server import resolve_device
from interactive3d.backend.service.ops_session import fastpath_backends
from interactive3d.commands import describe_backends
dev = resolve_device('$DEVICE')
b = fastpath_backends(dev, self_test=True)
print('fast paths on', dev, ':', describe_backends(b))
sys.exit(0 if all(v['ok'] for v in b.values()) else 1)
"

# -- 3. gpu-marked tests --------------------------------------------------------------------------------
part "gpu-marked tests" 150 "$PY" -m pytest -q -m gpu -rA -p no:cacheprovider tests

# -- 4./5. benchmarks ---------------------------------------------------------------------------------
if [ $DRY -eq 1 ]; then
    part "Stage I benchmark (smoke)" 120 "$PY" scripts/bench/stage1.py --smoke
    part "Stage II benchmark (smoke)" 90 "$PY" scripts/bench/stage2.py --smoke
else
    part "Stage I benchmark (SD-2.1-sized UNet fp16, 256², batch 1 and 4, gsplat)" 120 "$PY" scripts/bench/stage1.py --gpu --repeat 10
    part "Stage II benchmark (hash grid per backend, nerfacc distillation step, marching cubes 256³)" 90 "$PY" scripts/bench/stage2.py --reps 3 --steps 5 --mc-res 256
fi

say ""
say "=== summary ==="
for line in "${SUMMARY[@]}"; do say "$line"; done
say "result: $([ $FAILED -eq 0 ] && echo PASS || echo FAIL)"
say "report: $REPORT"
exit $FAILED
