"""Semantic editing (paper §3.1.4): optimise a selected part towards a new prompt.

Each step renders zoom-in views of the part (interactive SDS, §3.1.5) with the edit's own prompt and
timestep, back-propagates the SDS loss and steps the optimisers restricted to the part
(:func:`masked_step`): every parameter and Adam moment outside the part stays bit-identical.
Optionally the part densifies (3DGS clone/split by view-space gradients, backend/stage1/densify.py) with the
statistics of the rows outside the part zeroed first, so only the part grows; new rows inherit the
part's mask and are appended, rows outside keep their values (and their relative order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..stage1 import densify as densify_mod
from ..stage1.densify import DensifyConfig
from ..stage1.gaussians import Gaussians, keep, make_optimizers
from .interactive_sds import InteractiveSDSConfig, interactive_sds_loss, region_of
from .masked_optim import masked_step


@dataclass(frozen=True)
class SemanticEditConfig:
    """Options of one semantic edit."""

    steps: int = 200
    sds: InteractiveSDSConfig = field(default_factory=InteractiveSDSConfig)
    seed: int = 0
    densify: DensifyConfig | None = None  # densify & prune inside the part on this schedule; None: off

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if not self.sds.prompt.strip():
            raise ValueError("semantic edit needs a non-empty prompt")


@dataclass(frozen=True)
class EditStepResult:
    loss: float
    part_size: int
    added: int = 0  # Gaussians the part gained by densification this step (net of pruning)


def semantic_edit_step(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    part: str,  # name of the part (its mask may grow when densifying)
    guidance,
    cfg: SemanticEditConfig,
    generator: torch.Generator,
    step: int,
) -> EditStepResult:
    """One SDS step on the part's Gaussians only (and densification inside it on schedule), in place."""
    mask = g.part_mask(part)  # KeyError for an unknown part
    if not bool(mask.any()):
        raise ValueError(f"part {part!r} is empty")
    region = region_of(g.means, mask)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    res = interactive_sds_loss(g, guidance, region, cfg.sds, generator, step=step)
    res.loss.backward()
    masked_step(g, optimizers, mask)
    n0 = g.n
    if cfg.densify is not None and res.render is not None and res.render.means2d.grad is not None:
        _densify_part(g, optimizers, part, res.render, step, cfg.densify, generator)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    return EditStepResult(loss=float(res.loss.detach()), part_size=int(g.part_mask(part).sum()), added=g.n - n0)


@torch.no_grad()
def _densify_part(g: Gaussians, optimizers, part: str, out, step: int, cfg: DensifyConfig, generator) -> None:
    """Accumulate view-space statistics; on schedule clone/split inside ``part`` and prune its
    transparent Gaussians. Outside rows have zero statistics, so densify never selects them."""
    if step >= cfg.until_step:
        return
    _, h, w, _ = out.rgb.shape
    densify_mod.update_state(g, out.means2d.grad, out.radii, w, h)
    if not cfg.densify_at(step):
        return
    outside = ~g.part_mask(part)
    for name in densify_mod.STAT_BUFFERS:
        g.buffers[name][outside] = 0.0
    densify_mod.densify(g, optimizers, cfg, generator)
    low = g.part_mask(part) & (g.opacities < cfg.prune_opacity)
    if bool(low.any()) and not bool(low.all()):
        keep(g, optimizers, ~low)


def semantic_edit(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    part: str,
    guidance,
    cfg: SemanticEditConfig,
) -> list[EditStepResult]:
    """Run ``cfg.steps`` edit steps on the named part (deterministic given ``cfg.seed``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return [semantic_edit_step(g, optimizers, part, guidance, cfg, gen, i) for i in range(cfg.steps)]


class SemanticEditJob:
    """A semantic edit as a server job (backend/service/jobs.py): one :func:`semantic_edit_step` per job step.
    The part is resolved and checked in the constructor, so a bad edit is refused before it starts."""

    kind = "semantic_edit"

    def __init__(self, session, part_name: str, guidance, cfg: SemanticEditConfig):
        self.session = session
        self.part_name = part_name
        self.guidance = guidance
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)
        mask = session.gaussians.part_mask(part_name)  # KeyError → not_found in the op handler
        if getattr(session, "optimizers", None) is None:  # a session that never ran Stage I
            session.optimizers = make_optimizers(session.gaussians)
        if not bool(mask.any()):
            raise ValueError(f"part {part_name!r} is empty")
        self.total_steps = cfg.steps
        self.last_loss = float("nan")

    def step(self, i: int) -> dict[str, float]:
        res = semantic_edit_step(self.session.gaussians, self.session.optimizers, self.part_name, self.guidance, self.cfg, self.generator, i)
        self.last_loss = res.loss
        return {"loss": res.loss, "part_size": float(res.part_size), "added": float(res.added)}

    def result(self) -> dict:
        return {"part": self.part_name, "loss": self.last_loss, "count": self.session.gaussians.n}

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])
