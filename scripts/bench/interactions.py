"""Wall time of each Stage I interaction op itself (no optimisation steps) at 10k/100k/1M Gaussians.

    python scripts/bench/interactions.py [--sizes 10000 100000 1000000] [--repeats 5] [--threads 1]

Goal (issue 4): ≤ 50 ms per op at 100k on CPU. Each figure is printed with its ratio to a baseline
measured in the same run: one copy of every parameter tensor (``Gaussians.clone``), the least any op
that touches every row can cost.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from interactive3d.backend.interact import parts, selection, transform
from interactive3d.backend.stage1 import gaussians as G


def _time(fn, repeats: int) -> float:
    """Median wall time in ms of ``fn()`` (one warm-up call)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


def bench(n: int, repeats: int) -> dict[str, float]:
    g = G.init_random(n, seed=0)
    opt = G.make_optimizers(g)
    (g.means.sum() + g.scales.sum()).backward()
    for o in opt.values():
        o.step()
    means = g.means.detach()
    part = selection.select_sphere(means, (0.2, 0.0, 0.0), 0.2)
    g.set_part("p", part)
    stretch = torch.eye(4)
    stretch[:3, :3] = torch.tensor([[1.5, 0.2, 0.0], [0.0, 0.8, 0.0], [0.1, 0.0, 1.2]])
    a = math.radians(20)
    rot = torch.eye(4)
    rot[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    rot[:3, 3] = torch.tensor([0.1, 0.0, 0.0])
    box = torch.eye(4) * 0.3
    box[3, 3] = 1.0
    other = G.init_random(max(1, n // 10), seed=1)
    idx = torch.arange(0, n, 7)

    def remove():
        h = g.clone()
        o = G.make_optimizers(h)
        parts.remove_part(h, o, part)

    def merge():
        h = g.clone()
        o = G.make_optimizers(h)
        parts.merge_gaussians(h, o, other, matrix=rot, part_name="new")

    rows = {
        "baseline clone": lambda: g.clone(),
        "select indices": lambda: selection.select_indices(n, idx),
        "select sphere": lambda: selection.select_sphere(means, (0.2, 0.0, 0.0), 0.2),
        "select aabb": lambda: selection.select_aabb(means, (-0.1, -0.1, -0.1), (0.3, 0.3, 0.3)),
        "select oriented box": lambda: selection.select_oriented_box(means, box),
        "transform rigid (all)": lambda: transform.transform_part(g, torch.ones(n, dtype=torch.bool), rot),
        "transform stretch (all)": lambda: transform.transform_part(g, torch.ones(n, dtype=torch.bool), stretch),
        "clone+remove part": remove,
        "clone+merge n/10": merge,
    }
    try:
        from interactive3d.backend.stage1.cameras import cameras_from_blender, look_at
    except ImportError:
        pass
    else:
        eye = torch.tensor([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]])
        cams = cameras_from_blender(look_at(eye, torch.zeros(2, 3)), math.radians(50), 256, 256)
        masks = torch.zeros(2, 256, 256, dtype=torch.bool)
        masks[:, 64:192, 64:192] = True
        rows["select 2 masks 256²"] = lambda: selection.select_by_masks(means, cams, masks)
    return {name: _time(fn, repeats) for name, fn in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); 1 is steadier on a shared CPU")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU")
    for n in args.sizes:
        res = bench(n, args.repeats)
        base = res["baseline clone"]
        print(f"\nN = {n:,}")
        print(f"  {'op':26s} {'ms':>9s} {'× clone':>8s}")
        for name, ms in res.items():
            print(f"  {name:26s} {ms:9.2f} {ms / base:8.2f}")


if __name__ == "__main__":
    main()
