"""Interactive hash refinement (paper §3.2.2, Eq. 8–9).

A region Q (centre, radius) chosen by the user is intersected with the field's 32³ occupancy grid to give
O_part. Each part owns its own multi-level hash tables (default 8 levels × 2 features × 2^19 entries)
over the bounding box of O_part, and small MLPs producing a residual density and a residual colour that
are added to the frozen base field (Eq. 9):

    σ(x) = exp(σ_base_raw(x) + Σ_k 1[x ∈ O_k] · Δσ_k(h_k(x))),   c(x) = sigmoid(c_base(x) + Σ_k 1[x ∈ O_k] · Δc_k(h_k(x)))

A point outside O_part gets exactly zero features (and zero residual) from that part; parts never share
table entries (each has its own tensor). Only the chosen parts train; the base field's tables and MLPs
never receive an optimiser step. Losses: interactive SDS on zoom-in cameras with the user's t when a
guidance is given (Eq. 8's L_SDS), else an L1 reconstruction toward given target renders.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .hashgrid import HashGrid, HashGridConfig
from .nerf import FieldOutput, NeRFField, OccupancyGrid, RenderConfig, Rays, camera_rays, render_rays, trunc_exp

logger = logging.getLogger(__name__)


class RegionError(ValueError):
    """The region is invalid or does not touch the occupied space (O_part would be empty)."""


@dataclass(frozen=True)
class PartConfig:
    """A refinement part's capacity (paper defaults: 8 levels, feature dim 2, 2^19 entries)."""

    n_levels: int = 8
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447
    hidden: int = 32

    def grid(self) -> HashGridConfig:
        return HashGridConfig(self.n_levels, self.n_features, self.log2_table_size, self.base_resolution, self.per_level_scale)


def region_cells(occupancy: OccupancyGrid, center: Tensor, radius: float) -> Tensor:
    """O_part = Q ∩ occupancy: occupied cells [R,R,R] bool whose centre lies in the sphere Q, plus the
    occupied cell that contains the centre (so a small Q inside one cell is not empty)."""
    if not (math.isfinite(radius) and radius > 0):
        raise RegionError(f"radius must be > 0, got {radius}")
    c = torch.as_tensor(center, dtype=torch.float32, device=occupancy.occ.device).reshape(3)
    if not torch.isfinite(c).all():
        raise RegionError(f"center must be finite, got {c.tolist()}")
    inside = (occupancy.cell_centers() - c).norm(dim=-1) <= radius
    i = occupancy.cell_index(c[None])[0]
    if (c.abs() <= occupancy.aabb_radius).all():
        inside[i[0], i[1], i[2]] = True
    cells = inside & occupancy.occ
    if not bool(cells.any()):
        raise RegionError(
            f"region (center {[round(v, 4) for v in c.tolist()]}, radius {radius}) contains no occupied cell of the "
            f"{occupancy.resolution}³ occupancy grid"
        )
    return cells


class RefinePart(nn.Module):
    """One part: its cells O_part, its own hash tables over O_part's bounding box, residual MLPs."""

    def __init__(self, name: str, cells: Tensor, occupancy: OccupancyGrid, cfg: PartConfig = PartConfig(), seed: int = 0, backend: str = "auto") -> None:
        super().__init__()
        self.name = name
        self.cfg = cfg
        dev = cells.device
        self.register_buffer("cells", cells.clone())  # [R,R,R] bool
        self.aabb_radius = occupancy.aabb_radius
        idx = cells.nonzero()  # [M,3]
        n, r = cells.shape[0], occupancy.aabb_radius
        lo = idx.min(0).values.float() / n * 2 * r - r
        hi = (idx.max(0).values.float() + 1) / n * 2 * r - r
        self.register_buffer("box_lo", lo)
        self.register_buffer("box_hi", hi)
        self.grid = HashGrid(cfg.grid(), backend=backend, device=dev, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(self.grid.out_dim, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 4)).to(dev)
        # zero last layer: a fresh part leaves the field unchanged (Δσ = Δc = 0)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def contains(self, x: Tensor) -> Tensor:  # [N,3] world → [N] bool: x ∈ O_part
        n, r = self.cells.shape[0], self.aabb_radius
        inside = (x.abs() <= r).all(dim=-1)
        i = torch.floor((x + r) / (2 * r) * n).long().clamp(0, n - 1)
        return self.cells[i[:, 0], i[:, 1], i[:, 2]] & inside

    def features(self, x: Tensor) -> Tensor:
        """[N,3] → [N, L·F]; exactly 0 for points outside O_part (the tables are never read there)."""
        m = self.contains(x)
        out = torch.zeros(x.shape[0], self.grid.out_dim, device=x.device, dtype=self.grid.table.dtype)
        if bool(m.any()):
            u = (x[m] - self.box_lo) / (self.box_hi - self.box_lo)
            out = out.index_put((m.nonzero()[:, 0],), self.grid(u))
        return out

    def residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(Δσ_raw [N], Δc_logits [N,3]), exactly 0 outside O_part."""
        m = self.contains(x)
        d_sig = torch.zeros(x.shape[0], device=x.device)
        d_rgb = torch.zeros(x.shape[0], 3, device=x.device)
        if bool(m.any()):
            u = (x[m] - self.box_lo) / (self.box_hi - self.box_lo)
            h = self.mlp(self.grid(u))
            rows = (m.nonzero()[:, 0],)
            d_sig = d_sig.index_put(rows, h[:, 0].float())
            d_rgb = d_rgb.index_put(rows, h[:, 1:].float())
        return d_sig, d_rgb


class RefinedField(nn.Module):
    """The frozen base field plus the residuals of its parts (Eq. 9); renders like a NeRFField."""

    def __init__(self, base: NeRFField) -> None:
        super().__init__()
        self.base = base
        self.parts = nn.ModuleDict()

    @property
    def cfg(self):
        return self.base.cfg

    @property
    def background(self) -> Tensor:
        return self.base.background

    @property
    def device(self) -> torch.device:
        return self.base.device

    def add_part(self, name: str, cells: Tensor, occupancy: OccupancyGrid, cfg: PartConfig = PartConfig(), seed: int = 0) -> RefinePart:
        if name in self.parts:
            raise ValueError(f"part {name!r} already exists")
        part = RefinePart(name, cells, occupancy, cfg, seed=seed, backend=self.base.grid.backend if self.base.device.type == "cuda" else "torch")
        self.parts[name] = part
        return part

    def forward(self, x: Tensor) -> FieldOutput:  # [N,3]
        with torch.no_grad():  # the base is frozen (Eq. 9)
            raw, logits = self.base.query(x)
        for part in self.parts.values():
            d_sig, d_rgb = part.residual(x)
            raw = raw + d_sig
            logits = logits + d_rgb
        return FieldOutput(density=trunc_exp(raw), rgb=torch.sigmoid(logits))

    @torch.no_grad()
    def density(self, x: Tensor) -> Tensor:
        return self.forward(x).density

    @property
    def aabb_radius(self) -> float:
        return self.base.cfg.aabb_radius


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 200
    lr_grid: float = 0.01
    lr_mlp: float = 1e-3
    rays_per_step: int = 2048
    render: RenderConfig = field(default_factory=lambda: RenderConfig(n_samples=64, stratified=True))
    # interactive SDS (used when a guidance is given)
    prompt: str = ""
    fixed_t: float | None = None  # user t in (0,1), e.g. 0.3 to fine-tune
    sds_batch: int = 1
    sds_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.rays_per_step < 1:
            raise ValueError(f"steps >= 0 and rays_per_step >= 1 required, got {self.steps}, {self.rays_per_step}")
        if self.fixed_t is not None and not (0.0 < self.fixed_t < 1.0):
            raise ValueError(f"fixed_t must be in (0, 1), got {self.fixed_t}")


class Refiner:
    """Optimises the chosen parts of a :class:`RefinedField` (a Job body: one :meth:`step` per call).

    Args:
        field: the refined field (its base stays frozen).
        parts: names of the parts to train; the others are left unchanged.
        cfg: schedule and loss options.
        targets: (cameras, rgb [B,H,W,3]) for the L1 reconstruction loss (used when ``guidance`` is None).
        guidance: an SDS guidance (backend/guidance.py interface); with it, zoom-in cameras around the
            parts' region are rendered and scored with the user's t.
        occupancy: optional grid for empty-space skipping while rendering.
    """

    def __init__(self, field: RefinedField, parts: list[str], cfg: RefineConfig = RefineConfig(), targets=None, guidance=None, occupancy: OccupancyGrid | None = None) -> None:
        missing = [p for p in parts if p not in field.parts]
        if not parts or missing:
            raise ValueError(f"parts must name existing parts {list(field.parts)}, got {parts}")
        if guidance is None and targets is None:
            raise ValueError("refinement needs target renders (cameras, rgb) or a guidance")
        if guidance is not None and not cfg.prompt:
            raise ValueError("refinement with guidance needs a prompt")
        self.field, self.part_names, self.cfg = field, list(parts), cfg
        self.guidance, self.occupancy = guidance, occupancy
        self.generator = torch.Generator().manual_seed(cfg.seed)
        groups = []
        for name in parts:
            p = field.parts[name]
            groups += [{"params": p.grid.parameters(), "lr": cfg.lr_grid}, {"params": p.mlp.parameters(), "lr": cfg.lr_mlp}]
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        self.targets = None
        if targets is not None:
            cams, rgb = targets
            b, h, w = rgb.shape[:3]
            if (len(cams.viewmats), cams.height, cams.width) != (b, h, w):
                raise ValueError(f"targets: rgb {tuple(rgb.shape)} does not match {len(cams.viewmats)} cameras of {cams.width}x{cams.height}")
            rays = camera_rays(cams)
            # train only on rays that can see a trained part (the others cannot change: Eq. 9's indicator)
            self.targets = (rays, rgb.reshape(-1, 3).to(field.device))

    def _region(self) -> tuple[Tensor, float]:
        lo = torch.stack([self.field.parts[n].box_lo for n in self.part_names]).min(0).values
        hi = torch.stack([self.field.parts[n].box_hi for n in self.part_names]).max(0).values
        return 0.5 * (lo + hi), float(0.5 * (hi - lo).norm())

    def step(self, i: int) -> dict[str, float]:
        cfg = self.cfg
        self.field.train()
        if self.guidance is not None:
            loss = self._sds_loss(i)
        else:
            rays, rgb = self.targets
            sel = torch.randint(0, rgb.shape[0], (cfg.rays_per_step,), generator=self.generator).to(rgb.device)
            out = render_rays(self.field, Rays(rays.origins[sel], rays.dirs[sel]), cfg.render, self.occupancy, generator=self.generator)
            loss = (out.rgb - rgb[sel]).abs().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _sds_loss(self, i: int) -> Tensor:  # Eq. 8 with zoom-in cameras and the user's t
        from .cameras import zoom_in_cameras
        from .guidance import PromptSpec
        from .nerf import render_image

        cfg = self.cfg
        center, radius = self._region()
        sample = zoom_in_cameras(center.cpu(), radius, cfg.sds_batch, cfg.sds_size, cfg.sds_size, self.generator)
        cams = sample.cameras.to(self.field.device)
        img = render_image(self.field, cams, cfg.render, self.occupancy).rgb
        res = self.guidance(
            img, PromptSpec(cfg.prompt, ""), sample.elevation_deg, sample.azimuth_deg, step=i, fixed_t=cfg.fixed_t, generator=self.generator, cameras=cams, background=None
        )
        return res.loss


class RefineJob:
    """Refinement as a server job: ``Refiner`` steps on ``session.extras["stage2"]``'s chosen parts.

    Without a guidance the targets are fresh Gaussian renders of the session (e.g. after further Stage I
    edits) from ``views`` zoom-in cameras around the parts' region, rendered at the first step.
    """

    kind = "stage2.refine"

    def __init__(self, session, parts: list[str], cfg: RefineConfig = RefineConfig(), views: int = 8, resolution: int = 64, guidance=None,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), load_guidance=None) -> None:
        from .stage2 import SLOT

        st = session.extras.get(SLOT)
        if st is None:
            raise ValueError("the session has no Stage II field: run stage2.distill first")
        missing = [p for p in parts if p not in st.parts]
        if not parts or missing:
            raise ValueError(f"parts must name existing refinement parts {sorted(st.parts)}, got {parts}")
        if guidance is not None or load_guidance is not None:
            if not cfg.prompt:
                raise ValueError("refinement with guidance needs a prompt")
        elif session.gaussians is None or session.gaussians.n == 0:
            raise ValueError("refinement without guidance needs the session's Gaussians as targets")
        self.session, self.parts, self.cfg = session, list(parts), cfg
        self.views, self.resolution, self.guidance = views, resolution, guidance
        self.load_guidance = load_guidance  # heavy model loading deferred to the worker thread's first step
        self.bg = torch.tensor(background, dtype=torch.float32)
        self.total_steps = cfg.steps
        self.refiner: Refiner | None = None
        self._pending: dict | None = None
        self.last_loss: float | None = None

    def _build(self) -> Refiner:
        from .cameras import zoom_in_cameras
        from .distill import gaussian_targets
        from .stage2 import SLOT

        st = self.session.extras[SLOT]
        if self.guidance is None and self.load_guidance is not None:
            self.guidance = self.load_guidance()
        targets = None
        if self.guidance is None:
            lo = torch.stack([st.refined.parts[n].box_lo for n in self.parts]).min(0).values.cpu()
            hi = torch.stack([st.refined.parts[n].box_hi for n in self.parts]).max(0).values.cpu()
            gen = torch.Generator().manual_seed(self.cfg.seed + 7)
            cams = zoom_in_cameras(0.5 * (lo + hi), float(0.5 * (hi - lo).norm()), self.views, self.resolution, self.resolution, gen).cameras
            cams = cams.to(st.device)
            targets = (cams, gaussian_targets(self.session.gaussians, cams, self.bg.to(st.device)))
        r = Refiner(st.refined, self.parts, self.cfg, targets=targets, guidance=self.guidance, occupancy=st.occupancy)
        if self._pending is not None:
            r.generator.set_state(self._pending["rng"])
            r.optimizer.load_state_dict(self._pending["optimizer"])
            self._pending = None
        return r

    def step(self, i: int) -> dict[str, float]:
        if self.refiner is None:
            self.refiner = self._build()
        m = self.refiner.step(i)
        self.last_loss = m["loss"]
        return m

    def result(self) -> dict:
        return {"loss": self.last_loss, "parts": self.parts}

    def state_dict(self) -> dict:
        if self.refiner is None:
            return dict(self._pending) if self._pending else {}
        return {"rng": self.refiner.generator.get_state(), "optimizer": self.refiner.optimizer.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        if d:
            self._pending = d
