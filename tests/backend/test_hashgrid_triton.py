"""The Triton hash-grid kernels without a GPU (issue 13, item 1): compiled to PTX and cubin for sm_80, sm_89
and sm_90 (ptxas ships inside the triton wheel), and run under the Triton interpreter on CPU tensors
against the torch twin.

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

triton = pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
TOL = 1e-6

# argument types of both kernels (each takes the ones its signature names, in its own order)
TYPES = {
    "x_ptr": "*fp32", "table_ptr": "*fp32", "out_ptr": "*fp32", "gout_ptr": "*fp32", "gtable_ptr": "*fp32",
    "scale_ptr": "*fp32", "res_ptr": "*i32", "size_ptr": "*i32", "off_ptr": "*i64", "hashed_ptr": "*i32",
    "n": "i32", "n_levels": "i32", "mask": "i32", "p1": "i32", "p2": "i32",
    "F": "constexpr", "FP": "constexpr", "BLOCK_N": "constexpr",
}


@pytest.fixture(scope="module")
def kernels():
    """A fresh copy of backend/stage2/hashgrid_triton.py loaded with TRITON_INTERPRET unset, so its kernels are
    compilable JIT functions even if this process imported the package's copy under the interpreter."""
    import importlib.util

    import interactive3d.backend.stage2 as stage2

    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        spec = importlib.util.spec_from_file_location("_hashgrid_triton_compiled", Path(stage2.__file__).parent / "hashgrid_triton.py")
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = stage2.__name__  # its relative import (..accel.fastpath) resolves in the package
        spec.loader.exec_module(mod)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return mod


def _kernel(ht, name):
    fn = ht._fwd_kernel if name == "forward" else ht._bwd_kernel
    assert type(fn).__name__ == "JITFunction", type(fn)
    return fn, {a: TYPES[a] for a in fn.arg_names}


@pytest.mark.parametrize("cc", [80, 89, 90])
@pytest.mark.parametrize("name", ["forward", "backward"])
def test_kernels_compile_to_ptx_and_cubin(kernels, name, cc):
    """Both kernels compile for sm_80 (A100), sm_89 (L4/4090) and sm_90 (H100/H200) with F = 2 (every config
    of the project): the PTX targets that architecture, the cubin is an ELF image, and the backward's PTX
    holds the atomic adds of the table gradient."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig = _kernel(kernels, name)
    src = ASTSource(fn=fn, signature=sig, constexprs={"F": 2, "FP": 2, "BLOCK_N": 128})
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32))
    ptx, cubin = k.asm["ptx"], k.asm["cubin"]
    assert f".target sm_{cc}" in ptx
    assert isinstance(cubin, bytes) and cubin[:4] == b"\x7fELF" and len(cubin) > 4096
    if name == "backward":
        assert "atom.global" in ptx or "red.global" in ptx
    else:
        assert "ld.global" in ptx and "st.global" in ptx


def test_padded_feature_count_compiles(kernels):
    """F = 3 runs as a [B, 4] feature vector with the 4th lane masked: it compiles for sm_90 too."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig = _kernel(kernels, "forward")
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={"F": 3, "FP": 4, "BLOCK_N": 128}), target=GPUTarget("cuda", 90, 32))
    assert k.asm["cubin"][:4] == b"\x7fELF"


@pytest.fixture(scope="module")
def interpreted():
    """The measurements of tests/backend/_triton_interp_check.py, run once with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    p = subprocess.run([sys.executable, str(HERE / "_triton_interp_check.py")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout)


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
