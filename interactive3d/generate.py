"""``i3d generate "PROMPT"``: text → 3D with diffusion guidance (paper §3.1 Stage I, §3.2 Stage II, mesh).

The same protocol path as ``i3d demo``, with Stable Diffusion score distillation instead of the oracle.
Weights are needed where the backend runs. For a backend this command spawns, the model is resolved
here first — a local folder (made with ``save_pretrained`` or ``huggingface-cli download``) or a hub id
found in (or, when online, downloaded into) the Hugging Face cache — so that a missing model fails in
well under a second with a message that says how to get it, instead of deep inside a job. With
``--connect`` the remote backend resolves the id itself and its typed error is reported the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from interactive3d.pipeline import Backend, PipelineError, installed, spawn_backend, stop_backend, timed, write_mesh
from interactive3d.scene import run_blender_scene

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_SHAP_E_MODEL = "openai/shap-e"  # backend/stage1/shap_e.py's default (not imported: it pulls in torch)
# What StableDiffusionGuidance loads (no safety checker, no fp32/fp16 duplicates).
_MODEL_FILES = [
    "model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json", "text_encoder/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
]


class ModelNotAvailableError(RuntimeError):
    """The diffusion weights cannot be found; the message names the model and how to point at a copy."""


def _how_to(model: str) -> str:
    return (
        f"Diffusion weights for {model!r} are not available. Either download them where the backend runs "
        f"(`huggingface-cli download {model if not os.path.isabs(model) else DEFAULT_MODEL} --local-dir /path/to/folder` or "
        f"`StableDiffusionPipeline.from_pretrained(...).save_pretrained('/path/to/folder')`) and pass "
        f"`--model /path/to/folder`, or allow network access to the Hugging Face Hub (unset HF_HUB_OFFLINE)."
    )


def _looks_like_path(model: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that names a place on disk is a folder.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model(model: str, offline: bool | None = None) -> str:
    """A local folder holding the diffusers components of ``model`` (a folder path or a hub id).

    Hub ids are looked up in the local cache first; when not cached and the hub is allowed (HF_HUB_OFFLINE
    unset), the needed files are downloaded. Raises ModelNotAvailableError otherwise, never hangs offline.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelNotAvailableError(f"model must be a hub id or a folder, got {model!r}")
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded) or _looks_like_path(model):
        if not os.path.isfile(os.path.join(expanded, "model_index.json")):
            raise ModelNotAvailableError(f"{model!r} is not a diffusers model folder (no model_index.json). " + _how_to(model))
        return os.path.abspath(expanded)
    from huggingface_hub import snapshot_download

    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        return snapshot_download(model, allow_patterns=_MODEL_FILES, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - hub errors (not cached, bad id) all mean "not here"
        if offline:
            raise ModelNotAvailableError(_how_to(model) + f" ({type(exc).__name__})") from exc
    try:
        return snapshot_download(model, allow_patterns=_MODEL_FILES)
    except Exception as exc:  # noqa: BLE001 - network, auth and missing-repo errors are reported alike
        raise ModelNotAvailableError(_how_to(model) + f" (download failed: {type(exc).__name__}: {str(exc)[:200]})") from exc


@dataclass(frozen=True)
class GenerateConfig:
    """What ``i3d generate`` runs. Sizes left None come from the preset (``presets.resolve`` on the backend,
    scaled there for its device), else from ``DEFAULTS``."""

    prompt: str
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    preset: str | None = None  # paper | fast | preview
    init: str = "auto"  # auto: Shap-E when its weights are already local, else a random sphere; shap_e; random
    shap_e_model: str = DEFAULT_SHAP_E_MODEL
    shap_e_steps: int | None = None  # None: the preset's, else 64
    shap_e_grid: int | None = None  # None: the preset's, else 128
    steps: int | None = None
    resolution: int | None = None  # paper: SD guidance at 256×256 renders (use less on a CPU)
    batch: int | None = None
    guidance_scale: float = 100.0  # CFG as threestudio/gsgen
    n_init: int | None = None
    init_radius: float = 0.6
    distill_steps: int | None = None
    distill_resolution: int | None = None
    mesh_resolution: int = 160
    mesh_threshold: float | None = None  # None: the 50 % opacity surface; a number: that density iso-level
    seed: int = 0
    blend: bool = True
    # "sd": Stable Diffusion SDS with ``model``; "oracle": the demo's closed-form denoiser toward the sample
    # robot (interactive3d/sample.py) — no weights, for runs where none can be loaded (CPU tests, smoke runs)
    guidance: str = "sd"
    # Field and ray budget of the distillation; None: the backend's defaults (the paper's, sized for a GPU)
    distill_rays: int | None = None
    distill_samples: int | None = None
    distill_view_pool: int | None = None
    distill_levels: int | None = None
    distill_log2_table: int | None = None


GUIDANCES = ("sd", "oracle")
# Sizes without a preset (what `i3d generate` ran before presets existed).
DEFAULTS = {"steps": 2000, "resolution": 256, "batch": 1, "n_init": 4096, "distill_steps": 2000, "distill_resolution": 64}
INIT_MODES = ("auto", "shap_e", "random")
PRESET_NAMES = ("paper", "fast", "preview")  # backend/service/presets.py (not imported: it is the backend's)
ORACLE_REFERENCE_POINTS = 4000  # surface samples of the sample robot → the oracle's reference Gaussians
RESUME_FILE = "resume.json"  # what a spawned backend's session reached; run_generate(resume=True) reads it


def run_generate(
    out_dir: str | os.PathLike, cfg: GenerateConfig, connect: str | None = None, *, device: str = "auto", resume: bool = False
) -> dict:
    """Stage I (SDS) → Stage II (distil) → mesh; writes splats.ply, mesh.glb, scene.blend, report.json.

    With a spawned backend (``connect`` None) its checkpoints go to ``out_dir``/backend_state and the stages
    reached are kept in ``out_dir``/resume.json. ``resume=True`` continues from there: the session is
    re-opened with ``session.resume`` (the backend restarts an interrupted Stage I or distillation job at
    its last checkpoint) and finished stages are not run again; without a usable checkpoint it starts over.
    ``device`` is the spawned backend's (``cpu``, ``cuda``, ``auto``).
    """
    from interactive3d.protocol import ply, splat_data

    if not cfg.prompt.strip():
        raise PipelineError("prompt must not be empty")
    if cfg.guidance not in GUIDANCES:
        raise PipelineError(f"guidance must be one of {GUIDANCES}, got {cfg.guidance!r}")
    out = Path(out_dir).resolve()
    t_start = time.perf_counter()
    model = cfg.model if connect is not None or cfg.guidance != "sd" else resolve_model(cfg.model)
    if cfg.init not in INIT_MODES:
        raise PipelineError(f"init must be one of {INIT_MODES}, got {cfg.init!r}")
    sizes = {name: _pick(cfg, name, None) for name in DEFAULTS}
    stage1_args, distill_args = _stage_args(cfg, sizes, {}, model, connect)
    _check_args("stage1.start", stage1_args)  # before a backend starts: a bad setting fails in milliseconds
    _check_args("stage2.distill", distill_args)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": asdict(cfg), "model": model, "stages": {}}
    stages = report["stages"]
    progress = _Progress(out / RESUME_FILE) if connect is None else None
    previous = progress.load() if progress is not None and resume else None
    if progress is not None and not resume:
        progress.clear()
    with tempfile.TemporaryDirectory(prefix="i3d-gen-") as tmp:
        proc, address = None, connect
        if address is None:
            if previous is not None:
                _wait_for_previous_backend(previous.get("backend"), out / "backend_state")
            address = f"ipc://{tmp}/backend.sock"
            # the local model folders it will be asked to load are its model folders (--model-dir)
            proc = spawn_backend(address, str(out / "backend_state"), str(out / "backend.log"), device=device, exit_with_parent=True,
                                 models=(model, cfg.shap_e_model))
            progress.update(backend={"host": socket.gethostname(), "pid": proc.pid})
        backend = Backend(address, proc=proc)
        try:
            done, resumed_job = _resume_session(backend, progress, previous, report) if previous is not None else (set(), None)
            t0 = time.perf_counter()
            if "init" not in done:
                backend.session = backend.call("session.create", {}).result["session"]
            ops: dict = {}
            if cfg.preset is not None:  # resolved by the backend for its device (and again on a resume: it is cheap)
                resolved = backend.call("presets.resolve", {"name": cfg.preset}).result
                ops = resolved["ops"]
                report["preset"] = {k: resolved[k] for k in ("preset", "device", "scaled", "note", "values")}
                sys.stderr.write(f"i3d generate: {resolved['note']}\n")
                sizes = {
                    "steps": _pick(cfg, "steps", ops.get("stage1.start", {}).get("steps")),
                    "resolution": _pick(cfg, "resolution", ops.get("stage1.start", {}).get("resolution")),
                    "batch": _pick(cfg, "batch", ops.get("stage1.start", {}).get("batch")),
                    "n_init": _pick(cfg, "n_init", ops.get("gaussians.init", {}).get("n")),
                    "distill_steps": _pick(cfg, "distill_steps", ops.get("stage2.distill", {}).get("steps")),
                    "distill_resolution": _pick(cfg, "distill_resolution", ops.get("stage2.distill", {}).get("resolution")),
                }
                stage1_args, distill_args = _stage_args(cfg, sizes, ops, model, connect)
            if "init" not in done:
                if cfg.guidance == "oracle":
                    _set_oracle_reference(backend, cfg.seed)
                report["init"] = _init(backend, cfg, sizes["n_init"], ops.get("gaussians.init", {}))
                timed(stages, "init", t0, backend=backend.pong, kind=report["init"]["kind"])
                if progress is not None:
                    progress.update(session=backend.session, done=["init"], running=None, stages=stages)
            if "stage1" not in done:
                t0 = time.perf_counter()
                job = _run_or_wait(backend, progress, done, resumed_job, "stage1", "stage1.start", stage1_args, "stage I", sizes["steps"], "loss")
                state, _ = backend.state()
                timed(stages, "stage1", t0, steps=sizes["steps"], resolution=sizes["resolution"], count=int(state.shape[0]),
                       job=job["result"], last_metrics=job["metrics"])
                if progress is not None:
                    progress.update(done=["init", "stage1"], running=None, stages=stages)
            else:
                state, _ = backend.state()
            if "distill" not in done:
                t0 = time.perf_counter()
                distill = _run_or_wait(
                    backend, progress, done, resumed_job, "distill", "stage2.distill", distill_args, "distill", sizes["distill_steps"], "psnr"
                )
                timed(stages, "distill", t0, steps=sizes["distill_steps"], psnr=distill["result"].get("psnr", distill["metrics"].get("psnr")), job=distill["result"])
                if progress is not None:
                    progress.update(done=["init", "stage1", "distill"], running=None, stages=stages)
            t0 = time.perf_counter()
            reply = backend.call(
                "stage2.extract_mesh",
                {"resolution": cfg.mesh_resolution,
                 **({} if cfg.mesh_threshold is None else {"surface": "density", "threshold": cfg.mesh_threshold})},
                timeout=600.0,
            )
            verts, faces, colors = (np.array(b) for b in reply.buffers[:3])
            write_mesh(out / "mesh.glb", reply.buffers[:3])  # written here: the backend may be remote
            timed(stages, "mesh", t0, resolution=cfg.mesh_resolution, vertices=int(len(verts)), faces=int(len(faces)))
            if connect is not None:
                backend.call("session.close", {})  # a shared backend keeps no finished session behind
        except Exception:
            if progress is not None:
                # A run that failed (rather than being interrupted) is not continued: a retry starts over.
                progress.clear()
            raise
        finally:
            backend.close()
            if proc is not None:
                stop_backend(proc)
    ply.write_ply(out / "splats.ply", splat_data.state_to_splat(state))
    if cfg.blend and not installed("bpy"):
        stages["blender"] = {"skipped": "no bpy module: pip install 'interactive3d[blender]'"}
        log.warning("scene.blend skipped: no bpy module (pip install 'interactive3d[blender]')")
    elif cfg.blend:
        t0 = time.perf_counter()
        inputs = out / "scene_inputs.npz"
        np.savez(inputs, after=state, mesh_vertices=verts, mesh_faces=faces, mesh_colors=colors)
        try:
            made = run_blender_scene(str(inputs), str(out / "scene.blend"), None)
        finally:
            inputs.unlink(missing_ok=True)
        timed(stages, "blender", t0, **made)
    report["total_seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def _pick(cfg: GenerateConfig, name: str, preset_value):
    """An explicit setting wins, then the preset's value, then DEFAULTS."""
    value = getattr(cfg, name)
    if value is not None:
        return value
    return preset_value if preset_value is not None else DEFAULTS[name]


def _stage_args(cfg: GenerateConfig, sizes: dict, ops: dict, model: str, connect: str | None) -> tuple[dict, dict]:
    """(stage1.start args, stage2.distill args) from the settings, the sizes and the preset's op args."""
    preset_s1 = ops.get("stage1.start", {})
    s1 = dict(preset_s1)  # no preset: stage1.start's own defaults (its densification schedule included)
    s1.update({"guidance": cfg.guidance, "prompt": cfg.prompt, "negative_prompt": cfg.negative_prompt, "steps": sizes["steps"],
               "resolution": sizes["resolution"], "batch": sizes["batch"], "seed": cfg.seed})
    if cfg.guidance == "sd":
        # A folder resolved here is complete: the backend must not try the network for it.
        s1.update(model=model, guidance_scale=cfg.guidance_scale, local_files_only=connect is None)
    else:
        for k in ("model", "guidance_scale", "local_files_only"):
            s1.pop(k, None)
    if s1.get("anneal_start") is not None and s1["steps"] != preset_s1.get("steps"):
        s1["anneal_start"] = s1["steps"] // 2  # threestudio's half-way t_max drop, at half of this run
    distill = {"steps": sizes["distill_steps"], "resolution": sizes["distill_resolution"], "seed": cfg.seed, **_distill_budget(cfg)}
    preset_d = ops.get("stage2.distill", {})
    if distill["steps"] == preset_d.get("steps"):  # the preset's learning rates were chosen for its run length
        distill.update({k: preset_d[k] for k in ("lr_grid", "lr_mlp") if k in preset_d})
    return s1, distill


def _init(backend: Backend, cfg: GenerateConfig, n: int, preset_init: dict) -> dict:
    """gaussians.init: Shap-E points for the prompt (paper §4) or a random sphere; says which and why."""
    from interactive3d.protocol.errors import RemoteError

    random_args = {"kind": "random", "n": n, "radius": cfg.init_radius, "seed": cfg.seed}
    if cfg.init == "random" or (cfg.init == "auto" and cfg.guidance == "oracle"):
        backend.call("gaussians.init", random_args)
        return {"kind": "random", "note": "random sphere (" + ("--init random" if cfg.init == "random" else "oracle guidance") + ")"}
    args = {"kind": "shap_e", "prompt": cfg.prompt, "model": cfg.shap_e_model, "n": n, "seed": cfg.seed,
            "shap_e_steps": cfg.shap_e_steps or preset_init.get("shap_e_steps", 64),
            "shap_e_grid": cfg.shap_e_grid or preset_init.get("shap_e_grid", 128),
            # auto never starts a multi-gigabyte download: Shap-E is used when it is already local
            "local_files_only": cfg.init == "auto"}
    try:
        backend.call("gaussians.init", args, timeout=1800.0)
        return {"kind": "shap_e", "model": cfg.shap_e_model, "note": f"{n} points from Shap-E ({cfg.shap_e_model})"}
    except (RemoteError, PipelineError) as exc:
        if cfg.init == "shap_e":
            raise PipelineError(f"Shap-E initialisation failed: {exc}") from exc
        note = (f"Shap-E ({cfg.shap_e_model}) is not available locally ({str(exc)[:300]}); starting from a random sphere of "
                f"{n} points. Download it with `huggingface-cli download {DEFAULT_SHAP_E_MODEL}` (or pass --shap-e "
                "/path/to/folder, or --init shap_e to allow the download) to start from Shap-E as the paper does.")
        sys.stderr.write(f"i3d generate: {note}\n")
        backend.call("gaussians.init", random_args)
        return {"kind": "random", "note": note}


def _check_args(op: str, args: dict) -> None:
    """``args`` against the protocol catalogue's bounds for ``op`` (as the backend will check them)."""
    from interactive3d.protocol.catalogue import OPS, validate_args
    from interactive3d.protocol.errors import ProtocolError

    try:
        validate_args(dataclasses.replace(OPS[op], session=False), args)
    except ProtocolError as exc:
        raise PipelineError(f"invalid settings: {exc}") from exc


def _distill_budget(cfg: GenerateConfig) -> dict:
    named = {"rays_per_step": cfg.distill_rays, "n_samples": cfg.distill_samples, "view_pool": cfg.distill_view_pool,
             "levels": cfg.distill_levels, "log2_table_size": cfg.distill_log2_table}
    return {k: v for k, v in named.items() if v is not None}


# -- resuming a spawned backend's session (batch workers lost mid-job) ------------------------------------
class _Progress:
    """``resume.json``: the session id, the stages done, the job running and the backend's host/pid.
    Rewritten atomically (temp file + rename) after each stage, so a kill leaves the old or the new one."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {}

    def load(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("session"), str):
            return None
        self.data = data
        return data

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.data = {}

    def update(self, **fields) -> None:
        self.data.update(fields)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, default=float))
        os.replace(tmp, self.path)


def _wait_for_previous_backend(previous: dict | None, state_dir: Path, timeout: float = 120.0) -> None:
    """The backend of an interrupted run on this host may still be writing its shutdown checkpoint (it got
    SIGTERM when its parent died): wait for it to exit before a new backend reads the state dir.
    Only a live process whose command line names this state dir is waited on (a reused pid is not)."""
    if not previous or previous.get("host") != socket.gethostname():
        return
    pid = int(previous.get("pid", 0))

    def alive() -> bool:
        try:
            return pid > 0 and str(state_dir) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:  # gone (or no /proc: nothing to wait on)
            return False

    deadline, signalled = time.monotonic() + timeout, None
    while alive():
        if time.monotonic() > deadline:
            if signalled is signal.SIGKILL:
                return
            signalled = signal.SIGKILL if signalled else signal.SIGTERM
            log.warning("backend %d of the interrupted run is still up after %.0f s; sending %s", pid, timeout, signalled.name)
            os.kill(pid, signalled)
            deadline = time.monotonic() + timeout
        time.sleep(0.2)


def _resume_session(backend: Backend, progress: _Progress, previous: dict, report: dict) -> tuple[set[str], str | None]:
    """Re-open the interrupted session: (the stages already done, the id of the job ``session.resume``
    restarted or None); (empty set, None) to start over."""
    try:
        r = backend.call("session.resume", {"session": previous["session"], "paused": False}).result
    except PipelineError as exc:
        log.warning("cannot resume session %s (%s); starting over", previous["session"], exc)
        progress.update(session=None, done=[], running=None, stages={})
        return set(), None
    backend.session = r["session"]
    done = set(previous.get("done", []))
    report["stages"].update(previous.get("stages") or {})
    report["resumed"] = {"session": r["session"], "job": r.get("job"), "step": int(r.get("step") or 0),
                         "running": previous.get("running"), "done": sorted(done)}
    log.info("resumed session %s: done %s, %s restarted at step %s", r["session"], sorted(done), previous.get("running"), r.get("step"))
    return done, r.get("job")


def _run_or_wait(backend: Backend, progress: _Progress | None, done: set[str], resumed_job: str | None, stage: str, op: str,
                 args: dict, label: str, total: int, metric: str) -> dict:
    """Start ``stage``'s job, or — when it was running at the interruption — wait for the job that
    ``session.resume`` restarted (none: it had finished before its last checkpoint)."""
    if done and progress is not None and progress.data.get("running") == stage:
        if resumed_job is None:
            return {"result": {"status": "done", "resumed": "finished before the interruption"}, "metrics": {}, "seconds": 0.0}
        return backend.wait_job(resumed_job, op, label, total, metric)
    t0 = time.perf_counter()
    job = backend.call(op, args).result.get("job")
    if progress is not None:  # recorded once the backend took the job (a refused start leaves nothing to resume)
        progress.update(running=stage, job=job)
    return backend.wait_job(job, op, label, total, metric, t0=t0)


def _set_oracle_reference(backend: Backend, seed: int) -> None:
    """The sample robot's surface Gaussians as the oracle's reference (sent over the wire, as the demo)."""
    from interactive3d import sample

    obj = sample.build_sample_object()
    surf = sample.sample_surface(obj, ORACLE_REFERENCE_POINTS, seed=seed)
    reference = sample.surface_state(surf, float(sum(p.mesh.area for p in obj.parts)))
    backend.call("gaussians.init", {"kind": "points", "opacity": 0.9}, [reference[:, 0:3].copy(), reference[:, 3:6].copy()])
    backend.call("stage1.set_reference", {})


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="text → 3D with diffusion guidance (Stage I + Stage II + mesh)",
        description="Generate Gaussians for PROMPT with Stable Diffusion score distillation, distil them into the "
        "NeRF and extract a mesh. Writes splats.ply, mesh.glb, scene.blend and report.json in --out.",
    )
    p.add_argument("prompt")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local diffusers folder (default {DEFAULT_MODEL})")
    p.add_argument("--connect", default=None, help="address of a running backend (default: spawn a local one)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="run schedule: paper = 10k Stage I + 10k Stage II steps at 256², zoom-in 256², t annealing "
                   "(scaled down, and said so, on a CPU backend); explicit size flags override it")
    p.add_argument("--init", choices=INIT_MODES, default="auto",
                   help="auto: Shap-E points when its weights are local, else a random sphere (said on stderr); "
                   "shap_e: Shap-E (downloads if needed); random")
    p.add_argument("--shap-e", default=DEFAULT_SHAP_E_MODEL, dest="shap_e", help=f"Shap-E hub id or folder (default {DEFAULT_SHAP_E_MODEL})")
    p.add_argument("--shap-e-steps", type=int, default=None, help="Shap-E prior steps (default: the preset's, else 64)")
    p.add_argument("--shap-e-grid", type=int, default=None, help="Shap-E mesh grid (default: the preset's, else 128)")
    p.add_argument("--steps", type=int, default=None, help=f"Stage I steps (default: the preset's, else {DEFAULTS['steps']})")
    p.add_argument("--resolution", type=int, default=None, help=f"Stage I render size (default: the preset's, else {DEFAULTS['resolution']})")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--cfg", type=float, default=GenerateConfig.guidance_scale, help="classifier-free guidance scale")
    p.add_argument("--n-init", type=int, default=None, help=f"initial points (default {DEFAULTS['n_init']})")
    p.add_argument("--distill-steps", type=int, default=None)
    p.add_argument("--distill-resolution", type=int, default=None)
    p.add_argument("--mesh-resolution", type=int, default=GenerateConfig.mesh_resolution)
    p.add_argument("--mesh-threshold", type=float, default=None,
                   help="mesh this density iso-level instead of the 50%% opacity surface")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-blend", action="store_true", help="skip writing scene.blend")
    p.add_argument("--guidance", choices=GUIDANCES, default="sd",
                   help="sd: Stable Diffusion with --model (default); oracle: the demo's weight-free guidance toward the sample robot")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    cfg = GenerateConfig(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, preset=args.preset, init=args.init,
        shap_e_model=args.shap_e, shap_e_steps=args.shap_e_steps, shap_e_grid=args.shap_e_grid, steps=args.steps, resolution=args.resolution,
        batch=args.batch, guidance_scale=args.cfg, n_init=args.n_init, distill_steps=args.distill_steps,
        distill_resolution=args.distill_resolution, mesh_resolution=args.mesh_resolution, mesh_threshold=args.mesh_threshold, seed=args.seed, blend=not args.no_blend,
        guidance=args.guidance,
    )
    try:
        report = run_generate(args.out, cfg, connect=args.connect)
    except ModelNotAvailableError as exc:
        sys.stderr.write(f"i3d generate: {exc}\n")
        return 2
    except PipelineError as exc:
        msg = str(exc)
        if "not_found" in msg or "model" in msg.lower():
            msg += "\n" + _how_to(cfg.model)
        sys.stderr.write(f"i3d generate: {msg}\n")
        return 1
    sys.stderr.write(f"i3d generate: done in {report['total_seconds']:.1f} s → {Path(args.out).resolve()}\n")
    return 0
