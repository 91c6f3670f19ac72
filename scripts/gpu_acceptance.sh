#!/usr/bin/env bash
# GPU acceptance: one command on one CUDA GPU (H100/H200), no network, at most 9 minutes.
#
#   bash scripts/gpu_acceptance.sh [--wheels DIR] [--report DIR] [--python PY] [--dry-run]
#
# 1. installs the wheel kit DIR (scripts/gpu_kit.py builds it: what the backend needs beyond a stock CUDA
#    PyTorch image, the project's own wheel included) with `pip install --no-index --no-deps --target` into a
#    temporary folder put on PYTHONPATH: the image's torch, Triton and numpy stay as they are. Every later part
#    runs from a temporary directory with PYTHONSAFEPATH=1, so the checkout's folders never shadow the install.
#    Without --wheels the Python's own environment must already hold everything;
# 2. checks that gsplat's and nerfacc's prebuilt CUDA extensions load; where one does not, its JIT build
#    (13-15 min on 2 cores) would not fit: CUDA_HOME is pointed nowhere so the build fails at once, the
#    component falls back to its torch twin, and the report says so in one line;
# 3. runs the fast paths' self-tests (each compares its fast path with the torch twin) and every `gpu`-marked
#    test (the CUDA kernels against their twins);
# 4. Stage I: SD-2.1-sized UNet + VAE in fp16 with random weights, 256² renders (scripts/bench/stage1.py --gpu);
# 5. Stage II: distillation step time, marching cubes at 256³ (scripts/bench/stage2.py), refinement steps/s
#    (scripts/bench/refine.py);
# and writes report.txt (all output), report.json and report.md (a PASS/FAIL line and the figures per part)
# into the report folder (default gpu_acceptance_report/; give $OUT on a lent machine).
#
# --dry-run runs the same plan on a CPU: the same install path when --wheels is given, the gpu tests are
# collected and skip, the benchmarks run their --smoke sizes. tests/scripts/test_gpu_acceptance.py checks it.
#
# Each part has its own time limit (install 90 s, extensions 30 s, self-tests 60 s, gpu tests 100 s, Stage I
# 110 s, Stage II 90 s, refinement 60 s: 9 minutes in all); a part that overruns is killed and marked FAIL,
# the others still run (the dry run gets 3 times each limit). Exit status: 0 when every part passed,
# 1 otherwise, 2 on bad usage.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS=""
REPORT_DIR="$ROOT/gpu_acceptance_report"
PY=""
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --report) REPORT_DIR="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_acceptance: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
mkdir -p "$REPORT_DIR" || exit 2
REPORT_DIR="$(cd "$REPORT_DIR" && pwd)"
REPORT="$REPORT_DIR/report.txt"
PARTS="$REPORT_DIR/parts.tsv"
: > "$REPORT"; : > "$PARTS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 2
FAILED=0
LIMIT_SCALE=$([ $DRY -eq 1 ] && echo 3 || echo 1)  # a shared 2-core CI machine is no H100: the dry run gets 3x
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1

say() { echo "$*" | tee -a "$REPORT"; }

# part NAME LIMIT_S CMD...: run CMD with a time limit, its output into the report, PASS/FAIL after it
part() {
    local name="$1" limit=$(($2 * LIMIT_SCALE)); shift 2
    say ""
    say "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS log="$WORK/part-$((${#SUMMARY[@]} + 1)).log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT" "$log"
    local rc=${PIPESTATUS[0]}
    local verdict=PASS
    if [ "$rc" -ne 0 ]; then verdict="FAIL (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"; FAILED=1; fi
    say "--- $name: $verdict in $((SECONDS - t0)) s"
    SUMMARY+=("$name: $verdict")
    printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$((SECONDS - t0))" "$log" >> "$PARTS"
    cp "$log" "$REPORT_DIR/$(basename "$log")"
}
SUMMARY=()

say "Interactive3D GPU acceptance — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "mode: $([ $DRY -eq 1 ] && echo 'dry run (CPU, benchmark smoke sizes)' || echo 'GPU')"
say "python: $PY; wheel kit: ${WHEELS:-none (the environment as it is)}"
if [ $DRY -eq 0 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        say "no CUDA GPU visible to $PY (nvidia-smi and torch.cuda.is_available()); use --dry-run on a CPU machine"
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$REPORT"
fi

# -- 1. offline install of the kit ---------------------------------------------------------------------
SITE="$WORK/site"
install() {  # runs in a child bash (under `timeout`): reads the exported WHEELS, PY, SITE
    if [ -z "$WHEELS" ]; then echo "no --wheels: using the environment of $PY as it is"; else
        if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then echo "no wheels in $WHEELS (scripts/gpu_kit.py builds the kit)"; return 1; fi
        [ -f "$WHEELS/MANIFEST.md" ] && sed -n '1p' "$WHEELS/MANIFEST.md"
        "$PY" -m pip install --disable-pip-version-check --no-index --no-deps --no-compile -q --target "$SITE" "$WHEELS"/*.whl || return 1
    fi
    "$PY" -c "
import importlib, sys
import numpy, torch
import interactive3d
print('interactive3d from', interactive3d.__file__)
print('torch', torch.__version__, '| numpy', numpy.__version__, end='')
try:
    import triton; print(' | triton', triton.__version__)
except ImportError:
    print(' | triton: none')
missing = [m for m in ('interactive3d.backend', 'diffusers', 'gsplat', 'nerfacc', 'zmq', 'msgpack', 'trimesh', 'skimage', 'PIL', 'pytest') if importlib.util.find_spec(m) is None]
sys.exit(f'missing: {missing}' if missing else 0)"
}
[ -n "$WHEELS" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export WHEELS PY SITE
part "install (offline, from ${WHEELS:-the environment})" 90 bash -c "$(declare -f install); install"

# -- 2. prebuilt CUDA extensions: a JIT build would not fit ------------------------------------------
if [ $DRY -eq 0 ]; then
    NOJIT=$("$PY" -c "
import importlib
for m in ('gsplat', 'nerfacc'):
    try:
        importlib.import_module(m + '.csrc')
    except Exception as e:
        print(m, end=' ')" 2>/dev/null)
    if [ -n "$NOJIT" ]; then
        say "no prebuilt CUDA extension loads for: $NOJIT— a JIT build (13-15 min on 2 cores) would not fit; CUDA_HOME points nowhere so it fails at once and these components use their torch twins"
        export CUDA_HOME="$WORK/no-cuda-home-jit-disabled"
    fi
    part "prebuilt CUDA extensions" 30 "$PY" -c "
import gsplat.csrc, nerfacc.csrc
print('gsplat.csrc', gsplat.csrc.__file__); print('nerfacc.csrc', nerfacc.csrc.__file__)"
fi

# -- 3. fast-path self-tests on the device -------------------------------------------------------------
DEVICE=$([ $DRY -eq 1 ] && echo cpu || echo cuda)
part "fast paths on $DEVICE" 60 "$PY" -c "
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(levelname)s %(name)s: %(message)s')
from interactive3d.backend.service.server import resolve_device
from interactive3d.backend.service.ops_session import fastpath_backends
from interactive3d.backend.stage2.hashgrid import HashGrid, SELF_TEST_CFG
from interactive3d.commands import describe_backends
dev = resolve_device('$DEVICE')
HashGrid(SELF_TEST_CFG, backend='auto', device=dev)  # the hash grid's self-test (others: render, volrend)
b = fastpath_backends(dev, self_test=True)
print('fast paths on', dev, ':', describe_backends(b))
print('FASTPATHS_JSON', json.dumps(b))
sys.exit(0 if all(v['ok'] for v in b.values()) else 1)
"

# -- 4. gpu-marked tests --------------------------------------------------------------------------------
part "gpu-marked tests" 100 "$PY" -m pytest -q -m gpu -rA -p no:cacheprovider --rootdir "$ROOT" "$ROOT/tests/backend"  # every gpu-marked test lives there

# -- 5. benchmarks ------------------------------------------------------------------------------------
B="$ROOT/scripts/bench"
if [ $DRY -eq 1 ]; then
    part "Stage I benchmark (smoke)" 110 "$PY" "$B/stage1.py" --smoke
    part "Stage II benchmark (smoke)" 90 "$PY" "$B/stage2.py" --smoke
    part "refinement benchmark (smoke)" 60 "$PY" "$B/refine.py" --smoke
else
    part "Stage I benchmark (SD-2.1-sized UNet fp16, 256², batch 1 and 4, gsplat)" 110 "$PY" "$B/stage1.py" --gpu --repeat 5
    part "Stage II benchmark (hash grid per backend, nerfacc distillation step, marching cubes 256³)" 90 "$PY" "$B/stage2.py" --reps 3 --steps 5 --mc-res 256
    part "refinement benchmark (one part, 2048 rays)" 60 "$PY" "$B/refine.py" --steps 5
fi

say ""
say "=== summary ==="
for line in "${SUMMARY[@]}"; do say "$line"; done
say "result: $([ $FAILED -eq 0 ] && echo PASS || echo FAIL)"
say "report: $REPORT_DIR (report.txt, report.json, report.md)"
# report.json / report.md: each part's verdict and time, and the figures its output holds
"$PY" - "$PARTS" "$REPORT_DIR" "$FAILED" "$([ $DRY -eq 1 ] && echo dry-run || echo gpu)" <<'PYEOF'
import json, re, sys
from pathlib import Path
parts_file, out, failed, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
parts = []
for row in parts_file.read_text().splitlines():
    name, verdict, secs, log = row.split("\t")
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    figures = []
    for line in text.splitlines():
        if line.startswith("FASTPATHS_JSON "):
            figures.append({"fast_paths": json.loads(line.split(" ", 1)[1])})
        elif line.startswith("{") and line.endswith("}"):
            try:
                figures.append(json.loads(line))
            except ValueError:
                pass
        elif re.match(r"(distill step|mesh \d+\^3|refine step|hashgrid|.*samples/s)", line.strip()):
            figures.append(line.strip())
    parts.append({"part": name, "verdict": verdict, "seconds": int(secs), "figures": figures,
                  "tail": text.splitlines()[-5:]})
report = {"mode": mode, "result": "FAIL" if failed else "PASS", "parts": parts}
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
md = [f"# Interactive3D GPU acceptance ({mode}): {report['result']}", "", "| part | verdict | s |", "|---|---|---|"]
md += [f"| {p['part']} | {p['verdict']} | {p['seconds']} |" for p in parts]
for p in parts:
    if p["figures"]:
        md += ["", f"## {p['part']}", ""] + [f"- `{json.dumps(f) if not isinstance(f, str) else f}`" for f in p["figures"]]
(out / "report.md").write_text("\n".join(md) + "\n")
PYEOF
exit $FAILED
