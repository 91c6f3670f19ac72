"""Interactive SDS loss (paper §3.1.5): local renderings around the modified region, user-set t.

Instead of orbiting the whole object, cameras are put on a sphere around the region being edited
(adaptive zoom-in: field of view chosen so the region's bounding sphere fills the frame), the prompt is
the one given for that interaction (per-part prompts), and the diffusion timestep is the user's: a fixed
t (e.g. 0.98 early, 0.3 to fine-tune) or a range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..stage1.cameras import zoom_in_cameras
from ..stage1.gaussians import Gaussians
from ..stage1.guidance import PromptSpec
from ..stage1.render import render


class Guidance(Protocol):
    """The call interface of ``backend/stage1/guidance.py`` (SD, PixArt-α, oracle) → GuidanceOutput."""

    def __call__(self, images: Tensor, prompt: PromptSpec, elevation_deg: Tensor, azimuth_deg: Tensor, **kw) -> Any: ...


@dataclass(frozen=True)
class InteractiveSDSConfig:
    """Per-interaction SDS options (§3.1.5)."""

    prompt: str = ""  # the interaction's own prompt (semantic edit: the new one); needed with guidance
    negative_prompt: str = ""
    fixed_t: float | None = None  # diffusion time in (0,1); None → sample in t_range
    t_range: tuple[float, float] = (0.02, 0.98)
    batch: int = 1
    width: int = 64
    height: int = 64
    margin: float = 1.2  # region radius × margin fills the frame
    elevation_range_deg: tuple[float, float] = (-10.0, 60.0)
    weight: float = 1.0  # weight of L_SDS against the interaction's own losses

    def __post_init__(self) -> None:
        if self.fixed_t is not None and not (0.0 < self.fixed_t < 1.0):
            raise ValueError(f"fixed_t must be in (0, 1), got {self.fixed_t}")
        lo, hi = self.t_range
        if not (0.0 < lo <= hi < 1.0):
            raise ValueError(f"t_range must satisfy 0 < lo <= hi < 1, got {self.t_range}")
        if self.batch < 1 or self.width < 8 or self.height < 8:
            raise ValueError(f"batch ≥ 1 and width, height ≥ 8 required, got {self.batch}, {self.width}x{self.height}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"margin must be > 0, got {self.margin}")


@dataclass(frozen=True)
class Region:
    """The bounding sphere of the modified region."""

    center: Tensor  # [3]
    radius: float


def region_of(means: Tensor, mask: Tensor, min_radius: float = 1e-3) -> Region:
    """Bounding sphere (bbox centre, max distance) of the masked centres; means [N,3], mask [N] bool."""
    pts = means.detach()[mask]
    if pts.shape[0] == 0:
        raise ValueError("the region is empty")
    c = 0.5 * (pts.min(0).values + pts.max(0).values)
    r = float((pts - c).norm(dim=1).max())
    return Region(center=c, radius=max(r, min_radius))


@dataclass
class SDSResult:
    loss: Tensor  # scalar, weighted
    images: Tensor  # [B,H,W,3] the local renderings
    t: Any  # the guidance's timestep(s)
    render: Any = None  # the RenderOutput (means2d gradients feed densification)


def interactive_sds_loss(
    g: Gaussians,
    guidance: Guidance,
    region: Region,
    cfg: InteractiveSDSConfig,
    generator: torch.Generator,
    step: int = 0,
) -> SDSResult:
    """Render zoom-in views of ``region`` and return the weighted SDS loss (differentiable in g)."""
    sample = zoom_in_cameras(
        region.center,
        region.radius,
        cfg.batch,
        cfg.width,
        cfg.height,
        generator,
        elevation_range_deg=cfg.elevation_range_deg,
        margin=cfg.margin,
        outward=region.center,  # views from outside the object (centred at the origin), not from inside it
    )
    cams = sample.cameras.to(g.device)
    out = render(g, cams)
    res = guidance(
        out.rgb,
        PromptSpec(cfg.prompt, cfg.negative_prompt),
        sample.elevation_deg,
        sample.azimuth_deg,
        step=step,
        fixed_t=cfg.fixed_t,
        t_range=cfg.t_range,
        generator=generator,
        cameras=cams,  # context some guidances need (the oracle renders its target there)
        background=None,
    )
    return SDSResult(loss=cfg.weight * res.loss, images=out.rgb, t=res.t, render=out)
