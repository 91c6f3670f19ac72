"""Adaptive density control of 3D Gaussian Splatting (Kerbl et al. 2023, §5.2), as used by Stage I.

Every ``every`` steps inside [from_step, until_step):
- **clone** Gaussians whose average view-space positional gradient exceeds ``grad_threshold`` and whose
  largest scale is ≤ ``percent_dense·extent`` (under-reconstruction: a copy is added in place);
- **split** those above the threshold with a larger scale (over-reconstruction: ``split_count`` samples
  drawn from the Gaussian replace it, scales divided by ``split_scale_div`` = 0.8·split_count = 1.6);
- **prune** Gaussians with opacity < ``prune_opacity``, largest world scale > ``prune_scale·extent``
  and, optionally, a screen radius > ``prune_screen_px`` pixels or a centre beyond ``prune_radius·extent``
  (outside the scene bound); also every ``prune_every`` steps until ``prune_until_step`` (the authors'
  Stage I config keeps pruning to the end of the run).
The threshold can follow the gradients' own statistics: with ``grad_quantile`` only the top fraction of
the Gaussians (by average gradient) is densified, never below ``grad_threshold``.
Every ``opacity_reset_every`` steps *inside the densification window* opacities are clamped to
``opacity_reset_value`` (and their Adam moments zeroed); the densify steps that follow prune what the
optimiser does not bring back (floaters). As in 3DGS (and gsplat's DefaultStrategy) a reset never happens
at or after ``until_step``, and none is scheduled unless a densify/prune step follows it in the window, so
a run never ends with every opacity forced down and nothing pruned. :func:`end_prune` is the run's last
clean-up (the trainer calls it after the last step): below ``end_prune_opacity`` and beyond ``prune_radius``,
then the statistical outliers (:func:`outliers`, Open3D's rule) — the stray haze an SDS run leaves (floaters).

:meth:`DensifyConfig.for_run` scales 3DGS's 30k-iteration schedule (densify from 500 until 15k every 100,
reset every 3k) to a run of any length; :meth:`DensifyConfig.plan` lists the steps a run of N steps
densifies/prunes and resets at.

The statistics (accumulated gradient norms, view counts, largest screen radius) live in the Gaussians'
buffers ``densify:grad``, ``densify:count`` and ``densify:radii``, so :func:`gaussians.keep` /
:func:`gaussians.append` keep them in step with the parameters and checkpoints carry them. Every change
of the number of Gaussians goes through ``keep``/``append`` (parameters, Adam moments and buffers —
part masks included, which clones and split children inherit from their parent).

The view-space gradient is the gradient of ``RenderOutput.means2d`` (pixels) converted to NDC units as
3DGS measures it (× W/2, × H/2) and multiplied by the number of views in the batch, since the loss is a
mean over views (as gsplat's DefaultStrategy), so the 0.0002 threshold keeps its 3DGS meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..maths.neighbours import knn_distances
from ..maths.rotations import quat_to_rotmat
from .gaussians import Gaussians, append, keep

GRAD = "densify:grad"
COUNT = "densify:count"
RADII = "densify:radii"
STAT_BUFFERS = (GRAD, COUNT, RADII)


@dataclass(frozen=True)
class DensifyConfig:
    """Densify & prune schedule and thresholds (3DGS defaults, steps scaled to a Stage I run).

    Attributes:
        grad_threshold: average NDC view-space gradient norm above which a Gaussian is densified.
        percent_dense: clone/split boundary on the largest scale, as a fraction of ``extent``.
        extent: scene radius (objects of radius ~1 → 1.0).
        split_count: children per split Gaussian; split_scale_div: their scale divisor (0.8·count).
        prune_opacity: prune below this opacity. prune_scale: prune a largest scale above
            ``prune_scale·extent`` (None: off). prune_screen_px: prune a screen radius above this (None: off).
        from_step, until_step, every: densify/prune at steps s with from_step ≤ s < until_step and
            s % every == 0 (s > 0).
        opacity_reset_every: reset opacities every this many steps (None: never); opacity_reset_value:
            the reset's ceiling.
        max_gaussians: never grow past this count (the largest gradients win).
        grad_quantile: when set, densify only the top ``grad_quantile`` fraction of the Gaussians seen since
            the last densify step (by average gradient), and of those only the ones ≥ ``grad_threshold``:
            the threshold follows the gradients' own scale (which depends on the guidance, its CFG scale and
            the resolution) and a densify step grows the set by at most that fraction.
        prune_every, prune_until_step: also prune (without densifying) at steps s with from_step ≤ s <
            prune_until_step and s % prune_every == 0 (None: prune only on densify steps; prune_until_step
            None: until_step). As the authors' Stage I config, which keeps pruning to the end of the run.
        prune_radius: prune Gaussians whose centre is farther than ``prune_radius·extent`` from the origin
            (outside the scene bound; None: off).
        end_prune_opacity: the run's last step prunes below this opacity (the trainer applies it after the
            last optimiser step; None: no final prune).
        end_outlier_std: the run's last step also removes statistical outliers (:func:`outliers`): centres
            whose mean distance to their ``outlier_neighbours`` nearest neighbours exceeds the set's mean of
            that distance by this many standard deviations (None: off).
    """

    grad_threshold: float = 0.0002
    percent_dense: float = 0.01
    extent: float = 1.0
    split_count: int = 2
    split_scale_div: float = 1.6
    prune_opacity: float = 0.005
    prune_scale: float | None = 0.1
    prune_screen_px: float | None = None
    from_step: int = 100
    until_step: int = 1500
    every: int = 100
    opacity_reset_every: int | None = 3000
    opacity_reset_value: float = 0.01
    max_gaussians: int = 1_000_000
    grad_quantile: float | None = None
    prune_every: int | None = None
    prune_until_step: int | None = None
    prune_radius: float | None = None
    end_prune_opacity: float | None = None
    end_outlier_std: float | None = None
    outlier_neighbours: int = 16

    def __post_init__(self) -> None:
        for name in ("grad_threshold", "percent_dense", "extent", "split_scale_div"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"DensifyConfig.{name} must be > 0, got {v!r}")
        for name in ("split_count", "every", "max_gaussians"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DensifyConfig.{name} must be a positive integer, got {v!r}")
        for name in ("prune_opacity", "end_prune_opacity"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= v < 1.0):
                raise ValueError(f"DensifyConfig.{name} must be in [0,1), got {v}")
        if not (0.0 < self.opacity_reset_value < 1.0):
            raise ValueError(f"DensifyConfig.opacity_reset_value must be in (0,1), got {self.opacity_reset_value}")
        if self.opacity_reset_every is not None and (not isinstance(self.opacity_reset_every, int) or self.opacity_reset_every < 1):
            raise ValueError(f"DensifyConfig.opacity_reset_every must be a positive integer or None, got {self.opacity_reset_every!r}")
        if not (isinstance(self.from_step, int) and isinstance(self.until_step, int) and 0 <= self.from_step):
            raise ValueError(f"DensifyConfig.from_step/until_step must be integers >= 0, got {self.from_step}, {self.until_step}")
        if self.grad_quantile is not None and not (0.0 < self.grad_quantile <= 1.0):
            raise ValueError(f"DensifyConfig.grad_quantile must be in (0,1] or None, got {self.grad_quantile!r}")
        for name in ("prune_every", "prune_until_step"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"DensifyConfig.{name} must be a positive integer or None, got {v!r}")
        if not isinstance(self.outlier_neighbours, int) or self.outlier_neighbours < 1:
            raise ValueError(f"DensifyConfig.outlier_neighbours must be a positive integer, got {self.outlier_neighbours!r}")
        for name in ("prune_scale", "prune_screen_px", "prune_radius", "end_outlier_std"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"DensifyConfig.{name} must be > 0 or None, got {v!r}")

    def densify_at(self, step: int) -> bool:
        return step > 0 and self.from_step <= step < self.until_step and step % self.every == 0

    def prune_at(self, step: int) -> bool:
        """A prune at ``step``: every densify step, and every ``prune_every`` steps until ``prune_until_step``."""
        if self.densify_at(step):
            return True
        if self.prune_every is None or step <= 0 or step % self.prune_every:
            return False
        until = self.until_step if self.prune_until_step is None else self.prune_until_step
        return self.from_step <= step < until

    def reset_at(self, step: int) -> bool:
        """An opacity reset at ``step``: on the reset period, inside [from_step, until_step), and followed
        by at least one densify/prune step inside the window (which removes what stays transparent)."""
        if self.opacity_reset_every is None or step <= 0 or step % self.opacity_reset_every:
            return False
        if not (self.from_step <= step < self.until_step):
            return False
        following = (step // self.every + 1) * self.every  # the next multiple of every after step
        if following < self.until_step:
            return True
        if self.prune_every is None:
            return False
        until = self.until_step if self.prune_until_step is None else self.prune_until_step
        return (step // self.prune_every + 1) * self.prune_every < until

    def plan(self, total_steps: int) -> "DensifyPlan":
        """The steps of a run of ``total_steps`` steps (0..total_steps−1) that densify & prune and that reset."""
        if not isinstance(total_steps, int) or total_steps < 0:
            raise ValueError(f"total_steps must be an integer >= 0, got {total_steps!r}")
        steps = range(total_steps)
        return DensifyPlan(
            densify_steps=tuple(s for s in steps if self.densify_at(s)),
            reset_steps=tuple(s for s in steps if self.reset_at(s)),
            prune_steps=tuple(s for s in steps if self.prune_at(s) and not self.densify_at(s)),
        )

    @classmethod
    def for_run(cls, total_steps: int, **overrides) -> "DensifyConfig":
        """3DGS's schedule for 30k iterations (from 500, until 15k, every 100, reset every 3k) scaled to a
        run of ``total_steps``: same fractions of the run, hence the same number of densify steps and resets.

        A 10k-step run densifies every 33 steps from 167 until 5000 and resets at 1000, 2000, 3000 and 4000.
        Thresholds keep their 3DGS values; ``overrides`` replace any field. Runs under 1500 steps densify
        every ``MIN_EVERY`` = 5 steps rather than every step or two.
        """
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        f = total_steps / REFERENCE_STEPS
        # at least MIN_EVERY steps of view statistics per decision (short CPU runs would densify every step)
        every = max(MIN_EVERY, round(100 * f))
        fields = dict(
            from_step=max(1, round(500 * f)),
            until_step=max(1, round(15_000 * f)),
            every=every,
            opacity_reset_every=max(1, round(3000 * f)),
        )
        fields.update(overrides)
        return cls(**fields)


# 3DGS's 0.0002 is calibrated for a per-pixel mean L1 loss; the SDS loss (guidance.py) is a sum over latent
# elements, and its view-space gradients are ~1000x larger (demo object, oracle at 48²: median 0.14-0.27
# in the first 50 steps), so at 0.0002 every Gaussian densifies at every densify step (2048 → 1M in ~9
# steps). The authors' Stage I config (interactive-3d/interactive3d, configs/gaussian_splatting.yaml) uses
# 0.02 on a loss weighted by lambda_sds = 0.1, i.e. 0.2 on the unit-weight SDS loss used here.
SDS_GRAD_THRESHOLD = 0.2

# 3DGS's schedule is written for this many iterations (Kerbl et al. 2023, train.py defaults).
REFERENCE_STEPS = 30_000
MIN_EVERY = 5


@dataclass(frozen=True)
class DensifyPlan:
    """The steps on which a run densifies & prunes (clone/split by statistics, then prune), only prunes, and
    resets opacities."""

    densify_steps: tuple[int, ...]
    reset_steps: tuple[int, ...]
    prune_steps: tuple[int, ...] = ()  # prune-only steps (every densify step also prunes)


@dataclass(frozen=True)
class DensifyStepResult:
    """What one hook call did (counts of Gaussians)."""

    cloned: int = 0
    split: int = 0  # parents split (each replaced by split_count children)
    pruned: int = 0
    opacity_reset: bool = False
    densified: bool = False  # the step was a densify & prune step (even if nothing qualified)


def ensure_state(g: Gaussians) -> None:
    """Create the zeroed statistics buffers if they are missing (idempotent)."""
    for name in STAT_BUFFERS:
        if name not in g.buffers or g.buffers[name].shape != (g.n,):
            g.buffers[name] = torch.zeros(g.n, dtype=torch.float32, device=g.device)


def reset_state(g: Gaussians) -> None:
    for name in STAT_BUFFERS:
        g.buffers[name] = torch.zeros(g.n, dtype=torch.float32, device=g.device)


@torch.no_grad()
def update_state(g: Gaussians, means2d_grad: Tensor, radii: Tensor, width: int, height: int) -> None:
    """Accumulate view-space gradient norms and view counts of the Gaussians visible in each view.

    Args:
        means2d_grad: [B,N,2] gradient of RenderOutput.means2d (pixels).
        radii: [B,N] pixel radii (0 = not visible).
    """
    ensure_state(g)
    b, n = radii.shape
    if means2d_grad.shape != (b, n, 2) or n != g.n:
        raise ValueError(f"means2d grad {tuple(means2d_grad.shape)} and radii {tuple(radii.shape)} do not match {g.n} Gaussians")
    scale = torch.tensor([0.5 * width * b, 0.5 * height * b], dtype=means2d_grad.dtype, device=means2d_grad.device)
    norms = (means2d_grad * scale).norm(dim=-1)  # [B,N] in NDC units
    vis = radii > 0
    dev = g.device
    g.buffers[GRAD] += torch.where(vis, norms, torch.zeros_like(norms)).sum(0).to(dev, torch.float32)
    g.buffers[COUNT] += vis.sum(0).to(dev, torch.float32)
    g.buffers[RADII] = torch.maximum(g.buffers[RADII], radii.amax(0).to(dev, torch.float32))


def _inherited_buffers(g: Gaussians, idx: Tensor, repeats: int = 1) -> dict[str, Tensor]:
    """Buffer rows of new Gaussians copied from their parents (part masks), statistics zeroed."""
    out = {}
    for name, buf in g.buffers.items():
        rows = buf.index_select(0, idx)
        if repeats > 1:
            rows = rows.repeat((repeats,) + (1,) * (rows.ndim - 1))
        out[name] = torch.zeros_like(rows) if name in STAT_BUFFERS else rows
    return out


def grad_threshold(avg: Tensor, count: Tensor, cfg: DensifyConfig) -> float:
    """The densify threshold on average view-space gradients ``avg`` [N] (``count`` [N]: views seen):
    ``cfg.grad_threshold``, raised to the (1 − grad_quantile) quantile of the seen Gaussians' averages."""
    thr = cfg.grad_threshold
    seen = avg[count > 0]
    if cfg.grad_quantile is not None and seen.numel():
        # the k-th largest average: exactly the top fraction (ties aside), for any N (torch.quantile caps N at 16M)
        k = max(1, math.ceil(cfg.grad_quantile * seen.numel()))
        thr = max(thr, float(torch.topk(seen, k, sorted=False).values.min()))
    return thr


@torch.no_grad()
def densify(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    cfg: DensifyConfig,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Clone and split by the accumulated statistics (3DGS rules); returns (cloned, split parents).

    Split children are drawn from N(μ, Σ) of their parent with ``generator`` (CPU) and get log-scale
    log(s / split_scale_div); other parameters are copied. Clones are exact copies. Statistics reset.
    """
    ensure_state(g)
    n = g.n
    avg = g.buffers[GRAD] / g.buffers[COUNT].clamp_min(1.0)
    big_grad = avg >= grad_threshold(avg, g.buffers[COUNT], cfg)
    max_scale = g.scales.amax(dim=-1)
    small = max_scale <= cfg.percent_dense * cfg.extent
    clone_sel, split_sel = big_grad & small, big_grad & ~small
    # Respect the cap: keep the candidates with the largest gradients.
    room = cfg.max_gaussians - n
    grow = int(clone_sel.sum()) + (cfg.split_count - 1) * int(split_sel.sum())
    if grow > room:
        cand = (clone_sel | split_sel).nonzero()[:, 0]
        cost = torch.where(clone_sel[cand], 1, cfg.split_count - 1)
        order = torch.argsort(avg[cand], descending=True, stable=True)
        fits = torch.cumsum(cost[order], 0) <= max(room, 0)
        chosen = torch.zeros(n, dtype=torch.bool, device=g.device)
        chosen[cand[order][fits]] = True
        clone_sel, split_sel = clone_sel & chosen, split_sel & chosen
    clone_idx = clone_sel.nonzero()[:, 0]
    split_idx = split_sel.nonzero()[:, 0]
    if clone_idx.numel():
        new = {k: v.detach().index_select(0, clone_idx) for k, v in g.params.items()}
        append(g, optimizers, new, _inherited_buffers(g, clone_idx))
    if split_idx.numel():
        k = cfg.split_count
        p = {name: v.detach().index_select(0, split_idx) for name, v in g.params.items()}
        scales = torch.exp(p["log_scales"])  # [S,3]
        noise = torch.randn((k, split_idx.numel(), 3), generator=generator).to(scales.device, scales.dtype)
        rot = quat_to_rotmat(p["quats"])  # [S,3,3]
        offsets = torch.einsum("sij,ksj->ksi", rot, noise * scales[None])  # [k,S,3]
        new = {name: v.repeat((k,) + (1,) * (v.ndim - 1)) for name, v in p.items()}
        new["means"] = (p["means"][None] + offsets).reshape(-1, 3)
        new["log_scales"] = torch.log(scales / cfg.split_scale_div).repeat(k, 1)
        append(g, optimizers, new, _inherited_buffers(g, split_idx, k))
        # the split parents go; clones and children were appended after the original n rows
        mask = torch.ones(g.n, dtype=torch.bool, device=g.device)
        mask[split_idx] = False
        keep(g, optimizers, mask)
    reset_state(g)
    return int(clone_idx.numel()), int(split_idx.numel())


@torch.no_grad()
def prune(g: Gaussians, optimizers: dict[str, torch.optim.Optimizer] | None, cfg: DensifyConfig) -> int:
    """Remove transparent, oversized (world), outside-the-bound and optionally screen-oversized Gaussians;
    returns the count.

    Never removes every Gaussian: if all would go, the set is left unchanged.
    """
    ensure_state(g)
    bad = g.opacities < cfg.prune_opacity
    if cfg.prune_scale is not None:
        bad |= g.scales.amax(dim=-1) > cfg.prune_scale * cfg.extent
    if cfg.prune_screen_px is not None:
        bad |= g.buffers[RADII] > cfg.prune_screen_px
    if cfg.prune_radius is not None:
        bad |= g.params["means"].detach().norm(dim=-1) > cfg.prune_radius * cfg.extent
    removed = int(bad.sum())
    if removed == 0 or removed == g.n:
        return 0
    keep(g, optimizers, ~bad)
    return removed


@torch.no_grad()
def outliers(means: Tensor, neighbours: int, std_ratio: float) -> Tensor:
    """Statistical outliers (Open3D's ``remove_statistical_outlier``, the usual clean-up of a point set).

    Args:
        means: [N,3] centres.
        neighbours: k, the nearest neighbours each centre's mean distance is taken over.
        std_ratio: a centre is an outlier when its mean distance exceeds the mean over the set by this many
            standard deviations.
    Returns:
        [N] bool on ``means``' device, True for an outlier (none when N ≤ k).
    """
    n = means.shape[0]
    if min(neighbours, n - 1) < 1:
        return torch.zeros(n, dtype=torch.bool, device=means.device)
    # a k-d tree on the host: O(N log N) where a distance matrix is O(N²) (10⁶ Gaussians: seconds, not hours)
    mean_d = torch.from_numpy(knn_distances(means.detach().cpu().double().numpy(), neighbours).mean(1))
    return (mean_d > mean_d.mean() + std_ratio * mean_d.std()).to(means.device)


@torch.no_grad()
def end_prune(g: Gaussians, optimizers: dict[str, torch.optim.Optimizer] | None, cfg: DensifyConfig) -> int:
    """The run's last prune (the state a Stage I run hands over): opacity below ``cfg.end_prune_opacity`` and,
    with it, centres beyond ``cfg.prune_radius`` (the scene bound, when the schedule has one), then the
    statistical outliers of what is left (``cfg.end_outlier_std``); returns the count removed. Never removes
    every Gaussian."""
    removed = 0
    if cfg.end_prune_opacity is not None:
        removed += prune(g, optimizers, DensifyConfig(prune_opacity=cfg.end_prune_opacity, prune_scale=None,
                                                      prune_radius=cfg.prune_radius, extent=cfg.extent))
    if cfg.end_outlier_std is not None:
        bad = outliers(g.params["means"], cfg.outlier_neighbours, cfg.end_outlier_std)
        if 0 < int(bad.sum()) < g.n:
            removed += int(bad.sum())
            keep(g, optimizers, ~bad)
    return removed


@torch.no_grad()
def reset_opacity(g: Gaussians, optimizers: dict[str, torch.optim.Optimizer] | None, value: float) -> None:
    """Clamp opacities to ``value`` and zero the opacity optimiser's moments (3DGS opacity reset)."""
    p = g.params["opacity_logits"]
    p.clamp_(max=math.log(value / (1.0 - value)))
    if optimizers is not None and "opacity_logits" in optimizers:
        state = optimizers["opacity_logits"].state.get(p)
        if state:
            for key, v in state.items():
                if key != "step" and isinstance(v, Tensor) and v.shape == p.shape:
                    v.zero_()


def step_post_backward(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    out,
    step: int,
    cfg: DensifyConfig,
    generator: torch.Generator | None = None,
) -> DensifyStepResult:
    """The strategy hook, called after ``loss.backward()`` and before the optimisers step (as gsplat).

    Accumulates the statistics from ``out`` (a RenderOutput whose ``means2d.grad`` is set) while
    step < until_step, then densifies & prunes on schedule and resets opacities on schedule. Parameters
    that were replaced carry no ``.grad``, so the following optimiser step leaves them untouched.
    """
    ensure_state(g)
    cloned = split = pruned = 0
    densified = False
    if step < cfg.until_step:
        grad = out.means2d.grad
        if grad is None:
            raise ValueError("step_post_backward: out.means2d has no .grad (call it after backward on a render that requires grad)")
        _, h, w, _ = out.rgb.shape
        update_state(g, grad, out.radii, w, h)
        if cfg.densify_at(step):
            cloned, split = densify(g, optimizers, cfg, generator)
            densified = True
    if cfg.prune_at(step):
        pruned = prune(g, optimizers, cfg)
    reset = cfg.reset_at(step)
    if reset:
        reset_opacity(g, optimizers, cfg.opacity_reset_value)
    return DensifyStepResult(cloned, split, pruned, reset, densified)
