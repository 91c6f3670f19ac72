"""Stage II geometry per budget (issue 26): distil thin Gaussian surfels of procedural shapes with holes and thin
parts (scripts/bench/geometry_shapes.py) at a run preset's Stage II budget, extract the mesh through the occupancy grid
as ``stage2.extract_mesh`` does, and print against the exact shape: the vertices' signed distance (mean,
10th/90th percentile, mean in mesh cells; > 0 = inflated), the Chamfer distance as % of the bounding-box
diagonal, the occupancy grid's precision and recall, the mesh's own signed-error report
(stage2 ``surface_error``, from the Gaussians alone) and the held-out depth error of the field's renders
against the Gaussians' (median t_NeRF − t_GS where both are opaque; < 0 = the field's surface is in front).

    python scripts/bench/stage2_geometry.py [--preset preview|fast] [--shape torus plate genus2 torus_sphere]
        [--levels L] [--log2-table T] [--rays N] [--mesh-res R] [--surfels N] [--threads T]
        [--supersample S] [--blob SCALE STD]

``--preset`` takes the Stage II steps and render size that ``presets.resolve`` gives a CPU backend (preview:
60 steps at 64², fast: 300 at 64²; default: DistillConfig's 1000 at 64²); the field and the rays are the op's defaults (16 levels of 2^19,
4096 rays × 64 samples) unless given. Figures: docs/benchmarks.md. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from interactive3d.backend.service.presets import resolve
from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
from interactive3d.backend.stage1.render import render
from interactive3d.backend.stage2.distill import DistillConfig, DistillJob
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.mesh import MeshConfig, extract_mesh
from interactive3d.backend.stage2.mesh_error import surface_error
from interactive3d.backend.stage2.nerf import NeRFConfig
from interactive3d.backend.stage2.render import RenderConfig, render_image
from interactive3d.backend.stage2.state import SLOT

sys.path.insert(0, str(Path(__file__).resolve().parent))
import geometry_shapes as shapes  # noqa: E402


class _Session:
    def __init__(self, g):
        self.gaussians, self.device, self.extras = g, torch.device("cpu"), {}


def surfel_count(shape: str, spacing: float = 0.0095) -> int:
    """Surfels for a mean spacing of ``spacing`` (issue 26's 18,500 on the torus with a sphere)."""
    return int(shapes.area(shape) / spacing**2)


@torch.no_grad()
def depth_error(field, occupancy, g, views: int = 4, size: int = 48) -> float:
    """Median (t_NeRF − t_GS) over held-out orbit pixels where both renders are ≥ 50 % opaque (camera z)."""
    cams = sample_orbit(views, OrbitConfig(width=size, height=size), torch.Generator().manual_seed(999)).cameras
    gs = render(g, cams, torch.ones(3))
    nf = render_image(field, cams, RenderConfig(n_samples=256), occupancy)
    # the field's depth is the ray distance; the Gaussians' is camera z: compare in z via the ray's z component
    from interactive3d.backend.stage2.rays import camera_rays

    rays = camera_rays(cams)
    vm = cams.viewmats.float()
    dz = torch.einsum("bij,bnj->bni", vm[:, :3, :3], rays.dirs.reshape(views, -1, 3))[..., 2].reshape(views, size, size, 1)
    both = (gs.alpha > 0.5) & (nf.opacity > 0.5)
    return float((nf.depth * dz - gs.depth)[both].median()) if bool(both.any()) else float("nan")


def run(shape: str, steps: int, resolution: int, levels: int, log2_table: int, rays: int, mesh_res: int, n_surfels: int, seed: int = 0,
        elevation: tuple[float, float] | None = None, depth_weight: float | None = None, blob: tuple[float, float] | None = None,
        supersample: int | None = None, lr: tuple[float, float] | None = None) -> dict:
    g = shapes.surfels(shape, n_surfels, seed=seed)
    s = _Session(g)
    cfg = DistillConfig(steps=steps, resolution=resolution, rays_per_step=rays, preview_every=0, seed=seed)
    if elevation is not None:
        cfg = dataclasses.replace(cfg, elevation_range_deg=elevation)
    if depth_weight is not None:
        cfg = dataclasses.replace(cfg, depth_weight=depth_weight)
    if supersample is not None:
        cfg = dataclasses.replace(cfg, target_supersample=supersample)
    if blob is not None:
        cfg = dataclasses.replace(cfg, start_blob=blob)
    if lr is not None:
        cfg = dataclasses.replace(cfg, lr_grid=lr[0], lr_mlp=lr[1])
    field_cfg = NeRFConfig(grid=HashGridConfig(n_levels=levels, log2_table_size=log2_table))
    job = DistillJob(s, cfg, field_cfg, backend="auto")
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        job.step(i)
    t_distill = time.perf_counter() - t0
    st = s.extras[SLOT]
    t0 = time.perf_counter()
    m = extract_mesh(st.refined, MeshConfig(resolution=mesh_res), st.occupancy)
    t_mesh = time.perf_counter() - t0
    cell = 2 * st.cfg.aabb_radius / (mesh_res - 1)
    out = {"shape": shape, "steps": steps, "seconds_distill": t_distill, "seconds_mesh": t_mesh, "cell": cell}
    out.update(shapes.mesh_errors(shape, m.vertices, cell))
    out.update(shapes.occupancy_errors(shape, st.occupancy.occ, st.cfg.aabb_radius))
    est = surface_error(m.vertices, m.faces, g)
    out["estimated_signed_mean"] = est.mean if est is not None else float("nan")
    out["depth_error"] = depth_error(st.refined, st.occupancy, g)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("preview", "fast", "default"), default="preview",
                    help="default: DistillConfig's 1000 steps at 64² (what stage2.distill runs without a preset)")
    ap.add_argument("--steps", type=int, default=0, help="override the preset's steps")
    ap.add_argument("--shape", nargs="+", choices=shapes.SHAPES, default=["torus"])
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--log2-table", type=int, default=19)
    ap.add_argument("--rays", type=int, default=4096)
    ap.add_argument("--mesh-res", type=int, default=96)
    ap.add_argument("--surfels", type=int, default=0, help="surfels per shape (0: a spacing of 0.0095)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--elevation", type=float, nargs=2, default=None, help="distillation camera elevations (default: DistillConfig's)")
    ap.add_argument("--depth-weight", type=float, default=None, help="distillation depth term weight (default: DistillConfig's)")
    ap.add_argument("--blob", type=float, nargs=2, default=None, metavar=("SCALE", "STD"),
                    help="the start blob (DistillConfig.start_blob, e.g. 4 2; default: threestudio's 10 0.5)")
    ap.add_argument("--supersample", type=int, default=None, help="distillation targets' supersampling (default: DistillConfig's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset == "default":
        ops = {"steps": DistillConfig().steps, "resolution": DistillConfig().resolution}
    else:
        ops = resolve(args.preset, "cpu").preset.ops()["stage2.distill"]
    steps = args.steps or ops["steps"]
    print(f"preset {args.preset} (CPU): {steps} steps at {ops['resolution']}², lr {ops.get('lr_grid', 0.01)}/{ops.get('lr_mlp', 1e-3)}, "
          f"{args.rays} rays, field {args.levels}×2×2^{args.log2_table}, "
          f"mesh {args.mesh_res}³, {torch.get_num_threads()} threads", flush=True)
    for shape in args.shape:
        r = run(shape, steps, ops["resolution"], args.levels, args.log2_table, args.rays, args.mesh_res, args.surfels or surfel_count(shape), args.seed,
                None if args.elevation is None else tuple(args.elevation), args.depth_weight,
                None if args.blob is None else tuple(args.blob), args.supersample,
                (ops["lr_grid"], ops["lr_mlp"]) if "lr_grid" in ops else None)
        print(f"{shape:13s} signed mean {r['signed_mean']:+.4f} ({r['signed_mean_cells']:+.2f} cells) p10 {r['signed_p10']:+.4f} "
              f"p90 {r['signed_p90']:+.4f} | estimated {r['estimated_signed_mean']:+.4f} | Chamfer {r['chamfer_pct']:.2f} % | "
              f"occupancy precision {r['precision']:.3f} recall {r['recall']:.3f} ({r['occupied']} cells) | depth {r['depth_error']:+.4f} | "
              f"{r['seconds_distill']:.0f} s + {r['seconds_mesh']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
