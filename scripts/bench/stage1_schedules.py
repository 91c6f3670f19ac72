"""Stage I densification schedules on the oracle guidance: held-out PSNR, Gaussian count, time per step and
floater share at several run lengths (issue 27; the table in docs/benchmarks.md).

    OMP_NUM_THREADS=1 nice python scripts/bench/stage1_schedules.py --steps 150 500 2000 --objects robot blobs \
        --schedules none fixed run sds --seeds 0 --max-count 65536 --max-seconds 420 --out /tmp/schedules.jsonl
    python scripts/bench/stage1_schedules.py --guidance tiny-sd --steps 150     # cost rows (no PSNR)
    python scripts/bench/stage1_schedules.py --smoke          # seconds: every schedule, 20 steps at 24²

Each cell: the demo's start (2048 random grey Gaussians in a sphere of radius 0.6, seed = the run's seed) is
optimised toward a reference object with the closed-form oracle through the SDS path (batch 1, the paper's
learning rates, white background), then scored on 8 held-out orbit views (a camera seed the run never uses)
at 64²: PSNR against the reference's renders and the share of rendered alpha outside the reference's
silhouette (backend/stage1/metrics.py). Objects: ``robot`` (the demo's sample object, interactive3d/sample.py,
as the demo's reference) and ``blobs`` (a red ellipsoid under a blue sphere). A cell stops early past
``--max-count`` Gaussians or ``--max-seconds`` (``stopped`` says where; schedules that densify every Gaussian
under SDS would otherwise run for hours). Each oracle row also scores post-hoc prunes of its final set
(``POSTHOC``). ``--guidance tiny-sd`` runs the tests' tiny Stable Diffusion: time and count only.
``--out`` appends one JSON line per cell and skips cells already there, so a long sweep can be run in parts.
Milliseconds per step are only comparable within one run on an unloaded machine: the summary prints each
schedule's time relative to ``run`` at the same length and seed.
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
from interactive3d.backend.stage1.densify import DensifyConfig, end_prune, prune
from interactive3d.backend.stage1.gaussians import Gaussians, init_random, make_optimizers, rgb_to_sh_dc
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


def _tiny_sd():
    """The tests' tiny Stable Diffusion (random weights, 32² images): its step costs what SD's plumbing costs
    at toy sizes; its PSNR means nothing (cost rows only)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "backend"))
    from _tiny_diffusion import tiny_sd_guidance

    return tiny_sd_guidance()


# What a last prune would give, applied to the trained set without training further (the schedules' knobs).
POSTHOC = {
    "opacity0.1": dict(end_prune_opacity=0.1),
    "radius1": dict(prune_radius=1.0),
    "outliers2": dict(end_outlier_std=2.0),
    "outliers3": dict(end_outlier_std=3.0),
    "outliers4": dict(end_outlier_std=4.0),
    "radius1+outliers2": dict(prune_radius=1.0, end_outlier_std=2.0),
}


def run_cell(obj: str, schedule: str, steps: int, seed: int, res: int, n_init: int, eval_views: int, eval_res: int,
             ref_cache: dict, guidance: str = "oracle", max_count: int | None = None,
             max_seconds: float | None = None) -> dict:
    """One cell; it stops early (``stopped``: why, ``steps_done``) once the set passes ``max_count`` Gaussians or
    the cell has run ``max_seconds`` (a schedule that grows without bound would take hours on a CPU)."""
    if obj not in ref_cache:
        ref_cache[obj] = OBJECTS[obj]()
    ref = ref_cache[obj]
    dcfg = variant(schedule, steps)
    cfg = Stage1Config(steps=steps, batch=1, resolution=res, densify=dcfg, seed=seed)
    g = init_random(n_init, radius=0.6, seed=seed)
    opt = make_optimizers(g, cfg.lr)
    if guidance == "oracle":
        guide = OracleGuidance(ref, oracle_render_fn)
    else:
        if "tiny-sd" not in ref_cache:
            ref_cache["tiny-sd"] = _tiny_sd()
        guide = ref_cache["tiny-sd"]
    gen = torch.Generator().manual_seed(seed)
    prompt = PromptSpec("reference object", view_dependent=False)
    counts = []
    stopped = None
    t0 = time.perf_counter()
    done = 0
    for i in range(steps):
        stage1_step(g, opt, guide, prompt, cfg, gen, i)
        done = i + 1
        if (i + 1) % max(1, steps // 10) == 0:
            counts.append(g.n)
        if max_count is not None and g.n > max_count and done < steps:
            stopped = f"count {g.n} > {max_count} at step {done}"
        elif max_seconds is not None and time.perf_counter() - t0 > max_seconds and done < steps:
            stopped = f"{max_seconds:.0f} s at step {done}"
        if stopped:
            break
    seconds = time.perf_counter() - t0
    row = {"object": obj, "schedule": schedule, "steps": steps, "seed": seed, "res": res, "n_init": n_init,
           "guidance": guidance, "count": g.n, "counts": counts, "ms_per_step": 1000.0 * seconds / done,
           "steps_done": done, "stopped": stopped, "densify": None if cfg.densify is None else asdict(cfg.densify)}
    if guidance != "oracle":
        return row
    cams = sample_orbit(eval_views, OrbitConfig(width=eval_res, height=eval_res), torch.Generator().manual_seed(1234)).cameras
    score = score_against_reference(g, ref, cams)
    posthoc = {}
    for name, fields in POSTHOC.items():
        h = Gaussians.from_snapshot(g.snapshot())
        end_prune(h, None, DensifyConfig(**{k: v for k, v in fields.items() if k != "prune_radius"}))
        if "prune_radius" in fields:
            prune(h, None, DensifyConfig(prune_opacity=0.0, prune_scale=None, prune_radius=fields["prune_radius"]))
        s = score_against_reference(h, ref, cams)
        posthoc[name] = {"psnr": s.psnr, "floater_share": s.floater_share, "count": h.n}
    row.update(psnr=score.psnr, floater_share=score.floater_share, posthoc=posthoc,
               max_radius=float(g.params["means"].detach().norm(dim=-1).max()),
               opacity_quantiles=[float(q) for q in torch.quantile(g.opacities.detach(), torch.tensor([0.1, 0.5, 0.9]))])
    return row


def summarise(rows: list[dict]) -> None:
    """One line per (guidance, object, length, schedule): mean ± half-range over seeds, time relative to
    ``run`` at the same cell and seed (measured in the same invocation only if run together); ``stopped``
    cells are marked with * and the step they reached."""
    cells = defaultdict(list)
    for r in rows:
        cells[(r.get("guidance", "oracle"), r["object"], r["steps"], r["schedule"])].append(r)
    base_ms = {(r.get("guidance", "oracle"), r["object"], r["steps"], r["seed"]): r["ms_per_step"]
               for r in rows if r["schedule"] == "run"}
    print(f"{'guide':7} {'object':6} {'steps':>5} {'schedule':44} {'PSNR dB':>14} {'count':>15} {'floaters %':>11} "
          f"{'ms/step':>8} {'÷run':>5}")
    for (guide, obj, steps, sched), rs in sorted(cells.items()):
        def pm(key, scale=1.0, fmt="{:.2f}"):
            if any(key not in r for r in rs):
                return "-"
            v = np.array([r[key] for r in rs], float) * scale
            return (fmt.format(v.mean()) + " ±" + fmt.format((v.max() - v.min()) / 2)) if len(v) > 1 else fmt.format(v[0])
        ratios = [r["ms_per_step"] / base_ms[(guide, obj, steps, r["seed"])] for r in rs
                  if (guide, obj, steps, r["seed"]) in base_ms]
        rel = f"{np.mean(ratios):.2f}" if ratios else "-"
        stop = "".join(f" *{r['steps_done']}" for r in rs if r.get("stopped"))
        print(f"{guide:7} {obj:6} {steps:5d} {sched + stop:44} {pm('psnr'):>14} {pm('count', fmt='{:.0f}'):>15} "
              f"{pm('floater_share', 100.0, '{:.2f}'):>11} {np.mean([r['ms_per_step'] for r in rs]):8.1f} {rel:>5}")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 500])
    ap.add_argument("--schedules", nargs="+", default=["none", "fixed", "run", "sds"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--objects", nargs="+", default=["robot"], choices=sorted(OBJECTS))
    ap.add_argument("--guidance", default="oracle", choices=["oracle", "tiny-sd"],
                    help="tiny-sd: the tests' tiny Stable Diffusion, cost rows only (no PSNR)")
    ap.add_argument("--res", type=int, default=48)
    ap.add_argument("--n-init", type=int, default=2048)
    ap.add_argument("--eval-views", type=int, default=8)
    ap.add_argument("--eval-res", type=int, default=64)
    ap.add_argument("--max-count", type=int, default=None, help="stop a cell once it has more Gaussians than this")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop a cell after this many seconds")
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
        done = {(r.get("guidance", "oracle"), r["object"], r["schedule"], r["steps"], r["seed"], r["res"], r["n_init"])
                for r in rows}
        refs: dict = {}
        for steps in args.steps:
            for obj in args.objects:
                for seed in args.seeds:
                    for sched in args.schedules:
                        if (args.guidance, obj, sched, steps, seed, args.res, args.n_init) in done:
                            continue
                        r = run_cell(obj, sched, steps, seed, args.res, args.n_init, args.eval_views, args.eval_res, refs,
                                     args.guidance, args.max_count, args.max_seconds)
                        rows.append(r)
                        print(json.dumps({k: v for k, v in r.items() if k != "densify"}), flush=True)
                        if args.out:
                            with open(args.out, "a") as f:
                                f.write(json.dumps(r) + "\n")
    summarise(rows)


if __name__ == "__main__":
    main()
