"""Interactive hash refinement (paper §3.2.2, Eq. 8–9): training the chosen refinement parts.

The parts themselves (O_part = Q ∩ O, their own hash tables and residual MLPs added to the frozen base
field) are in parts.py. Only the chosen parts train; the base field's tables and MLPs never receive an
optimiser step. Losses: interactive SDS on zoom-in cameras with the user's t when a guidance is given
(Eq. 8's L_SDS), else an L1 reconstruction toward given target renders; both plus DreamFusion's orientation
penalty on density-gradient normals (``orientation_weight``, as the paper's Stage II).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .distill import ORIENTATION_WEIGHT, gaussian_targets, render_with_orientation
from .occupancy import OccupancyGrid
from .rays import Rays, RenderConfig, camera_rays
from .parts import RefinedField
from .preview import MeshPreviewer
from .state import SLOT


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
    orientation_weight: float = ORIENTATION_WEIGHT  # DreamFusion's orientation penalty (0: off)
    orientation_rays: int | None = 512  # L1 path: rays per step that carry it (SDS: every pixel of the render)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.rays_per_step < 1:
            raise ValueError(f"steps >= 0 and rays_per_step >= 1 required, got {self.steps}, {self.rays_per_step}")
        if not (self.orientation_weight >= 0 and math.isfinite(self.orientation_weight)):
            raise ValueError(f"orientation_weight must be >= 0, got {self.orientation_weight}")
        if self.fixed_t is not None and not (0.0 < self.fixed_t < 1.0):
            raise ValueError(f"fixed_t must be in (0, 1), got {self.fixed_t}")


def parts_region(field: RefinedField, names: list[str]) -> tuple[Tensor, float]:
    """The sphere that zoom-in cameras look at for the parts ``names``: the centre [3] of the box around their
    boxes (O_part's bounding boxes) and half its diagonal."""
    lo = torch.stack([field.parts[n].box_lo for n in names]).min(0).values
    hi = torch.stack([field.parts[n].box_hi for n in names]).max(0).values
    return 0.5 * (lo + hi), float(0.5 * (hi - lo).norm())


class Refiner:
    """Optimises the chosen parts of a :class:`RefinedField` (a Job body: one :meth:`step` per call).

    Args:
        field: the refined field (its base stays frozen).
        parts: names of the parts to train; the others are left unchanged.
        cfg: schedule and loss options.
        targets: (cameras, rgb [B,H,W,3]) for the L1 reconstruction loss (used when ``guidance`` is None).
        guidance: an SDS guidance (backend/stage1/guidance.py interface); with it, zoom-in cameras around the
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
        self.region = parts_region(field, self.part_names)  # where the zoom-in cameras look
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
            # every target ray is kept; one that misses the trained parts gives them no gradient (Eq. 9's indicator)
            self.targets = (rays, rgb.reshape(-1, 3).to(field.device))

    def step(self, i: int) -> dict[str, float]:
        cfg = self.cfg
        self.field.train()
        if self.guidance is not None:
            loss = self._sds_loss(i)
        else:
            rays, rgb = self.targets
            sel = torch.randint(0, rgb.shape[0], (cfg.rays_per_step,), generator=self.generator).to(rgb.device)
            bg = self.field.background
            out = render_with_orientation(self.field, Rays(rays.origins[sel], rays.dirs[sel]), cfg.render, cfg.orientation_weight, cfg.orientation_rays, self.occupancy, bg, self.generator)
            loss = (out.rgb - rgb[sel]).abs().mean()
            if out.orientation is not None:
                loss = loss + cfg.orientation_weight * out.orientation.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _sds_loss(self, i: int) -> Tensor:  # Eq. 8 with zoom-in cameras and the user's t
        from ..stage1.cameras import zoom_in_cameras
        from ..stage1.guidance import PromptSpec
        from .render import render_image

        cfg = self.cfg
        center, radius = self.region
        sample = zoom_in_cameras(center.cpu(), radius, cfg.sds_batch, cfg.sds_size, cfg.sds_size, self.generator, outward=center.cpu())
        cams = sample.cameras.to(self.field.device)
        orient = cfg.orientation_weight > 0
        out = render_image(self.field, cams, dataclasses.replace(cfg.render, normals=orient), self.occupancy)
        res = self.guidance(
            out.rgb, PromptSpec(cfg.prompt, ""), sample.elevation_deg, sample.azimuth_deg, step=i, fixed_t=cfg.fixed_t, generator=self.generator, cameras=cams, background=None
        )
        return res.loss + cfg.orientation_weight * out.orientation.mean() if orient else res.loss


class RefineJob:
    """Refinement as a server job: ``Refiner`` steps on ``session.extras["stage2"]``'s chosen parts.

    Without a guidance the targets are fresh Gaussian renders of the session (e.g. after further Stage I
    edits) from ``views`` zoom-in cameras around the parts' region, rendered at the first step.
    """

    kind = "stage2.refine"

    def __init__(self, session, parts: list[str], cfg: RefineConfig = RefineConfig(), views: int = 8, resolution: int = 64, guidance=None,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), load_guidance=None, mesh_every: int = 0, mesh_resolution: int = 48) -> None:

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
        self.mesh_preview = MeshPreviewer(mesh_every, mesh_resolution)

    def _build(self) -> Refiner:
        from ..stage1.cameras import zoom_in_cameras

        st = self.session.extras[SLOT]
        if self.guidance is None and self.load_guidance is not None:
            self.guidance = self.load_guidance()
        targets = None
        if self.guidance is None:
            mid, radius = parts_region(st.refined, self.parts)
            mid = mid.cpu()
            gen = torch.Generator().manual_seed(self.cfg.seed + 7)
            cams = zoom_in_cameras(mid, radius, self.views, self.resolution, self.resolution, gen, outward=mid).cameras
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
        if self.mesh_preview.due(i, self.total_steps):
            self.mesh_preview.update(self.session.extras[SLOT].refined, i + 1)
        return m

    def take_mesh(self):
        """The preview mesh made since the last call (the job runner sends it as a ``mesh`` event)."""
        return self.mesh_preview.take()

    def result(self) -> dict:
        return {"loss": self.last_loss, "parts": self.parts}

    def state_dict(self) -> dict:
        if self.refiner is None:
            return dict(self._pending) if self._pending else {}
        return {"rng": self.refiner.generator.get_state(), "optimizer": self.refiner.optimizer.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        if d:
            self._pending = d
