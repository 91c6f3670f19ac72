"""The two chunk renderers behind :func:`render.render_rays`, and the compositing they share.

Weights w_i = T_i·(1 − exp(−σ_i δ_i)); depth is the expected ray distance Σ w t / Σ w on both paths, t_i where a
ray stopping in step i stops on average (:func:`termination_distance`; nerfacc uses the step's midpoint). On CUDA,
nerfacc's ``OccGridEstimator`` (its binaries copied from the project's grid) marches and its packed
``render_weight_from_density`` composites (:func:`render_chunk_nerfacc`); elsewhere a torch twin marches the
same steps (:func:`rays.march`) and feeds nerfacc's batched [rays, samples] volrend functions, which are
torch (:func:`render_chunk_torch`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .normals import density_normals
from .occupancy import OccupancyGrid
from .rays import Rays, RenderConfig, march, render_step_size


@dataclass
class NeRFRender:
    """Volume-rendered rays. ``depth`` is the expected ray distance Σ w t / Σ w (nerfacc's convention, and the
    Gaussian renderer's "ED"), 0 where the opacity Σ w is 0; ``opacity`` is Σ w."""

    rgb: Tensor  # [R,3] (or [B,H,W,3] from render_image)
    opacity: Tensor  # [R,1]
    depth: Tensor  # [R,1]
    weights: Tensor | None = None  # [R,S] (the torch twin; None from nerfacc's packed path)
    normals: Tensor | None = None  # [R,3] Σ w_i n_i (world; 0 on empty rays), with RenderConfig.normals
    orientation: Tensor | None = None  # [R] Σ sg(w_i)·max(0, n_i·d)², DreamFusion's orientation penalty
    median_depth: Tensor | None = None  # [R,1] ray distance where the opacity reaches 1/2 (0: never), median_distance



def render_chunk_torch(field, rays: Rays, radius: float, cfg: RenderConfig, occupancy, bg: Tensor, generator) -> NeRFRender:
    """The CPU (and any-device) twin: torch marching + nerfacc's batched volrend functions, which are torch."""
    from nerfacc import render_weight_from_density

    n_rays = rays.origins.shape[0]
    dev = rays.origins.device
    starts, ends, keep = march(rays, radius, cfg, None if occupancy is None else occupancy.lookup, generator)
    s = starts.shape[1]
    mids = 0.5 * (starts + ends)
    sig = torch.zeros(n_rays * s, device=dev)
    rgb = torch.zeros(n_rays * s, 3, device=dev)
    nrm = torch.zeros(n_rays * s, 3, device=dev) if cfg.normals else None
    live = keep.reshape(-1)
    if bool(live.any()):
        idx = live.nonzero()[:, 0]
        pts = (rays.origins[:, None] + rays.dirs[:, None] * mids[..., None]).reshape(-1, 3)[idx]
        if cfg.normals:
            out, n_live = density_normals(field, pts)
            nrm = nrm.index_put((idx,), n_live.float())
        else:
            out = field(pts)
        sig = sig.index_put((idx,), out.density.float())
        rgb = rgb.index_put((idx,), out.rgb.float())
    # skipped steps have σ = 0: α = 0, so they change neither T nor the sums (the packed form omits them)
    sig = sig.reshape(n_rays, s)
    w, trans, alphas = render_weight_from_density(starts, ends, sig)
    normals = None if nrm is None else (nrm.reshape(n_rays, s, 3), rays.dirs[:, None].expand(n_rays, s, 3))
    out = composite(w, rgb.reshape(n_rays, s, 3), termination_distance(starts, ends, sig), bg.to(dev), ray_indices=None, n_rays=n_rays, normals=normals)
    out.median_depth = median_distance(trans, alphas, starts, sig, None, n_rays)
    return out


def median_distance(trans: Tensor, alphas: Tensor, t_starts: Tensor, sigmas: Tensor, ray_indices, n_rays: int) -> Tensor:
    """[R,1] where each ray's opacity reaches 1/2, 0 where it never does: in the one step whose transmittance
    drops across 1/2 (T before ≥ 1/2 > T after; σ constant in it), at t_start + ln(2T)/σ. Differentiable in σ.
    Inputs per step ([R,S], or packed [N] with ``ray_indices``): transmittance before it, its α, start, σ.

    The mesh's surface is where a ray from outside has gathered 1/2 of opacity (mesh.py), so this, not the
    expected depth, is the depth that puts the mesh where the Gaussians are: on a soft density the two differ
    (constant σ from the surface on: the mean is 1/σ in, the median ln2/σ)."""
    from nerfacc import accumulate_along_rays

    cross = (trans >= 0.5) & (trans * (1.0 - alphas) < 0.5)
    t = t_starts + torch.log(2.0 * trans.clamp_min(0.5)) / sigmas.clamp_min(1e-12)
    t = torch.where(cross, t, torch.zeros_like(t))
    return accumulate_along_rays(cross.to(t.dtype), t[..., None], ray_indices=ray_indices, n_rays=n_rays)


def termination_distance(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor) -> Tensor:
    """Where a ray that stops in a step stops on average, given the step's constant σ: t_start + δ·(1/x − 1/(eˣ − 1)),
    x = σδ (δ/2 for a faint step, t_start + 1/σ for a dense one). Same shapes in and out ([R,S] or packed [N]).

    The expected depth uses this instead of the step's midpoint: with jittered steps the first dense step's start
    is on average where an opaque surface is, its midpoint half a step behind it; depth supervision against the
    midpoint moved the field's surface half a step (0.027 at 64 samples per diagonal) toward the camera."""
    delta = t_ends - t_starts
    x = sigmas * delta
    # below x = 0.1 the difference cancels in float32: its series 1/2 − x/12 + x³/720 (next term x⁵/30240)
    small = x < 0.1
    xs = torch.where(small, torch.ones_like(x), x)  # keeps the unused branch finite (and its gradient)
    # 1/(eˣ − 1) < 1e-26 beyond x = 60; the clamp keeps eˣ/(eˣ − 1)², its gradient, from inf/inf = NaN
    frac = torch.where(small, 0.5 - x / 12.0 + x**3 / 720.0, 1.0 / xs - 1.0 / torch.expm1(xs.clamp_max(60.0)))
    return t_starts + delta * frac


def composite(w: Tensor, rgb: Tensor, ts: Tensor, bg: Tensor, ray_indices, n_rays: int,
              normals: tuple[Tensor, Tensor] | None = None) -> NeRFRender:
    """nerfacc.rendering's accumulation: colour, opacity, depth Σ w t / opacity with t the steps' termination
    distances (``ts``, :func:`termination_distance`), background·(1 − opacity); with
    ``normals`` = (per-sample normals, per-sample ray directions) also Σ w n and DreamFusion's orientation
    penalty Σ sg(w)·max(0, n·d)² (a normal facing away from the camera is penalised)."""
    from nerfacc import accumulate_along_rays

    color = accumulate_along_rays(w, rgb, ray_indices=ray_indices, n_rays=n_rays)
    acc = accumulate_along_rays(w, None, ray_indices=ray_indices, n_rays=n_rays)
    depth = accumulate_along_rays(w, ts[..., None], ray_indices=ray_indices, n_rays=n_rays)
    depth = depth / acc.clamp_min(torch.finfo(acc.dtype).eps)
    color = color + bg[None] * (1.0 - acc)
    out = NeRFRender(rgb=color, opacity=acc, depth=depth, weights=w if ray_indices is None else None)
    if normals is not None:
        nrm, dirs = normals
        facing_away = (nrm * dirs).sum(-1, keepdim=True).clamp_min(0.0)
        out.normals = accumulate_along_rays(w, nrm, ray_indices=ray_indices, n_rays=n_rays)
        out.orientation = accumulate_along_rays(w.detach(), facing_away**2, ray_indices=ray_indices, n_rays=n_rays)[..., 0]
    return out


def _estimator(occupancy: OccupancyGrid | None, radius: float, device: torch.device):
    """nerfacc's OccGridEstimator holding the project's occupancy (its ``binaries`` copied from ``occ``; the
    project computes the grid itself, :func:`update_occupancy`); all cells occupied when ``occupancy`` is None.
    Cached on the grid object: a new grid (every update makes one) gets a new estimator."""
    import nerfacc

    if occupancy is not None and occupancy._estimator is not None:
        return occupancy._estimator
    res = 1 if occupancy is None else occupancy.resolution
    est = nerfacc.OccGridEstimator(roi_aabb=[-radius, -radius, -radius, radius, radius, radius], resolution=res, levels=1).to(device)
    binaries = torch.ones(1, res, res, res, dtype=torch.bool, device=device) if occupancy is None else occupancy.occ.to(device)[None]
    est.binaries.copy_(binaries)
    if occupancy is not None:
        occupancy._estimator = est
    return est


def render_chunk_nerfacc(field, rays: Rays, radius: float, cfg: RenderConfig, occupancy, bg: Tensor, generator) -> NeRFRender:
    """CUDA: nerfacc's packed marching (``OccGridEstimator.sampling``) and packed volrend."""
    import nerfacc

    o, d = rays.origins, rays.dirs
    n_rays = o.shape[0]
    est = _estimator(occupancy, radius, o.device)
    step = render_step_size(radius, cfg.n_samples)
    if cfg.stratified:  # the same per-ray shift as the twin (nerfacc's own would use torch's global RNG)
        t_min = torch.rand(n_rays, generator=generator).to(o.device) * step
    else:
        t_min = torch.zeros(n_rays, device=o.device)
    # t_min as the near plane anchors the steps where the twin's are; no sigma_fn: every step in an occupied
    # cell is kept, as in the twin (nerfacc's early stop would drop steps behind T < 1e-4)
    ray_indices, t_starts, t_ends = est.sampling(o, d, near_plane=0.0, t_min=t_min, render_step_size=step, stratified=False)
    mids = 0.5 * (t_starts + t_ends)
    normals = None
    if t_starts.shape[0]:
        pts = o[ray_indices] + d[ray_indices] * mids[:, None]
        if cfg.normals:
            out, nrm = density_normals(field, pts)
            normals = (nrm.float(), d[ray_indices])
        else:
            out = field(pts)
        sig, rgb = out.density.float(), out.rgb.float()
    else:
        sig, rgb = torch.zeros(0, device=o.device), torch.zeros(0, 3, device=o.device)
        if cfg.normals:
            normals = (torch.zeros(0, 3, device=o.device), torch.zeros(0, 3, device=o.device))
    w, trans, alphas = nerfacc.render_weight_from_density(t_starts, t_ends, sig, ray_indices=ray_indices, n_rays=n_rays)
    out = composite(w, rgb, termination_distance(t_starts, t_ends, sig), bg.to(o.device), ray_indices=ray_indices, n_rays=n_rays, normals=normals)
    out.median_depth = median_distance(trans, alphas, t_starts, sig, ray_indices, n_rays)
    return out
