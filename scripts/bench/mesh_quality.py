"""Mesh quality at the default Stage II settings (issue 17, item 6): distil a Gaussian sample of a known
shape with ``DistillConfig()`` and ``NeRFConfig()`` exactly as the service's defaults (1000 steps, 64²
renders, 4096 rays × 64 samples, 16 levels × 2 features × 2^19 entries, 32³ occupancy), extract the mesh
with ``MeshConfig()`` (256³, 50 % opacity surface) through the occupancy grid as ``stage2.extract_mesh``
does, and print the symmetric Chamfer distance to the exact surface as a fraction of the shape's
bounding-box diagonal, with the wall time of each part.

    python scripts/bench/mesh_quality.py [--shape sphere|torus] [--steps N] [--mesh-res R] [--threads T]

The shapes are flat opaque discs tangent to the surface (as Stage I Gaussians on a surface are): the
sphere r = 0.5, and the torus R = 0.35, r = 0.15 (a hole, which the test suite's shapes lack). Figures and
the CPU budget: docs/benchmarks.md. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from interactive3d.backend.stage1.gaussians import Gaussians
from interactive3d.backend.stage2.distill import DistillConfig, DistillJob
from interactive3d.backend.stage2.mesh import MeshConfig, extract_mesh
from interactive3d.backend.stage2.nerf import NeRFConfig
from interactive3d.backend.stage2.state import SLOT

TORUS_R, TORUS_r = 0.35, 0.15


def _surface(shape: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n,3] points uniformly by area on the shape's surface and their [n,3] unit outward normals."""
    g = torch.Generator().manual_seed(seed)
    if shape == "sphere":
        p = torch.randn(n, 3, generator=g, dtype=torch.float64)
        nrm = p / p.norm(dim=-1, keepdim=True)
        return (0.5 * nrm).float(), nrm.float()
    # torus: area element ∝ (R + r cos v); rejection-sample v against it
    u = 2 * math.pi * torch.rand(4 * n, generator=g, dtype=torch.float64)
    v = 2 * math.pi * torch.rand(4 * n, generator=g, dtype=torch.float64)
    keep = torch.rand(4 * n, generator=g, dtype=torch.float64) * (TORUS_R + TORUS_r) < TORUS_R + TORUS_r * torch.cos(v)
    u, v = u[keep][:n], v[keep][:n]
    nrm = torch.stack([torch.cos(v) * torch.cos(u), torch.cos(v) * torch.sin(u), torch.sin(v)], -1)
    ring = torch.stack([TORUS_R * torch.cos(u), TORUS_R * torch.sin(u), torch.zeros_like(u)], -1)
    return (ring + TORUS_r * nrm).float(), nrm.float()


def surfel_sample(shape: str, n: int = 10000) -> Gaussians:
    """Flat opaque discs (scales 0.015, 0.015, 0.004) tangent to the shape, coloured by their normal."""
    p, nrm = _surface(shape, n, seed=0)
    # the shortest-arc rotation of +z onto the normal (w, x, y, z); the south pole (nrm = −z) has none
    q = torch.stack([1 + nrm[:, 2], -nrm[:, 1], nrm[:, 0], torch.zeros(n)], -1)
    q[q.norm(dim=-1) < 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    q = q / q.norm(dim=-1, keepdim=True)
    rgb = torch.stack([(nrm[:, 0] + 1) / 2, (nrm[:, 1] + 1) / 2, 0.3 + 0.4 * (nrm[:, 2] > 0).float()], -1)
    scales = torch.tensor([0.015, 0.015, 0.004]).expand(n, 3).clone()
    return Gaussians.from_activated(p, rgb, torch.full((n,), 0.9), scales, q)


def diagonal(shape: str) -> float:
    if shape == "sphere":
        return math.sqrt(3.0)
    return math.sqrt(2 * (2 * (TORUS_R + TORUS_r)) ** 2 + (2 * TORUS_r) ** 2)


def chamfer(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> float:
    """Symmetric mean nearest-neighbour distance between point sets [A,3] and [B,3] (chunked cdist)."""
    ta, tb = torch.from_numpy(np.asarray(a, np.float32)), torch.from_numpy(np.asarray(b, np.float32))

    def one_way(x, y):
        # exact distances (the matrix-product form loses ~1e-4 to cancellation)
        exact = "donot_use_mm_for_euclid_dist"
        return torch.cat([torch.cdist(x[i:i + chunk], y, compute_mode=exact).min(1).values for i in range(0, len(x), chunk)]).mean()

    return float(0.5 * (one_way(ta, tb) + one_way(tb, ta)))


class _Session:
    def __init__(self, g):
        self.gaussians, self.device, self.extras = g, torch.device("cpu"), {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("sphere", "torus"), default="sphere")
    ap.add_argument("--steps", type=int, default=DistillConfig().steps)
    ap.add_argument("--mesh-res", type=int, default=MeshConfig().resolution)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--report-every", type=int, default=100)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, field_cfg = DistillConfig(steps=args.steps, preview_every=0), NeRFConfig()
    print(f"shape {args.shape}; distillation {cfg.steps} steps at {cfg.resolution}², {cfg.rays_per_step} rays × "
          f"{cfg.render.n_samples} samples; field {field_cfg.grid.n_levels}×{field_cfg.grid.n_features}×"
          f"2^{field_cfg.grid.log2_table_size}; mesh {args.mesh_res}³; {torch.get_num_threads()} CPU threads", flush=True)
    s = _Session(surfel_sample(args.shape))
    job = DistillJob(s, cfg, field_cfg, backend="auto")
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        job.step(i)
        if args.report_every and (i + 1) % args.report_every == 0:
            print(f"  step {i + 1}: {time.perf_counter() - t0:.0f} s", flush=True)
    t_distill = time.perf_counter() - t0
    st = s.extras[SLOT]
    t0 = time.perf_counter()
    m = extract_mesh(st.refined, MeshConfig(resolution=args.mesh_res), st.occupancy)
    t_mesh = time.perf_counter() - t0
    gt, _ = _surface(args.shape, 20000, seed=1)
    ch = chamfer(m.vertices, gt.numpy())
    d = diagonal(args.shape)
    print(f"distillation {t_distill:.0f} s ({t_distill / max(cfg.steps, 1):.2f} s/step); mesh {t_mesh:.1f} s, "
          f"{len(m.vertices)} vertices, {len(m.faces)} faces")
    print(f"Chamfer {ch:.5f} = {100 * ch / d:.2f} % of the bounding-box diagonal ({d:.4f})")


if __name__ == "__main__":
    main()
