"""Mesh quality at the default Stage II settings (issue 17, item 6): distil a Gaussian sample of a known
shape with ``DistillConfig()`` and ``NeRFConfig()`` exactly as the service's defaults (1000 steps, 64²
renders, 4096 rays × 64 samples, 16 levels × 2 features × 2^19 entries, 32³ occupancy), extract the mesh
with ``MeshConfig()`` (256³, 50 % opacity surface) through the occupancy grid as ``stage2.extract_mesh``
does, and print the symmetric Chamfer distance to the exact surface as a fraction of the shape's
bounding-box diagonal, with the wall time of each part.

    python scripts/bench/mesh_quality.py [--shape sphere|torus] [--steps N] [--mesh-res R] [--threads T]

The shapes (scripts/bench/shapes.py) are flat opaque discs tangent to the surface (as Stage I Gaussians on a
surface are): the sphere r = 0.5, and the torus R = 0.35, r = 0.15 (a hole, which the test suite's shapes lack). Figures and
the CPU budget: docs/benchmarks.md. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import time

import torch
from interactive3d.backend.stage2.distill import DistillConfig, DistillJob
from interactive3d.backend.stage2.mesh import MeshConfig, extract_mesh
from interactive3d.backend.stage2.nerf import NeRFConfig
from interactive3d.backend.stage2.state import SLOT
from shapes import SHAPES, BareSession, chamfer, diagonal, surface, surfel_sample  # scripts/bench/shapes.py

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="sphere")
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
    s = BareSession(surfel_sample(args.shape))
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
    gt, _ = surface(args.shape, 20000, seed=1)
    ch = chamfer(m.vertices, gt.numpy())
    d = diagonal(args.shape)
    print(f"distillation {t_distill:.0f} s ({t_distill / max(cfg.steps, 1):.2f} s/step); mesh {t_mesh:.1f} s, "
          f"{len(m.vertices)} vertices, {len(m.faces)} faces")
    print(f"Chamfer {ch:.5f} = {100 * ch / d:.2f} % of the bounding-box diagonal ({d:.4f})")


if __name__ == "__main__":
    main()
