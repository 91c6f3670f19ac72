"""The Stage II InstantNGP field and its volume renderer (paper §3.2.1).

Field: points in the scene AABB → hash grid (:mod:`hashgrid`) → density MLP (raw density + geometry
features; density = trunc_exp(raw + blob bias), the threestudio "blob" that starts a sphere at the origin)
→ colour MLP (view-independent, sigmoid). The background is a constant colour.

Rendering: rays from OpenCV cameras (pixel centre (u+0.5, v+0.5), K⁻¹, camera→world = viewmat⁻¹), clipped
to the AABB, sampled uniformly (stratified while training); samples in unoccupied cells of the
:class:`OccupancyGrid` are skipped (zero density, the network is not evaluated there); weights
w_i = T_i·(1 − exp(−σ_i δ_i)), T_i = exp(−Σ_{j<i} σ_j δ_j) — the same maths as nerfacc's
``render_weight_from_density`` (a test compares them). On CUDA, :func:`render_rays_nerfacc` uses nerfacc's
OccGridEstimator and packed rendering (untested without a GPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

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
    """A boolean grid over the AABB [-r, r]³; cell (i, j, k) covers x ∈ [-r + i·2r/R, -r + (i+1)·2r/R)."""

    occ: Tensor  # [R,R,R] bool, indexed [x, y, z]
    aabb_radius: float

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


@torch.no_grad()
def occupancy_from_field(
    field: "NeRFField | DensityFn",
    resolution: int = 32,
    threshold: float = 0.01,
    samples_per_cell: int = 8,
    chunk: int = 65536,
    seed: int = 0,
) -> OccupancyGrid:
    """Occupancy R³ from the field: a cell is occupied when the max density of its centre and
    ``samples_per_cell`` − 1 jittered points exceeds ``threshold`` (opacity σ·δ of a cell-sized step ≈
    threshold/R·2r; 0.01 is nerfacc's default)."""
    if resolution < 1 or resolution > 512:
        raise ValueError(f"resolution must be in [1, 512], got {resolution}")
    r = field.cfg.aabb_radius if isinstance(field, NeRFField) else field.aabb_radius
    fn = _density_fn(field)
    dev = field.device
    grid = OccupancyGrid(torch.zeros(resolution, resolution, resolution, dtype=torch.bool, device=dev), r)
    centers = grid.cell_centers().reshape(-1, 3)
    gen = torch.Generator().manual_seed(seed)
    cell = 2 * r / resolution
    best = torch.zeros(centers.shape[0], device=dev)
    for s in range(samples_per_cell):
        jitter = torch.zeros(3) if s == 0 else (torch.rand(centers.shape[0], 3, generator=gen) - 0.5) * cell
        pts = centers + jitter.to(dev)
        dens = torch.cat([fn(pts[i : i + chunk]) for i in range(0, pts.shape[0], chunk)])
        best = torch.maximum(best, dens)
    grid.occ = (best > threshold).reshape(resolution, resolution, resolution)
    return grid


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
    n_samples: int = 64  # uniform samples per ray across the AABB
    stratified: bool = False  # jitter samples (training)
    chunk: int = 8192  # rays per chunk
    normals: bool = False  # also density-gradient normals and the orientation penalty (about 2-3x the cost)


@dataclass
class NeRFRender:
    rgb: Tensor  # [R,3] (or [B,H,W,3] from render_image)
    opacity: Tensor  # [R,1]
    depth: Tensor  # [R,1]
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
) -> NeRFRender:
    """CPU/GPU dense volume rendering of rays through ``field`` (a NeRFField or a refined field with
    ``query``-compatible ``forward``). Differentiable w.r.t. the field's parameters."""
    r = field.cfg.aabb_radius if hasattr(field, "cfg") else field.aabb_radius
    bg = field.background if background is None else background
    outs = [
        _render_chunk(field, Rays(rays.origins[i : i + cfg.chunk], rays.dirs[i : i + cfg.chunk]), r, cfg, occupancy, bg, generator)
        for i in range(0, rays.origins.shape[0], cfg.chunk)
    ]
    cat = lambda k: None if getattr(outs[0], k) is None else torch.cat([getattr(o, k) for o in outs])  # noqa: E731
    return NeRFRender(*(cat(k) for k in ("rgb", "opacity", "depth", "normals", "orientation")))


def _render_chunk(field, rays: Rays, radius: float, cfg: RenderConfig, occupancy, bg: Tensor, generator) -> NeRFRender:
    n_rays, s = rays.origins.shape[0], cfg.n_samples
    dev = rays.origins.device
    near, far = ray_aabb(rays, radius)
    hit = far > near
    far = torch.where(hit, far, near)
    u = torch.linspace(0.0, 1.0, s + 1, device=dev)  # bin edges
    edges = near[:, None] + (far - near)[:, None] * u[None]  # [R,S+1]
    if cfg.stratified:
        jit = torch.rand(n_rays, s, generator=generator).to(dev)
    else:
        jit = torch.full((n_rays, s), 0.5, device=dev)
    t_mid = edges[:, :-1] + (edges[:, 1:] - edges[:, :-1]) * jit  # [R,S]
    deltas = edges[:, 1:] - edges[:, :-1]
    pts = rays.origins[:, None] + rays.dirs[:, None] * t_mid[..., None]  # [R,S,3]
    flat = pts.reshape(-1, 3)
    live = hit[:, None].expand(n_rays, s).reshape(-1)
    if occupancy is not None:
        live = live & occupancy.lookup(flat)
    sig = torch.zeros(n_rays * s, device=dev)
    rgb = torch.zeros(n_rays * s, 3, device=dev)
    nrm = torch.zeros(n_rays * s, 3, device=dev) if cfg.normals else None
    if bool(live.any()):
        if cfg.normals:
            out, n_live = density_normals(field, flat[live])
            nrm = nrm.index_put((live.nonzero()[:, 0],), n_live.float())
        else:
            out = field(flat[live])
        sig = sig.index_put((live.nonzero()[:, 0],), out.density.float())
        rgb = rgb.index_put((live.nonzero()[:, 0],), out.rgb.float())
    w, _ = weights_from_density(sig.reshape(n_rays, s), deltas)
    acc = w.sum(dim=-1, keepdim=True)
    color = (w[..., None] * rgb.reshape(n_rays, s, 3)).sum(dim=1) + (1.0 - acc) * bg[None].to(dev)
    depth = (w * t_mid).sum(dim=-1, keepdim=True)
    if nrm is None:
        return NeRFRender(rgb=color, opacity=acc, depth=depth)
    nrm = nrm.reshape(n_rays, s, 3)
    facing_away = (nrm * rays.dirs[:, None]).sum(-1).clamp_min(0.0)  # n·d > 0: the normal points away from the camera
    orient = (w.detach() * facing_away**2).sum(-1)
    return NeRFRender(rgb=color, opacity=acc, depth=depth, normals=(w[..., None] * nrm).sum(1), orientation=orient)


def render_image(field, cams, cfg: RenderConfig = RenderConfig(), occupancy: OccupancyGrid | None = None, background: Tensor | None = None) -> NeRFRender:
    """Full images: rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1] (ray distance); with
    ``cfg.normals`` also normals [B,H,W,3] and orientation [B,H,W]."""
    out = render_rays(field, camera_rays(cams), cfg, occupancy, background)
    shp = (len(cams.viewmats), cams.height, cams.width)
    extra = {} if out.normals is None else {"normals": out.normals.reshape(*shp, 3), "orientation": out.orientation.reshape(*shp)}
    return NeRFRender(rgb=out.rgb.reshape(*shp, 3), opacity=out.opacity.reshape(*shp, 1), depth=out.depth.reshape(*shp, 1), **extra)


def render_rays_nerfacc(field, rays: Rays, estimator, render_step_size: float, background: Tensor | None = None) -> NeRFRender:  # pragma: no cover - CUDA
    """CUDA path: nerfacc ``OccGridEstimator.sampling`` + packed ``rendering`` (untested without a GPU).

    ``estimator`` is a ``nerfacc.OccGridEstimator`` whose binaries the caller updates with
    ``estimator.update_every_n_steps(step, occ_eval_fn=lambda x: field(x).density * render_step_size)``.
    """
    import nerfacc

    bg = field.background if background is None else background
    o, d = rays.origins, rays.dirs

    def sigma_fn(t_starts, t_ends, ray_indices):
        x = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) / 2.0)[:, None]
        return field(x).density

    def rgb_sigma_fn(t_starts, t_ends, ray_indices):
        x = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) / 2.0)[:, None]
        out = field(x)
        return out.rgb, out.density

    ray_indices, t_starts, t_ends = estimator.sampling(o, d, sigma_fn=sigma_fn, render_step_size=render_step_size, stratified=field.training)
    rgb, opacity, depth, _ = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=o.shape[0], rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bg)
    return NeRFRender(rgb=rgb, opacity=opacity, depth=depth)


def make_nerfacc_estimator(aabb_radius: float, resolution: int = 128, device: torch.device | str = "cuda"):  # pragma: no cover - CUDA
    import nerfacc

    r = aabb_radius
    aabb = torch.tensor([-r, -r, -r, r, r, r], dtype=torch.float32, device=device)
    return nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=1).to(device)
