"""The Stage II InstantNGP field and its volume renderer (paper §3.2.1).

Field: points in the scene AABB → hash grid (:mod:`hashgrid`) → density MLP (raw density + geometry
features; density = trunc_exp(raw + blob bias), the threestudio "blob" that starts a sphere at the origin)
→ colour MLP (view-independent, sigmoid). The background is a constant colour.

Rendering (nerfacc's way on every device): rays from OpenCV cameras (pixel centre (u+0.5, v+0.5), K⁻¹,
camera→world = viewmat⁻¹) march with a fixed step 2√3·r / n_samples (the official configs: 512 per box
diagonal), and a step is kept iff its midpoint lies in an occupied cell of the :class:`OccupancyGrid`, so the
network is evaluated only there. On CUDA, nerfacc's ``OccGridEstimator`` (its binaries copied from the
project's grid) marches and its packed ``render_weight_from_density`` composites; elsewhere — or when
nerfacc fails its self-test on the device (backend/accel/fastpath.py) — a torch twin marches the same steps
and feeds nerfacc's batched [rays, samples] volrend functions, which are torch. Weights
w_i = T_i·(1 − exp(−σ_i δ_i)); depth is the expected ray distance Σ w t / Σ w on both paths.

Occupancy is nerfacc's rule (:func:`update_occupancy`): σ·step maximised over random points per cell, an EMA
over updates, thresholded at min(0.01, mean). Distillation updates it on its schedule; refinement keeps the
grid it starts with, since a part only changes the density inside its own cells, which are occupied cells."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..accel.fastpath import FASTPATHS, FastPaths
from .hashgrid import HashGrid, HashGridConfig

logger = logging.getLogger(__name__)


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (torch-ngp / threestudio), so large raw densities don't explode."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


@dataclass(frozen=True)
class NeRFConfig:
    """Field hyper-parameters (official Interactive3D / threestudio implicit-volume defaults)."""

    grid: HashGridConfig = field(default_factory=HashGridConfig)
    aabb_radius: float = 1.0  # the scene box is [-r, r]³ (objects live in a sphere of radius ≈ 1)
    hidden: int = 64
    geo_feat_dim: int = 15
    density_blob_scale: float = 10.0  # density bias at init: scale·(1 − |x|/std)
    density_blob_std: float = 0.5
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not (self.aabb_radius > 0 and math.isfinite(self.aabb_radius)):
            raise ValueError(f"aabb_radius must be > 0, got {self.aabb_radius}")
        if self.hidden < 1 or self.geo_feat_dim < 0:
            raise ValueError(f"hidden must be >= 1 and geo_feat_dim >= 0, got {self.hidden}, {self.geo_feat_dim}")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_out))


@dataclass
class FieldOutput:
    density: Tensor  # [N] σ ≥ 0
    rgb: Tensor  # [N,3] in [0,1]


class NeRFField(nn.Module):
    """Hash grid + density MLP (with blob density bias) + colour MLP.

    Residual fields (:mod:`refine`) add to the raw density and to the colour logits, so ``forward`` exposes
    both through ``raw`` outputs: ``query(x)`` returns (raw_density_pre_bias, rgb_logits).
    """

    def __init__(self, cfg: NeRFConfig = NeRFConfig(), backend: str = "auto", device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.grid, backend=backend, device=device, seed=seed)
        with torch.random.fork_rng(devices=[]):  # reproducible MLP init without touching the global RNG
            torch.manual_seed(seed)
            self.density_mlp = _mlp(cfg.grid.out_dim, cfg.hidden, 1 + cfg.geo_feat_dim).to(device)
            self.color_mlp = _mlp(cfg.geo_feat_dim if cfg.geo_feat_dim > 0 else cfg.grid.out_dim, cfg.hidden, 3).to(device)
        self.register_buffer("background", torch.tensor(cfg.background, dtype=torch.float32, device=device))

    @property
    def device(self) -> torch.device:
        return self.grid.table.device

    def normalize(self, x: Tensor) -> Tensor:
        """World [N,3] → unit cube [N,3] of the AABB."""
        r = self.cfg.aabb_radius
        return (x + r) / (2 * r)

    def density_bias(self, x: Tensor) -> Tensor:  # [N,3] world → [N]
        c = self.cfg
        return c.density_blob_scale * (1.0 - x.norm(dim=-1) / c.density_blob_std)

    def query(self, x: Tensor, with_features: bool = False) -> tuple[Tensor, ...]:
        """Raw outputs at world points x [N,3]: (density logit incl. bias [N], colour logits [N,3]), and with
        ``with_features`` the hash encoding [N, L·F] too (refinement parts read it, paper §3.2.2)."""
        feats = self.grid(self.normalize(x))
        h = self.density_mlp(feats)
        raw = h[:, 0] + self.density_bias(x)
        geo = h[:, 1:] if self.cfg.geo_feat_dim > 0 else feats
        if with_features:
            return raw, self.color_mlp(geo), feats
        return raw, self.color_mlp(geo)

    def forward(self, x: Tensor) -> FieldOutput:  # [N,3] world points
        raw, logits = self.query(x)
        return FieldOutput(density=trunc_exp(raw), rgb=torch.sigmoid(logits))


# -- occupancy -----------------------------------------------------------------------------------
@dataclass
class OccupancyGrid:
    """A boolean grid over the AABB [-r, r]³; cell (i, j, k) covers x ∈ [-r + i·2r/R, -r + (i+1)·2r/R).

    ``density`` is nerfacc's ``occs``: the running value each update compares with the threshold (an EMA of
    the max σ·step seen in the cell), None for a grid made from a boolean mask alone.
    """

    occ: Tensor  # [R,R,R] bool, indexed [x, y, z]
    aabb_radius: float
    density: Tensor | None = None  # [R,R,R] float32, nerfacc's occs
    _estimator: object = field(default=None, repr=False, compare=False)  # nerfacc's OccGridEstimator (CUDA), built lazily

    @property
    def resolution(self) -> int:
        return int(self.occ.shape[0])

    def cell_centers(self) -> Tensor:  # [R,R,R,3]
        r, n = self.aabb_radius, self.resolution
        t = (torch.arange(n, device=self.occ.device, dtype=torch.float32) + 0.5) / n * 2 * r - r
        return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1)

    def cell_index(self, x: Tensor) -> Tensor:  # [N,3] world → [N,3] int64 (clamped)
        n = self.resolution
        i = torch.floor((x + self.aabb_radius) / (2 * self.aabb_radius) * n).long()
        return i.clamp(0, n - 1)

    def lookup(self, x: Tensor) -> Tensor:  # [N,3] world → [N] bool; outside the AABB → False
        inside = (x.abs() <= self.aabb_radius).all(dim=-1)
        i = self.cell_index(x)
        return self.occ[i[:, 0], i[:, 1], i[:, 2]] & inside


@dataclass(frozen=True)
class OccupancyConfig:
    """nerfacc's occupancy rule (``OccGridEstimator._update``): a cell's value is σ·step (the opacity of one
    marching step, step = the renderer's) maximised over ``samples_per_cell`` random points in the cell
    (one per octant when there are 8 or more),
    kept as an EMA ``max(decay·old, new)`` over updates; occupied ⇔ value > min(threshold, mean value)."""

    resolution: int = 32  # the paper's 32³
    threshold: float = 0.01  # nerfacc's occ_thre
    ema_decay: float = 0.95  # nerfacc's default
    samples_per_cell: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in [1, 512], got {self.resolution}")
        if not (self.threshold > 0 and 0.0 <= self.ema_decay < 1.0 and self.samples_per_cell >= 1):
            raise ValueError(f"need threshold > 0, 0 <= ema_decay < 1, samples_per_cell >= 1; got {self.threshold}, {self.ema_decay}, {self.samples_per_cell}")


@torch.no_grad()
def update_occupancy(
    grid: "OccupancyGrid | None",
    field: "NeRFField | DensityFn",
    step_size: float,
    cfg: OccupancyConfig = OccupancyConfig(),
    generator: torch.Generator | None = None,
    chunk: int = 65536,
) -> OccupancyGrid:
    """One nerfacc-style update: a new :class:`OccupancyGrid` whose ``density`` is
    max(decay·old, max_k σ(x_k)·step_size) and whose ``occ`` is density > min(threshold, mean density).
    ``grid`` None (or of another resolution) starts from zero, i.e. no history."""
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    r = field.cfg.aabb_radius if isinstance(field, NeRFField) else field.aabb_radius
    fn = _density_fn(field)
    dev = field.device
    n = cfg.resolution
    base = OccupancyGrid(torch.zeros(n, n, n, dtype=torch.bool, device=dev), r)
    corners = base.cell_centers().reshape(-1, 3) - r / n  # the cells' low corners
    cell = 2 * r / n
    best = torch.zeros(corners.shape[0], device=dev)
    octants = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in range(8)], dtype=torch.float32, device=dev)
    for k in range(cfg.samples_per_cell):
        u = torch.rand(corners.shape[0], 3, generator=generator).to(dev)
        if cfg.samples_per_cell >= 8:  # stratified: each sample in its own octant of the cell, so none is left unseen
            u = 0.5 * (octants[k % 8] + u)
        pts = corners + u * cell
        dens = torch.cat([fn(pts[i : i + chunk]).float() for i in range(0, pts.shape[0], chunk)])
        best = torch.maximum(best, dens * step_size)
    best = best.reshape(n, n, n)
    if grid is not None and grid.density is not None and grid.density.shape == best.shape:
        best = torch.maximum(grid.density.to(dev) * cfg.ema_decay, best)
    thre = min(cfg.threshold, float(best.mean()))
    return OccupancyGrid(best > thre, r, best)


def occupancy_from_field(
    field: "NeRFField | DensityFn",
    resolution: int = 32,
    threshold: float = 0.01,
    samples_per_cell: int = 8,
    chunk: int = 65536,
    seed: int = 0,
    step_size: float | None = None,
) -> OccupancyGrid:
    """A fresh occupancy grid (one :func:`update_occupancy` without history): occupied where σ·step of some
    of ``samples_per_cell`` random points exceeds ``threshold``; ``step_size`` defaults to the step of the
    official 512 samples per box diagonal (:func:`render_step_size`)."""
    if resolution < 1 or resolution > 512:
        raise ValueError(f"resolution must be in [1, 512], got {resolution}")
    r = field.cfg.aabb_radius if isinstance(field, NeRFField) else field.aabb_radius
    step = render_step_size(r, RenderConfig().n_samples) if step_size is None else step_size
    cfg = OccupancyConfig(resolution=resolution, threshold=threshold, samples_per_cell=samples_per_cell)
    return update_occupancy(None, field, step, cfg, torch.Generator().manual_seed(seed), chunk)


class DensityFn:
    """Protocol-like base: anything with ``cfg.aabb_radius`` or ``aabb_radius``, ``device`` and
    ``density(x [N,3]) → [N]`` (refined fields provide it)."""

    aabb_radius: float
    device: torch.device

    def density(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _density_fn(field):
    if hasattr(field, "density"):
        return field.density
    return lambda x: field(x).density


# -- rays ----------------------------------------------------------------------------------------
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


def weights_from_density(sigmas: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Dense weights [R,S] and transmittance [R,S]: nerfacc's ``render_weight_from_density`` maths."""
    sd = sigmas * deltas
    trans = torch.exp(-(torch.cumsum(sd, dim=-1) - sd))  # exclusive cumsum
    alphas = 1.0 - torch.exp(-sd)
    return trans * alphas, trans


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


def density_normals(field, x: Tensor, method: str = "auto", eps: float = 1e-3) -> tuple["FieldOutput", Tensor]:
    """The field at x [N,3] and its normals n = −∇σ/‖∇σ‖ [N,3] (outward on a solid; DreamFusion's
    "normals from the density gradient"). While grad mode is on, n stays differentiable w.r.t. the
    field's parameters, so a loss on it trains the density.

    ``method``: "analytic" (autograd with create_graph: needs the pure-torch hash grid, whose backward is
    itself differentiable), "finite_difference" (central differences of step ``eps``, 6 more density
    queries; threestudio's other choice), "auto": analytic unless a hash grid runs a CUDA kernel (Triton,
    tcnn), whose backward gives no gradient w.r.t. the points."""
    if method == "auto":
        fused = any(isinstance(m, HashGrid) and m.backend != "torch" for m in field.modules()) if isinstance(field, nn.Module) else False
        method = "finite_difference" if fused and x.device.type == "cuda" else "analytic"
    train = torch.is_grad_enabled()
    if method == "finite_difference":
        offs = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        pts = torch.stack([x[:, None] + offs, x[:, None] - offs], dim=1).reshape(-1, 3)  # [N·2·3, 3]
        d = field(pts).density.reshape(-1, 2, 3)
        out, g = field(x), (d[:, 0] - d[:, 1]) / (2 * eps)
    elif method == "analytic":
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = field(xg)
            (g,) = torch.autograd.grad(out.density.sum(), xg, create_graph=train)
    else:
        raise ValueError(f"method must be 'auto', 'analytic' or 'finite_difference', got {method!r}")
    n = torch.nn.functional.normalize(-g, dim=-1, eps=1e-12)
    if not train:
        out, n = FieldOutput(out.density.detach(), out.rgb.detach()), n.detach()
    return out, n


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
        chunk_fn = _render_chunk_nerfacc
    else:
        chunk_fn = _render_chunk
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
    return NeRFRender(*(cat(k) for k in ("rgb", "opacity", "depth")), weights=weights, normals=cat("normals"), orientation=cat("orientation"))


def _march(rays: Rays, radius: float, cfg: RenderConfig, occupancy, generator) -> tuple[Tensor, Tensor, Tensor]:
    """The torch twin of nerfacc's ``traverse_grids`` with a fixed step: t_starts, t_ends [R,S] and a mask
    [R,S] of the kept steps (midpoint inside the AABB and in an occupied cell)."""
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
    if occupancy is not None:
        pts = rays.origins[:, None] + rays.dirs[:, None] * mids[..., None]
        keep = keep & occupancy.lookup(pts.reshape(-1, 3)).reshape(n_rays, s)
    return starts, ends, keep


def _render_chunk(field, rays: Rays, radius: float, cfg: RenderConfig, occupancy, bg: Tensor, generator) -> NeRFRender:
    """The CPU (and any-device) twin: torch marching + nerfacc's batched volrend functions, which are torch."""
    from nerfacc import render_weight_from_density

    n_rays = rays.origins.shape[0]
    dev = rays.origins.device
    starts, ends, keep = _march(rays, radius, cfg, occupancy, generator)
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
    w, _, _ = render_weight_from_density(starts, ends, sig.reshape(n_rays, s))
    normals = None if nrm is None else (nrm.reshape(n_rays, s, 3), rays.dirs[:, None].expand(n_rays, s, 3))
    return _composite(w, rgb.reshape(n_rays, s, 3), mids, bg.to(dev), ray_indices=None, n_rays=n_rays, normals=normals)


def _composite(w: Tensor, rgb: Tensor, mids: Tensor, bg: Tensor, ray_indices, n_rays: int,
               normals: tuple[Tensor, Tensor] | None = None) -> NeRFRender:
    """nerfacc.rendering's accumulation: colour, opacity, depth / opacity, background·(1 − opacity); with
    ``normals`` = (per-sample normals, per-sample ray directions) also Σ w n and DreamFusion's orientation
    penalty Σ sg(w)·max(0, n·d)² (a normal facing away from the camera is penalised)."""
    from nerfacc import accumulate_along_rays

    color = accumulate_along_rays(w, rgb, ray_indices=ray_indices, n_rays=n_rays)
    acc = accumulate_along_rays(w, None, ray_indices=ray_indices, n_rays=n_rays)
    depth = accumulate_along_rays(w, mids[..., None], ray_indices=ray_indices, n_rays=n_rays)
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


def _render_chunk_nerfacc(field, rays: Rays, radius: float, cfg: RenderConfig, occupancy, bg: Tensor, generator) -> NeRFRender:
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
    w, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sig, ray_indices=ray_indices, n_rays=n_rays)
    return _composite(w, rgb, mids, bg.to(o.device), ray_indices=ray_indices, n_rays=n_rays, normals=normals)


def render_image(field, cams, cfg: RenderConfig = RenderConfig(), occupancy: OccupancyGrid | None = None, background: Tensor | None = None,
                 backend: str = "auto") -> NeRFRender:
    """Full images: rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1] (expected ray distance); with
    ``cfg.normals`` also normals [B,H,W,3] and orientation [B,H,W]."""
    out = render_rays(field, camera_rays(cams), cfg, occupancy, background, backend=backend)
    shp = (len(cams.viewmats), cams.height, cams.width)
    extra = {} if out.normals is None else {"normals": out.normals.reshape(*shp, 3), "orientation": out.orientation.reshape(*shp)}
    return NeRFRender(rgb=out.rgb.reshape(*shp, 3), opacity=out.opacity.reshape(*shp, 1), depth=out.depth.reshape(*shp, 1), **extra)


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


def self_test(device: torch.device | str) -> None:
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
    a = _render_chunk_nerfacc(f, rays, 1.0, cfg, grid, f.background, None)
    b = _render_chunk(f, rays, 1.0, cfg, grid, f.background, None)
    err = max(float((a.rgb - b.rgb).abs().max()), float((a.opacity - b.opacity).abs().max()))
    derr = float(((a.depth - b.depth).abs() / b.depth.clamp_min(1e-3)).max())
    if not (err <= SELF_TEST_TOL and derr <= SELF_TEST_TOL):
        raise ValueError(f"nerfacc and the torch twin differ by {err:.3g} (colour/opacity), {derr:.3g} (depth) on the self-test rays")
    if not float(b.opacity.max()) > 0.9:
        raise ValueError("the self-test scene rendered empty")


def choose_volrend(device: torch.device | str, fastpaths: FastPaths = FASTPATHS, test: Callable[[], None] | None = None) -> str:
    """"nerfacc" or "torch" for volume rendering on ``device``: nerfacc's packed CUDA path only on CUDA and
    only once :func:`self_test` passed there (recorded under "volrend"); the torch twin on the same device
    otherwise (it also uses nerfacc's batched volrend maths)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        fastpaths.record("volrend", dev, "torch", "no CUDA device: nerfacc's packed marching needs one (the twin uses its batched volrend)")
        return "torch"
    return fastpaths.choose("volrend", dev, "nerfacc", test or (lambda: self_test(dev)))
