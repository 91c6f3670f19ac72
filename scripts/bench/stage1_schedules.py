"""Stage I densification schedules on the oracle guidance: held-out PSNR, Gaussian count, time per step and
floater share at several run lengths (issue 27; the table in docs/benchmarks.md).

    OMP_NUM_THREADS=1 nice python scripts/bench/stage1_schedules.py --steps 150 500 2000 --seeds 0 1 \\
        --schedules none fixed run default --out /tmp/schedules.jsonl
    python scripts/bench/stage1_schedules.py --smoke          # seconds: every schedule, 20 steps at 24²

Each cell: the demo's start (2048 random grey Gaussians in a sphere of radius 0.6, seed = the run's seed) is
optimised toward a reference object with the closed-form oracle through the SDS path (batch 1, the paper's
learning rates, white background), then scored on 8 held-out orbit views (a camera seed the run never uses)
at 64²: PSNR against the reference's renders and the share of rendered alpha outside the reference's
silhouette (backend/stage1/metrics.py). Objects: ``robot`` (the demo's sample object, interactive3d/sample.py,
as the demo's reference) and ``blobs`` (a red ellipsoid under a blue sphere). ``--out`` appends one JSON line
per cell and skips cells already there, so a long sweep can be run in parts. Milliseconds per step are only
comparable within one run on an unloaded machine: the summary prints each schedule's time relative to
``run`` at the same length and seed (measured in the same invocation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, replace

import numpy as np
import torch

from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
from interactive3d.backend.stage1.densify import DensifyConfig
from interactive3d.backend.stage1.gaussians import Gaussians, init_random, keep, make_optimizers, rgb_to_sh_dc
from interactive3d.backend.stage1.guidance import OracleGuidance, PromptSpec
from interactive3d.backend.stage1.metrics import score_against_reference
from interactive3d.backend.stage1.render import render
from interactive3d.backend.stage1.trainer import SCHEDULE_NAMES, Stage1Config, named_schedule, oracle_render_fn, stage1_step


def robot_reference(n: int = 4000, seed: int = 0) -> Gaussians:
    """The demo's oracle reference: surface samples of the sample robot as opaque point Gaussians."""
    from interactive3d import sample
    from interactive3d.backend.stage1.init import init_from_points

    obj = sample.build_sample_object()
    surf = sample.sample_surface(obj, n, seed=seed)
    return init_from_points(surf.points, surf.rgb, opacity=0.9)


def blobs_reference(n: int = 2000, seed: int = 5) -> Gaussians:
    """A red ellipsoid under a blue sphere, opaque, inside radius 0.6."""
    g = init_random(n, radius=0.5, seed=seed)
    with torch.no_grad():
        m = g.params["means"]
        m[:, 2] *= 1.2
        top = m[:, 2] > 0.1
        rgb = torch.where(top[:, None], torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0.9, 0.15, 0.1]))
        g.params["sh"][:, 0] = rgb_to_sh_dc(rgb)
        g.params["opacity_logits"].fill_(math.log(0.9 / 0.1))
        g.params["log_scales"].add_(math.log(1.5))
    return g


OBJECTS = {"robot": robot_reference, "blobs": blobs_reference}


def variant(name: str, steps: int) -> DensifyConfig | None | str:
    """A schedule by name: ``none``, the trainer's named schedules, or an experiment ``base+field=value+…``
    (e.g. ``run+grad_threshold=0.1``) overriding fields of a named schedule's DensifyConfig at this length;
    a value ``x0.05`` is that fraction of the run's length (rounded, at least 1 step)."""
    if name == "none":
        return None
    base, *overrides = name.split("+")
    if base not in SCHEDULE_NAMES:
        raise SystemExit(f"unknown schedule {base!r} (none, {', '.join(SCHEDULE_NAMES)})")
    cfg = named_schedule(base, steps)
    fields = {}
    for item in overrides:
        key, value = item.split("=")
        if value == "None":
            fields[key] = None
        elif value.startswith("x"):
            fields[key] = max(1, round(float(value[1:]) * steps))
        else:
            fields[key] = int(value) if value.isdigit() else float(value)
    return replace(cfg, **fields)


def run_cell(obj: str, schedule: str, steps: int, seed: int, res: int, n_init: int, eval_views: int, eval_res: int,
             ref_cache: dict) -> dict:
    if obj not in ref_cache:
        ref_cache[obj] = OBJECTS[obj]()
    ref = ref_cache[obj]
    dcfg = variant(schedule, steps)
    cfg = Stage1Config(steps=steps, batch=1, resolution=res, densify=dcfg, seed=seed)
    g = init_random(n_init, radius=0.6, seed=seed)
    opt = make_optimizers(g, cfg.lr)
    oracle = OracleGuidance(ref, oracle_render_fn)
    gen = torch.Generator().manual_seed(seed)
    prompt = PromptSpec("reference object", view_dependent=False)
    counts = []
    t0 = time.perf_counter()
    for i in range(steps):
        stage1_step(g, opt, oracle, prompt, cfg, gen, i)
        if (i + 1) % max(1, steps // 10) == 0:
            counts.append(g.n)
    seconds = time.perf_counter() - t0
    cams = sample_orbit(eval_views, OrbitConfig(width=eval_res, height=eval_res), torch.Generator().manual_seed(1234)).cameras
    score = score_against_reference(g, ref, cams)
    # what a last prune of the faint Gaussians would give (without training further)
    posthoc = {}
    for p in (0.05, 0.1):
        h = Gaussians.from_snapshot(g.snapshot())
        keep(h, None, h.opacities.detach() >= p)
        s = score_against_reference(h, ref, cams)
        posthoc[str(p)] = {"psnr": s.psnr, "floater_share": s.floater_share, "count": h.n}
    return {"posthoc_prune_opacity": posthoc, "max_radius": float(g.params["means"].detach().norm(dim=-1).max()),
            "opacity_quantiles": [float(q) for q in torch.quantile(g.opacities.detach(), torch.tensor([0.1, 0.5, 0.9]))],
            "object": obj, "schedule": schedule, "steps": steps, "seed": seed, "res": res, "n_init": n_init,
            "psnr": score.psnr, "floater_share": score.floater_share, "count": g.n, "counts": counts,
            "ms_per_step": 1000.0 * seconds / steps,
            "densify": None if cfg.densify is None else asdict(cfg.densify)}


def summarise(rows: list[dict]) -> None:
    """One line per (object, length, schedule): mean ± half-range over seeds, time relative to ``run``."""
    cells = defaultdict(list)
    for r in rows:
        cells[(r["object"], r["steps"], r["schedule"])].append(r)
    base_ms = {(r["object"], r["steps"], r["seed"]): r["ms_per_step"] for r in rows if r["schedule"] == "run"}
    print(f"{'object':6} {'steps':>5} {'schedule':44} {'PSNR dB':>14} {'count':>15} {'floaters %':>11} {'ms/step':>8} {'÷run':>5}")
    for (obj, steps, sched), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        def pm(key, scale=1.0, fmt="{:.2f}"):
            v = np.array([r[key] for r in rs], float) * scale
            return (fmt.format(v.mean()) + " ±" + fmt.format((v.max() - v.min()) / 2)) if len(v) > 1 else fmt.format(v[0])
        ratios = [r["ms_per_step"] / base_ms[(obj, steps, r["seed"])] for r in rs if (obj, steps, r["seed"]) in base_ms]
        rel = f"{np.mean(ratios):.2f}" if ratios else "-"
        print(f"{obj:6} {steps:5d} {sched:44} {pm('psnr'):>14} {pm('count', fmt='{:.0f}'):>15} "
              f"{pm('floater_share', 100.0, '{:.2f}'):>11} {np.mean([r['ms_per_step'] for r in rs]):8.1f} {rel:>5}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 500])
    ap.add_argument("--schedules", nargs="+", default=["none", "fixed", "run", "default"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--objects", nargs="+", default=["robot"], choices=sorted(OBJECTS))
    ap.add_argument("--res", type=int, default=48)
    ap.add_argument("--n-init", type=int, default=2048)
    ap.add_argument("--eval-views", type=int, default=8)
    ap.add_argument("--eval-res", type=int, default=64)
    ap.add_argument("--out", default=None, help="append JSON lines here; cells already in it are skipped")
    ap.add_argument("--summary-only", action="store_true", help="print the summary of --out and exit")
    ap.add_argument("--smoke", action="store_true", help="20 steps at 24², 256 Gaussians, one seed (checks the script)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.seeds, args.res, args.n_init, args.eval_views, args.eval_res = [20], [0], 24, 256, 2, 24
    rows = []
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    if not args.summary_only:
        done = {(r["object"], r["schedule"], r["steps"], r["seed"], r["res"], r["n_init"]) for r in rows}
        refs: dict = {}
        for steps in args.steps:
            for obj in args.objects:
                for seed in args.seeds:
                    for sched in args.schedules:
                        if (obj, sched, steps, seed, args.res, args.n_init) in done:
                            continue
                        r = run_cell(obj, sched, steps, seed, args.res, args.n_init, args.eval_views, args.eval_res, refs)
                        rows.append(r)
                        print(json.dumps({k: v for k, v in r.items() if k != "densify"}), flush=True)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(json.dumps(r) + "\n")
    summarise(rows)


if __name__ == "__main__":
    main()
