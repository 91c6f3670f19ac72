"""Rays of OpenCV cameras and their marching steps (nerfacc's ``traverse_grids`` with a fixed step).

Pixel centre (u+0.5, v+0.5), K⁻¹, camera→world = viewmat⁻¹; rays march with a fixed step 2√3·r / n_samples
(the official configs: 512 per box diagonal), and a step is kept iff its midpoint lies in an occupied cell of
the occupancy grid (:mod:`occupancy`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rays:
    origins: Tensor  # [R,3]
    dirs: Tensor  # [R,3] unit


def camera_rays(cams, pixels: Tensor | None = None) -> Rays:
    """Rays of OpenCV cameras (``cams.viewmats`` [B,4,4] world→camera, ``cams.Ks`` [B,3,3]).

    ``pixels`` None → every pixel of every camera in (b, v, u) row-major order ([B·H·W] rays); else an
    int64 [R,3] tensor of (b, v, u) rows.
    """
    vm, Ks = cams.viewmats.float(), cams.Ks.float()
    dev = vm.device
    if pixels is None:
        b, h, w = len(vm), cams.height, cams.width
        bb, vv, uu = torch.meshgrid(torch.arange(b, device=dev), torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        pixels = torch.stack([bb, vv, uu], dim=-1).reshape(-1, 3)
    bi = pixels[:, 0]
    uv1 = torch.stack([pixels[:, 2].float() + 0.5, pixels[:, 1].float() + 0.5, torch.ones(len(pixels), device=dev)], dim=-1)
    d_cam = torch.linalg.solve(Ks[bi], uv1[..., None])[..., 0]  # [R,3] camera space, z = 1
    c2w = torch.linalg.inv(vm)[bi]  # [R,4,4]
    d = (c2w[:, :3, :3] @ d_cam[..., None])[..., 0]
    d = d / d.norm(dim=-1, keepdim=True)
    return Rays(origins=c2w[:, :3, 3].contiguous(), dirs=d)


def ray_aabb(rays: Rays, radius: float) -> tuple[Tensor, Tensor]:
    """Entry/exit distances [R] of rays and the box [-r, r]³; t_far ≤ t_near where missed."""
    inv = 1.0 / torch.where(rays.dirs.abs() < 1e-12, torch.full_like(rays.dirs, 1e-12), rays.dirs)
    t0 = (-radius - rays.origins) * inv
    t1 = (radius - rays.origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


@dataclass(frozen=True)
class RenderConfig:
    """Ray marching as nerfacc's OccGridEstimator does it: a fixed step of 2√3·r / ``n_samples`` (threestudio's
    ``render_step_size`` for ``num_samples_per_ray``; the official configs use 512), steps anchored at t = 0
    (shifted by one random fraction of a step per ray when ``stratified``), a step kept iff its midpoint lies
    in an occupied cell of the AABB."""

    n_samples: int = 512  # samples per box diagonal
    stratified: bool = False  # jitter samples (training)
    chunk: int = 8192  # rays per chunk
    normals: bool = False  # also density-gradient normals and the orientation penalty (about 2-3x the cost)

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.chunk < 1:
            raise ValueError(f"n_samples and chunk must be >= 1, got {self.n_samples}, {self.chunk}")


def render_step_size(aabb_radius: float, n_samples: int) -> float:
    """The marching step: the box diagonal 2√3·r over ``n_samples``."""
    return 2.0 * math.sqrt(3.0) * aabb_radius / n_samples



def march(rays: Rays, radius: float, cfg: RenderConfig, occupied, generator) -> tuple[Tensor, Tensor, Tensor]:
    """The torch twin of nerfacc's ``traverse_grids`` with a fixed step: t_starts, t_ends [R,S] and a mask
    [R,S] of the kept steps (midpoint inside the AABB and, with ``occupied`` — [N,3] world points → [N] bool,
    e.g. an OccupancyGrid's ``lookup`` — in an occupied cell)."""
    n_rays = rays.origins.shape[0]
    dev = rays.origins.device
    step = render_step_size(radius, cfg.n_samples)
    near, far = ray_aabb(rays, radius)
    hit = far > near
    # nerfacc: t_0 = near_plane (0) + u·step when stratified; the k-th step is [t_0 + k·step, t_0 + (k+1)·step]
    t0 = torch.rand(n_rays, generator=generator).to(dev) * step if cfg.stratified else torch.zeros(n_rays, device=dev)
    k0 = torch.ceil((near - t0) / step - 0.5).clamp_min(0)  # first step whose midpoint is at or after the entry
    span = torch.where(hit, far - near, torch.zeros_like(far))
    s = int(torch.ceil(span.max() / step).item()) + 1 if n_rays else 1
    k = k0[:, None] + torch.arange(s, device=dev, dtype=k0.dtype)[None]  # [R,S]
    starts = t0[:, None] + k * step
    ends = starts + step
    mids = 0.5 * (starts + ends)
    keep = hit[:, None] & (mids >= near[:, None]) & (mids < far[:, None])
    if occupied is not None:
        pts = rays.origins[:, None] + rays.dirs[:, None] * mids[..., None]
        keep = keep & occupied(pts.reshape(-1, 3)).reshape(n_rays, s)
    return starts, ends, keep
