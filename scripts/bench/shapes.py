"""Known shapes for the Stage II benchmarks and tests: points on an exact surface, a Gaussian sample of it
(flat opaque discs tangent to the surface, as Stage I Gaussians on a surface are) and the Chamfer distance
of a mesh to it.

Used by scripts/bench/mesh_quality.py, scripts/bench/orientation.py and tests/backend/test_mesh.py (which put
this folder on ``sys.path``). The figures in docs/benchmarks.md depend on these samples: change them only
with a re-measurement.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from interactive3d.backend.stage1.gaussians import Gaussians

SHAPES = ("sphere", "torus")
SPHERE_R = 0.5
TORUS_R, TORUS_r = 0.35, 0.15


def surface(shape: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n,3] points uniformly by area on the shape's surface and their [n,3] unit outward normals (float32;
    drawn in float64)."""
    g = torch.Generator().manual_seed(seed)
    if shape == "sphere":
        p = torch.randn(n, 3, generator=g, dtype=torch.float64)
        nrm = p / p.norm(dim=-1, keepdim=True)
        return (SPHERE_R * nrm).float(), nrm.float()
    if shape != "torus":
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    # torus: area element ∝ (R + r cos v); rejection-sample v against it
    u = 2 * math.pi * torch.rand(4 * n, generator=g, dtype=torch.float64)
    v = 2 * math.pi * torch.rand(4 * n, generator=g, dtype=torch.float64)
    keep = torch.rand(4 * n, generator=g, dtype=torch.float64) * (TORUS_R + TORUS_r) < TORUS_R + TORUS_r * torch.cos(v)
    u, v = u[keep][:n], v[keep][:n]
    nrm = torch.stack([torch.cos(v) * torch.cos(u), torch.cos(v) * torch.sin(u), torch.sin(v)], -1)
    ring = torch.stack([TORUS_R * torch.cos(u), TORUS_R * torch.sin(u), torch.zeros_like(u)], -1)
    return (ring + TORUS_r * nrm).float(), nrm.float()


def surfel_sample(shape: str = "sphere", n: int = 10000, tangent: float = 0.015, normal: float = 0.004) -> Gaussians:
    """``n`` flat opaque discs (scales tangent, tangent, normal; opacity 0.9) on the shape's surface (seed 0),
    tangent to it, coloured by their normal."""
    p, nrm = surface(shape, n, seed=0)
    # the shortest-arc rotation of +z onto the normal (w, x, y, z); the south pole (nrm = −z) has none
    q = torch.stack([1 + nrm[:, 2], -nrm[:, 1], nrm[:, 0], torch.zeros(n)], -1)
    q[q.norm(dim=-1) < 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    q = q / q.norm(dim=-1, keepdim=True)
    rgb = torch.stack([(nrm[:, 0] + 1) / 2, (nrm[:, 1] + 1) / 2, 0.3 + 0.4 * (nrm[:, 2] > 0).float()], -1)
    scales = torch.tensor([tangent, tangent, normal]).expand(n, 3).clone()
    return Gaussians.from_activated(p, rgb, torch.full((n,), 0.9), scales, q)


def diagonal(shape: str) -> float:
    """The diagonal of the shape's bounding box."""
    if shape == "sphere":
        return 2 * SPHERE_R * math.sqrt(3.0)
    return math.sqrt(2 * (2 * (TORUS_R + TORUS_r)) ** 2 + (2 * TORUS_r) ** 2)


def chamfer(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> float:
    """Symmetric mean nearest-neighbour distance between point sets [A,3] and [B,3] (chunked cdist)."""
    ta, tb = torch.from_numpy(np.asarray(a, np.float32)), torch.from_numpy(np.asarray(b, np.float32))

    def one_way(x, y):
        # exact distances (the matrix-product form loses ~1e-4 to cancellation)
        exact = "donot_use_mm_for_euclid_dist"
        return torch.cat([torch.cdist(x[i:i + chunk], y, compute_mode=exact).min(1).values for i in range(0, len(x), chunk)]).mean()

    return float(0.5 * (one_way(ta, tb) + one_way(tb, ta)))


class BareSession:
    """What a DistillJob reads of a session (its Gaussians, device and extras slots), for benchmarks and tests
    that distil without a server."""

    def __init__(self, gaussians: Gaussians, device: torch.device = torch.device("cpu")) -> None:
        self.gaussians, self.device, self.extras = gaussians, device, {}
