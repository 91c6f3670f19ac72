"""Interactive hash refinement step time (paper §3.2.2): one part of the default config trained with the L1
reconstruction loss toward target renders, with the field's 32³ occupancy grid.

    python scripts/bench/refine.py [--steps 5] [--smoke]

Prints ms per step and steps/s, then one JSON line with the same figures. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.nerf import NeRFConfig, NeRFField
from interactive3d.backend.stage2.occupancy import occupancy_from_field
from interactive3d.backend.stage2.rays import RenderConfig
from interactive3d.backend.stage2.parts import PartConfig, RefinedField, region_cells
from interactive3d.backend.stage2.refine import RefineConfig, Refiner


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="seconds on a CPU: a small field, 256 rays, 2 steps")
    a = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.smoke:
        nerf_cfg = NeRFConfig(grid=HashGridConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, per_level_scale=1.5), hidden=32)
        part_cfg = PartConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, per_level_scale=1.5, hidden=16)
        rays, size, steps = 256, 32, 2
    else:
        nerf_cfg, part_cfg, rays, size, steps = NeRFConfig(), PartConfig(), 2048, 64, a.steps
    base = NeRFField(nerf_cfg, backend="auto", device=dev, seed=0)
    occ = occupancy_from_field(base, 32)
    field = RefinedField(base)
    field.add_part("part", region_cells(occ, torch.zeros(3), 0.4), occ, part_cfg, seed=1)
    gen = torch.Generator().manual_seed(0)
    cams = sample_orbit(2, OrbitConfig(width=size, height=size), gen).cameras
    target = torch.rand(len(cams.viewmats), cams.height, cams.width, 3)
    r = Refiner(field, ["part"], RefineConfig(steps=steps + 1, rays_per_step=rays, render=RenderConfig(n_samples=64, stratified=True)),
                targets=(cams, target), occupancy=occ)
    r.step(0)  # warm-up: first-use self-tests and kernel compiles
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        r.step(i)
    _sync(dev)
    t = (time.perf_counter() - t0) / steps
    print(f"refine step ({dev.type}, {rays} rays x 64 samples, one part, 32³ occupancy): {1e3 * t:8.1f} ms = {1 / t:.2f} steps/s", flush=True)
    print(json.dumps({"bench": "refine", "device": dev.type, "rays": rays, "ms_per_step": 1e3 * t, "steps_per_s": 1 / t}), flush=True)


if __name__ == "__main__":
    main()
