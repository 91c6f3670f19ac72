"""Deformable and rigid 3D dragging (paper §3.1.3, Eq. 3–6).

Given a source p_s, a target p_t and a radius r:

- Eq. 3  active set  P = {i : ‖μ_i − p_s‖₂ ≤ r}
- Eq. 4  before each step  μ_i ← μ_i + α (p_t − p_s)/‖p_t − p_s‖  for i ∈ P; the source moves with
  them (it stops at p_t: the last step is shortened so the total offset is exactly p_t − p_s*)
- Eq. 5  L_motion = Σ_{i∈P} ‖μ_i − p_t‖₁
- Eq. 6  L_rigid  = Σ_{i∈P} | ‖p_s − μ_i‖₂ − ‖p_s* − μ_i*‖₂ |   (rigid mode; * = at the start)

Deformable: P is recomputed around the moved source each step, so Gaussians the source reaches join
it (plasticine). Rigid: P is fixed at the start. Both losses are averaged over P (not summed) so their
weights do not depend on how many Gaussians the radius catches. With a guidance the SDS loss of local
zoom-in renderings is added (§3.1.5); without one the drag runs on the motion and rigid losses alone.
Only Gaussians that may move are updated (:func:`masked_step`): P without guidance, everything within
r of the swept segment [p_s*, p_t] with guidance; every other row stays bit-identical. The explicit
offsets of Eq. 4 do the moving; the optimiser (the session's AdamW, learning rates × ``lr_scale``)
corrects around them, which is why ``lr_scale`` is small by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..stage1.gaussians import Gaussians, append, keep, make_optimizers
from .interactive_sds import InteractiveSDSConfig, Region, interactive_sds_loss
from .masked_optim import masked_step

MODES = ("deformable", "rigid")


@dataclass(frozen=True)
class DragConfig:
    """Hyper-parameters of one drag (paper §3.1.3)."""

    radius: float = 0.1  # r of Eq. 3
    step_size: float = 0.01  # α of Eq. 4 (world units per step)
    steps: int = 50
    mode: str = "deformable"  # "deformable" | "rigid"
    motion_weight: float = 1.0  # λ of L_motion (Eq. 5)
    rigid_weight: float = 30.0  # λ of L_rigid (Eq. 6), rigid mode only
    lr_scale: float = 0.1  # multiplies the session's learning rates during the drag
    densify_after: bool = True  # densify & prune after the drag to fill gaps (§3.1.3)
    sds: InteractiveSDSConfig = field(default_factory=InteractiveSDSConfig)

    def __post_init__(self) -> None:
        for name in ("radius", "step_size"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("motion_weight", "rigid_weight", "lr_scale"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


def check_points(source, target) -> tuple[Tensor, Tensor]:
    """Validate p_s, p_t (finite 3-vectors, distinct) → float32 tensors [3], [3]."""
    ps = torch.as_tensor(source, dtype=torch.float32).reshape(-1)
    pt = torch.as_tensor(target, dtype=torch.float32).reshape(-1)
    for name, p in (("source", ps), ("target", pt)):
        if p.shape != (3,) or not torch.isfinite(p).all():
            raise ValueError(f"{name} must be a finite 3-vector, got {p.tolist()}")
    if float((pt - ps).norm()) < 1e-8:
        raise ValueError(f"source and target must differ, both are {ps.tolist()}")
    return ps, pt


def _segment_distance(points: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Distance of [N,3] points to the segment [a,b] → [N]."""
    ab = b - a
    t = ((points - a) @ ab / (ab @ ab)).clamp(0.0, 1.0)
    return (points - (a + t[:, None] * ab)).norm(dim=1)


@dataclass
class DragState:
    """Everything a drag needs between steps (checkpointable: plain tensors and a counter)."""

    source_init: Tensor  # [3] p_s*
    source: Tensor  # [3] current p_s
    target: Tensor  # [3] p_t
    fixed_set: Tensor  # [N] bool — P at the start (the rigid set)
    fixed_init: Tensor  # [|P|,3] μ_i* of the rigid set
    moved: Tensor  # [N] bool — every Gaussian that was ever in P (densified after the drag)
    spacing: float  # median nearest-neighbour distance inside P at the start (gap reference)
    step: int = 0


@dataclass(frozen=True)
class DragStepResult:
    active: int  # |P| this step
    offset: float  # length of this step's Eq. 4 offset
    motion_loss: float
    rigid_loss: float
    sds_loss: float
    source_to_target: float  # ‖p_t − p_s‖ after the step


def start_drag(g: Gaussians, source, target, cfg: DragConfig, require_active: bool = True) -> DragState:
    """Validate and build the initial state; ValueError if no Gaussian lies within r of p_s (unless
    ``require_active`` is False: a resumed drag whose state is loaded afterwards)."""
    ps, pt = check_points(source, target)
    ps, pt = ps.to(g.device), pt.to(g.device)
    with torch.no_grad():
        active = ((g.means.detach() - ps) ** 2).sum(1) <= cfg.radius**2
    if require_active and not bool(active.any()):
        raise ValueError(f"no Gaussian lies within radius {cfg.radius} of source {ps.tolist()}")
    pts = g.means.detach()[active]
    return DragState(
        source_init=ps.clone(),
        source=ps.clone(),
        target=pt,
        fixed_set=active,
        fixed_init=pts.clone(),
        moved=active.clone(),
        spacing=float(nearest_neighbour(pts)[0].median()) if pts.shape[0] > 1 else cfg.radius,
    )


def drag_step(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    state: DragState,
    cfg: DragConfig,
    guidance=None,
    generator: torch.Generator | None = None,
) -> DragStepResult:
    """One drag iteration in place: Eq. 4 offset, losses (Eq. 5, 6, optional SDS), masked step."""
    direction = state.target - state.source_init
    direction = direction / direction.norm()
    remaining = float((state.target - state.source).norm())
    offset = min(cfg.step_size, remaining)
    with torch.no_grad():
        if cfg.mode == "rigid":
            active = state.fixed_set
        else:
            active = ((g.means.detach() - state.source) ** 2).sum(1) <= cfg.radius**2
        g.params["means"][active] += offset * direction
        # The last (shortened) step lands the source exactly on p_t, without rounding drift.
        state.source = state.target.clone() if offset >= remaining else state.source + offset * direction
        state.moved |= active
    n_active = int(active.sum())

    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    mu = g.params["means"]
    loss = mu.new_zeros(())
    motion = rigid = sds = 0.0
    if n_active > 0 and cfg.motion_weight > 0:
        l_motion = (mu[active] - state.target).abs().sum(1).mean()  # Eq. 5 / |P|
        loss = loss + cfg.motion_weight * l_motion
        motion = float(l_motion.detach())
    if cfg.mode == "rigid" and cfg.rigid_weight > 0:
        d_now = (mu[state.fixed_set] - state.source).norm(dim=1)
        d_init = (state.fixed_init - state.source_init).norm(dim=1)
        l_rigid = (d_now - d_init).abs().mean()  # Eq. 6 / |P|
        loss = loss + cfg.rigid_weight * l_rigid
        rigid = float(l_rigid.detach())
    if guidance is not None:
        update = _segment_distance(mu.detach(), state.source_init, state.target) <= cfg.radius
        region = Region(
            center=0.5 * (state.source_init + state.target),
            radius=0.5 * float((state.target - state.source_init).norm()) + cfg.radius,
        )
        gen = generator if generator is not None else torch.Generator().manual_seed(state.step)
        res = interactive_sds_loss(g, guidance, region, cfg.sds, gen, step=state.step)
        loss = loss + res.loss
        sds = float(res.loss.detach())
    else:
        update = active
    if loss.requires_grad:
        loss.backward()
        _scaled_masked_step(g, optimizers, update, cfg.lr_scale)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    state.step += 1
    return DragStepResult(
        active=n_active,
        offset=offset,
        motion_loss=motion,
        rigid_loss=rigid,
        sds_loss=sds,
        source_to_target=float((state.target - state.source).norm()),
    )


def _scaled_masked_step(g: Gaussians, optimizers, mask: Tensor, lr_scale: float) -> None:
    """masked_step with every group's learning rate temporarily multiplied by ``lr_scale``."""
    saved = [(group, group["lr"]) for opt in optimizers.values() for group in opt.param_groups]
    try:
        for group, lr in saved:
            group["lr"] = lr * lr_scale
        masked_step(g, optimizers, mask)
    finally:
        for group, lr in saved:
            group["lr"] = lr


def nearest_neighbour(points: Tensor, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """For [M,3] points (M ≥ 2): distance [M] and index [M] of each one's nearest other point."""
    dist, idx = [], []
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start : start + chunk], points)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = float("inf")  # not itself
        v, i = d.min(dim=1)
        dist.append(v)
        idx.append(i)
    return torch.cat(dist), torch.cat(idx)


@dataclass(frozen=True)
class DensifyAfterDragConfig:
    """Gap filling and pruning after a drag (§3.1.3: "densification and pruning … to fill the gaps")."""

    gap_factor: float = 2.0  # a Gaussian whose nearest neighbour is > gap_factor × spacing is at a gap
    min_opacity: float = 0.005  # prune below this (3DGS)


def densify_after_drag(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    state: DragState,
    cfg: DensifyAfterDragConfig = DensifyAfterDragConfig(),
) -> tuple[int, int]:
    """Fill gaps the drag opened and prune transparent Gaussians among those it moved.

    Each moved Gaussian whose nearest moved neighbour is farther than ``gap_factor × spacing`` gets a
    copy at the midpoint between the two (its scale, rotation, opacity and colour). Returns
    (added, pruned). Uses :func:`append` / :func:`keep`, so Adam moments and part masks follow.
    """
    moved = state.moved.nonzero(as_tuple=True)[0]
    added = 0
    if moved.numel() >= 2:
        pts = g.means.detach()[moved]
        dist, nn = nearest_neighbour(pts)
        gap = dist > cfg.gap_factor * state.spacing
        if bool(gap.any()):
            src = moved[gap]
            new_params = {k: v.detach()[src].clone() for k, v in g.params.items()}
            new_params["means"] = 0.5 * (pts[gap] + pts[nn[gap]])
            parts = {k: v[src].clone() for k, v in g.buffers.items() if k.startswith("part:")}
            append(g, optimizers, new_params, parts)
            added = int(src.numel())
            state.moved = torch.cat([state.moved, torch.ones(added, dtype=torch.bool, device=g.device)])
            state.fixed_set = torch.cat([state.fixed_set, torch.zeros(added, dtype=torch.bool, device=g.device)])
    with torch.no_grad():
        prune = state.moved & (g.opacities.detach() < cfg.min_opacity)
    pruned = int(prune.sum())
    if pruned:
        keep(g, optimizers, ~prune)
        state.moved = state.moved[~prune]
        state.fixed_set = state.fixed_set[~prune]
    return added, pruned


def drag(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    source,
    target,
    cfg: DragConfig,
    guidance=None,
    generator: torch.Generator | None = None,
) -> DragState:
    """Run a whole drag (``cfg.steps`` iterations) in place; returns the final state."""
    state = start_drag(g, source, target, cfg)
    for _ in range(cfg.steps):
        drag_step(g, optimizers, state, cfg, guidance, generator)
    if cfg.densify_after:
        densify_after_drag(g, optimizers, state)
    return state


class DragJob:
    """A drag as a server job (backend/service/jobs.py): one :func:`drag_step` per job step on the session's
    Gaussians and optimisers, densify & prune after the last step. Arguments are validated (and the
    active set built) in the constructor, so a bad drag is refused before any job starts."""

    kind = "drag"

    def __init__(self, session, source, target, cfg: DragConfig, guidance=None, seed: int = 0, resume: bool = False):
        self.session = session
        self.cfg = cfg
        self.guidance = guidance
        self.generator = torch.Generator().manual_seed(seed)
        self.state = start_drag(session.gaussians, source, target, cfg, require_active=not resume)
        if getattr(session, "optimizers", None) is None:  # a session that never ran Stage I
            session.optimizers = make_optimizers(session.gaussians)
        self.total_steps = cfg.steps
        self.added = self.pruned = 0

    def step(self, i: int) -> dict[str, float]:
        s = self.session
        r = drag_step(s.gaussians, s.optimizers, self.state, self.cfg, self.guidance, self.generator)
        metrics = {
            "active": float(r.active),
            "motion_loss": r.motion_loss,
            "rigid_loss": r.rigid_loss,
            "sds_loss": r.sds_loss,
            "source_to_target": r.source_to_target,
        }
        if i == self.total_steps - 1 and self.cfg.densify_after:
            self.added, self.pruned = densify_after_drag(s.gaussians, s.optimizers, self.state)
            metrics.update(added=float(self.added), pruned=float(self.pruned))
        return metrics

    def result(self) -> dict:
        return {
            "moved": int(self.state.moved.sum()),
            "added": self.added,
            "pruned": self.pruned,
            "count": self.session.gaussians.n,
            "source": self.state.source.tolist(),
        }

    def state_dict(self) -> dict:
        st = self.state
        return {
            "source_init": st.source_init.clone(), "source": st.source.clone(), "target": st.target.clone(),
            "fixed_set": st.fixed_set.clone(), "fixed_init": st.fixed_init.clone(), "moved": st.moved.clone(),
            "spacing": st.spacing, "step": st.step, "rng": self.generator.get_state(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])
        self.state = DragState(
            source_init=d["source_init"], source=d["source"], target=d["target"], fixed_set=d["fixed_set"],
            fixed_init=d["fixed_init"], moved=d["moved"], spacing=float(d["spacing"]), step=int(d["step"]),
        )
