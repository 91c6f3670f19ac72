"""Stage I trainer (paper §3.1): Gaussian splatting optimised by score distillation.

One step = sample a batch of orbit cameras → render → guidance loss (SDS) → backward → densify/prune
hook → AdamW step (paper's learning rates). Every random draw (cameras, background, t, ε) comes from the
job's own ``torch.Generator``, so a run is a pure function of (initial Gaussians, optimiser state,
seed, step) and pause/resume or checkpoint/restore reproduce an uninterrupted run bit for bit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from .cameras import OrbitConfig, sample_orbit
from .densify import SDS_GRAD_THRESHOLD, DensifyConfig, end_prune, prune, step_post_backward  # noqa: F401 (re-exported)
from .gaussians import Gaussians, LearningRates, make_optimizers
from .guidance import PromptSpec
from .render import render

logger = logging.getLogger(__name__)

RUN_SCHEDULE = "run"
# A reset clamps opacities to 0.01; Adam moves a logit by at most ~lr per step, so getting back to 0.5 takes
# (logit(0.5) − logit(0.01)) / lr steps: 1532 at the paper's opacity lr 0.003 (3DGS's 0.05: 92).
RESET_RECOVERY_OPACITY = 0.5


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def run_schedule(steps: int, lr: LearningRates = LearningRates()) -> DensifyConfig:
    """Stage I's default densification: 3DGS's schedule scaled to ``steps`` (DensifyConfig.for_run) with
    SDS_GRAD_THRESHOLD, and no opacity reset when the run is too short for opacities to recover from the
    last one at ``lr.opacity_logits`` (a 2000-step run's last reset is at 800: 1200 steps left, 1532 needed;
    a 10k run keeps its resets at 1k-4k)."""
    cfg = DensifyConfig.for_run(steps, grad_threshold=SDS_GRAD_THRESHOLD)
    resets = cfg.plan(steps).reset_steps
    recovery = (_logit(RESET_RECOVERY_OPACITY) - _logit(cfg.opacity_reset_value)) / lr.opacity_logits
    if not resets or resets[-1] + recovery > steps:
        cfg = replace(cfg, opacity_reset_every=None)
    return cfg


# The authors' Stage I config (interactive-3d/interactive3d, configs/gaussian_splatting.yaml) for a run of
# SDS_REFERENCE_STEPS: densify every 1000 steps from 1000 until 10000, prune every 500 steps until the end of
# the run with a minimum opacity of 0.05, no opacity reset. The default prunes only on its densify steps (and
# at the run's end) instead: pruning between them and to the end, scaled to the run, was never better and lost
# up to 0.8 dB (oracle, 3 seeds, docs/benchmarks.md: robot 500 steps 31.60 → 32.43 dB, blobs 2000 32.99 → 33.51).
SDS_REFERENCE_STEPS = 15_000
SDS_PRUNE_OPACITY = 0.05
# The run's last step prunes below this opacity (the random init's 3DGS opacity: what the guidance pushed below
# it is haze). Measured on the oracle (docs/benchmarks.md): floaters 5.2 % → 0.2 % at 500 steps, 8.3 % → 3.1 % at 2000.
SDS_END_PRUNE_OPACITY = 0.1
# The scene bound: objects are generated inside a sphere of radius ≈ 1 (docs/conventions.md), the nearest camera
# is at 1.5. Pruning centres beyond it on every prune step: floaters 3.1 % → 1.8 % at 2000 steps (oracle, robot).
SDS_SCENE_RADIUS = 1.0
# The run's last step then removes statistical outliers (mean distance to 16 nearest neighbours above the set's
# mean + 3 std): the haze left at 2000 steps is not faint (10th percentile of opacity 0.13) but stray. On the
# oracle at 2000 steps (docs/benchmarks.md): robot floaters 1.83 % → 0.04 % (+0.05 dB), blobs 0.13 % → 0.03 %
# (+0.06 dB); 2 std cut the blobs' own surface (−4.3 dB).
SDS_OUTLIER_STD = 3.0
# Steps of optimisation and view statistics between two densify steps, at least: at 150 steps (oracle, 48²,
# docs/benchmarks.md) densifying every 10 steps ends 1.1 dB below densifying at step 50 only.
SDS_MIN_EVERY = 50
# Runs shorter than SDS_SHORT_RUN steps densify at SDS_SHORT_RUN_THRESHOLD instead of SDS_GRAD_THRESHOLD: with the
# paper's opacity lr (0.003) opacities barely move in a short run, and what densifying adds is mostly coverage.
# Oracle, 150 steps: robot 25.51 → 27.27 dB, blobs 20.49 → 23.74 dB (fixed: 25.16 / 22.33); at 500 steps 0.05
# ends 0.55 dB below 0.2 with 4× the Gaussians (robot: 30.90 dB, 20k). Two seeds at 200/250/300 steps
# (docs/benchmarks.md): 0.05 gains 1.6–2.6 dB at 200, the two are within 0.6 dB at 250, 0.2 gains 0.4–2.1 at 300.
SDS_SHORT_RUN = 300
SDS_SHORT_RUN_THRESHOLD = 0.05


def sds_schedule(steps: int, lr: LearningRates = LearningRates()) -> DensifyConfig:
    """Stage I's default densification (issue 27): the authors' Stage I practice scaled to ``steps`` —
    densify every max(steps/15, SDS_MIN_EVERY) steps through 2·steps/3 (view-space gradient ≥
    SDS_GRAD_THRESHOLD) and prune on those steps (opacity < 0.05, largest scale > 0.1, centre outside the scene
    bound SDS_SCENE_RADIUS), no opacity reset; the last step prunes below SDS_END_PRUNE_OPACITY, outside the
    scene bound and the statistical outliers (SDS_OUTLIER_STD). A 2000-step run densifies and prunes at 133,
    266, …, 1330; a 150-step run at steps 50 and 100; a run under 75 steps never densifies (fewer than
    SDS_MIN_EVERY steps before 2/3 of it) and only prunes at its end. A run under SDS_SHORT_RUN steps
    densifies at the lower SDS_SHORT_RUN_THRESHOLD."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    f = steps / SDS_REFERENCE_STEPS
    every = max(SDS_MIN_EVERY, round(1000 * f))
    threshold = SDS_SHORT_RUN_THRESHOLD if steps < SDS_SHORT_RUN else SDS_GRAD_THRESHOLD
    return DensifyConfig(
        grad_threshold=threshold, from_step=every, until_step=round(10_000 * f) + 1, every=every,
        prune_opacity=SDS_PRUNE_OPACITY,
        prune_radius=SDS_SCENE_RADIUS, end_prune_opacity=SDS_END_PRUNE_OPACITY, end_outlier_std=SDS_OUTLIER_STD,
        opacity_reset_every=None,
    )


def fixed_schedule(steps: int, lr: LearningRates = LearningRates()) -> DensifyConfig:
    """3DGS's thresholds and steps as written for 30k iterations, whatever the run's length (DensifyConfig())."""
    return DensifyConfig()


SDS_SCHEDULE = "sds"
SCHEDULE_NAMES = (SDS_SCHEDULE, RUN_SCHEDULE, "fixed")


def named_schedule(name: str, steps: int, lr: LearningRates = LearningRates()) -> DensifyConfig:
    """The DensifyConfig of schedule ``name`` (one of SCHEDULE_NAMES) for a run of ``steps`` at ``lr``."""
    if name == SDS_SCHEDULE:
        return sds_schedule(steps, lr)
    if name == RUN_SCHEDULE:
        return run_schedule(steps, lr)
    if name == "fixed":
        return fixed_schedule(steps, lr)
    raise ValueError(f"densify schedule must be one of {SCHEDULE_NAMES}, got {name!r}")


@dataclass(frozen=True)
class Stage1Config:
    """Stage I hyper-parameters (paper §4 implementation details).

    Attributes:
        steps: optimisation steps (the paper runs ~20k in 50 min on an A100).
        batch: views per step.
        resolution: square render size (paper: 256 on GPU; use 64 on a CPU).
        elevation_range_deg, azimuth_range_deg, distance_range, fov_range_deg: orbit camera ranges
            (threestudio-like, objects of radius ~1).
        lr: AdamW learning rates, betas (0.9, 0.999), weight decay 0.01.
        background: constant RGB background in [0,1]; ``random_background`` draws one colour per view
            instead (keeps the object from blending into a fixed background).
        densify: densify & prune schedule; None disables it. A name of SCHEDULE_NAMES is resolved here for
            this run's steps and lrs (:func:`named_schedule`), so ``cfg.densify`` is a DensifyConfig or None;
            ``dataclasses.replace(cfg, steps=…)`` keeps the resolved schedule (pass the name again to rescale).
            The default, ``"sds"`` (:func:`sds_schedule`), is the authors' Stage I practice scaled to the run;
            ``"run"`` (:func:`run_schedule`) 3DGS's schedule scaled to the run; ``"fixed"`` 3DGS's as written.
        snapshot_every: emit a state snapshot every K steps.
        fixed_t: a user-fixed diffusion t in (0,1) (paper §3.1.5); None samples from the guidance's range.
        t_range: per-job t range (fractions) overriding the guidance's annealed range.
        seed: seed of the job's generator (cameras, backgrounds, t, noise).
    """

    steps: int = 2000
    batch: int = 4
    resolution: int = 256
    elevation_range_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (1.5, 2.0)
    fov_range_deg: tuple[float, float] = (40.0, 70.0)
    lr: LearningRates = LearningRates()
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    random_background: bool = False
    densify: DensifyConfig | None | str = "sds"
    snapshot_every: int = 10
    fixed_t: float | None = None
    t_range: tuple[float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "resolution", "snapshot_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Stage1Config.{name} must be a positive integer, got {value!r}")
        if self.resolution > 4096:
            raise ValueError(f"Stage1Config.resolution must be <= 4096, got {self.resolution}")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"Stage1Config.background must be 3 values in [0,1], got {self.background}")
        if self.fixed_t is not None and not (0.0 < self.fixed_t < 1.0):
            raise ValueError(f"Stage1Config.fixed_t must be in (0,1), got {self.fixed_t}")
        if self.t_range is not None and not (0.0 <= self.t_range[0] <= self.t_range[1] <= 1.0):
            raise ValueError(f"Stage1Config.t_range must be (lo, hi) in [0,1], got {self.t_range}")
        for name in ("elevation_range_deg", "azimuth_range_deg", "distance_range", "fov_range_deg"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"Stage1Config.{name} must be finite (lo, hi) with lo <= hi, got {(lo, hi)}")
        if self.distance_range[0] <= 0 or not (0 < self.fov_range_deg[0] and self.fov_range_deg[1] < 180):
            raise ValueError("Stage1Config.distance_range must be > 0 and fov_range_deg inside (0, 180)")
        if isinstance(self.densify, str):
            if self.densify not in SCHEDULE_NAMES:
                raise ValueError(f"Stage1Config.densify must be a DensifyConfig, None or one of {SCHEDULE_NAMES}, got {self.densify!r}")
            # The one place the named schedules are derived (the op, the CLI and the tests all get them from
            # here): a 150-step demo and a 10k paper run densify over the same fractions of their length.
            object.__setattr__(self, "densify", named_schedule(self.densify, self.steps, self.lr))
        elif self.densify is not None and not isinstance(self.densify, DensifyConfig):
            raise ValueError(f"Stage1Config.densify must be a DensifyConfig, None or one of {SCHEDULE_NAMES}, got {self.densify!r}")

    def orbit(self) -> OrbitConfig:
        return OrbitConfig(
            elevation_range_deg=self.elevation_range_deg,
            azimuth_range_deg=self.azimuth_range_deg,
            distance_range=self.distance_range,
            fov_range_deg=self.fov_range_deg,
            width=self.resolution,
            height=self.resolution,
        )


@dataclass
class Stage1StepResult:
    loss: float
    grad_norm: float
    t_mean: float
    count: int
    seconds: float


def stage1_step(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    guidance,
    prompt: PromptSpec | None,
    cfg: Stage1Config,
    generator: torch.Generator,
    step: int,
) -> Stage1StepResult:
    """One Stage I step in place on ``g`` and its optimisers.

    Args:
        guidance: a guidance callable (backend/stage1/guidance.py); None runs render-only steps (no update).
        prompt: the prompt (required by diffusion guidances; the oracle ignores its text).
        generator: CPU generator for every random draw of the step (split samples included).
    """
    t0 = time.perf_counter()
    sample = sample_orbit(cfg.batch, cfg.orbit(), generator)
    cams = sample.cameras.to(g.device)
    if cfg.random_background:
        background = torch.rand(cfg.batch, 3, generator=generator).to(g.device)
    else:
        background = torch.tensor(cfg.background, dtype=torch.float32, device=g.device)
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    out = render(g, cams, background)
    if guidance is None:
        return Stage1StepResult(0.0, 0.0, 0.0, g.n, time.perf_counter() - t0)
    res = guidance(
        out.rgb,
        prompt,
        sample.elevation_deg,
        sample.azimuth_deg,
        step=step,
        fixed_t=cfg.fixed_t,
        t_range=cfg.t_range,
        generator=generator,
        cameras=cams,
        background=background,
    )
    res.loss.backward()
    if cfg.densify is not None:
        # Statistics live in g.buffers, so they follow keep()/append() and checkpoints.
        step_post_backward(g, optimizers, out, step, cfg.densify, generator)
    for opt in optimizers.values():
        opt.step()
    if cfg.densify is not None and step == cfg.steps - 1:
        # the state the run hands over: faint Gaussians and stray ones are the haze around the object (floaters)
        end_prune(g, optimizers, cfg.densify)
    return Stage1StepResult(
        loss=float(res.loss.detach()),
        grad_norm=float(res.grad_norm),
        t_mean=float(res.t.float().mean()),
        count=g.n,
        seconds=time.perf_counter() - t0,
    )


class Stage1Job:
    """Stage I as a server job (backend/service/jobs.py): ``total_steps`` calls of :meth:`step`, each one
    :func:`stage1_step` on the session's Gaussians and optimisers, under the session's lock (taken by
    the job runner), so edits from other ops land between two steps.

    The job's own progress (the generator state) is in :meth:`state_dict`; the Gaussians (with their
    densification statistics buffers) and optimiser moments are the session's and are checkpointed with it.
    """

    kind = "stage1"

    def __init__(
        self,
        session,
        guidance,
        prompt: PromptSpec | None,
        cfg: Stage1Config = Stage1Config(),
        load_guidance: Callable[[], object] | None = None,
    ) -> None:
        """
        Args:
            session: the session (``gaussians``, ``optimizers``).
            guidance: a guidance callable, or None for render-only steps.
            prompt: the prompt for diffusion guidances.
            load_guidance: builds the guidance on the job's worker thread at its first step (loading
                Stable Diffusion takes seconds; the server thread must stay responsive). Overrides
                ``guidance``.
        """
        g = session.gaussians
        if g is None or g.n == 0:
            raise ValueError("the session has no Gaussians: initialise them first (gaussians.init)")
        self.session = session
        self.guidance = guidance
        self.load_guidance = load_guidance
        self.prompt = prompt
        self.cfg = cfg
        self.total_steps = cfg.steps
        self.state_every = cfg.snapshot_every
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps_done = 0
        self.last: Stage1StepResult | None = None

    def step(self, i: int) -> dict[str, float]:
        if self.load_guidance is not None:
            self.guidance, self.load_guidance = self.load_guidance(), None
        s = self.session
        # Here rather than in __init__ (a job must not mutate the session before it starts); cheap, and
        # it also re-applies the config's lrs to optimisers rebuilt by undo/redo or a checkpoint restore.
        if s.optimizers is None:
            s.optimizers = make_optimizers(s.gaussians, self.cfg.lr)
        else:
            set_learning_rates(s.optimizers, self.cfg.lr)
        r = stage1_step(s.gaussians, s.optimizers, self.guidance, self.prompt, self.cfg, self.generator, i)
        self.steps_done = i + 1
        self.last = r
        return {"loss": r.loss, "grad_norm": r.grad_norm, "t": r.t_mean, "count": float(r.count), "step_seconds": r.seconds}

    def result(self) -> dict:
        return {"steps": self.steps_done, "count": self.session.gaussians.n, "loss": None if self.last is None else self.last.loss}

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state(), "steps_done": self.steps_done}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])
        self.steps_done = int(d["steps_done"])


def set_learning_rates(optimizers: dict[str, torch.optim.Optimizer], lr: LearningRates) -> None:
    """Apply the config's learning rates, betas and weight decay to existing per-group optimisers."""
    for name, opt in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = getattr(lr, name)
            group["betas"] = lr.betas
            group["weight_decay"] = lr.weight_decay


class OracleReference:
    """The session's reference object for the oracle guidance (session.extras["stage1.reference"]).

    A checkpointable, undoable extra slot (backend/service/session.py's Extra protocol): its state is the
    reference Gaussians' exact snapshot.
    """

    SLOT = "stage1.reference"

    def __init__(self, gaussians: Gaussians) -> None:
        if gaussians.n == 0:
            raise ValueError("the oracle reference has zero Gaussians")
        self.gaussians = gaussians

    def state_dict(self) -> dict:
        return {"snapshot": self.gaussians.snapshot()}

    def load_state_dict(self, state: dict) -> None:
        self.gaussians = Gaussians.from_snapshot(state["snapshot"], device=self.gaussians.device)

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> "OracleReference":
        return cls(Gaussians.from_snapshot(state["snapshot"], device=device))


def oracle_render_fn(reference: Gaussians, cameras, background) -> Tensor:
    """Target images [B,H,W,3] of the oracle: the reference rendered at the sampled cameras."""
    return render(reference, cameras, background).rgb
