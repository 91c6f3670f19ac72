"""An ablation like the paper's Fig. 4 (§3.2.2, §4.4), on CPU: what adds detail the base field cannot hold?

    python scripts/bench/parts_ablation.py [--steps 150] [--size 48] [--rays 2048] [--seed 0]

The target is the base field with a fine stripe texture (period ``period`` world units, far below the
base's finest cell) painted inside a region Q on its surface. Three refinements get the same step
budget, learning rates, rays and target views (zoom-in cameras on Q), L1 toward the target:

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
from interactive3d.backend.stage2.nerf import (
    FieldOutput,
    NeRFConfig,
    NeRFField,
    Rays,
    RenderConfig,
    camera_rays,
    occupancy_from_field,
    render_image,
    render_rays,
)
from interactive3d.backend.stage2.parts import PartConfig, RefinedField, region_cells
from interactive3d.backend.stage2.refine import RefineConfig, Refiner


@dataclass(frozen=True)
class AblationConfig:
    steps: int = 150
    size: int = 48  # zoom-in view size (square)
    views: int = 8  # training views; as many held-out ones
    rays: int = 2048  # rays per step
    n_samples: int = 32
    lr_grid: float = 0.03
    lr_mlp: float = 0.01
    period: float = 0.05  # stripe period, world units: the base's finest cell is 2/27 ≈ 0.074, the shared
    # table's 2/64 ≈ 0.031 (too coarse for 0.05 stripes: under 2 cells per period), the part's ≈ 0.4/64 ≈ 0.006
    center: tuple[float, float, float] = (0.5, 0.0, 0.1)  # on the base's surface (its blob sphere r ≈ 0.5)
    radius: float = 0.2
    part: PartConfig = PartConfig(n_levels=4, n_features=2, log2_table_size=14, base_resolution=8, finest_resolution=64, hidden=32)
    base: NeRFConfig = NeRFConfig(grid=HashGridConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, per_level_scale=1.5), hidden=32)
    seed: int = 0


class StripedTarget(torch.nn.Module):
    """The base field with red/white stripes across z inside the sphere Q (same density)."""

    def __init__(self, base: NeRFField, cfg: AblationConfig) -> None:
        super().__init__()
        self.base, self.cfg, self.background = base, base.cfg, base.background
        self.center, self.radius, self.period = torch.tensor(cfg.center), cfg.radius, cfg.period

    def forward(self, x):
        out = self.base(x)
        inside = ((x - self.center).norm(dim=-1) < self.radius)[:, None]
        red = torch.sin(2 * torch.pi * x[:, 2] / self.period) > 0
        stripes = torch.where(red[:, None], torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.95, 0.95, 0.95]))
        return FieldOutput(out.density, torch.where(inside, stripes, out.rgb))


def _psnr(a, b, mask):
    d = ((a - b) ** 2)[mask]
    return float(10 * torch.log10(1.0 / d.mean().clamp_min(1e-12))) if d.numel() else float("nan")


VARIANTS = ("finetune_base", "shared_table", "part_specific")


def run(cfg: AblationConfig = AblationConfig(), log=print, variants=VARIANTS) -> dict:
    """The three variants; returns {variant: {"psnr_in", "psnr_out", "outside_identical", "seconds"}} and
    "before" (the untouched base)."""
    base = NeRFField(cfg.base, backend="torch", seed=cfg.seed)
    for p in base.parameters():
        p.requires_grad_(True)
    occ = occupancy_from_field(base, 32)
    target_field = StripedTarget(base, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    center = torch.tensor(cfg.center)
    train = zoom_in_cameras(center, cfg.radius, cfg.views, cfg.size, cfg.size, gen).cameras
    held = zoom_in_cameras(center, cfg.radius, cfg.views, cfg.size, cfg.size, gen).cameras
    rcfg = RenderConfig(n_samples=cfg.n_samples)
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
        entry = {"psnr_in": _psnr(after, held_target, inside), "psnr_out": _psnr(after, held_target, ~inside), "seconds": seconds}
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
        log(f"{variant:14s} PSNR inside {entry['psnr_in']:6.2f} dB  outside {entry['psnr_out']:6.2f} dB  {seconds:6.1f} s"
            + (f"  field outside O_part bit-identical: {entry['outside_identical']}, base bit-identical: {entry['base_identical']}, "
               f"max |Δ| on {entry['blind_pixels']} pixels that never see O_part: {entry['blind_max_diff']:.1e}" if "outside_identical" in entry else ""))
    return results


def _train(variant: str, base: NeRFField, occ, cells, cams, target, cfg: AblationConfig):
    rays = camera_rays(cams)
    rgb = target.reshape(-1, 3)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # the same rays for every variant
    # midpoint samples, as the target renders: with jittered ones a sample's z would wander by a good part
    # of a stripe period along the ray and the supervision itself would blur the stripes
    render = RenderConfig(n_samples=cfg.n_samples, stratified=False)
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


def _sees(part, cams, n=1024):
    """[B,H,W] bool: the pixel's ray crosses a cell of O_part."""
    rays = camera_rays(cams)
    t = torch.linspace(0.0, 4.0, n)
    pts = rays.origins[:, None] + rays.dirs[:, None] * t[None, :, None]
    return part.contains(pts.reshape(-1, 3)).reshape(-1, n).any(-1).reshape(len(cams), cams.height, cams.width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-grid", type=float, default=AblationConfig.lr_grid)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = dataclasses.replace(AblationConfig(), steps=a.steps, size=a.size, rays=a.rays, seed=a.seed, lr_grid=a.lr_grid)
    print(f"steps {cfg.steps}, {cfg.rays} rays × {cfg.n_samples} samples, {cfg.views} zoom-in views of {cfg.size}², stripe period {cfg.period}")
    print(f"base finest {cfg.base.grid.resolutions()[-1]} cells over 2 units; part tables {cfg.part.n_levels}×{cfg.part.n_features}×2^{cfg.part.log2_table_size}, "
          f"finest {cfg.part.finest_resolution} cells across their box")
    run(cfg, variants=tuple(a.variants))


if __name__ == "__main__":
    main()
