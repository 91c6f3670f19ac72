"""``i3d batch --prompts FILE --out DIR``: many prompts, one object each, on every GPU of a Ray cluster.

Each prompt (or prompt × seed) is one Ray task placed with ``num_gpus`` so that it owns its GPU(s); the
task runs the pipeline of ``i3d generate`` (:func:`interactive3d.generate.run_generate`: a backend on
that machine, Stage I, distillation, mesh) into ``DIR/<slug>/`` and writes ``complete.json`` last.
Scheduling, placement and lost-worker recovery are Ray's; this module only decides what to submit, what
a result means, and what to tell the user.

Resilience:

- a prompt whose run fails is submitted again ``retries`` times from scratch, then reported and skipped;
- a worker lost mid-job (node gone, process killed) makes Ray re-run the task (``lost_worker_retries``);
  the new run continues the prompt's session from its last checkpoint (``DIR/<slug>/backend_state``,
  see ``run_generate(resume=True)``) — across machines this needs DIR on shared storage, otherwise the
  prompt starts over on the new machine;
- rerunning the same command skips prompts whose ``complete.json`` is there (a half-done batch resumes);
- Ctrl+C cancels the tasks in flight (``ray.cancel``: their backends checkpoint and stop) and prints
  what finished.

Ray is the optional extra ``interactive3d[cluster]`` and is imported only here, only when a batch runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interactive3d.generate import GUIDANCES, PRESET_NAMES, GenerateConfig
from interactive3d.prompts import OPTION_TYPES_BATCH, BadLine, PromptJob, parse_prompt_file, stable_slug

log = logging.getLogger(__name__)

COMPLETE_FILE = "complete.json"  # written last: its presence means the prompt's outputs are complete
FAILED_FILE = "failed.json"  # the last failure of the prompt (removed when it completes)
WORKER_FILE = "worker.json"  # host, pid and attempt of the task running the prompt
OUTPUT_FILES = ("splats.ply", "mesh.glb", "report.json")

# Ray's switch for "this node may be part of a cluster" (named for macOS/Windows, where it is off): with
# it off, Ray takes 127.0.0.1 as the node address.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# Field and ray budgets by name (--sizes); flags given on the command line override them. "small" is
# CPU-sized (the demo's --quick field and ray budget); "default" leaves them to the backend (sized for a
# GPU). The run schedule itself comes from --preset (paper|fast|preview, resolved by the backend).
SIZES: dict[str, dict[str, Any]] = {
    "default": {},
    "small": dict(
        steps=300, resolution=64, n_init=2048, distill_steps=300, distill_resolution=48, distill_rays=1024,
        distill_samples=48, distill_view_pool=16, distill_levels=12, distill_log2_table=16, mesh_resolution=96,
    ),
}


class BatchError(RuntimeError):
    """The batch cannot start (no Ray, a cluster without the resources asked for, a bad argument)."""


@dataclass(frozen=True)
class BatchConfig:
    """How the batch is placed and how hard it tries.

    Attributes:
        gpus_per_job: GPUs each task reserves (Ray ``num_gpus``); 0 runs the pipeline on CPUs.
        cpus_per_job: CPUs each task reserves (Ray ``num_cpus``).
        retries: a failed prompt is run again this many times, then reported and skipped.
        lost_worker_retries: Ray re-runs a task this many times when its worker dies.
        cancel_grace_s: after Ctrl+C, seconds the cancelled tasks get to stop their backends.
    """

    gpus_per_job: float = 1.0
    cpus_per_job: float = 1.0
    retries: int = 1
    lost_worker_retries: int = 3
    cancel_grace_s: float = 30.0

    def check(self) -> None:
        for name in ("gpus_per_job", "cpus_per_job", "cancel_grace_s"):
            if not getattr(self, name) >= 0:
                raise BatchError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("retries", "lost_worker_retries"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise BatchError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class BatchItem:
    """One task: a prompt with its line's options and the seed it runs with."""

    slug: str
    prompt: str
    seed: int
    line: int
    options: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What became of one item; ``status`` is done | skipped (complete before this run) | failed | cancelled."""

    slug: str
    prompt: str
    seed: int
    status: str
    attempts: int = 0
    seconds: float = 0.0
    gaussians: int = 0
    mesh_vertices: int = 0
    mesh_faces: int = 0
    mesh_bytes: int = 0
    resumed_step: int | None = None  # the step a resumed job went on from (a worker was lost)
    host: str = ""
    dir: str = ""
    error: str = ""


def plan(jobs: Sequence[PromptJob], seeds: Sequence[int] | None = None, default_seed: int = 0) -> list[BatchItem]:
    """One item per prompt, or per prompt × seed; a line's own ``seed=`` option wins over ``seeds``."""
    items = []
    for job in jobs:
        options = {k: v for k, v in job.options.items() if k != "seed"}
        job_seeds = [job.options["seed"]] if "seed" in job.options else list(seeds or [default_seed])
        for seed in job_seeds:
            items.append(BatchItem(stable_slug(job.prompt, options, seed), job.prompt, int(seed), job.line, options))
    return items


def item_config(base: GenerateConfig, item: BatchItem) -> GenerateConfig:
    """``base`` with the item's prompt, seed and line options (steps, cfg, negative, model)."""
    o = item.options
    changes: dict[str, Any] = {"prompt": item.prompt, "seed": item.seed}
    if "steps" in o:
        changes["steps"] = int(o["steps"])
    if "cfg" in o:
        changes["guidance_scale"] = float(o["cfg"])
    if "negative" in o:
        changes["negative_prompt"] = str(o["negative"])
    if "model" in o:
        changes["model"] = str(o["model"])
    return dataclasses.replace(base, **changes)


def read_complete(folder: Path) -> dict | None:
    """The prompt's completion record when its outputs are all there, else None."""
    try:
        record = json.loads((folder / COMPLETE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all((folder / f).is_file() for f in record.get("files", OUTPUT_FILES)):
        return None
    return record


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)  # atomic: a reader sees the old record or the new one


# -- the Ray task ------------------------------------------------------------------------------------------
def run_item(item: BatchItem, base: dict, out_root: str, device: str, attempt: int, resume: bool, driver_host: str) -> dict:
    """Run one item into ``out_root/<slug>/`` (the body of a Ray task; plain Python, testable alone).

    Returns the completion record (``status`` "done") or a failure (``status`` "failed", ``error``); a
    cancellation (KeyboardInterrupt from ``ray.cancel``) propagates after the backend is stopped. When
    this runs on another machine than the driver, the output files travel back in ``files``.
    """
    from interactive3d.pipeline import PipelineError
    from interactive3d.generate import ModelNotAvailableError, run_generate

    folder = Path(out_root) / item.slug
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    done = read_complete(folder)
    if done is None:
        _write_json(folder / WORKER_FILE, {"host": host, "pid": os.getpid(), "attempt": attempt, "resume": resume, "started": time.time()})
        t0 = time.perf_counter()
        cfg = item_config(GenerateConfig(**base), item)
        try:
            report = run_generate(folder, cfg, device=device, resume=resume)
        except (ModelNotAvailableError, PipelineError, OSError, ValueError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            _write_json(folder / FAILED_FILE, {"error": error, "attempt": attempt, "host": host, "time": time.time()})
            return {"status": "failed", "error": error, "host": host, "seconds": time.perf_counter() - t0}
        stages = report["stages"]
        mesh = folder / "mesh.glb"
        done = {
            "slug": item.slug, "prompt": item.prompt, "seed": item.seed, "seconds": time.perf_counter() - t0,
            "gaussians": int(stages["stage1"]["count"]), "mesh_vertices": int(stages["mesh"]["vertices"]),
            "mesh_faces": int(stages["mesh"]["faces"]), "mesh_bytes": mesh.stat().st_size,
            "resumed_step": (report.get("resumed") or {}).get("step"), "host": host, "attempt": attempt,
            "files": [f for f in (*OUTPUT_FILES, "scene.blend") if (folder / f).is_file()],
        }
        (folder / FAILED_FILE).unlink(missing_ok=True)
        _write_json(folder / COMPLETE_FILE, done)  # last: the prompt counts as complete from here on
    result = {**done, "status": "done"}
    if host != driver_host:  # no shared filesystem assumed: the driver writes the files on its side
        result["file_bytes"] = {f: (folder / f).read_bytes() for f in done["files"]}
    return result


# -- the driver --------------------------------------------------------------------------------------------
def connect_ray(address: str | None, num_cpus: int | None = None):
    """Ray, initialised: the running instance if this process has one, ``address`` when given, else a new
    local instance on this machine (loopback only). Returns (ray module, whether we started it)."""
    if not address and "ray" not in sys.modules:
        # Ray resolves this node's address once, at import: this keeps a local instance on 127.0.0.1
        # (every Ray port on loopback), which a one-machine batch needs, instead of the public interface.
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError as exc:
        raise BatchError(
            "i3d batch needs Ray: pip install 'interactive3d[cluster]' (or pip install ray) in this environment "
            "and on every worker"
        ) from exc
    if ray.is_initialized():
        return ray, False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local" never joins a cluster found through RAY_ADDRESS or /tmp/ray; loopback keeps it private.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray, True


def run_batch(
    items: Sequence[BatchItem],
    base: GenerateConfig,
    out: str | os.PathLike,
    cfg: BatchConfig = BatchConfig(),
    ray_address: str | None = None,
    stream=None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run ``items`` on Ray; returns one Outcome per item (in ``items`` order) and writes
    ``out``/summary.json. Complete items are skipped without a task. ``on_outcome`` sees each as it ends."""
    from interactive3d.pipeline import ProgressBar

    cfg.check()
    stream = stream if stream is not None else sys.stderr
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    todo: list[BatchItem] = []
    for item in items:
        record = read_complete(out / item.slug)
        if record is not None:
            outcomes[item.slug] = _outcome(item, {**record, "status": "skipped"}, attempts=0, folder=out / item.slug)
        else:
            todo.append(item)
    bar = ProgressBar("batch", len(items), stream=stream)
    finished = len(outcomes)
    for o in outcomes.values():
        stream.write(f"i3d batch: [{finished}/{len(items)}] skipped (complete)  {o.prompt[:50]!r}  seed {o.seed}\n")
    if todo:
        ray, started = connect_ray(ray_address, num_cpus=None)
        try:
            finished = _drive(ray, todo, base, out, cfg, outcomes, bar, finished, len(items), stream, on_outcome)
        finally:
            if started:
                ray.shutdown()
    bar.close(f"{sum(o.status in ('done', 'skipped') for o in outcomes.values())} done")
    result = [outcomes[i.slug] for i in items]
    _write_json(out / "summary.json", {"items": [dataclasses.asdict(o) for o in result]})
    return result


def _drive(ray, todo, base, out, cfg, outcomes, bar, finished, total, stream, on_outcome) -> int:
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if cfg.gpus_per_job > 0 and gpus < cfg.gpus_per_job:
        raise BatchError(
            f"each job asks for {cfg.gpus_per_job:g} GPU(s) but the Ray cluster has {gpus:g}; "
            "add GPU workers or pass --gpus-per-job 0 to run on CPUs"
        )
    device = "cpu" if cfg.gpus_per_job == 0 else "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPUs
    task = ray.remote(run_item)
    base_dict = dataclasses.asdict(base)
    driver_host = socket.gethostname()
    pending: dict[Any, tuple[BatchItem, int]] = {}

    def submit(item: BatchItem, attempt: int, resume: bool) -> None:
        ref = task.options(
            num_gpus=cfg.gpus_per_job, num_cpus=cfg.cpus_per_job, max_retries=cfg.lost_worker_retries,
            retry_exceptions=False, name=f"i3d-batch:{item.slug}",
        ).remote(item, base_dict, str(out), device, attempt, resume, driver_host)
        pending[ref] = (item, attempt)

    for item in todo:
        submit(item, 1, resume=True)  # resume: a rerun after Ctrl+C continues the prompt's checkpoint
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            bar.update(finished)
            for ref in ready:
                item, attempt = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task died more often than Ray re-runs it, or raised
                    res = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"}
                if res["status"] == "failed" and attempt <= cfg.retries:
                    stream.write(f"i3d batch: {item.prompt[:50]!r} failed (attempt {attempt}/{cfg.retries + 1}): {res['error'][:200]}; retrying\n")
                    submit(item, attempt + 1, resume=False)  # a failed run starts over, not from its checkpoint
                    continue
                o = _outcome(item, res, attempts=attempt, folder=out / item.slug)
                outcomes[item.slug] = o
                finished += 1
                stream.write(f"i3d batch: [{finished}/{total}] {_line(o)}\n")
                if on_outcome is not None:
                    on_outcome(o)
    except KeyboardInterrupt:
        stream.write(f"\ni3d batch: interrupted; cancelling {len(pending)} job(s) in flight\n")
        _cancel(ray, pending, outcomes, cfg.cancel_grace_s)
    return finished


def _cancel(ray, pending: dict, outcomes: dict, grace: float) -> None:
    """ray.cancel every task in flight: first a KeyboardInterrupt in the task (its backend gets SIGTERM
    and checkpoints, so a rerun continues there), after ``grace`` seconds (or a second Ctrl+C) a forced
    kill (the backend still gets SIGTERM from its dying parent)."""
    for ref in pending:
        ray.cancel(ref, force=False)
    refs = list(pending)
    try:
        done, rest = ray.wait(refs, num_returns=len(refs), timeout=grace) if refs else ([], [])
    except KeyboardInterrupt:  # a second Ctrl+C: no grace
        done, rest = [], refs
    for ref in rest:
        ray.cancel(ref, force=True)
    for ref in refs:
        item, attempt = pending[ref]
        res = {"status": "cancelled", "error": "cancelled (Ctrl+C)"}
        if ref in done:
            try:
                got = ray.get(ref, timeout=1.0)
                if got.get("status") == "done":  # it finished before the cancel reached it
                    res = got
            except (ray.exceptions.RayError, KeyboardInterrupt):
                pass
        outcomes[item.slug] = _outcome(item, res, attempts=attempt, folder=None)


def _outcome(item: BatchItem, res: dict, attempts: int, folder: Path | None) -> Outcome:
    if folder is not None and res.get("file_bytes"):  # produced on another machine
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in res["file_bytes"].items():
            (folder / name).write_bytes(data)
        record = {k: v for k, v in res.items() if k not in ("file_bytes", "status")}
        _write_json(folder / COMPLETE_FILE, record)
    return Outcome(
        slug=item.slug, prompt=item.prompt, seed=item.seed, status=res["status"], attempts=attempts,
        seconds=float(res.get("seconds", 0.0)), gaussians=int(res.get("gaussians", 0)),
        mesh_vertices=int(res.get("mesh_vertices", 0)), mesh_faces=int(res.get("mesh_faces", 0)),
        mesh_bytes=int(res.get("mesh_bytes", 0)), resumed_step=res.get("resumed_step"), host=str(res.get("host", "")),
        dir=str(folder) if folder is not None and res["status"] in ("done", "skipped") else "", error=str(res.get("error", "")),
    )


def _line(o: Outcome) -> str:
    if o.status in ("done", "skipped"):
        resumed = f", resumed at step {o.resumed_step}" if o.resumed_step else ""
        return (f"{o.status}  {o.prompt[:50]!r} seed {o.seed}: {o.seconds:.1f} s, {o.gaussians} Gaussians, "
                f"mesh {o.mesh_vertices} vertices / {_size(o.mesh_bytes)}{resumed}")
    return f"{o.status.upper()}  {o.prompt[:50]!r} seed {o.seed} after {o.attempts} attempt(s): {o.error[:200]}"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def summary_table(outcomes: Sequence[Outcome], bad: Sequence[BadLine] = ()) -> str:
    """prompt, status, seconds, Gaussians, mesh size — one row per item, then the skipped malformed lines."""
    rows = [("prompt", "seed", "status", "seconds", "Gaussians", "mesh", "folder / error")]
    for o in outcomes:
        ok = o.status in ("done", "skipped")
        rows.append((o.prompt[:40], str(o.seed), o.status, f"{o.seconds:.1f}", str(o.gaussians) if ok else "-",
                     f"{o.mesh_vertices} v / {_size(o.mesh_bytes)}" if ok else "-", o.slug if ok else o.error[:80]))
    for b in bad:
        rows.append((b.text.strip()[:40], "-", "bad line", "-", "-", "-", f"line {b.line}: {b.reason[:70]}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------------------
def add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="text → 3D for a file of prompts, one Ray task (own GPU) per prompt",
        description="Run the `i3d generate` pipeline for every prompt of --prompts on a Ray cluster (--ray ADDRESS) "
        "or a local Ray instance; outputs in --out/<slug>/, a summary table on stdout and in --out/summary.json. "
        "Needs the cluster extra: pip install 'interactive3d[cluster]'.",
    )
    add_batch_arguments(p)
    p.set_defaults(func=_cmd_batch)


def add_batch_arguments(p: argparse.ArgumentParser, prompts_required: bool = True) -> None:
    """The batch's flags (shared with scripts/blender_batch.py --ray)."""
    if prompts_required:
        p.add_argument("--prompts", required=True, help="prompt file: one prompt per line, options after ';' "
                       f"({', '.join(OPTION_TYPES_BATCH)}), e.g. 'a red robot ; steps=500 ; seed=3'")
        p.add_argument("--out", required=True, help="output folder (DIR/<slug>/ per prompt)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--gpus-per-job", type=float, default=BatchConfig.gpus_per_job, help="GPUs per task (0: CPU; default %(default)s)")
    p.add_argument("--cpus-per-job", type=float, default=BatchConfig.cpus_per_job, help="CPUs per task (default %(default)s)")
    p.add_argument("--retries", type=int, default=BatchConfig.retries, help="re-runs of a failed prompt before it is reported (default %(default)s)")
    p.add_argument("--lost-worker-retries", type=int, default=BatchConfig.lost_worker_retries,
                   help="re-runs (from the checkpoint) of a task whose worker died (default %(default)s)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds: one job per prompt × seed")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="run schedule as `i3d generate --preset` (resolved by each worker's backend for its device)")
    p.add_argument("--sizes", choices=sorted(SIZES), default="default", help="field and ray budgets (flags below override them)")
    p.add_argument("--model", default=None, help="hub id or local diffusers folder (each worker resolves it)")
    p.add_argument("--guidance", choices=GUIDANCES, default="sd", help="sd (default) or oracle (the demo's weight-free guidance)")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blend", action="store_true", help="also write scene.blend per prompt (the worker needs bpy)")
    for flag, name, kind in (
        ("--steps", "steps", int), ("--resolution", "resolution", int), ("--cfg", "guidance_scale", float),
        ("--n-init", "n_init", int), ("--distill-steps", "distill_steps", int), ("--distill-resolution", "distill_resolution", int),
        ("--distill-rays", "distill_rays", int), ("--distill-samples", "distill_samples", int),
        ("--distill-view-pool", "distill_view_pool", int), ("--distill-levels", "distill_levels", int),
        ("--distill-log2-table", "distill_log2_table", int), ("--mesh-resolution", "mesh_resolution", int),
        ("--mesh-threshold", "mesh_threshold", float),
    ):
        p.add_argument(flag, dest=f"cfg_{name}", type=kind, default=None, help=f"GenerateConfig.{name}")


def config_from_args(args: argparse.Namespace) -> tuple[GenerateConfig, BatchConfig, list[int] | None]:
    values: dict[str, Any] = dict(SIZES[args.sizes], preset=args.preset)
    values.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None})
    if args.model is not None:
        values["model"] = args.model
    if args.negative is not None:
        values["negative_prompt"] = args.negative
    base = GenerateConfig(prompt="", guidance=args.guidance, seed=args.seed, blend=args.blend, **values)
    bcfg = BatchConfig(gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, retries=args.retries,
                       lost_worker_retries=args.lost_worker_retries)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise BatchError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    return base, bcfg, seeds


def load_items(path: str, seeds: list[int] | None, default_seed: int) -> tuple[list[BatchItem], list[BadLine]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"cannot read --prompts {path}: {exc}") from exc
    jobs, bad = parse_prompt_file(text, OPTION_TYPES_BATCH)
    return plan(jobs, seeds, default_seed), bad


def _cmd_batch(args: argparse.Namespace) -> int:
    try:
        base, bcfg, seeds = config_from_args(args)
        items, bad = load_items(args.prompts, seeds, args.seed)
        for b in bad:
            sys.stderr.write(f"i3d batch: skipping line {b.line} of {args.prompts}: {b.reason}: {b.text.strip()[:80]!r}\n")
        outcomes = run_batch(items, base, args.out, bcfg, ray_address=args.ray)
    except BatchError as exc:
        sys.stderr.write(f"i3d batch: {exc}\n")
        return 2
    print(summary_table(outcomes, bad))
    summary = Path(args.out) / "summary.json"
    data = json.loads(summary.read_text())
    data["bad_lines"] = [dataclasses.asdict(b) for b in bad]
    _write_json(summary, data)
    if any(o.status == "cancelled" for o in outcomes):
        return 130
    return 0 if outcomes and all(o.status in ("done", "skipped") for o in outcomes) else 1
