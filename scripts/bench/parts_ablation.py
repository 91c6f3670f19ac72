"""An ablation like the paper's Fig. 4 (§3.2.2, §4.4), on CPU: what adds detail the base field cannot hold?

    python scripts/bench/parts_ablation.py [--steps 150] [--size 48] [--rays 2048] [--seed 0]

The target is the base field with two stripe textures painted inside a region Q on its surface: coarse
ones (``period``) too fine for the base's finest cell, and fine ones (``fine_period``) too fine as well for
the refinement tables when they are spread over the whole box. Three refinements get the same step budget, learning rates, rays and target views (zoom-in cameras on Q), L1 toward the target:

  (a) fine-tune the base field itself (all its tables and MLPs), as "more SDS steps" in Fig. 4(a);
  (b) a shared refinement table: the same part tables and residual MLPs, but over the whole field box
      (no part-specific mapping: its cells are every occupancy cell), Fig. 4(b);
  (c) part-specific refinement: the same tables over O_part = Q ∩ O in the part's local coordinates,
      Fig. 4(c).

It prints the PSNR of each inside Q's projection on held-out zoom-in views, the PSNR outside, and whether
the field outside O_part is bit-identical (queried at points outside O_part and rendered on pixels whose
rays never cross it). Figures: docs/benchmarks.md. tests/backend/test_refine.py runs a small version.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import torch
from interactive3d.backend.stage1.cameras import zoom_in_cameras
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.nerf import FieldOutput, NeRFConfig, NeRFField
from interactive3d.backend.stage2.occupancy import occupancy_from_field
from interactive3d.backend.stage2.rays import Rays, RenderConfig, camera_rays
from interactive3d.backend.stage2.render import render_image, render_rays
from interactive3d.backend.stage2.parts import PartConfig, RefinedField, region_cells
from interactive3d.backend.stage2.refine import RefineConfig, Refiner


@dataclass(frozen=True)
class AblationConfig:
    steps: int = 150
    size: int = 48  # zoom-in view size (square)
    views: int = 8  # training views; as many held-out ones
    rays: int = 2048  # rays per step
    n_samples: int = 128  # training samples per box diagonal (jittered: every step sees new points)
    eval_samples: int = 256  # samples per box diagonal of the target and held-out renders
    lr_grid: float = 0.03
    lr_mlp: float = 0.01
    # Two stripe textures across z, each taking cells under half its period to resolve: the base's finest cell
    # is 2/27 ≈ 0.074 (neither), the refinement tables' 2/48 ≈ 0.042 when spread over the whole box (the
    # coarse ones: red), ≈ 0.4/48 ≈ 0.008 over O_part's box (both: red and green)
    period: float = 0.1  # coarse stripes (red channel), world units
    fine_period: float = 0.05  # fine stripes (green channel)
    center: tuple[float, float, float] = (0.5, 0.0, 0.1)  # on the base's surface (its blob sphere r ≈ 0.5)
    radius: float = 0.2
    part: PartConfig = PartConfig(n_levels=4, n_features=2, log2_table_size=14, base_resolution=4, finest_resolution=48, hidden=32)
    # A sharp surface, as a distilled object has (the blob's weights lie within ≈ 0.0125 of it): on the
    # default soft blob a ray's weights spread over a shell as thick as a stripe, which averages the
    # stripes away in every render and leaves nothing for extra resolution to show.
    base: NeRFConfig = NeRFConfig(
        grid=HashGridConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, per_level_scale=1.5),
        hidden=32, density_blob_scale=40.0,
    )
    seed: int = 0


class StripedTarget(torch.nn.Module):
    """The base field with stripes across z inside the sphere Q (same density): red from the coarse stripes,
    green from the fine ones."""

    def __init__(self, base: NeRFField, cfg: AblationConfig) -> None:
        super().__init__()
        self.base, self.cfg, self.background = base, base.cfg, base.background
        self.center, self.radius = torch.tensor(cfg.center), cfg.radius
        self.periods = (cfg.period, cfg.fine_period)

    def forward(self, x):
        out = self.base(x)
        inside = ((x - self.center).norm(dim=-1) < self.radius)[:, None]
        on = [(torch.sin(2 * torch.pi * x[:, 2] / p) > 0).float() for p in self.periods]
        stripes = torch.stack([0.2 + 0.7 * on[0], 0.2 + 0.7 * on[1], torch.full_like(on[0], 0.5)], dim=-1)
        return FieldOutput(out.density, torch.where(inside, stripes, out.rgb))


def _psnr(a, b, mask):
    d = ((a - b) ** 2)[mask]
    return float(10 * torch.log10(1.0 / d.mean().clamp_min(1e-12))) if d.numel() else float("nan")


VARIANTS = ("finetune_base", "shared_table", "part_specific")


def run(cfg: AblationConfig = AblationConfig(), log=print, variants=VARIANTS) -> dict:
    """The three variants; returns {variant: {"psnr_in", "psnr_out", "parameters", "outside_identical", "seconds"}}
    and "before" (the untouched base). Runs on one torch thread: a thread count changes the order of float sums,
    which a hundred training steps amplify to tenths of a dB."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(cfg, log, variants)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: AblationConfig, log, variants) -> dict:
    base = NeRFField(cfg.base, backend="torch", seed=cfg.seed)
    for p in base.parameters():
        p.requires_grad_(True)
    occ = occupancy_from_field(base, 32)
    target_field = StripedTarget(base, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    center = torch.tensor(cfg.center)
    # views from outside the object, as the refinement job's (a full orbit of Q would look from inside)
    train = zoom_in_cameras(center, cfg.radius, cfg.views, cfg.size, cfg.size, gen, outward=center).cameras
    held = zoom_in_cameras(center, cfg.radius, cfg.views, cfg.size, cfg.size, gen, outward=center).cameras
    rcfg = RenderConfig(n_samples=cfg.eval_samples)
    with torch.no_grad():
        target = render_image(target_field, train, rcfg).rgb
        held_target = render_image(target_field, held, rcfg).rgb
        held_before = render_image(base, held, rcfg, occ).rgb
    inside = (held_target - held_before).abs().amax(-1) > 1e-3  # Q's projection (where the stripes show)
    cells = region_cells(occ, center, cfg.radius)
    probe = torch.rand(20000, 3, generator=gen) * 2 - 1
    results = {"before": {"psnr_in": _psnr(held_before, held_target, inside), "psnr_out": _psnr(held_before, held_target, ~inside)}}
    log(f"{'base as is':14s} PSNR inside {results['before']['psnr_in']:6.2f} dB  outside {results['before']['psnr_out']:6.2f} dB")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    for variant in variants:
        base.load_state_dict(base_state)
        t0 = time.perf_counter()
        field = _train(variant, base, occ, cells, train, target, cfg)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            after = render_image(field, held, rcfg, occ).rgb
        trained = base if variant == "finetune_base" else field.parts["part"]
        entry = {"psnr_in": _psnr(after, held_target, inside), "psnr_out": _psnr(after, held_target, ~inside), "seconds": seconds,
                 "parameters": sum(p.numel() for p in trained.parameters())}
        if variant == "part_specific":
            part = field.parts["part"]
            out_pts = probe[~part.contains(probe)]
            base_now = NeRFField(cfg.base, backend="torch")
            base_now.load_state_dict(base_state)
            with torch.no_grad():
                a, b = field(out_pts), base_now(out_pts)
                blind = ~_sees(part, held)
            entry["outside_identical"] = bool(torch.equal(a.density, b.density) and torch.equal(a.rgb, b.rgb))
            # renders batch different points through the MLPs, so pixels may differ in the last bits
            entry["blind_pixels"] = int(blind.sum())
            entry["blind_max_diff"] = float((after[blind] - held_before[blind]).abs().max()) if bool(blind.any()) else 0.0
            entry["base_identical"] = all(torch.equal(v, base_state[k]) for k, v in base.state_dict().items())
        results[variant] = entry
        log(f"{variant:14s} PSNR inside {entry['psnr_in']:6.2f} dB  outside {entry['psnr_out']:6.2f} dB  {entry['parameters']:7d} trained parameters  {seconds:6.1f} s"
            + (f"  field outside O_part bit-identical: {entry['outside_identical']}, base bit-identical: {entry['base_identical']}, "
               f"max |Δ| on {entry['blind_pixels']} pixels that never see O_part: {entry['blind_max_diff']:.1e}" if "outside_identical" in entry else ""))
    return results


def _train(variant: str, base: NeRFField, occ, cells, cams, target, cfg: AblationConfig):
    rays = camera_rays(cams)
    rgb = target.reshape(-1, 3)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # the same rays for every variant
    # jittered samples: each step supervises new points along the rays (as SDS renders from fresh cameras
    # do); fixed midpoints would let a fine table memorise a few points per ray and nothing between them
    render = RenderConfig(n_samples=cfg.n_samples, stratified=True)
    if variant == "finetune_base":
        mlp = list(base.density_mlp.parameters()) + list(base.color_mlp.parameters())
        opt = torch.optim.Adam([{"params": base.grid.parameters(), "lr": cfg.lr_grid}, {"params": mlp, "lr": cfg.lr_mlp}], betas=(0.9, 0.99), eps=1e-15)
        for _ in range(cfg.steps):
            sel = torch.randint(0, rgb.shape[0], (cfg.rays,), generator=gen)
            out = render_rays(base, Rays(rays.origins[sel], rays.dirs[sel]), render, occ, generator=gen)
            loss = (out.rgb - rgb[sel]).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return base
    field = RefinedField(base)
    part_cells = torch.ones_like(cells) if variant == "shared_table" else cells
    field.add_part("part", part_cells, occ, cfg.part, seed=cfg.seed)
    rc = RefineConfig(steps=cfg.steps, lr_grid=cfg.lr_grid, lr_mlp=cfg.lr_mlp, rays_per_step=cfg.rays, render=render, orientation_weight=0.0, seed=cfg.seed + 2)
    r = Refiner(field, ["part"], rc, targets=(cams, target), occupancy=occ)
    r.generator = gen
    for i in range(cfg.steps):
        r.step(i)
    return field


def _sees(part, cams):
    """[B,H,W] bool: the pixel's ray crosses a cell of O_part (exact slab test against every cell: sampling
    the ray misses rays that graze a cell's corner)."""
    rays = camera_rays(cams)
    o, d = rays.origins.reshape(-1, 3).double(), rays.dirs.reshape(-1, 3).double()
    n, r = part.cells.shape[0], part.aabb_radius
    lo = part.cells.nonzero().double() / n * 2 * r - r  # [M,3] cell corners
    hi = lo + 2 * r / n
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    hit = torch.zeros(o.shape[0], dtype=torch.bool)
    for i in range(0, lo.shape[0], 64):
        a = (lo[None, i:i + 64] - o[:, None]) * inv[:, None]  # [R,m,3]
        b = (hi[None, i:i + 64] - o[:, None]) * inv[:, None]
        t_near = torch.minimum(a, b).amax(-1)
        t_far = torch.maximum(a, b).amin(-1)
        hit |= (t_far >= t_near.clamp_min(0.0)).any(-1)
    return hit.reshape(len(cams), cams.height, cams.width)


def sweep(cfg: AblationConfig, seeds: list[int], periods: list[tuple[float, float]], variants=VARIANTS, log=print) -> dict:
    """:func:`run` at every seed × (coarse, fine) stripe period pair; prints each run's region PSNRs and, per
    variant, the mean, min and max, and how often each ordering held. Returns {(seed, periods): results}."""
    runs = {}
    for seed in seeds:
        for pc, pf in periods:
            res = run(dataclasses.replace(cfg, seed=seed, period=pc, fine_period=pf), log=lambda *_: None, variants=variants)
            runs[(seed, (pc, pf))] = res
            log(f"seed {seed} periods {pc}/{pf}: base {res['before']['psnr_in']:.2f}  "
                + "  ".join(f"{v} {res[v]['psnr_in']:.2f} ({res[v]['parameters']} params)" for v in variants), flush=True)
    for v in ("before",) + tuple(variants):
        x = torch.tensor([r[v]["psnr_in"] for r in runs.values()])
        log(f"{v:14s} region PSNR mean {float(x.mean()):.2f} dB, min {float(x.min()):.2f}, max {float(x.max()):.2f} over {len(x)} runs")
    for lo, hi in zip(("before",) + tuple(variants), tuple(variants)):
        held = sum(r[lo]["psnr_in"] < r[hi]["psnr_in"] for r in runs.values())
        log(f"{lo} < {hi}: {held}/{len(runs)} runs")
    if "finetune_base" in variants and "part_specific" in variants:
        held = sum(r["finetune_base"]["psnr_in"] < r["part_specific"]["psnr_in"] for r in runs.values())
        log(f"finetune_base < part_specific: {held}/{len(runs)} runs")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-grid", type=float, default=AblationConfig.lr_grid)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--part-log2-table", type=int, default=AblationConfig.part.log2_table_size,
                    help="log2 entries per part table (12: about the base's own rows, an equal parameter budget)")
    ap.add_argument("--sweep", action="store_true", help="every seed of --seeds × every stripe period pair of --periods; prints the spread")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--periods", type=float, nargs="+", default=[0.1, 0.05, 0.12, 0.06, 0.08, 0.04], help="coarse fine [coarse fine …]")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = dataclasses.replace(AblationConfig(), steps=a.steps, size=a.size, rays=a.rays, seed=a.seed, lr_grid=a.lr_grid,
                              part=dataclasses.replace(AblationConfig.part, log2_table_size=a.part_log2_table))
    if a.sweep:
        sweep(cfg, a.seeds, list(zip(a.periods[::2], a.periods[1::2])), tuple(a.variants))
        return
    print(f"steps {cfg.steps}, {cfg.rays} rays × {cfg.n_samples} samples, {cfg.views} zoom-in views of {cfg.size}², stripe periods {cfg.period} and {cfg.fine_period}")
    print(f"base finest {cfg.base.grid.resolutions()[-1]} cells over 2 units; part tables {cfg.part.n_levels}×{cfg.part.n_features}×2^{cfg.part.log2_table_size}, "
          f"finest {cfg.part.finest_resolution} cells across their box")
    run(cfg, variants=tuple(a.variants))


if __name__ == "__main__":
    main()
