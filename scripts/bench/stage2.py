"""Stage II benchmark: hash-grid throughput per backend, distillation step time, marching cubes.

    python scripts/bench/stage2.py [--batch 262144] [--steps 5] [--mc-res 256] [--quick]
    python scripts/bench/stage2.py --hashgrid-only [--json out.json]   # the hash-grid part alone

Prints samples/s forward and forward+backward of the 16×2×2^19 hash grid (official config) for every
backend available on this machine (on CUDA: torch, triton, tcnn — each after its self-test; a backend that
fell back to the torch twin is marked so), as ratios to the pure-torch path measured in the same run, and on
CUDA as a share of the card's peak memory bandwidth (see :func:`hashgrid_bytes_per_sample`); ms per distillation step
(64×64 targets, 4096 rays × 64 samples; and with the jobs' renderer: nerfacc's marching on CUDA at the
official 512 steps per diagonal with 32³ occupancy skipping); marching cubes at 256³ split into density-grid
and marching-cubes time. Timings are printed, never asserted. ``--smoke`` runs every part at tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from interactive3d.backend.stage2.distill import (
    DistillConfig,
    distill_step,
    make_optimizer,
)
from interactive3d.backend.accel.fastpath import FASTPATHS
from interactive3d.backend.stage2.hashgrid import (
    HashGrid,
    HashGridConfig,
    _tcnn_available,
    _triton_available,
)
from interactive3d.backend.stage2.mesh import density_grid, optical_depth_from_outside
from interactive3d.backend.stage2.nerf import NeRFConfig, NeRFField
from interactive3d.backend.stage2.rays import RenderConfig

def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, dev, reps):
    fn()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / reps


# Peak DRAM bandwidth (bytes/s) of cards whose properties torch does not report, by a substring of the name
# (vendor data sheets; the first match wins, so the more specific names come first).
KNOWN_BANDWIDTH = [
    ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12),
    ("L40", 0.864e12), ("L4", 0.3e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12), ("A10", 0.6e12), ("V100", 0.9e12),
]


def peak_bandwidth(dev: torch.device) -> tuple[float | None, str]:
    """(bytes/s, where the figure comes from): torch's memory clock × bus width when it reports them
    (double data rate), else :data:`KNOWN_BANDWIDTH` by name, else (None, why)."""
    p = torch.cuda.get_device_properties(dev)
    clock_khz, bus_bits = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8.0, f"torch device properties ({clock_khz / 1e3:.0f} MHz x {bus_bits} bit)"
    for key, bw in KNOWN_BANDWIDTH:
        if key in p.name:
            return bw, f"data sheet of {key}"
    return None, f"unknown card {p.name!r}"


def hashgrid_bytes_per_sample(cfg: HashGridConfig, backward: bool) -> int:
    """DRAM traffic of one sample if nothing were cached: the point (12 B), the L·F fp32 outputs, and the 8
    corner rows of F fp32 per level; the backward adds the point, the output gradient and a read-modify-write
    of 8 corner rows per level (atomics). Caches serve the coarse levels, so the share of the peak bandwidth
    that this model gives is an upper bound on the traffic the kernel needs, not a measured one."""
    lf = cfg.n_levels * cfg.n_features * 4
    fwd = 12 + lf + 8 * lf
    return fwd + (12 + lf + 2 * 8 * lf if backward else 0)


def bench_hashgrid(batch: int, reps: int, devices: list[str] | None = None) -> list[dict]:
    """samples/s of every hash-grid backend on every device (rows also returned for --json)."""
    cfg = HashGridConfig()
    rows = []
    devs = [torch.device(d) for d in devices] if devices else [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devs:
        backends = ["torch"]
        if dev.type == "cuda":
            backends += [b for b, ok in (("triton", _triton_available()), ("tcnn", _tcnn_available())) if ok]
        bw, bw_src = peak_bandwidth(dev) if dev.type == "cuda" else (None, "")
        if dev.type == "cuda":
            print(f"hashgrid {dev}: {torch.cuda.get_device_name(dev)}, peak bandwidth "
                  f"{'?' if bw is None else f'{bw / 1e12:.2f} TB/s'} ({bw_src})", flush=True)
        x = torch.rand(batch, 3, device=dev, generator=torch.Generator(dev).manual_seed(0))
        base = None
        for b in backends:
            g = HashGrid(cfg, backend=b, device=dev, seed=0)
            used = g.backend  # a fast path that failed its self-test runs as the torch twin
            fwd = _time(lambda: g(x), dev, reps)

            def fb():
                g.zero_grad(set_to_none=True)
                g(x).sum().backward()

            both = _time(fb, dev, reps)
            sps_f, sps_b = batch / fwd, batch / both
            if base is None:
                base = (sps_f, sps_b)
            row = {"device": str(dev), "backend": b, "ran_as": used, "batch": batch,
                   "fwd_samples_per_s": sps_f, "fwd_bwd_samples_per_s": sps_b,
                   "fwd_vs_torch": sps_f / base[0], "fwd_bwd_vs_torch": sps_b / base[1]}
            name = b if used == b else f"{b}->{used}"
            line = (f"hashgrid {dev.type:4s} {name:13s} fwd {sps_f / 1e6:9.2f} M/s (x{sps_f / base[0]:6.2f})  "
                    f"fwd+bwd {sps_b / 1e6:9.2f} M/s (x{sps_b / base[1]:6.2f})")
            if bw is not None:
                row["fwd_bandwidth_share"] = sps_f * hashgrid_bytes_per_sample(cfg, False) / bw
                row["fwd_bwd_bandwidth_share"] = sps_b * hashgrid_bytes_per_sample(cfg, True) / bw
                line += (f"  uncached traffic = {100 * row['fwd_bandwidth_share']:6.1f}% / "
                         f"{100 * row['fwd_bwd_bandwidth_share']:6.1f}% of peak")
            if used != b:
                c = FASTPATHS.get("hashgrid", dev)
                row["fallback_reason"] = c.reason if c is not None else ""
                line += f"  (fell back: {row['fallback_reason']})"
            print(line, flush=True)
            rows.append(row)
    return rows


def bench_distill(steps: int, nerf_cfg: NeRFConfig, label: str) -> None:
    from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    f = NeRFField(nerf_cfg, backend="auto", device=dev)
    cfg = DistillConfig(rays_per_step=4096, render=RenderConfig(n_samples=64, stratified=True))
    opt = make_optimizer(f, cfg)
    gen = torch.Generator().manual_seed(0)
    cams = sample_orbit(1, OrbitConfig(), gen).cameras.to(dev)
    target = torch.rand(1, 64, 64, 3, device=dev)
    t = _time(lambda: distill_step(f, opt, cams, target, cfg, gen), dev, steps)
    print(f"distill step ({label}, {dev.type}, 4096 rays x 64 samples, no occupancy skipping): {1e3 * t:8.1f} ms", flush=True)


def bench_distill_marching(steps: int, nerf_cfg: NeRFConfig, label: str, n_samples: int = 512, rays: int = 4096) -> None:
    """One distillation step with the renderer the jobs use: nerfacc's marching on CUDA (when its self-test
    passes; else the torch twin, and the line says which), the official step (n_samples per diagonal) and
    empty-space skipping with the 32³ occupancy grid of the field (the init blob)."""
    from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
    from interactive3d.backend.stage2.occupancy import occupancy_from_field
    from interactive3d.backend.stage2.rays import camera_rays, march, render_step_size
    from interactive3d.backend.stage2.render import choose_volrend

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    f = NeRFField(nerf_cfg, backend="auto", device=dev)
    occ = occupancy_from_field(f, 32, step_size=render_step_size(nerf_cfg.aabb_radius, n_samples))
    cfg = DistillConfig(rays_per_step=rays, render=RenderConfig(n_samples=n_samples, stratified=True))
    opt = make_optimizer(f, cfg)
    gen = torch.Generator().manual_seed(0)
    cams = sample_orbit(1, OrbitConfig(), gen).cameras.to(dev)
    target = torch.rand(1, 64, 64, 3, device=dev)
    volrend = choose_volrend(dev)
    t = _time(lambda: distill_step(f, opt, cams, target, cfg, gen, occ), dev, steps)
    _, _, keep = march(camera_rays(cams), nerf_cfg.aabb_radius, cfg.render, None if occ is None else occ.lookup, None)
    print(f"distill step ({label}, {dev.type}, volrend={volrend}, {rays} rays, {n_samples} steps per diagonal, "
          f"32³ occupancy: {float(keep.sum(-1).float().mean()):.1f} samples per ray kept): {1e3 * t:8.1f} ms", flush=True)


def bench_mc(res: int, nerf_cfg: NeRFConfig | None = None) -> None:
    from skimage.measure import marching_cubes

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    f = NeRFField(nerf_cfg or NeRFConfig(), backend="auto", device=dev)
    t0 = time.perf_counter()
    vol = density_grid(f, res)
    t1 = time.perf_counter()
    tau = optical_depth_from_outside(vol, 2.0 / (res - 1))  # the default 'opacity' surface's extra pass
    t2 = time.perf_counter()
    v, fc, _, _ = marching_cubes(tau, level=float(np.log(2.0)))
    t3 = time.perf_counter()
    print(f"mesh {res}^3 ({dev.type}): density grid {t1 - t0:7.2f} s ({res**3 / (t1 - t0) / 1e6:.2f} M queries/s), "
          f"optical depth {t2 - t1:6.2f} s, marching cubes {t3 - t2:6.2f} s ({len(fc)} faces)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1 << 18)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--mc-res", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="batch 2^15, 2 steps, 96³ marching cubes")
    p.add_argument("--smoke", action="store_true", help="seconds on a CPU: tiny sizes, every part once (checks the script, not speed)")
    p.add_argument("--hashgrid-only", action="store_true", help="only the hash-grid throughput (per backend, per device)")
    p.add_argument("--devices", nargs="*", default=None, help="hash-grid devices (default: cpu, and cuda when present)")
    p.add_argument("--json", default=None, help="also write the hash-grid rows to this JSON file")
    a = p.parse_args()
    if a.quick:
        a.batch, a.reps, a.steps, a.mc_res = 1 << 15, 1, 2, 96
    if a.smoke:
        tiny = NeRFConfig(grid=HashGridConfig(n_levels=4, log2_table_size=12), hidden=16)
        print(f"torch {torch.__version__}, smoke run (sizes are not the benchmark's)")
        bench_distill_marching(1, tiny, "smoke 4x2x2^12", n_samples=64, rays=256)
        bench_mc(24, tiny)
        return
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    rows = bench_hashgrid(a.batch, a.reps, a.devices)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"hashgrid": rows, "fastpaths": FASTPATHS.report()}, fh, indent=1)
    if a.hashgrid_only:
        return
    bench_distill(a.steps, NeRFConfig(), "official 16x2x2^19")
    bench_distill(a.steps, NeRFConfig(grid=HashGridConfig(n_levels=8, log2_table_size=14), hidden=32), "test 8x2x2^14")
    bench_distill_marching(a.steps, NeRFConfig(), "official 16x2x2^19")
    bench_mc(a.mc_res)


if __name__ == "__main__":
    main()
