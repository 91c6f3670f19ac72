"""Handlers of the Stage I ops (specs: ``_STAGE1_OPS`` in protocol/catalogue.py; see docs/backend-api.md).

- ``gaussians.init``: initialise the session's Gaussians (random sphere/ellipsoid, a points buffer with
  colours, a 3DGS .ply, or a mesh) — an undoable history entry.
- ``gaussians.load_ply`` / ``gaussians.save_ply``: 3DGS .ply files (INRIA layout).
- ``gaussians.render``: render the session from Blender cameras (previews, held-out metrics).
- ``stage1.set_reference``: the oracle guidance's reference object (a .ply or the current Gaussians).
- ``stage1.start``: the Stage I job (SD / PixArt-α / oracle / no guidance).
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import torch
from interactive3d.protocol.errors import Busy, InvalidArgs, NotFound
from interactive3d.protocol.ply import PlyFormatError

from ..stage1 import init as init_mod
from ..stage1.gaussians import Gaussians, init_random, make_optimizers
from ..stage1.guidance import (
    DEFAULT_PIXART_MODEL,
    DEFAULT_SD_MODEL,
    GuidanceConfig,
    OracleGuidance,
    PixArtGuidance,
    PromptSpec,
    StableDiffusionGuidance,
)
from .requests import Reply, Request, with_revision

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _file(path: str, what: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise NotFound(f"{what} file not found: {path!r}")
    return path


def _set_gaussians(req: Request, g: Gaussians, label: str) -> Reply:
    """Replace the session's Gaussians (an undo point first) and fresh optimisers."""
    s = req.session
    if s.job_active:
        raise Busy(f"session {s.id} has job {s.job.job_id} in flight; cancel it before replacing the Gaussians")
    with s.lock:
        s.record(label)
        s.gaussians = g
        s.optimizers = make_optimizers(s.gaussians)
    return Reply({"count": g.n, "sh_degree": g.sh_degree})


def _load_ply(path: str, device) -> Gaussians:
    try:
        return init_mod.load_ply(_file(path, ".ply"), device=device)
    except PlyFormatError as exc:
        raise InvalidArgs(f"path {path!r}: {exc}") from exc
    except ValueError as exc:
        raise InvalidArgs(f"path {path!r}: {exc}") from exc


def gaussians_init(req: Request) -> Reply:
    a, dev = req.args, req.device
    kind = a["kind"]
    try:
        if kind == "random":
            axes = tuple(a["axes"]) if a["axes"] is not None else None
            g = init_random(a["n"], radius=a["radius"], axes=axes, seed=a["seed"], sh_degree=a["sh_degree"], device=dev)
        elif kind == "points":
            if not req.buffers:
                raise InvalidArgs("gaussians.init: kind 'points' needs a points buffer [N,3]")
            points = req.buffers[0]
            colors = req.buffers[1] if len(req.buffers) > 1 else None
            if points.shape[0] == 0:
                raise InvalidArgs("gaussians.init: points buffer is empty (zero Gaussians)")
            g = init_mod.init_from_points(points, colors, opacity=a["opacity"], scale=a["scale"], sh_degree=a["sh_degree"], device=dev)
        elif kind == "ply":
            if not a["path"]:
                raise InvalidArgs("gaussians.init: kind 'ply' needs path")
            g = _load_ply(a["path"], dev)
        else:  # mesh
            if not a["path"]:
                raise InvalidArgs("gaussians.init: kind 'mesh' needs path")
            g = init_mod.init_from_mesh(
                _file(a["path"], "mesh"), n=a["n"], seed=a["seed"], fit_radius=a["fit_radius"], opacity=a["opacity"],
                sh_degree=a["sh_degree"], device=dev,
            )
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidArgs):
            raise
        raise InvalidArgs(f"gaussians.init ({kind}): {exc}") from exc
    return _set_gaussians(req, g, f"init {kind}")


def gaussians_load_ply(req: Request) -> Reply:
    return _set_gaussians(req, _load_ply(req.args["path"], req.device), "load .ply")


def gaussians_save_ply(req: Request) -> Reply:
    s = req.session
    path = os.path.expanduser(req.args["path"])
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NotFound(f"folder of path does not exist: {folder!r}")
    with s.lock:
        if s.gaussians is None or s.gaussians.n == 0:
            raise InvalidArgs("gaussians.save_ply: the session has no Gaussians")
        init_mod.save_ply(s.gaussians, path)
        n = s.gaussians.n
    return Reply({"path": os.path.abspath(path), "count": n})


def gaussians_render(req: Request) -> Reply:
    from ..stage1.cameras import cameras_from_blender
    from ..stage1.render import render

    s, a = req.session, req.args
    c2w = torch.from_numpy(np.array(req.buffers[0], dtype=np.float32))
    if c2w.ndim == 2:
        c2w = c2w[None]
    bottom = c2w[:, 3, :]
    if not torch.allclose(bottom, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand_as(bottom), atol=1e-5):
        raise InvalidArgs(f"gaussians.render: c2w last row must be (0,0,0,1), got {bottom.tolist()}")
    if abs(float(torch.linalg.det(c2w[:, :3, :3]).abs().min())) < 1e-8:
        raise InvalidArgs("gaussians.render: c2w rotation is singular")
    with s.lock:
        if s.gaussians is None or s.gaussians.n == 0:
            raise InvalidArgs("gaussians.render: the session has no Gaussians")
        cams = cameras_from_blender(c2w, a["fov_x"], a["width"], a["height"]).to(s.gaussians.device)
        bg = torch.tensor(a["background"], dtype=torch.float32, device=s.gaussians.device)
        with torch.no_grad():
            out = render(s.gaussians, cams, bg)
    rgb = out.rgb.float().cpu().numpy()
    alpha = out.alpha.float().cpu().numpy()
    return Reply({"count": int(rgb.shape[0])}, [np.ascontiguousarray(rgb), np.ascontiguousarray(alpha)])


def stage1_set_reference(req: Request) -> Reply:
    from ..stage1.trainer import OracleReference

    s, a = req.session, req.args
    if a["path"]:
        ref = _load_ply(a["path"], req.device)
    else:
        with s.lock:
            if s.gaussians is None or s.gaussians.n == 0:
                raise InvalidArgs("stage1.set_reference: no path and the session has no Gaussians")
            ref = s.gaussians.clone()
    with s.lock:
        s.extras[OracleReference.SLOT] = OracleReference(ref)
    return Reply({"count": ref.n})


def _check_model(kind: str, model: str, local_files_only: bool) -> None:
    """Fail fast (not_found) when the weights are certainly unavailable; loading happens on the job thread."""
    sub = "unet" if kind == "sd" else "transformer"
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, sub, "config.json")):
            raise NotFound(f"model folder {model!r} has no {sub}/config.json: not a diffusers {kind} model folder")
        return
    if not _HUB_ID.match(model):
        raise NotFound(
            f"model {model!r} is neither a local folder nor a hub id 'org/name'; pass a folder made with "
            f"save_pretrained or `huggingface-cli download {DEFAULT_SD_MODEL if kind == 'sd' else DEFAULT_PIXART_MODEL}`"
        )
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, f"{sub}/config.json"), str):
            raise NotFound(
                f"model {model!r} is not in the local Hugging Face cache and downloads are off; run "
                f"`huggingface-cli download {model}` where the backend runs, or pass model=/path/to/folder"
            )


def stage1_start(req: Request) -> Reply:
    # Imported on use: the trainer pulls in the renderer and densification (B1's modules).
    from ..stage1.densify import DensifyConfig
    from ..stage1.trainer import (
        OracleReference,
        Stage1Config,
        Stage1Job,
        oracle_render_fn,
    )

    s, a = req.session, req.args
    with s.lock:
        if s.gaussians is None or s.gaussians.n == 0:
            raise InvalidArgs("stage1.start: the session has no Gaussians (call gaussians.init first)")
    kind = a["guidance"]
    prompt = None
    if kind in ("sd", "pixart"):
        if not a["prompt"] or not a["prompt"].strip():
            raise InvalidArgs(f"stage1.start: prompt must be a non-empty string for guidance {kind!r}")
    if a["prompt"] and a["prompt"].strip():
        prompt = PromptSpec(a["prompt"], a["negative_prompt"], a["view_dependent"])
    elif kind == "oracle":
        prompt = PromptSpec("reference object", view_dependent=False)
    try:
        gcfg = GuidanceConfig(
            guidance_scale=a["guidance_scale"],
            t_range=(
                a["t_min"] if a["t_min"] is not None else a["t_range"][0],
                a["t_max"] if a["t_max"] is not None else a["t_range"][1],
            ),
            t_range_end=tuple(a["t_range_end"]) if a["t_range_end"] is not None else None,
            anneal_steps=a["anneal_steps"],
        )
        cfg = Stage1Config(
            steps=a["steps"], batch=a["batch"], resolution=a["resolution"], background=tuple(a["background"]),
            random_background=a["random_background"], densify=DensifyConfig() if a["densify"] else None,
            snapshot_every=a["snapshot_every"], fixed_t=a["fixed_t"], seed=a["seed"],
            elevation_range_deg=tuple(a["elevation_range_deg"]), distance_range=tuple(a["distance_range"]),
            fov_range_deg=tuple(a["fov_range_deg"]),
        )
    except ValueError as exc:
        raise InvalidArgs(f"stage1.start: {exc}") from exc

    guidance, loader = None, None
    device = req.device
    if kind == "oracle":
        if a["reference_path"]:
            ref = _load_ply(a["reference_path"], device)
        else:
            slot = s.extras.get(OracleReference.SLOT)
            if slot is None:
                raise InvalidArgs("stage1.start: guidance 'oracle' needs reference_path or a stage1.set_reference first")
            ref = slot.gaussians
        guidance = OracleGuidance(ref, oracle_render_fn, gcfg)
    elif kind in ("sd", "pixart"):
        model = a["model"] or (DEFAULT_SD_MODEL if kind == "sd" else DEFAULT_PIXART_MODEL)
        _check_model(kind, model, a["local_files_only"])
        cls = StableDiffusionGuidance if kind == "sd" else PixArtGuidance
        local = a["local_files_only"]

        def loader():
            return cls.from_pretrained(model, config=gcfg, device=device, local_files_only=local)

    job = Stage1Job(s, guidance, prompt, cfg, load_guidance=loader)
    job_id = req.start_job(job, label="stage1")
    return Reply({"job": job_id, "total": cfg.steps, "count": s.gaussians.n, "guidance": kind})


HANDLERS: dict = {name: with_revision(fn) for name, fn in {
    "gaussians.init": gaussians_init,
    "gaussians.load_ply": gaussians_load_ply,
    "gaussians.save_ply": gaussians_save_ply,
    "gaussians.render": gaussians_render,
    "stage1.set_reference": stage1_set_reference,
    "stage1.start": stage1_start,
}.items()}  # replies carry `revision` (issue 14)
