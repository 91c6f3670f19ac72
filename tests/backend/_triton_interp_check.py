"""Run by tests/backend/test_hashgrid_triton.py in a subprocess with TRITON_INTERPRET=1 (it must be set before
triton is imported, so it cannot share the pytest process with the compile tests), once per supported Triton
(each from its own layer on PYTHONPATH). Prints one JSON object of measured differences between the Triton
kernels (interpreted, CPU tensors) and the torch twin, with the Triton and numpy versions that ran."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

import numpy
import torch
import triton

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from interactive3d.backend.accel.fastpath import FASTPATHS  # noqa: E402
from interactive3d.backend.stage2.hashgrid import (  # noqa: E402
    SELF_TEST_CFG,
    HashGrid,
    HashGridConfig,
    compare_to_twin,
    hash_indices,
    self_test_points,
)

CPU = torch.device("cpu")


def boundary_points(cfg: HashGridConfig) -> torch.Tensor:
    """Points on every level's grid planes (x·scale + 0.5 integral, as far as float32 allows), the cube's
    8 corners and 6 face centres, and points whose cells reach the last vertex (x = 1 and just below)."""
    gen = torch.Generator().manual_seed(7)
    pts = []
    for s in cfg.scales().tolist():
        k = torch.arange(0, int(s) + 1, dtype=torch.float32)
        on = ((k + 0.5) / s).clamp(0, 1)  # pos = k + 1: on a plane
        p = torch.rand(len(k), 3, generator=gen)
        p[:, 0] = on
        q = torch.rand(len(k), 3, generator=gen)
        q[:, 1] = on
        q[:, 2] = on.flip(0)
        pts += [p, q]
    pts.append(torch.tensor([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=torch.float32))
    pts.append(torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 1], [0.5, 0, 0.5], [0.5, 1, 0.5], [0, 0.5, 0.5], [1, 0.5, 0.5]]))
    pts.append(torch.tensor([[1 - 1e-7, 1 - 1e-7, 1 - 1e-7], [1.0, 1 - 1e-7, 0.0]]))
    return torch.cat(pts)


def main() -> None:
    out: dict = {"triton": triton.__version__, "numpy": numpy.__version__}
    # the public class accepts triton on CPU under the interpreter, after its self-test
    g = HashGrid(SELF_TEST_CFG, backend="triton", device="cpu", seed=0)
    out["backend"] = g.backend
    out["report"] = FASTPATHS.report()
    ref = HashGrid(SELF_TEST_CFG, backend="torch", device="cpu", seed=0)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out["module_forward"] = float((g(x) - ref(x)).abs().max())

    cases = {
        "dense+hashed F=2": (replace(SELF_TEST_CFG, n_features=2), self_test_points(CPU)),
        "dense+hashed F=1": (replace(SELF_TEST_CFG, n_features=1), self_test_points(CPU)),
        "dense+hashed F=3 (padded to 4)": (replace(SELF_TEST_CFG, n_features=3), self_test_points(CPU)),
        "grid planes, faces, corners": (SELF_TEST_CFG, boundary_points(SELF_TEST_CFG)),
        "official 16x2x2^19": (HashGridConfig(), torch.cat([torch.rand(400, 3, generator=torch.Generator().manual_seed(4)), boundary_points(HashGridConfig())[::40]])),
        "all dense": (HashGridConfig(n_levels=3, log2_table_size=16, base_resolution=4, per_level_scale=2.0), boundary_points(HashGridConfig(n_levels=3, log2_table_size=16, base_resolution=4, per_level_scale=2.0))),
        "all hashed": (HashGridConfig(n_levels=3, log2_table_size=6, base_resolution=8, per_level_scale=1.5), self_test_points(CPU)),
    }
    out["cases"] = {}
    for name, (cfg, pts) in cases.items():
        meta = HashGrid._unchecked(cfg, "torch", CPU, 0).meta
        idx, _ = hash_indices(pts, cfg, meta)
        d_out, d_grad = compare_to_twin("triton", CPU, cfg, pts)
        sizes, offs = meta.sizes.tolist(), meta.offsets.tolist()
        out["cases"][name] = {
            "points": int(pts.shape[0]),
            "levels_dense": int(meta.n_direct),
            "levels_hashed": cfg.n_levels - int(meta.n_direct),
            "d_out": d_out,
            "d_grad": d_grad,
            # rows touched at the ends of level tables: the last row of some level and a level's first row
            "touches_a_level_end": bool(any(((idx[:, l] == offs[l] + sizes[l] - 1).any()) for l in range(cfg.n_levels))),
            "touches_a_level_start": bool(any(((idx[:, l] == offs[l]).any()) for l in range(cfg.n_levels))),
        }

    # zero points
    e = HashGrid._unchecked(SELF_TEST_CFG, "triton", CPU, 0)
    y = e(torch.zeros(0, 3))
    y.sum().backward()
    out["empty"] = {"shape": list(y.shape), "grad_abs_sum": float(e.table.grad.abs().sum())}

    # a field trained with one backend loads into the other: 3 Adam steps on triton, then torch (and back)
    tri = HashGrid._unchecked(SELF_TEST_CFG, "triton", CPU, 1)
    opt = torch.optim.Adam(tri.parameters(), lr=0.05)
    xs = torch.rand(256, 3, generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        opt.zero_grad()
        ((tri(xs) - 0.3) ** 2).mean().backward()
        opt.step()
    tor = HashGrid._unchecked(SELF_TEST_CFG, "torch", CPU, 2)
    tor.load_state_dict(tri.state_dict())
    back = HashGrid._unchecked(SELF_TEST_CFG, "triton", CPU, 3)
    back.load_state_dict(tor.state_dict())
    with torch.no_grad():
        out["cross_load"] = {
            "state_keys": sorted(tri.state_dict()),
            "trained_change": float((tri.table - HashGrid._unchecked(SELF_TEST_CFG, "torch", CPU, 1).table).abs().max()),
            "triton_to_torch": float((tor(xs) - tri(xs)).abs().max()),
            "torch_to_triton": float((back(xs) - tor(xs)).abs().max()),
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
