"""Volume rendering of the Stage II field (paper §3.2.1), nerfacc's way on every device.

Rays (:mod:`rays`) march with a fixed step and skip the unoccupied cells of the :class:`OccupancyGrid`, so the
network is evaluated only there. The CUDA path is nerfacc's packed marching, used once it passed its self-test
on the device (backend/accel/fastpath.py); the torch twin runs elsewhere (:mod:`volrend`)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..accel.fastpath import FASTPATHS, FastPaths
from .nerf import FieldOutput
from .occupancy import OccupancyGrid
from .rays import Rays, RenderConfig, camera_rays
from .volrend import NeRFRender, render_chunk_nerfacc, render_chunk_torch


def render_rays(
    field,
    rays: Rays,
    cfg: RenderConfig = RenderConfig(),
    occupancy: OccupancyGrid | None = None,
    background: Tensor | None = None,  # [3]
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> NeRFRender:
    """Volume rendering of rays through ``field`` (a NeRFField or a refined field with a compatible
    ``forward``), skipping the unoccupied cells of ``occupancy`` (None: every cell is occupied).
    Differentiable w.r.t. the field's parameters.

    ``backend``: "auto" (nerfacc's packed marching on CUDA once its self-test passed there, see
    :func:`choose_volrend`; the torch twin otherwise), "torch" or "nerfacc" (CUDA only).
    """
    if backend not in ("auto", "torch", "nerfacc"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'nerfacc', got {backend!r}")
    r = field.cfg.aabb_radius if hasattr(field, "cfg") else field.aabb_radius
    bg = field.background if background is None else background
    dev = rays.origins.device
    if backend == "auto":
        backend = choose_volrend(dev)
    if backend == "nerfacc":
        if dev.type != "cuda":
            raise ValueError(f"backend 'nerfacc' needs CUDA tensors, the rays are on {dev}")
        chunk_fn = render_chunk_nerfacc
    else:
        chunk_fn = render_chunk_torch
    outs = [
        chunk_fn(field, Rays(rays.origins[i : i + cfg.chunk], rays.dirs[i : i + cfg.chunk]), r, cfg, occupancy, bg, generator)
        for i in range(0, rays.origins.shape[0], cfg.chunk)
    ]
    if not outs:
        z = torch.zeros(0, 1, device=dev)
        return NeRFRender(torch.zeros(0, 3, device=dev), z, z.clone())
    weights = None
    if len(outs) == 1:
        weights = outs[0].weights
    cat = lambda k: None if getattr(outs[0], k) is None else torch.cat([getattr(o, k) for o in outs])  # noqa: E731
    return NeRFRender(*(cat(k) for k in ("rgb", "opacity", "depth")), weights=weights, normals=cat("normals"), orientation=cat("orientation"),
                      median_depth=cat("median_depth"))


def render_image(field, cams, cfg: RenderConfig = RenderConfig(), occupancy: OccupancyGrid | None = None, background: Tensor | None = None,
                 backend: str = "auto") -> NeRFRender:
    """Full images: rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1] (expected ray distance); with
    ``cfg.normals`` also normals [B,H,W,3] and orientation [B,H,W]."""
    out = render_rays(field, camera_rays(cams), cfg, occupancy, background, backend=backend)
    shp = (len(cams.viewmats), cams.height, cams.width)
    extra = {} if out.normals is None else {"normals": out.normals.reshape(*shp, 3), "orientation": out.orientation.reshape(*shp)}
    return NeRFRender(rgb=out.rgb.reshape(*shp, 3), opacity=out.opacity.reshape(*shp, 1), depth=out.depth.reshape(*shp, 1),
                      median_depth=None if out.median_depth is None else out.median_depth.reshape(*shp, 1), **extra)


# -- the fast path's self-test ----------------------------------------------------------------------
class _BallField:
    """A tiny analytic field for the self-test: σ ≈ 40 inside a ball of radius 0.45 around (0.1, 0, 0) with a
    smooth edge (so float32 differences in where the two paths put a step cannot flip a sample), colour by
    position; the same on every device, no parameters."""

    aabb_radius = 1.0

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.background = torch.tensor([1.0, 1.0, 1.0], device=device)

    def __call__(self, x: Tensor) -> FieldOutput:
        r = (x - x.new_tensor([0.1, 0.0, 0.0])).norm(dim=-1)
        return FieldOutput(density=40.0 * torch.sigmoid((0.45 - r) / 0.02), rgb=(x * 0.5 + 0.5).clamp(0, 1))


SELF_TEST_TOL = 1e-3  # max abs on rgb and opacity, relative on depth, between nerfacc and the twin


def self_test(device: torch.device | str) -> str:
    """nerfacc's packed marching and volrend against the torch twin on ``device`` (16×16 rays through a ball,
    the outer shell of the 8³ occupancy grid empty, where the ball's density is < 0.01); raises on a load
    failure or a difference beyond SELF_TEST_TOL."""
    dev = torch.device(device)
    f = _BallField(dev)
    occ = torch.zeros(8, 8, 8, dtype=torch.bool, device=dev)
    occ[1:7, 1:7, 1:7] = True
    grid = OccupancyGrid(occ, 1.0)
    v = torch.linspace(-0.6, 0.6, 16, device=dev)
    yy, zz = torch.meshgrid(v, v, indexing="ij")
    origins = torch.stack([torch.full_like(yy, 2.0), yy, zz], -1).reshape(-1, 3)
    dirs = torch.nn.functional.normalize(torch.tensor([-1.0, 0.05, 0.02], device=dev).expand_as(origins), dim=-1)
    rays = Rays(origins, dirs.contiguous())
    cfg = RenderConfig(n_samples=128)
    a = render_chunk_nerfacc(f, rays, 1.0, cfg, grid, f.background, None)
    b = render_chunk_torch(f, rays, 1.0, cfg, grid, f.background, None)
    err = max(float((a.rgb - b.rgb).abs().max()), float((a.opacity - b.opacity).abs().max()))
    derr = float(((a.depth - b.depth).abs() / b.depth.clamp_min(1e-3)).max())
    if not (err <= SELF_TEST_TOL and derr <= SELF_TEST_TOL):
        raise ValueError(f"nerfacc and the torch twin differ by {err:.3g} (colour/opacity), {derr:.3g} (depth) on the self-test rays")
    if not float(b.opacity.max()) > 0.9:
        raise ValueError("the self-test scene rendered empty")
    return f"max |colour, opacity difference| {err:.3g}, relative depth {derr:.3g} against the torch twin (tolerance {SELF_TEST_TOL:g})"


def choose_volrend(device: torch.device | str, fastpaths: FastPaths = FASTPATHS, test: Callable[[], None] | None = None) -> str:
    """"nerfacc" or "torch" for volume rendering on ``device``: nerfacc's packed CUDA path only on CUDA and
    only once :func:`self_test` passed there (recorded under "volrend"); the torch twin on the same device
    otherwise (it also uses nerfacc's batched volrend maths)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        fastpaths.record("volrend", dev, "torch", "no CUDA device: nerfacc's packed marching needs one (the twin uses its batched volrend)")
        return "torch"
    return fastpaths.choose("volrend", dev, "nerfacc", test or (lambda: self_test(dev)))
