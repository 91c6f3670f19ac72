"""Run presets (``--preset paper|fast|preview`` of ``i3d generate`` and the add-on's Generate; op ``presets.resolve``).

``paper`` is the paper's schedule (§4 and supplementary): Stage I 10k steps of SDS at 256² renders, Stage II
10k distillation steps at 256² (and 10k refinement steps), interactive-SDS zoom-in renders at 256², threestudio's
timestep annealing (``max_step_percent: [N/2, 0.98, 0.5, N/2+1]``: t_max drops from 0.98 to 0.5 half-way),
initialised from 4096 Shap-E points. ``fast`` and ``preview`` are lighter runs of the same pipeline. The backend
resolves a preset for its own device: on a CPU every preset is scaled down (steps ÷10, renders ≤ 64², one view
per step, a coarser Shap-E grid) and the result says so in ``note``.

Every preset densifies with Stage I's default schedule, ``sds`` (backend/stage1/trainer.py ``sds_schedule``:
the authors' Stage I practice scaled to the run, pruning on its densify steps and outside the scene bound, a last
prune of the faint and stray haze): on the oracle (robot and blobs, 3 seeds) it was the best schedule at 150, 500
and 2000 steps with at most 0.3 % floaters, where ``fixed`` and ``run`` leave 6–52 % and grow without bound on
long runs (docs/benchmarks.md, issue 27), so
one schedule serves a short CPU preview and a 10k-step paper run.

A preset is pure data: op arguments for ``gaussians.init``, ``stage1.start``, ``stage2.distill``,
``stage2.refine`` and the interactions (``interact.drag`` / ``interact.edit`` ``resolution``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

PRESET_NAMES = ("paper", "fast", "preview")
CPU_STEP_DIVISOR = 10
CPU_MAX_RESOLUTION = 64
CPU_MIN_STEPS = 50
SHORT_DISTILL_LR = (0.03, 0.01)  # stage2.distill's (lr_grid, lr_mlp) for a CPU run under 100 steps (see _cpu)


@dataclass(frozen=True)
class Preset:
    """One named run schedule (field meanings as the op arguments they become)."""

    name: str
    stage1_steps: int
    stage1_resolution: int
    stage1_batch: int
    zoom_resolution: int  # interactive SDS zoom-in renders (drag, semantic edit, refinement with SD)
    distill_steps: int
    distill_resolution: int
    refine_steps: int
    anneal: bool  # threestudio's t_max 0.98 → 0.5 at half the Stage I run
    init_points: int = 4096  # paper: 4096 Shap-E points
    shap_e_steps: int = 64
    shap_e_grid: int = 128
    distill_lr: tuple[float, float] | None = None  # (hash tables, MLPs) for stage2.distill; None: the op's (0.01, 0.001)
    description: str = ""

    def ops(self) -> dict[str, dict]:
        """Op name → the arguments this preset gives it."""
        stage1 = {"steps": self.stage1_steps, "resolution": self.stage1_resolution, "batch": self.stage1_batch,
                  "densify": True, "densify_schedule": "sds", "t_range": [0.02, 0.98]}
        if self.anneal:
            half = self.stage1_steps // 2
            stage1.update(t_range_end=[0.02, 0.5], anneal_start=half, anneal_steps=1)
        return {
            "gaussians.init": {"kind": "shap_e", "n": self.init_points, "shap_e_steps": self.shap_e_steps, "shap_e_grid": self.shap_e_grid},
            "stage1.start": stage1,
            "stage2.distill": {"steps": self.distill_steps, "resolution": self.distill_resolution,
                               **({} if self.distill_lr is None else {"lr_grid": self.distill_lr[0], "lr_mlp": self.distill_lr[1]})},
            "stage2.refine": {"steps": self.refine_steps, "resolution": self.zoom_resolution},
            "interact.drag": {"resolution": self.zoom_resolution},
            "interact.edit": {"resolution": self.zoom_resolution},
        }


PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", 10_000, 256, 4, 256, 10_000, 256, 10_000, True,
                    description="the paper: 10k Stage I + 10k Stage II steps at 256², zoom-in renders 256², t annealing"),
    "fast": Preset("fast", 3000, 256, 2, 128, 3000, 128, 2000, True,
                   description="a third of the paper's steps, zoom-in and Stage II renders at 128²"),
    "preview": Preset("preview", 600, 128, 1, 64, 600, 64, 300, False, shap_e_steps=32, shap_e_grid=64,
                      description="a quick look: 600 + 600 steps, 128² Stage I renders"),
}


@dataclass(frozen=True)
class ResolvedPreset:
    preset: Preset
    device: str
    scaled: bool
    note: str

    def as_result(self) -> dict:
        return {"preset": self.preset.name, "device": self.device, "scaled": self.scaled, "note": self.note,
                "values": asdict(self.preset), "ops": self.preset.ops()}


def _cpu(p: Preset) -> Preset:
    def steps(n: int) -> int:
        return max(CPU_MIN_STEPS, n // CPU_STEP_DIVISOR)

    return replace(
        p, stage1_steps=steps(p.stage1_steps), stage1_resolution=min(p.stage1_resolution, CPU_MAX_RESOLUTION), stage1_batch=1,
        zoom_resolution=min(p.zoom_resolution, CPU_MAX_RESOLUTION), distill_steps=steps(p.distill_steps),
        distill_resolution=min(p.distill_resolution, CPU_MAX_RESOLUTION), refine_steps=steps(p.refine_steps),
        shap_e_grid=min(p.shap_e_grid, 64),
        # under 100 distillation steps the official lrs leave the density soft and noisy (issue 26: 60 steps on
        # thin-surfel shapes, Chamfer 2.4-3.6 % of the diagonal); 3x / 10x them (as the Stage II tests' 80-step runs
        # use) gives 1.2-1.9 % (docs/benchmarks.md)
        distill_lr=SHORT_DISTILL_LR if steps(p.distill_steps) < 100 else p.distill_lr,
    )


def resolve(name: str, device_type: str) -> ResolvedPreset:
    """The preset ``name`` for a backend on ``device_type`` ("cuda" runs it as written; anything else scales it)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESET_NAMES}, got {name!r}")
    p = PRESETS[name]
    if device_type == "cuda":
        return ResolvedPreset(p, device_type, False, f"preset {name!r}: {p.description}")
    q = _cpu(p)
    note = (f"preset {name!r} scaled down for a {device_type} backend: Stage I {q.stage1_steps} steps at "
            f"{q.stage1_resolution}² (written: {p.stage1_steps} at {p.stage1_resolution}²), Stage II {q.distill_steps} "
            f"steps at {q.distill_resolution}², zoom-in {q.zoom_resolution}²; run it on a CUDA backend for the paper's schedule")
    return ResolvedPreset(q, device_type, True, note)
