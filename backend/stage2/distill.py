"""Gaussian → InstantNGP distillation (paper §3.2.1, Eq. 7).

    L_distill = E_cam ‖ R_NeRF(cam) − R_GS(cam) ‖₁

Cameras are drawn from the Stage I orbit distribution; the Gaussian renders are targets (no gradient);
the hash grid trains with lr 0.01 and the MLPs with 1e-3 (Adam), as the official configs. Each step
renders a random subset of the target pixels (``rays_per_step``; all of them when None). The occupancy
grid is updated from the field every ``occupancy_every`` steps as nerfacc does (σ·step of the marching step,
an EMA over updates; occupancy.update_occupancy) and skips empty space while rendering; the renderer marches
with nerfacc on CUDA and with its torch twin elsewhere (render.render_rays).

When the targets are the session's Gaussians, the grid never leaves the cells they render in
(occupancy.gaussian_support), from the first step on: the blob the field starts as and any floater outside
them are never rendered, so neither trained nor meshed. Short budgets (the ``preview`` and ``fast`` presets)
inflated the mesh without this: the blob's density stayed in the occupancy EMA (0.95 per update fades e^10
in hundreds of updates) and one cell around the grid was meshed untrained (issue 26, docs/benchmarks.md).

The targets are rendered 4× supersampled and averaged per pixel (``target_supersample``): the rasteriser's
0.3 px² low-pass widens every thin surfel by about half a pixel, which at 64² grew the silhouettes by 22 % and put
the target depth 0.02 in front (≈ one 96³ mesh cell): the field, and its mesh, inflated by that much. They are
never rendered finer than the size Stage I fitted the set at (``fit_resolution``): a set fitted through the
low-pass at 48² keeps thin parts only that low-pass makes visible (see :func:`target_supersample`).

Within a short budget Adam moves the raw density by a few units only, so the start blob stays in a ``preview``
mesh: threestudio's e^{10(1 − |x|/0.5)} is too dense at a torus's inner side and too faint at its rim.
``start_blob`` (opt-in) starts a fresh field distilled from Gaussians as another blob, e.g. (4, 2):
σ = e^{4(1 − |x|/2)}, which brings thin-surfel shapes within a cell and 2 % Chamfer at 60 steps, but on round
Gaussians (a shell of σ 0.035, whose support band is wide) the denser start leaves haze that 80 steps do not
carve (held-out PSNR 20.5 vs 28.8 dB), so the default stays threestudio's. Measured in docs/benchmarks.md
(issue 26).

Eq. 7 supervises colour only, which leaves the density soft: a white-ish object on a white background
or a thick haze both render fine but mesh badly. The Gaussian render also gives alpha and depth for free,
so two small extra terms (``opacity_weight`` 0.1, ``depth_weight`` 0.03; both 0 is the paper's loss) pull
the field's accumulated opacity toward the Gaussian alpha and its expected ray distance toward the
Gaussian depth where the Gaussians are opaque, to sharpen the surface that mesh extraction sees. On the
earlier hash-grid layout a sphere sample's mesh went from 2.0 % to 1.4 % of the diameter (Chamfer) and the
held-out PSNR of tests/backend/test_distill.py from 28.6 to 30.4 dB; on tcnn's layout (an AMD EPYC) the
80-step tests give 1.93 % vs 2.03 % and 30.20 vs 30.21 dB: within what CPU rounding moves a short run.

DreamFusion's orientation loss, which the paper's Stage II keeps as a regulariser, is on by default
(``orientation_weight`` 0.01): Σ_i sg(w_i)·max(0, n_i·d)² per ray with normals n = −∇σ/‖∇σ‖ from the
density gradient (normals.density_normals), on ``orientation_rays`` of each step's rays (normals cost ≈ 2.5×).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .nerf import NeRFField
from .occupancy import OccupancyConfig, OccupancyGrid, gaussian_support, update_occupancy
from .rays import Rays, RenderConfig, camera_rays, render_step_size
from .render import render_image, render_rays
from .volrend import NeRFRender
from .preview import MeshPreviewer
from .state import SLOT, Stage2State

logger = logging.getLogger(__name__)

ORIENTATION_WEIGHT = 0.01  # see DistillConfig.orientation_weight and docs/benchmarks.md (issue 17)


@dataclass(frozen=True)
class DistillConfig:
    """Distillation schedule (paper: 10k steps; defaults here are the interactive ones)."""

    steps: int = 1000
    resolution: int = 64  # square Gaussian renders per camera
    batch: int = 1  # cameras per step
    rays_per_step: int | None = 4096  # random pixels per step (None: every pixel of the batch)
    lr_grid: float = 0.01
    lr_mlp: float = 1e-3
    render: RenderConfig = field(default_factory=lambda: RenderConfig(n_samples=64, stratified=True))
    occupancy_resolution: int = 32
    occupancy_every: int = 16  # steps between occupancy updates, nerfacc's n (0: never skip empty space)
    occupancy_warmup: int = 32  # no skipping before this step (the blob init is not the object yet)
    occupancy_samples: int = 2  # random density queries per cell per update (their max σ·step counts)
    occupancy_decay: float = 0.95  # EMA decay per update (nerfacc's ema_decay)
    occupancy_threshold: float = 0.01  # σ·step above this is occupied (nerfacc's occ_thre)
    elevation_range_deg: tuple[float, float] = (-10.0, 45.0)
    distance_range: tuple[float, float] = (1.5, 2.0)
    fov_range_deg: tuple[float, float] = (40.0, 70.0)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    view_pool: int = 0  # >0: render this many orbit views of the Gaussians once and draw every step's
    # rays from all of them (many views per step, one Gaussian render per view); 0: fresh cameras each step
    preview_every: int = 10
    preview_size: int = 32
    mesh_every: int = 0  # steps between low-resolution preview meshes (marching cubes; 0: none)
    mesh_resolution: int = 48
    opacity_weight: float = 0.1  # λ·|acc_NeRF − α_GS| (0 and depth_weight 0: the paper's Eq. 7 alone)
    depth_weight: float = 0.03  # λ·|t_NeRF − t_GS| on pixels with α_GS > 0.5 (ray distances, world units).
    # Measured: weights near 1 sharpen the surface further but starve the colour (held-out PSNR 17-22 dB)
    orientation_weight: float = ORIENTATION_WEIGHT  # λ·mean_rays Σ sg(w)·max(0, n·d)² (DreamFusion; 0: off)
    orientation_rays: int | None = 512  # rays per step that carry the orientation penalty (normals cost
    # ≈ 2.5× a plain ray); None: all of them
    target_supersample: int = 4  # Gaussian targets rendered at s·resolution (≤ 1024 px wide) and averaged over s×s
    fit_resolution: int | None = None  # the render size the Gaussians were optimised at (Stage I), None: unknown;
    # the targets are never rendered finer than it (see target_supersample())
    start_blob: tuple[float, float] | None = None  # (density_blob_scale, density_blob_std) of a fresh field
    # distilled from the session's Gaussians (None: the NeRFConfig's, threestudio's 10, 0.5); see the module's docstring
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 8 <= self.resolution <= 1024:
            raise ValueError(f"resolution must be in [8, 1024], got {self.resolution}")
        blob = self.start_blob
        if blob is not None and not (len(blob) == 2 and all(math.isfinite(v) for v in blob) and blob[1] > 0):
            raise ValueError(f"start_blob must be (scale, std > 0) or None, got {self.start_blob}")
        if not 1 <= self.target_supersample <= 8:
            raise ValueError(f"target_supersample must be in [1, 8], got {self.target_supersample}")
        if self.fit_resolution is not None and not (isinstance(self.fit_resolution, int) and self.fit_resolution >= 1):
            raise ValueError(f"fit_resolution must be a positive integer or None, got {self.fit_resolution!r}")
        if self.view_pool < 0:
            raise ValueError(f"view_pool must be >= 0, got {self.view_pool}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.rays_per_step is not None and self.rays_per_step < 1:
            raise ValueError(f"rays_per_step must be >= 1 or None, got {self.rays_per_step}")
        if not (self.orientation_weight >= 0 and math.isfinite(self.orientation_weight)):
            raise ValueError(f"orientation_weight must be >= 0, got {self.orientation_weight}")
        if self.orientation_rays is not None and self.orientation_rays < 1:
            raise ValueError(f"orientation_rays must be >= 1 or None, got {self.orientation_rays}")
        if not (self.opacity_weight >= 0 and self.depth_weight >= 0):
            raise ValueError(f"opacity_weight and depth_weight must be >= 0, got {self.opacity_weight}, {self.depth_weight}")
        if not (self.lr_grid > 0 and self.lr_mlp > 0):
            raise ValueError(f"learning rates must be > 0, got {self.lr_grid}, {self.lr_mlp}")


MAX_TARGET_SIDE = 1024  # supersampled Gaussian targets are rendered at most this many pixels wide


def target_supersample(cfg: DistillConfig) -> int:
    """The supersampling the targets get: ``cfg.target_supersample``, lowered so that they are rendered at most
    ``MAX_TARGET_SIDE`` pixels wide (at 256² and above the low-pass's half pixel is under a fifth of a 96³ mesh cell)
    and no finer than ``cfg.fit_resolution``, the size the Gaussians were optimised at when known.

    Why the second bound: a set optimised at R px was fitted *through* the 0.3 px² low-pass at R, so its thin parts
    may be Gaussians far under a pixel that only the low-pass makes visible; rendered finer they thin out and fade,
    and the field distilled from them loses them (the demo's Stage I at 48², distilled at 48² with 4×: the dragged
    arm is gone from the mesh, Chamfer 0.032 → 0.043). Up to R the render is what the optimisation saw, less the
    coarser render's own widening — issue 26's inflation, which a set of unknown origin is supersampled against."""
    s = min(cfg.target_supersample, MAX_TARGET_SIDE // cfg.resolution)
    if cfg.fit_resolution is not None:
        s = min(s, cfg.fit_resolution // cfg.resolution)
    return max(1, s)


def occupancy_config(cfg: DistillConfig) -> OccupancyConfig:
    return OccupancyConfig(cfg.occupancy_resolution, cfg.occupancy_threshold, cfg.occupancy_decay, cfg.occupancy_samples)


def make_optimizer(f: NeRFField, cfg: DistillConfig) -> torch.optim.Adam:
    """Adam with the official lrs: 0.01 for the hash tables, 1e-3 for the MLPs."""
    mlp = list(f.density_mlp.parameters()) + list(f.color_mlp.parameters())
    return torch.optim.Adam([{"params": f.grid.parameters(), "lr": cfg.lr_grid}, {"params": mlp, "lr": cfg.lr_mlp}], betas=(0.9, 0.99), eps=1e-15)


def sample_cameras(cfg: DistillConfig, generator: torch.Generator):
    """Random cameras from the Stage I orbit distribution (backend/stage1/cameras.py)."""
    from ..stage1.cameras import OrbitConfig, sample_orbit

    ocfg = OrbitConfig(
        elevation_range_deg=cfg.elevation_range_deg,
        distance_range=cfg.distance_range,
        fov_range_deg=cfg.fov_range_deg,
        width=cfg.resolution,
        height=cfg.resolution,
    )
    return sample_orbit(cfg.batch, ocfg, generator).cameras


def gaussian_targets(g, cams, background: Tensor, geometry: bool = False, supersample: int = 1) -> Tensor:
    """R_GS(cam), no gradient (the distillation targets): [B,H,W,3] rgb, or with ``geometry``
    [B,H,W,5] rgb + alpha + expected camera-space depth z.

    With ``supersample`` s > 1 each pixel is the mean of s×s sub-pixels rendered at s·H × s·W (the depth
    the alpha-weighted mean of theirs): the rasteriser's 0.3 px² low-pass widens every Gaussian by about half
    a pixel, which at 64² on an object of unit size is ≈ 0.014 world units — surfels of a thin surface render
    that much too far out, so the targets' silhouettes and depths, and the field distilled from them, inflate
    (issue 26: +22 % silhouette area, depth 0.02 in front at 64²; docs/benchmarks.md)."""
    from ..stage1.render import render

    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    with torch.no_grad():
        if supersample > 1:
            scale = torch.tensor([supersample, supersample, 1.0], dtype=cams.Ks.dtype, device=cams.Ks.device)
            cams = type(cams)(cams.viewmats, cams.Ks * scale[None, :, None], cams.width * supersample, cams.height * supersample)
        out = render(g, cams, background)
        if supersample == 1:
            rgb, alpha, depth = out.rgb, out.alpha, out.depth
        else:
            pool = lambda x: torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)  # noqa: E731
            rgb, alpha = pool(out.rgb), pool(out.alpha)
            depth = pool(out.depth * out.alpha) / alpha.clamp_min(1e-10)
        if not geometry:
            return rgb.detach().contiguous()
        return torch.cat([rgb, alpha, depth], dim=-1).detach()


def _z_to_ray_distance(cams, pix: Tensor) -> Tensor:
    """[R] factor turning camera z into distance along the unit ray of pixel (b, v, u): |K⁻¹(u+½, v+½, 1)|."""
    Ks = cams.Ks.float()[pix[:, 0]]
    uv1 = torch.stack([pix[:, 2].float() + 0.5, pix[:, 1].float() + 0.5, torch.ones(len(pix), device=pix.device)], dim=-1)
    return torch.linalg.solve(Ks, uv1[..., None])[..., 0].norm(dim=-1)


def render_with_orientation(f, rays: Rays, render: RenderConfig, weight: float, n_orient: int | None, occupancy, bg, generator) -> NeRFRender:
    """``render_rays`` where the first ``n_orient`` rays (all when None) also carry DreamFusion's
    orientation penalty (``orientation`` [n_orient]), when ``weight`` > 0. The rays are already in random
    order, so the first ones are a random subset."""
    if weight <= 0:
        return render_rays(f, rays, render, occupancy, bg, generator)
    k = rays.origins.shape[0] if n_orient is None else min(n_orient, rays.origins.shape[0])
    with_n = render_rays(f, Rays(rays.origins[:k], rays.dirs[:k]), dataclasses.replace(render, normals=True), occupancy, bg, generator)
    if k == rays.origins.shape[0]:
        return with_n
    rest = render_rays(f, Rays(rays.origins[k:], rays.dirs[k:]), render, occupancy, bg, generator)
    cat = lambda a, b: torch.cat([a, b])  # noqa: E731
    return NeRFRender(cat(with_n.rgb, rest.rgb), cat(with_n.opacity, rest.opacity), cat(with_n.depth, rest.depth), orientation=with_n.orientation,
                      median_depth=cat(with_n.median_depth, rest.median_depth))


@dataclass
class DistillStepResult:
    loss: float
    seconds: float


def distill_step(
    f: NeRFField,
    optimizer: torch.optim.Optimizer,
    cams,
    target: Tensor,  # [B,H,W,3] rgb, or [B,H,W,5] rgb + alpha + z (gaussian_targets(geometry=True))
    cfg: DistillConfig,
    generator: torch.Generator,
    occupancy: OccupancyGrid | None = None,
) -> DistillStepResult:
    """One Eq. 7 step: L1 between the NeRF render of random target pixels and the targets, plus the
    optional opacity and depth terms when the targets carry alpha and depth."""
    t0 = time.perf_counter()
    dev = f.device
    b, h, w = target.shape[:3]
    n = b * h * w
    if cfg.rays_per_step is None or cfg.rays_per_step >= n:
        sel = torch.arange(n)
    else:
        sel = torch.randint(0, n, (cfg.rays_per_step,), generator=generator)
    pix = torch.stack([sel // (h * w), (sel // w) % h, sel % w], dim=-1).to(dev)
    rays = camera_rays(cams, pix)
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=dev)
    out = render_with_orientation(f, rays, cfg.render, cfg.orientation_weight, cfg.orientation_rays, occupancy, bg, generator)
    tgt = target.reshape(n, -1)[sel.to(target.device)].to(dev)
    loss = (out.rgb - tgt[:, :3]).abs().mean()
    if out.orientation is not None:
        loss = loss + cfg.orientation_weight * out.orientation.mean()
    if tgt.shape[1] >= 4 and cfg.opacity_weight > 0:
        loss = loss + cfg.opacity_weight * (out.opacity[:, 0] - tgt[:, 3]).abs().mean()
    if tgt.shape[1] >= 5 and cfg.depth_weight > 0:
        solid = tgt[:, 3] > 0.5
        if bool(solid.any()):
            t_gs = tgt[:, 4] * _z_to_ray_distance(cams, pix)
            # where the field's opacity reaches 1/2, the mesh's surface (the expected distance where it never does)
            t_nerf = torch.where(out.median_depth[:, 0] > 0, out.median_depth[:, 0], out.depth[:, 0])
            loss = loss + cfg.depth_weight * (t_nerf - t_gs)[solid].abs().mean()
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:  # False when no ray crossed an occupied cell: nothing to learn from this batch
        loss.backward()
        optimizer.step()
    return DistillStepResult(float(loss.detach()), time.perf_counter() - t0)


class DistillJob:
    """Eq. 7 as a server job (backend/service/jobs.py) on the session's Gaussians and Stage II state.

    The job installs its :class:`~.stage2.Stage2State` in ``session.extras["stage2"]`` at its first step
    (after the runner recorded the undo point, so undo removes a fresh field), or reuses the existing one
    unless ``reset``. ``target_fn(cams) → [B,H,W,3]`` overrides the Gaussian renders (tests, other
    sources). The latest low-resolution preview (a NeRF render from a fixed front camera every
    ``preview_every`` steps) is :attr:`preview` ([S,S,3] float32): it rides on the next progress event
    and the ``stage2.preview`` op serves it on demand.
    """

    kind = "stage2.distill"

    def __init__(self, session, cfg: DistillConfig = DistillConfig(), nerf_cfg=None, target_fn: Callable | None = None, reset: bool = False, backend: str = "auto") -> None:
        from .nerf import NeRFConfig

        g = session.gaussians
        if target_fn is None and (g is None or g.n == 0):
            raise ValueError("the session has no Gaussians to distil (run Stage I or gaussians.init first)")
        self.session, self.cfg = session, cfg
        self.nerf_cfg = nerf_cfg if nerf_cfg is not None else NeRFConfig()
        self.reset, self.backend = reset, backend
        self.total_steps = cfg.steps
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.state = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_opt: dict | None = None
        self.bg = torch.tensor(cfg.background, dtype=torch.float32, device=session.device)
        geometry = cfg.opacity_weight > 0 or cfg.depth_weight > 0
        self.uses_gaussians = target_fn is None
        self.target_fn = target_fn or (lambda cams: gaussian_targets(session.gaussians, cams, self.bg, geometry, target_supersample(cfg)))
        self.preview: np.ndarray | None = None
        self._preview_new = False
        self.mesh_preview = MeshPreviewer(cfg.mesh_every, cfg.mesh_resolution)
        self.last_loss: float | None = None
        self._pool = None  # (cameras, targets) when cfg.view_pool > 0; rebuilt deterministically after a resume
        self.support: Tensor | None = None  # [R,R,R] bool cells the Gaussians render in (targets are the Gaussians)
        self._support_grid: OccupancyGrid | None = None

    def _ensure_state(self):
        if self.state is None:
            st = self.session.extras.get(SLOT)
            if st is None or self.reset:
                nerf_cfg = self.nerf_cfg
                if self.uses_gaussians and self.cfg.start_blob is not None:  # the support grid bounds the start density
                    scale, std = self.cfg.start_blob
                    nerf_cfg = dataclasses.replace(nerf_cfg, density_blob_scale=float(scale), density_blob_std=float(std))
                st = Stage2State(nerf_cfg, device=self.session.device, backend=self.backend, seed=self.cfg.seed)
                self.session.extras[SLOT] = st
            self.state = st
            if self.uses_gaussians:
                g, n = self.session.gaussians, self.cfg.occupancy_resolution
                self.support = gaussian_support(g.means, g.scales, g.rotations, g.opacities, n, st.cfg.aabb_radius).to(st.device)
                self._support_grid = OccupancyGrid(self.support, st.cfg.aabb_radius)
                if st.occupancy is None or st.occupancy.resolution != n:
                    st.occupancy = OccupancyGrid(self.support.clone(), st.cfg.aabb_radius)  # no EMA history: the blob start is not the object
            self.optimizer = make_optimizer(st.field, self.cfg)
            if self._pending_opt is not None:
                self.optimizer.load_state_dict(self._pending_opt)
                self._pending_opt = None
        return self.state

    def _views(self):
        cfg = self.cfg
        if cfg.view_pool == 0:
            cams = sample_cameras(cfg, self.generator).to(self.state.device)
            return cams, self.target_fn(cams)
        if self._pool is None:
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            one = dataclasses.replace(cfg, batch=cfg.view_pool)
            cams = sample_cameras(one, gen).to(self.state.device)
            targets = torch.cat([self.target_fn(cams[i : i + 8]) for i in range(0, cfg.view_pool, 8)])
            self._pool = (cams, targets)
        return self._pool

    def step(self, i: int) -> dict[str, float]:
        cfg = self.cfg
        st = self._ensure_state()
        st.field.train()
        cams, target = self._views()
        if cfg.occupancy_every and i >= cfg.occupancy_warmup:
            occ = st.occupancy
        else:  # before the warm-up only the Gaussians' support is skipped (None: nothing)
            occ = self._support_grid
        r = distill_step(st.field, self.optimizer, cams, target, cfg, self.generator, occ)
        if cfg.occupancy_every and (i + 1) % cfg.occupancy_every == 0:
            st.occupancy = update_occupancy(st.occupancy, st.field, render_step_size(st.cfg.aabb_radius, cfg.render.n_samples),
                                            occupancy_config(cfg), torch.Generator().manual_seed(cfg.seed * 7919 + i), within=self.support)
        if cfg.preview_every and ((i + 1) % cfg.preview_every == 0 or i + 1 == self.total_steps):
            self.preview = self.render_preview()
            self._preview_new = True
        if self.mesh_preview.due(i, self.total_steps):
            self.mesh_preview.update(st.refined, i + 1)
        st.distilled_steps += 1
        self.last_loss = r.loss
        return {"loss": r.loss, "step_seconds": r.seconds}

    @torch.no_grad()
    def render_preview(self) -> np.ndarray:
        from ..stage1.cameras import orbit_cameras

        s = self.cfg.preview_size
        one = lambda v: torch.tensor([float(v)])
        cams = orbit_cameras(one(15.0), one(0.0), one(sum(self.cfg.distance_range) / 2), one(sum(self.cfg.fov_range_deg) / 2), s, s).to(self.state.device)
        img = render_image(self.state.field, cams, RenderConfig(n_samples=self.cfg.render.n_samples), self.state.occupancy, self.bg).rgb[0]
        return img.clamp(0, 1).float().cpu().numpy()

    def take_preview(self) -> np.ndarray | None:
        """The preview rendered since the last call (the job runner sends it with a progress event)."""
        if not self._preview_new:
            return None
        self._preview_new = False
        return self.preview

    def take_mesh(self):
        """The preview mesh made since the last call (the job runner sends it as a ``mesh`` event)."""
        return self.mesh_preview.take()

    def result(self) -> dict:
        return {"loss": self.last_loss, "distilled_steps": None if self.state is None else self.state.distilled_steps}

    def state_dict(self) -> dict:
        opt = self.optimizer.state_dict() if self.optimizer is not None else self._pending_opt
        return {"rng": self.generator.get_state(), "optimizer": opt}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])
        if d.get("optimizer") is not None:
            if self.optimizer is not None:
                self.optimizer.load_state_dict(d["optimizer"])
            else:
                self._pending_opt = d["optimizer"]
