"""Orientation loss sweep (issue 17): distil a Gaussian sample of the sphere r = 0.5 with several
orientation weights and print mesh Chamfer, held-out PSNR and the mean orientation penalty.

    python scripts/bench/orientation.py 0 0.01 [w ...]

The set-up of tests/backend/test_mesh.py::test_mesh_of_a_distilled_sphere_sample (80 steps, 24-view pool
of 128² renders, 8×2×2^14 grid, mesh at 96³). Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import time

import torch
from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
from interactive3d.backend.stage1.render import render
from interactive3d.backend.stage2.distill import DistillConfig, DistillJob
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.mesh import MeshConfig, extract_mesh
from interactive3d.backend.stage2.nerf import NeRFConfig
from interactive3d.backend.stage2.rays import RenderConfig
from interactive3d.backend.stage2.render import render_image
from interactive3d.backend.stage2.state import SLOT
from shapes import BareSession, chamfer, surface, surfel_sample  # scripts/bench/shapes.py


def main() -> None:
    for w in [float(a) for a in sys.argv[1:]] or [0.0, 0.01]:
        s = BareSession(surfel_sample("sphere"))
        cfg = DistillConfig(steps=80, resolution=128, view_pool=24, rays_per_step=1024, lr_grid=0.03, lr_mlp=0.01,
                            render=RenderConfig(n_samples=64, stratified=True), occupancy_warmup=16, occupancy_every=8,
                            preview_every=0, orientation_weight=w)
        job = DistillJob(s, cfg, NeRFConfig(grid=HashGridConfig(n_levels=8, n_features=2, log2_table_size=14), hidden=32), backend="torch")
        t = time.perf_counter()
        for i in range(cfg.steps):
            job.step(i)
        dt = time.perf_counter() - t
        st = s.extras[SLOT]
        m = extract_mesh(st.field, MeshConfig(resolution=96))
        gt = surface("sphere", 4000, seed=1)[0].numpy()
        held = sample_orbit(4, OrbitConfig(width=64, height=64), torch.Generator().manual_seed(123)).cameras
        with torch.no_grad():
            want = render(s.gaussians, held, torch.ones(3)).rgb
            got = render_image(st.field, held, RenderConfig(n_samples=64, normals=True), st.occupancy)
        psnr = float(10 * torch.log10(1 / ((got.rgb - want) ** 2).mean()))
        print(f"w={w}: chamfer {chamfer(m.vertices, gt):.4f} psnr {psnr:.2f} orient {float(got.orientation.mean()):.5f} time {dt:.1f}", flush=True)


if __name__ == "__main__":
    main()
