"""The Triton hash-grid kernels without a GPU (issue 13 item 1, issue 24 item 4), with every Triton a supported
torch brings: 3.6.0 (torch 2.10/2.11, today's GPU images), 3.7.1 (2.12/2.13) and 3.8.0 (2.14). Each is
compiled to PTX and cubin for sm_80, sm_89 and sm_90 (ptxas ships inside the triton wheel) and run under the
Triton interpreter on CPU tensors against the torch twin — in a subprocess per version, on this one torch:
the venv's own Triton, or the layer scripts/setup.sh put in ``.venv/triton-layers/<version>`` (pip
``--target --no-deps``) first on PYTHONPATH. Triton 3.4-3.6's interpreter fails with numpy >= 2.4 (Triton
issue 9171); this venv has numpy 1.26 (bpy 5.0.1), which every version accepts.

Tolerances (max |Triton − twin| / max(1, max |twin|)): output 1e-6 and table gradient 1e-6 — both compute
in fp32 with the same float32 position arithmetic; what is left is the order of the 8-corner sums and of
the gradient's scatter-adds (measured ≈ 2·10⁻⁷).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TOL = 1e-6
TRITONS = ["3.6.0", "3.7.1", "3.8.0"]  # keep in step with scripts/setup.sh and the README


def _venv_triton() -> str | None:
    p = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"], capture_output=True, text=True, timeout=120)
    return p.stdout.strip() if p.returncode == 0 else None


def _env(version: str, interpret: bool) -> dict:
    """The environment that runs ``version`` of Triton with this interpreter: the venv's own, or its layer."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if _venv_triton() != version:
        layer = Path(sys.prefix) / "triton-layers" / version
        assert (layer / "triton" / "__init__.py").is_file(), f"no Triton {version} layer at {layer}: run scripts/setup.sh"
        env["PYTHONPATH"] = os.pathsep.join([str(layer)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _run(script: str, version: str, interpret: bool) -> dict:
    p = subprocess.run([sys.executable, str(HERE / script)], env=_env(version, interpret), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout)
    assert out["triton"] == version, out["triton"]
    return out


@pytest.fixture(scope="module", params=TRITONS)
def compiled(request):
    """tests/backend/_triton_compile_check.py's results with one Triton version."""
    return _run("_triton_compile_check.py", request.param, interpret=False)


@pytest.mark.slow
def test_kernels_compile_to_ptx_and_cubin(compiled):
    """Both kernels compile for sm_80 (A100), sm_89 (L4/4090) and sm_90 (H100/H200) with F = 2 (every config
    of the project): the PTX targets that architecture, the cubin is an ELF image, and the backward's PTX
    holds the atomic adds of the table gradient. F = 3 runs as a [B, 4] feature vector with the 4th lane
    masked: it compiles for sm_90 too."""
    ks = compiled["kernels"]
    assert set(ks) == {f"{n} sm_{cc}" for n in ("forward", "backward") for cc in (80, 89, 90)} | {"forward F=3 sm_90"}
    for name, k in ks.items():
        assert k["jit_function"] == "JITFunction" and k["ptx_target"] and k["cubin_elf"] and k["cubin_bytes"] > 4096, (name, k)
        assert k["atomics"] if name.startswith("backward") else k["loads_stores"], (name, k)


@pytest.fixture(scope="module", params=TRITONS)
def interpreted(request):
    """The measurements of tests/backend/_triton_interp_check.py with one Triton version, TRITON_INTERPRET=1."""
    return _run("_triton_interp_check.py", request.param, interpret=True)


@pytest.mark.slow
def test_public_class_runs_triton_on_cpu_under_the_interpreter(interpreted):
    """HashGrid(backend="triton", device="cpu") is accepted under TRITON_INTERPRET=1: it passes its self-test,
    the fast-path record reports triton for the CPU, and its forward equals the twin's (same seed) to 1e-6."""
    assert interpreted["backend"] == "triton"
    assert interpreted["report"] == {"hashgrid": {"cpu": "triton"}}
    assert interpreted["module_forward"] <= TOL


CASES = ["dense+hashed F=2", "dense+hashed F=1", "dense+hashed F=3 (padded to 4)", "grid planes, faces, corners",
         "official 16x2x2^19", "all dense", "all hashed"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernels_equal_the_twin(interpreted, case):
    """Forward output and table gradient (random table in ±1, random output gradient) equal the torch twin
    to 1e-6 relative on dense and hashed levels, with points on grid planes, the cube's faces and corners
    (x exactly 0 and 1, where the top corner wraps around) and rows at both ends of level tables."""
    r = interpreted["cases"][case]
    assert r["d_out"] <= TOL and r["d_grad"] <= TOL, r
    assert r["touches_a_level_end"] and r["touches_a_level_start"]
    if case.startswith("dense+hashed") or case == "official 16x2x2^19":
        assert r["levels_dense"] > 0 and r["levels_hashed"] > 0


@pytest.mark.slow
def test_interpreted_empty_input_and_cross_backend_state(interpreted):
    """Zero points: a [0, L·F] output and a zero gradient. A table trained 3 Adam steps with Triton loads into
    a torch grid (and back) through the backend-neutral state dict (table + layout_version) and gives the
    same encoding to 1e-6."""
    assert interpreted["empty"] == {"shape": [0, 8], "grad_abs_sum": 0.0}
    c = interpreted["cross_load"]
    assert c["state_keys"] == ["layout_version", "table"]
    assert c["trained_change"] > 1e-2
    assert c["triton_to_torch"] <= TOL and c["torch_to_triton"] <= TOL
