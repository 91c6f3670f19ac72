"""Semantic editing (paper §3.1.4): optimise a selected part towards a new prompt.

Each step renders zoom-in views of the part (interactive SDS, §3.1.5) with the edit's own prompt and
timestep, back-propagates the SDS loss and steps the optimisers restricted to the part
(:func:`masked_step`): every parameter and Adam moment outside the part stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .gaussians import Gaussians, make_optimizers
from .interactive_sds import InteractiveSDSConfig, interactive_sds_loss, region_of
from .masked_optim import masked_step


@dataclass(frozen=True)
class SemanticEditConfig:
    """Options of one semantic edit."""

    steps: int = 200
    sds: InteractiveSDSConfig = field(default_factory=InteractiveSDSConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if not self.sds.prompt.strip():
            raise ValueError("semantic edit needs a non-empty prompt")


@dataclass(frozen=True)
class EditStepResult:
    loss: float
    part_size: int


def semantic_edit_step(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    part: Tensor,  # [N] bool
    guidance,
    cfg: SemanticEditConfig,
    generator: torch.Generator,
    step: int,
) -> EditStepResult:
    """One SDS step on the part's Gaussians only, in place."""
    if part.shape != (g.n,) or part.dtype != torch.bool:
        raise ValueError(f"part mask must be bool [{g.n}], got {part.dtype} {tuple(part.shape)}")
    if not bool(part.any()):
        raise ValueError("the part is empty")
    region = region_of(g.means, part)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    res = interactive_sds_loss(g, guidance, region, cfg.sds, generator, step=step)
    res.loss.backward()
    masked_step(g, optimizers, part)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    return EditStepResult(loss=float(res.loss.detach()), part_size=int(part.sum()))


def semantic_edit(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    part: Tensor,  # [N] bool
    guidance,
    cfg: SemanticEditConfig,
) -> list[EditStepResult]:
    """Run ``cfg.steps`` edit steps (deterministic given ``cfg.seed``)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return [semantic_edit_step(g, optimizers, part, guidance, cfg, gen, i) for i in range(cfg.steps)]


class SemanticEditJob:
    """A semantic edit as a server job (backend/jobs.py): one :func:`semantic_edit_step` per job step.
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
        g = self.session.gaussians
        res = semantic_edit_step(g, self.session.optimizers, g.part_mask(self.part_name), self.guidance, self.cfg, self.generator, i)
        self.last_loss = res.loss
        return {"loss": res.loss, "part_size": float(res.part_size)}

    def result(self) -> dict:
        return {"part": self.part_name, "loss": self.last_loss, "count": self.session.gaussians.n}

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])
