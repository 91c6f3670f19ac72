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
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from interactive3d.demo import Backend, PipelineError, _timed, _write_glb, run_blender_scene, spawn_backend, stop_backend
from interactive3d.protocol.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
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
    prompt: str
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    steps: int = 2000
    resolution: int = 256  # paper: SD guidance at 256×256 renders (use less on a CPU)
    batch: int = 1
    guidance_scale: float = 100.0  # CFG as threestudio/gsgen
    n_init: int = 4096
    init_radius: float = 0.6
    distill_steps: int = 2000
    distill_resolution: int = 64
    mesh_resolution: int = 160
    mesh_threshold: float | None = None  # None: the 50 % opacity surface; a number: that density iso-level
    seed: int = 0
    blend: bool = True


def run_generate(out_dir: str | os.PathLike, cfg: GenerateConfig, connect: str | None = None) -> dict:
    """Stage I (SDS) → Stage II (distil) → mesh; writes splats.ply, mesh.glb, scene.blend, report.json."""
    from interactive3d.protocol import ply

    if not cfg.prompt.strip():
        raise PipelineError("prompt must not be empty")
    out = Path(out_dir).resolve()
    t_start = time.perf_counter()
    model = cfg.model if connect is not None else resolve_model(cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": asdict(cfg), "model": model, "stages": {}}
    stages = report["stages"]
    with tempfile.TemporaryDirectory(prefix="i3d-gen-") as tmp:
        proc, address = None, connect
        if address is None:
            address = f"ipc://{tmp}/backend.sock"
            proc = spawn_backend(address, str(out / "backend_state"), str(out / "backend.log"))
        backend = Backend(address, proc=proc)
        try:
            t0 = time.perf_counter()
            backend.session = backend.call("session.create", {}).result["session"]
            backend.call("gaussians.init", {"kind": "random", "n": cfg.n_init, "radius": cfg.init_radius, "seed": cfg.seed})
            _timed(stages, "init", t0, backend=backend.pong)
            t0 = time.perf_counter()
            job = backend.run_job(
                "stage1.start",
                {"guidance": "sd", "model": model, "prompt": cfg.prompt, "negative_prompt": cfg.negative_prompt,
                 "steps": cfg.steps, "resolution": cfg.resolution, "batch": cfg.batch, "guidance_scale": cfg.guidance_scale,
                 # A folder resolved here is complete: the backend must not try the network for it.
                 "local_files_only": connect is None, "seed": cfg.seed},
                "stage I", cfg.steps, metric="loss",
            )
            state, _ = backend.state()
            _timed(stages, "stage1", t0, steps=cfg.steps, count=int(state.shape[0]), job=job["result"], last_metrics=job["metrics"])
            t0 = time.perf_counter()
            distill = backend.run_job(
                "stage2.distill", {"steps": cfg.distill_steps, "resolution": cfg.distill_resolution, "seed": cfg.seed},
                "distill", cfg.distill_steps, metric="psnr",
            )
            _timed(stages, "distill", t0, steps=cfg.distill_steps, psnr=distill["result"].get("psnr", distill["metrics"].get("psnr")), job=distill["result"])
            t0 = time.perf_counter()
            reply = backend.call(
                "stage2.extract_mesh",
                {"return_file": True, "format": "glb", "resolution": cfg.mesh_resolution,
                 **({} if cfg.mesh_threshold is None else {"surface": "density", "threshold": cfg.mesh_threshold})},
                timeout=600.0,
            )
            verts, faces, colors = (np.array(b) for b in reply.buffers[:3])
            if len(reply.buffers) > 3:  # the backend (maybe remote) sent the .glb's bytes
                atomic_write(out / "mesh.glb", [memoryview(np.ascontiguousarray(reply.buffers[3], dtype=np.uint8))])
            else:
                _write_glb(out / "mesh.glb", verts, faces, colors)
            _timed(stages, "mesh", t0, resolution=cfg.mesh_resolution, vertices=int(len(verts)), faces=int(len(faces)))
            if connect is not None:
                backend.call("session.close", {})  # a shared backend keeps no finished session behind
        finally:
            backend.close()
            if proc is not None:
                stop_backend(proc)
    ply.write_ply(out / "splats.ply", ply.state_to_splat(state))
    if cfg.blend:
        t0 = time.perf_counter()
        inputs = out / "scene_inputs.npz"
        np.savez(inputs, after=state, mesh_vertices=verts, mesh_faces=faces, mesh_colors=colors)
        try:
            made = run_blender_scene(str(inputs), str(out / "scene.blend"), None)
        finally:
            inputs.unlink(missing_ok=True)
        _timed(stages, "blender", t0, **made)
    report["total_seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report


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
    p.add_argument("--steps", type=int, default=GenerateConfig.steps, help="Stage I steps")
    p.add_argument("--resolution", type=int, default=GenerateConfig.resolution, help="Stage I render size")
    p.add_argument("--batch", type=int, default=GenerateConfig.batch)
    p.add_argument("--cfg", type=float, default=GenerateConfig.guidance_scale, help="classifier-free guidance scale")
    p.add_argument("--n-init", type=int, default=GenerateConfig.n_init)
    p.add_argument("--distill-steps", type=int, default=GenerateConfig.distill_steps)
    p.add_argument("--distill-resolution", type=int, default=GenerateConfig.distill_resolution)
    p.add_argument("--mesh-resolution", type=int, default=GenerateConfig.mesh_resolution)
    p.add_argument("--mesh-threshold", type=float, default=None,
                   help="mesh this density iso-level instead of the 50%% opacity surface")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-blend", action="store_true", help="skip writing scene.blend")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    cfg = GenerateConfig(
        prompt=args.prompt, negative_prompt=args.negative, model=args.model, steps=args.steps, resolution=args.resolution,
        batch=args.batch, guidance_scale=args.cfg, n_init=args.n_init, distill_steps=args.distill_steps,
        distill_resolution=args.distill_resolution, mesh_resolution=args.mesh_resolution, mesh_threshold=args.mesh_threshold, seed=args.seed, blend=not args.no_blend,
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
