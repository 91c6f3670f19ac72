"""Run by tests/backend/test_hashgrid_triton.py in a subprocess, once per supported Triton (each from its own
layer on PYTHONPATH, so one torch serves them all): compiles both hash-grid kernels for sm_80, sm_89 and sm_90
(ptxas ships inside the triton wheel; no GPU needed) and prints one JSON object describing the results."""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run without TRITON_INTERPRET: the kernels must be compilable"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from interactive3d.backend.stage2 import hashgrid_triton as ht  # noqa: E402

# argument types of both kernels (each takes the ones its signature names, in its own order)
TYPES = {
    "x_ptr": "*fp32", "table_ptr": "*fp32", "out_ptr": "*fp32", "gout_ptr": "*fp32", "gtable_ptr": "*fp32",
    "scale_ptr": "*fp32", "res_ptr": "*i32", "size_ptr": "*i32", "off_ptr": "*i64", "hashed_ptr": "*i32",
    "n": "i32", "n_levels": "i32", "mask": "i32", "p1": "i32", "p2": "i32",
    "F": "constexpr", "FP": "constexpr", "BLOCK_N": "constexpr",
}


def compile_one(name: str, cc: int, f: int, fp: int) -> dict:
    fn = ht._fwd_kernel if name == "forward" else ht._bwd_kernel
    sig = {a: TYPES[a] for a in fn.arg_names}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs={"F": f, "FP": fp, "BLOCK_N": 128}), target=GPUTarget("cuda", cc, 32))
    ptx, cubin = k.asm["ptx"], k.asm["cubin"]
    return {
        "jit_function": type(fn).__name__,
        "ptx_target": f".target sm_{cc}" in ptx,
        "cubin_elf": isinstance(cubin, bytes) and cubin[:4] == b"\x7fELF",
        "cubin_bytes": len(cubin),
        "atomics": "atom.global" in ptx or "red.global" in ptx,
        "loads_stores": "ld.global" in ptx and "st.global" in ptx,
    }


def main() -> None:
    out = {"triton": triton.__version__, "triton_file": triton.__file__, "kernels": {}}
    for name in ("forward", "backward"):
        for cc in (80, 89, 90):
            out["kernels"][f"{name} sm_{cc}"] = compile_one(name, cc, 2, 2)
    out["kernels"]["forward F=3 sm_90"] = compile_one("forward", 90, 3, 4)  # F = 3 runs padded to 4 lanes
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
