"""Handlers of the Stage I ops (specs: ``_STAGE1_OPS`` in protocol/catalogue.py; see docs/backend-api.md).

- ``gaussians.init``: initialise the session's Gaussians (random sphere/ellipsoid, a points buffer with
  colours, a 3DGS .ply, a mesh, or Shap-E's mesh for a prompt) — an undoable history entry.
- ``gaussians.load_ply`` / ``gaussians.save_ply``: 3DGS .ply files (INRIA layout).
- ``gaussians.render``: render the session from Blender cameras (previews, held-out metrics).
- ``stage1.set_reference``: the oracle guidance's reference object (a .ply or the current Gaussians).
- ``stage1.start``: the Stage I job (SD / PixArt-α / oracle / no guidance).
- ``presets.resolve``: the op arguments of a run preset (paper / fast / preview) for this backend's device.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from dataclasses import replace

import numpy as np
import torch
from interactive3d.protocol import ply as ply_io
from interactive3d.protocol.errors import Busy, InvalidArgs, NotFound, ProtocolError, TooLarge
from interactive3d.protocol.splat_data import PlyFormatError

from ..stage1 import init as init_mod
from ..stage1.gaussians import Gaussians, init_random, make_optimizers
from ..stage1.guidance import (
    GuidanceConfig,
    OracleGuidance,
    PromptSpec,
)
from ..stage1.guidance_cache import GuidanceSpec, default_model
from . import costs, files
from .requests import Reply, Request, with_revision

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MIN_PLY_ROW_BYTES = 56  # the 14 float32 properties every 3DGS .ply row has at least
MAX_RENDER_VIEWS = 64


def _read_path(req: Request, path: str, what: str) -> str:
    """A request path resolved for reading inside the data roots (files.py: invalid_args / not_found / too_large)."""
    return files.resolve_read(req.services.roots, path, req.services.max_file_bytes, f"{req.op}: {what}")


def _set_gaussians(req: Request, g: Gaussians, label: str) -> Reply:
    """Replace the session's Gaussians (an undo point first) and fresh optimisers."""
    s = req.session
    if s.job_active:
        raise Busy(f"session {s.id} has job {s.job.job_id} in flight; cancel it before replacing the Gaussians")
    with s.lock:
        s.record(label)
        s.gaussians = g
        s.optimizers = make_optimizers(s.gaussians)
        s.fit_resolution = None  # a set of unknown origin until a Stage I run fits it
    return Reply({"count": g.n, "sh_degree": g.sh_degree})


def _load_real_path(req: Request, path: str, shown: str) -> Gaussians:
    """Read a resolved splat file under the memory budget: the Gaussians its header declares (a .spz's decompressed
    count; without a readable header, a file of B bytes holds ≤ B/56), their decoded floats and the live set."""
    nbytes = os.path.getsize(path)
    declared = costs.splat_file_count(path)
    n, floats = declared if declared is not None else (nbytes // MIN_PLY_ROW_BYTES + 1, 14)
    if n > init_mod.MAX_POINTS:
        raise TooLarge(f"{req.op}: {shown} declares {n} Gaussians, over the cap of {init_mod.MAX_POINTS}")
    est = nbytes + 2 * 4 * floats * n + costs.gaussians_bytes(n)
    with req.services.memory.reserve(f"{req.op}: loading {shown} ({nbytes} bytes)", est):
        try:
            return init_mod.load_ply(path, device=req.device, spz_axes=req.args.get("spz_axes", "ply"))
        except (PlyFormatError, ValueError, OverflowError) as exc:
            raise InvalidArgs(f"{req.op}: {shown}: {exc}") from exc
        except MemoryError:
            raise TooLarge(f"{req.op}: {shown} does not fit in memory") from None


def load_splat(req: Request, path: str | None, what: str = "path", buffer=None) -> Gaussians:
    """Gaussians from a path in the data roots or, without one, an uploaded file frame: ``buffer`` (uint8
    [nbytes]) or, by default, the request's last buffer. Its format comes from the ``filename`` arg's suffix
    (default .ply) and the file's magic. Shared by gaussians.init/load_ply, stage1.set_reference and parts.add:
    the same caps (too_large) and the same invalid_args for a file that is not a splat file."""
    if path is None or path == "":
        frame = _file_frame(req, buffer)
        if frame is None:
            raise InvalidArgs(f"{req.op}: give {what} or send the file as a frame")
        suffix = files.suffix_of(req.args.get("filename"), ".ply")
        with files.staged(frame, suffix) as tmp:
            return _load_real_path(req, tmp, f"the uploaded {suffix} file")
    real = _read_path(req, path, what)
    # read once through a folder handle (no swap after the check can redirect it), parsed from a private copy
    data = files.read_bytes(req.services.roots, real, req.services.max_file_bytes, f"{req.op}: {what}")
    suffix = os.path.splitext(real)[1]
    if suffix.lower() == ".json":  # an unbundled .sog: its images are read the same way and bundled privately
        data, suffix = _bundle_sog(req, real, data, what), ".sog"
    with files.staged(data, suffix) as tmp:
        return _load_real_path(req, tmp, repr(path))


def _bundle_sog(req: Request, meta_path: str, meta: bytes, what: str) -> bytes:
    """An unbundled SOG (``meta.json`` and the images it names, beside it) as the bytes of a bundled .sog: each
    image is a plain file name beside meta.json, read like any request path (in the data folders, a regular
    file, under the file cap), so the reader never opens a file by itself."""
    try:
        sections = json.loads(meta)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgs(f"{req.op}: {what}: meta.json is not JSON: {exc}") from None
    if not isinstance(sections, dict):
        raise InvalidArgs(f"{req.op}: {what}: meta.json must hold an object")
    names = []
    for sec in sections.values():
        for name in (sec.get("files") if isinstance(sec, dict) else None) or []:
            if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
                raise InvalidArgs(f"{req.op}: {what}: meta.json names {str(name)[:200]!r}; only files beside it are read")
            names.append(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("meta.json", meta)
        for name in dict.fromkeys(names):
            image = f"image {name!r} beside {what}"
            real = _read_path(req, os.path.join(os.path.dirname(meta_path), name), image)
            z.writestr(name, files.read_bytes(req.services.roots, real, req.services.max_file_bytes, f"{req.op}: {image}"))
    return buf.getvalue()


def _file_frame(req: Request, buffer=None):
    """The uint8 file frame ``buffer`` (default: the request's last buffer, the op's 'file'), or None;
    too_large over the file cap."""
    if buffer is None:
        if not req.buffers:
            return None
        buffer = req.buffers[-1]
    frame = files.frame_bytes(buffer, f"{req.op}: file")
    cap = req.services.max_file_bytes
    if frame.nbytes > cap:
        raise TooLarge(f"{req.op}: the file frame is {frame.nbytes} bytes, over the server's file cap of {cap}")
    return frame


def _data_fetch(req: Request, folder: str):
    """The ``fetch`` of a mesh read from a data folder: a file it names (an OBJ's .mtl and textures, a glTF's
    .bin) is taken relative to the mesh's folder and checked like any request path (inside the data folders,
    a regular file, under the file cap)."""

    def fetch(name: str) -> bytes:
        if re.match(r"^[A-Za-z][\w+.-]*:", name):  # file:, http:, … (data: URIs never get here)
            raise InvalidArgs(f"gaussians.init: the mesh refers to {name[:200]!r}; only paths beside it are read")
        what = f"file {name!r} the mesh refers to"
        return files.read_bytes(req.services.roots, _read_path(req, os.path.join(folder, name), what), req.services.max_file_bytes, what)

    return fetch


def _init_from_mesh(req: Request, data: memoryview | bytes, suffix: str, folder: str | None) -> Gaussians:
    """Gaussians on a mesh parsed from its bytes; files it refers to come from ``folder`` in the data folders
    (a mesh given by path) or are refused (an uploaded mesh: ``folder`` None)."""
    a = req.args
    # the mesh itself: trimesh holds a few times its file size; then n Gaussians
    est = costs.gaussians_bytes(a["n"]) + 16 * len(data)
    with req.services.memory.reserve(f"gaussians.init: {a['n']} Gaussians from a mesh", est):
        try:
            mesh = init_mod.load_mesh_bytes(data, suffix, None if folder is None else _data_fetch(req, folder))
            return init_mod.init_from_mesh(
                mesh, n=a["n"], seed=a["seed"], fit_radius=a["fit_radius"], opacity=a["opacity"],
                sh_degree=a["sh_degree"], device=req.device,
            )
        except (ValueError, TypeError, ProtocolError):
            raise  # gaussians_init turns ValueError/TypeError into invalid_args
        except Exception as exc:  # noqa: BLE001 - trimesh raises many types (KeyError, NotImplementedError, …) on bad files
            raise InvalidArgs(f"gaussians.init: cannot read the mesh: {type(exc).__name__}: {exc}") from None


def gaussians_init(req: Request) -> Reply:
    a, dev = req.args, req.device
    kind = a["kind"]
    try:
        if kind == "random":
            axes = tuple(a["axes"]) if a["axes"] is not None else None
            req.services.memory.check(f"gaussians.init: {a['n']} Gaussians", costs.gaussians_bytes(a["n"]))
            g = init_random(a["n"], radius=a["radius"], axes=axes, seed=a["seed"], sh_degree=a["sh_degree"], device=dev)
        elif kind == "points":
            if not req.buffers:
                raise InvalidArgs("gaussians.init: kind 'points' needs a points buffer [N,3]")
            points = req.buffers[0]
            colors = req.buffers[1] if len(req.buffers) > 1 else None
            if points.shape[0] == 0:
                raise InvalidArgs("gaussians.init: points buffer is empty (zero Gaussians)")
            req.services.memory.check(f"gaussians.init: {points.shape[0]} points", costs.gaussians_bytes(points.shape[0]))
            g = init_mod.init_from_points(points, colors, opacity=a["opacity"], scale=a["scale"], sh_degree=a["sh_degree"], device=dev)
        elif kind == "shap_e":
            g = _init_shap_e(req)
        elif kind == "ply":
            if not a["path"] and len(req.buffers) < 3:
                raise InvalidArgs("gaussians.init: kind 'ply' needs path or a file frame")
            g = load_splat(req, a["path"])
        else:  # mesh
            if a["path"]:
                real = _read_path(req, a["path"], "path")
                data = files.read_bytes(req.services.roots, real, req.services.max_file_bytes, "gaussians.init: path")
                g = _init_from_mesh(req, data, files.suffix_of(real, ""), os.path.dirname(real))
            elif len(req.buffers) == 3:
                suffix = files.suffix_of(a["filename"], "")
                if not suffix:
                    raise InvalidArgs("gaussians.init: a mesh file frame needs filename (its suffix names the format: .obj, .glb, .ply, …)")
                g = _init_from_mesh(req, _file_frame(req), suffix, None)
            else:
                raise InvalidArgs("gaussians.init: kind 'mesh' needs path or a file frame")
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidArgs):
            raise
        raise InvalidArgs(f"gaussians.init ({kind}): {exc}") from exc
    return _set_gaussians(req, g, f"init {kind}")


def _init_shap_e(req: Request) -> Gaussians:
    """Gaussians on Shap-E's mesh for the prompt (paper §4, as GSGen); the pipeline comes from the server's
    model cache (loaded once). Runs in the handler: seconds on a GPU once loaded."""
    from ..stage1.shap_e import ShapEConfig, ShapEUnavailable, init_from_shap_e

    a, s = req.args, req.session
    prompt = a["prompt"] or (s.guidance.prompt if s.guidance is not None else "")
    if not prompt.strip():
        raise InvalidArgs("gaussians.init: kind 'shap_e' needs a prompt (or a session prompt from stage1.start)")
    model = _check_model(req, "shap_e", a["model"] or default_model("shap_e"), a["local_files_only"])
    cfg = ShapEConfig(
        n=a["n"], steps=a["shap_e_steps"], guidance_scale=a["shap_e_guidance_scale"], grid_size=a["shap_e_grid"],
        fit_radius=a["fit_radius"] if a["fit_radius"] is not None else ShapEConfig.fit_radius, opacity=a["opacity"], seed=a["seed"],
    )
    try:
        pipe = req.services.guidance_cache.get("shap_e", model, req.device, local_files_only=a["local_files_only"])
    except ShapEUnavailable as exc:
        raise NotFound(str(exc)) from exc
    return init_from_shap_e(pipe, prompt, cfg, sh_degree=a["sh_degree"], device=req.device)


def gaussians_load_ply(req: Request) -> Reply:
    return _set_gaussians(req, load_splat(req, req.args["path"]), "load .ply")


def gaussians_save_ply(req: Request) -> Reply:
    s, a = req.session, req.args
    if not a["path"] and not a["return_file"]:
        raise InvalidArgs("gaussians.save_ply: give path, return_file=true, or both")
    target = files.resolve_write(req.services.roots, a["path"], "gaussians.save_ply: path") if a["path"] else None
    with s.lock:
        if s.gaussians is None or s.gaussians.n == 0:
            raise InvalidArgs("gaussians.save_ply: the session has no Gaussians")
        data = init_mod.gaussians_to_ply(s.gaussians)
        n = s.gaussians.n
    # written outside the lock: a running job goes on stepping while the bytes go to disk
    buffers = []
    with files.scratch_path(".ply") as tmp:  # encoded privately, then written through the folder's handle
        ply_io.write_ply(tmp, data)
        body = np.fromfile(tmp, dtype=np.uint8)
    cap = req.services.max_file_bytes
    if a["return_file"] and body.nbytes > cap:  # refused before anything is written
        raise TooLarge(f"gaussians.save_ply: the .ply is {body.nbytes} bytes, over the cap of {cap} for a reply frame")
    if target is not None:
        files.write_bytes(req.services.roots, target, [memoryview(body)], "gaussians.save_ply: path")
    if a["return_file"]:
        buffers = [body]
    return Reply({"path": target, "count": n}, buffers)


def gaussians_render(req: Request) -> Reply:
    """Render view by view, each under the memory budget (issue 15): the projection of one view costs
    O(N) and bounds the (Gaussian, pixel) pairs the rasteriser will list, so a view that cannot fit is
    refused with too_large before it allocates."""
    from ..stage1.cameras import cameras_from_blender
    from ..stage1.render import render

    s, a = req.session, req.args
    c2w = torch.from_numpy(np.array(req.buffers[0], dtype=np.float32))
    if c2w.ndim == 2:
        c2w = c2w[None]
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] == 0:
        raise InvalidArgs(f"gaussians.render: c2w must be [4,4] or [B,4,4] with B >= 1, got {list(c2w.shape)}")
    if c2w.shape[0] > MAX_RENDER_VIEWS:
        raise InvalidArgs(f"gaussians.render: at most {MAX_RENDER_VIEWS} views, got {c2w.shape[0]}")
    if not torch.isfinite(c2w).all():
        raise InvalidArgs("gaussians.render: c2w must be finite")
    bottom = c2w[:, 3, :]
    if not torch.allclose(bottom, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand_as(bottom), atol=1e-5):
        raise InvalidArgs(f"gaussians.render: c2w last row must be (0,0,0,1), got {bottom.tolist()}")
    if abs(float(torch.linalg.det(c2w[:, :3, :3]).abs().min())) < 1e-8:
        raise InvalidArgs("gaussians.render: c2w rotation is singular")
    b, w, h = int(c2w.shape[0]), a["width"], a["height"]
    mem = req.services.memory
    with s.lock:  # a copy taken between two job steps: the render itself never holds the job up (issue 25)
        if s.gaussians is None or s.gaussians.n == 0:
            raise InvalidArgs("gaussians.render: the session has no Gaussians")
        n = s.gaussians.n
        mem.check(f"gaussians.render: {b} views of {w}x{h}", costs.render_output_bytes(b, w * h) + n * costs.PROJECT_BYTES + costs.gaussians_bytes(n))
        g = s.gaussians.clone()
    rgbs, alphas = [], []
    bg = torch.tensor(a["background"], dtype=torch.float32, device=g.device)
    with torch.no_grad():
        for i in range(b):
            cams = cameras_from_blender(c2w[i : i + 1], a["fov_x"], w, h).to(g.device)
            pairs = costs.view_pairs(g, cams)
            est = costs.render_view_bytes(n, pairs, w * h)
            with mem.reserve(f"gaussians.render: view {i} ({n} Gaussians covering up to {pairs} pixel pairs at {w}x{h})", est):
                out = render(g, cams, bg)
            rgbs.append(out.rgb[0].float().cpu().numpy())
            alphas.append(out.alpha[0].float().cpu().numpy())
            del out
    return Reply({"count": b}, [np.ascontiguousarray(np.stack(rgbs)), np.ascontiguousarray(np.stack(alphas))])


def stage1_set_reference(req: Request) -> Reply:
    from ..stage1.trainer import OracleReference

    s, a = req.session, req.args
    if a["path"] or req.buffers:
        ref = load_splat(req, a["path"])
    else:
        with s.lock:
            if s.gaussians is None or s.gaussians.n == 0:
                raise InvalidArgs("stage1.set_reference: no path and the session has no Gaussians")
            ref = s.gaussians.clone()
    with s.lock:
        s.extras[OracleReference.SLOT] = OracleReference(ref)
    return Reply({"count": ref.n})


def _check_model(req: Request, kind: str, model: str, local_files_only: bool, what: str = "model") -> str:
    """The model to load: a local folder resolved inside the server's model roots (``--model-dir``; invalid_args
    outside them, files.resolve_model) or a hub id. Fails fast (not_found) when the weights are certainly
    unavailable; loading happens on the job thread."""
    sub = {"sd": "unet", "pixart": "transformer", "shap_e": "prior"}[kind]
    resolved = files.resolve_model(req.services.model_roots, model, f"{req.op}: {what}")
    if os.path.isabs(resolved):  # a local folder inside a model root (hub ids come back as given, never absolute)
        if not os.path.isfile(os.path.join(resolved, sub, "config.json")):
            raise NotFound(f"model folder {model!r} has no {sub}/config.json: not a diffusers {kind} model folder")
        return resolved
    if not _HUB_ID.match(model):
        raise NotFound(
            f"model {model!r} is neither a local folder nor a hub id 'org/name'; pass a folder made with "
            f"save_pretrained or `huggingface-cli download {default_model(kind)}`"
        )
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, f"{sub}/config.json"), str):
            raise NotFound(
                f"model {model!r} is not in the local Hugging Face cache and downloads are off; run "
                f"`huggingface-cli download {model}` where the backend runs, or pass model=/path/to/folder "
                "inside a --model-dir of the backend"
            )
    return model


def stage1_start(req: Request) -> Reply:
    # Imported on use: the trainer pulls in the renderer and densification (B1's modules).
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
    # The session's prompt, negative prompt and model (GuidanceSpec) fill what this request leaves out.
    spec = s.guidance
    text = a["prompt"] if a["prompt"] and a["prompt"].strip() else (spec.prompt if spec is not None else "")
    negative = a["negative_prompt"] or (spec.negative_prompt if spec is not None and not a["prompt"] else "")
    if kind in ("sd", "pixart"):
        if not text.strip():
            raise InvalidArgs(f"stage1.start: prompt must be a non-empty string for guidance {kind!r}")
    if text.strip():
        prompt = PromptSpec(text, negative, a["view_dependent"])
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
            anneal_start=a["anneal_start"],
        )
        # Stage1Config derives the named schedule for this run's length and cameras (trainer.named_schedule)
        dcfg = a["densify_schedule"] if a["densify"] else None
        cfg = Stage1Config(
            steps=a["steps"], batch=a["batch"], resolution=a["resolution"], background=tuple(a["background"]),
            random_background=a["random_background"], densify=dcfg,
            snapshot_every=a["snapshot_every"], fixed_t=a["fixed_t"], seed=a["seed"],
            elevation_range_deg=tuple(a["elevation_range_deg"]), distance_range=tuple(a["distance_range"]),
            fov_range_deg=tuple(a["fov_range_deg"]),
        )
        overrides = {k: a["densify_" + k] for k in ("grad_threshold", "grad_quantile") if a["densify_" + k] is not None}
        if cfg.densify is not None and overrides:
            cfg = replace(cfg, densify=replace(cfg.densify, **overrides))
    except ValueError as exc:
        raise InvalidArgs(f"stage1.start: {exc}") from exc

    with s.lock:
        est = costs.stage1_bytes(s.gaussians, cfg.batch, cfg.resolution, min(cfg.distance_range), max(cfg.fov_range_deg))
    req.services.memory.check(f"stage1.start ({cfg.batch} views of {cfg.resolution}² per step, {s.gaussians.n} Gaussians)", est)
    guidance, loader, new_spec, ref_from_path = None, None, None, None
    device = req.device
    model = None
    if kind == "oracle":
        if a["reference_path"]:
            ref = ref_from_path = load_splat(req, a["reference_path"], "reference_path")
        else:
            slot = s.extras.get(OracleReference.SLOT)
            if slot is None:
                raise InvalidArgs("stage1.start: guidance 'oracle' needs reference_path or a stage1.set_reference first")
            ref = slot.gaussians
        guidance = OracleGuidance(ref, oracle_render_fn, gcfg)
        new_spec = GuidanceSpec("oracle", prompt=text, negative_prompt=negative, view_dependent=a["view_dependent"],
                                guidance_scale=a["guidance_scale"])
    elif kind in ("sd", "pixart"):
        same_kind = spec is not None and spec.kind == kind
        model = a["model"] or (spec.model if same_kind and spec.model else default_model(kind))
        local = a["local_files_only"] or (same_kind and not a["model"] and spec.local_files_only)
        model = _check_model(req, kind, model, local)
        cache = req.services.guidance_cache

        def loader():
            # loaded once per (model, dtype, device) for the whole server; this job gets its own config
            return cache.get(kind, model, device, local_files_only=local, config=gcfg)

        new_spec = GuidanceSpec(kind, model, local, text, negative, a["view_dependent"], a["guidance_scale"])

    job = Stage1Job(s, guidance, prompt, cfg, load_guidance=loader)
    # Under the lock from the start: the job's first step (which loads the model, seconds to minutes) waits for
    # it, so this reply never waits for that step, and the step already sees the session's new guidance.
    with s.lock:
        job_id = req.start_job(job, label="stage1")
        s.fit_resolution = cfg.resolution
        if new_spec is not None:
            s.guidance = new_spec  # the session's guidance from now on (drag, edit, refinement, checkpoints)
            if ref_from_path is not None:
                s.extras[OracleReference.SLOT] = OracleReference(ref_from_path)
        count = s.gaussians.n
    return Reply({"job": job_id, "total": cfg.steps, "count": count, "guidance": kind, "model": model,
                  "densify_steps": 0 if cfg.densify is None else len(cfg.densify.plan(cfg.steps).densify_steps)})


def presets_resolve(req: Request) -> Reply:
    from . import presets

    return Reply(presets.resolve(req.args["name"], req.device.type).as_result())


HANDLERS: dict = {name: with_revision(fn) for name, fn in {
    "gaussians.init": gaussians_init,
    "gaussians.load_ply": gaussians_load_ply,
    "gaussians.save_ply": gaussians_save_ply,
    "gaussians.render": gaussians_render,
    "stage1.set_reference": stage1_set_reference,
    "stage1.start": stage1_start,
    "presets.resolve": presets_resolve,
}.items()}  # replies carry `revision` (issue 14)
