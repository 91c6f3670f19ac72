"""CPU rasteriser speed: forward+backward of ``render`` (torch path) against a dense baseline.

    python scripts/bench/render.py [--sizes 1000 5000 20000] [--res 64] [--batch 1] [--repeats 5] [--threads 1]

Goal (brief B1): a 64×64 render of ~5k Gaussians, forward+backward, well under 0.2 s on the project's
CPU. The baseline, measured in the same run on the same Gaussians and cameras, is the most direct
vectorised form of the same compositing: every Gaussian against every pixel ([N, H·W] alphas, sorted
by depth, cumulative product along N). It is only run where N·H·W·B ≤ 4·10⁷ (memory). Printed: median
ms of each and the ratio baseline / ours; the max abs image difference shows both compute the same thing.
On CUDA tensors ``render`` uses gsplat instead; this script measures the CPU twin only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from interactive3d.backend.maths import rotations as Rot
from interactive3d.backend.stage1 import render as R
from interactive3d.backend.stage1.cameras import orbit_cameras
from interactive3d.backend.stage1.gaussians import init_random


def _time(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def dense_render(g, cams, bg):
    """Baseline: all Gaussians × all pixels, depth-sorted cumprod (same maths, no pair list)."""
    proj = R.project(g.means, Rot.quat_scale_to_covar(g.params["quats"], g.scales), cams.viewmats, cams.Ks, cams.width, cams.height)
    colors = R.view_colors(g, cams)
    ys, xs = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [P,2]
    imgs = []
    for v in range(len(cams)):
        vis = proj.radii[v].amax(-1) > 0
        order = torch.argsort(torch.where(vis, proj.depths[v], torch.full_like(proj.depths[v], float("inf"))))
        order = order[vis[order]]
        d = pix[None] - proj.means2d[v, order][:, None]  # [N,P,2]
        c = proj.conics[v, order]
        sigma = 0.5 * (c[:, 0:1] * d[..., 0] ** 2 + c[:, 2:3] * d[..., 1] ** 2) + c[:, 1:2] * d[..., 0] * d[..., 1]
        a = (g.opacities[order][:, None] * torch.exp(-sigma)).clamp_max(R.ALPHA_MAX)
        a = torch.where(a >= R.ALPHA_MIN, a, torch.zeros_like(a))
        t = torch.cumprod(torch.cat([torch.ones_like(a[:1]), 1 - a[:-1]]), 0)
        w = a * t * (t * (1 - a) > R.T_MIN)
        rgb = w.T @ colors[v, order] + (1 - w.sum(0))[:, None] * bg
        imgs.append(rgb.reshape(cams.height, cams.width, 3))
    return torch.stack(imgs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = args.batch
    cams = orbit_cameras(torch.full((b,), 20.0), torch.linspace(0, 270, b), torch.full((b,), 1.75), torch.full((b,), 55.0), args.res, args.res)
    bg = torch.ones(3)
    print(f"torch {torch.__version__}, threads {args.threads}, {args.res}x{args.res}, batch {b}, init_random (radius 0.5, opacity 0.5)")
    print(f"{'N':>7} {'ours fwd':>9} {'ours f+b':>9} {'dense f+b':>10} {'ratio':>7} {'max|diff|':>10}")
    for n in args.sizes:
        g = init_random(n, radius=0.5, seed=0)
        with torch.no_grad():
            g.params["opacity_logits"].fill_(0.0)

        def ours_fb():
            R.render(g, cams, bg).rgb.mean().backward()

        def ours_f():
            with torch.no_grad():
                R.render(g, cams, bg)

        t_f = _time(ours_f, args.repeats)
        t_fb = _time(ours_fb, args.repeats)
        if n * args.res * args.res * b <= 4e7:
            t_dense = _time(lambda: dense_render(g, cams, bg).mean().backward(), max(1, args.repeats // 2))
            with torch.no_grad():
                diff = float((dense_render(g, cams, bg) - R.render(g, cams, bg).rgb).abs().max())
            print(f"{n:>7} {t_f:>8.1f}ms {t_fb:>8.1f}ms {t_dense:>9.1f}ms {t_dense / t_fb:>6.1f}x {diff:>10.2e}")
        else:
            print(f"{n:>7} {t_f:>8.1f}ms {t_fb:>8.1f}ms {'-':>10} {'-':>7} {'-':>10}")


if __name__ == "__main__":
    main()
