"""Handlers of the Stage II ops (specs: ``_STAGE2_OPS`` in protocol/catalogue.py; see docs/backend-api.md).

- ``stage2.distill``: the Eq. 7 distillation job (Gaussians → hash-grid field), creating the field on
  its first step (undoable).
- ``stage2.occupancy``: recompute the occupancy grid from the (refined) field (an undo point); the grid
  comes back as a uint8 [R,R,R] buffer.
- ``stage2.add_part``: a refinement part = region sphere ∩ occupancy, with its own hash tables (undoable).
- ``stage2.refine``: the Eq. 8–9 refinement job on chosen parts (targets: fresh Gaussian renders).
- ``stage2.extract_mesh``: marching cubes → file (glb/obj/ply) and arrays.
- ``stage2.preview``: the running/last distillation's low-resolution preview image.
- ``stage2.render``: the field with its parts from Blender cameras (rgb, alpha, depth, normals).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import torch
from interactive3d.protocol.errors import Busy, InvalidArgs, NotFound, TooLarge

from ..stage2.distill import DistillConfig, DistillJob, target_supersample
from ..stage2.hashgrid import HashGridConfig
from ..stage2.mesh import MeshConfig, MeshError, extract_mesh, mesh_file_bytes
from ..stage2.mesh_error import surface_error
from ..stage2.nerf import NeRFConfig
from ..stage2.occupancy import gaussian_support, occupancy_from_field
from ..stage2.rays import RenderConfig, render_step_size
from ..stage2.parts import PartConfig, RegionError, region_cells
from ..stage2.refine import RefineConfig, RefineJob
from ..stage2.state import SLOT, PartInfo
from . import costs, files
from .requests import Reply, Request, with_revision

log = logging.getLogger(__name__)

MIN_MESH_CHUNK = 1 << 12  # field queries per chunk that extract_mesh goes down to under a small memory budget


def _state(req: Request):
    st = req.session.extras.get(SLOT)
    if st is None:
        raise NotFound(f"{req.op}: session {req.session.id} has no Stage II field (run stage2.distill first)")
    return st


def _idle(req: Request) -> None:
    s = req.session
    if s.job_active:
        raise Busy(f"{req.op}: session {s.id} has job {s.job.job_id} ({s.job.kind}) in flight")


def distill(req: Request) -> Reply:
    s, a = req.session, req.args
    try:
        nerf_cfg = NeRFConfig(
            grid=HashGridConfig(
                n_levels=a["levels"], n_features=a["features"], log2_table_size=a["log2_table_size"],
                base_resolution=a["base_resolution"], per_level_scale=a["per_level_scale"],
            ),
            aabb_radius=a["aabb_radius"],
            background=tuple(a["background"]),
        )
        cfg = DistillConfig(
            steps=a["steps"], resolution=a["resolution"], rays_per_step=a["rays_per_step"], view_pool=a["view_pool"],
            lr_grid=a["lr_grid"], lr_mlp=a["lr_mlp"],
            render=RenderConfig(n_samples=a["n_samples"], stratified=True), background=tuple(a["background"]),
            preview_every=a["preview_every"], opacity_weight=a["opacity_weight"], depth_weight=a["depth_weight"],
            orientation_weight=a["orientation_weight"], mesh_every=a["mesh_every"], mesh_resolution=a["mesh_resolution"], seed=a["seed"],
            fit_resolution=s.fit_resolution,
        )
        req.services.memory.check(
            f"stage2.distill ({a['rays_per_step']} rays × {a['n_samples']} samples, {a['levels']} levels of 2^{a['log2_table_size']}, "
            f"{max(1, a['view_pool'])} views of {a['resolution']}²)",
            costs.rays_bytes(a["rays_per_step"], a["n_samples"], a["levels"])
            + costs.field_bytes(a["levels"], a["features"], a["log2_table_size"])
            # the Gaussian targets are rendered supersampled (cfg.target_supersample² pixels each), then pooled
            + costs.render_output_bytes(max(1, a["view_pool"]), (a["resolution"] * target_supersample(cfg)) ** 2) * 2,
        )
        # a resumed job continues the checkpointed field: never reset it again
        job = DistillJob(s, cfg, nerf_cfg, reset=bool(a["reset"]) and req.resume is None, backend=a["backend"])
    except ValueError as exc:
        raise InvalidArgs(f"stage2.distill: {exc}") from exc
    job_id = req.start_job(job, label="stage2.distill")
    return Reply({"job": job_id, "total": cfg.steps, "target_supersample": target_supersample(cfg)})


def _support(s, resolution: int, aabb_radius: float):
    """The cells the session's Gaussians can render in (occupancy.gaussian_support), None without Gaussians:
    a grid made from the field alone is bounded by them, as distillation's is."""
    g = s.gaussians
    if g is None or g.n == 0:
        return None
    return gaussian_support(g.means, g.scales, g.rotations, g.opacities, resolution, aabb_radius)


def occupancy(req: Request) -> Reply:
    s, a = req.session, req.args
    _idle(req)
    req.services.memory.check(f"stage2.occupancy at {a['resolution']}³", costs.grid_bytes(a["resolution"], costs.OCC_VOXEL_BYTES))
    with s.lock:
        st = _state(req)
        s.record("stage2.occupancy")
        step = render_step_size(st.cfg.aabb_radius, a["n_samples"])
        st.occupancy = occupancy_from_field(st.refined, a["resolution"], threshold=max(a["threshold"], 1e-12), step_size=step,
                                            within=_support(s, a["resolution"], st.cfg.aabb_radius))
        occ = st.occupancy.occ
        n = int(occ.sum())
    return Reply({"resolution": a["resolution"], "occupied": n, "fraction": n / occ.numel()}, [occ.cpu().numpy().astype(np.uint8)])


def add_part(req: Request) -> Reply:
    s, a = req.session, req.args
    name, radius = a["name"], a["radius"]
    if radius <= 0:
        raise InvalidArgs(f"stage2.add_part: radius must be > 0, got {radius}")
    _idle(req)
    with s.lock:
        st = _state(req)
        if name in st.parts:
            raise InvalidArgs(f"stage2.add_part: part {name!r} already exists")
        if st.occupancy is None:
            st_occ = occupancy_from_field(st.refined, 32, step_size=render_step_size(st.cfg.aabb_radius, RenderConfig(n_samples=64).n_samples),
                                          within=_support(s, 32, st.cfg.aabb_radius))
        else:
            st_occ = st.occupancy
        try:
            pcfg = PartConfig(
                n_levels=a["levels"], n_features=a["features"], log2_table_size=a["log2_table_size"],
                base_resolution=a["base_resolution"], finest_resolution=a["finest_resolution"],
            )
            cells = region_cells(st_occ, torch.tensor(a["center"], dtype=torch.float32), radius)
        except RegionError as exc:
            raise InvalidArgs(f"stage2.add_part: {exc}") from exc
        except ValueError as exc:
            raise InvalidArgs(f"stage2.add_part: {exc}") from exc
        tables = a["levels"] * (1 << a["log2_table_size"]) * a["features"]
        req.services.memory.check(f"stage2.add_part ({a['levels']} levels of 2^{a['log2_table_size']} × {a['features']} features)",
                                tables * costs.TABLE_ENTRY_BYTES)
        with s.recorded("stage2.add_part"):
            st.occupancy = st_occ
            part = st.refined.add_part(name, cells, st_occ, pcfg, seed=a["seed"])
            st.parts[name] = PartInfo(part.cfg, tuple(a["center"]), float(radius))
        res = part.grid.cfg.resolutions()
        extent = float((part.box_hi - part.box_lo).max())
        base_finest = st.cfg.grid.resolutions()[-1] * extent / (2 * st.cfg.aabb_radius)
    return Reply({
        "part": name, "cells": int(cells.sum()), "parts": sorted(st.parts), "resolutions": res,
        "box": [part.box_lo.tolist(), part.box_hi.tolist()], "base_finest_over_box": base_finest,
    })


def refine(req: Request) -> Reply:
    s, a = req.session, req.args
    loader = None
    spec = s.guidance  # the session's guidance (stage1.start): model and prompt unless given here
    session_sd = spec is not None and spec.kind == "sd"
    prompt = a["prompt"] or (spec.prompt if spec is not None else "")
    if a["guidance"] == "sd":
        from ..stage1.guidance import DEFAULT_SD_MODEL

        model = a["model"] or (spec.model if session_sd and spec.model else DEFAULT_SD_MODEL)
        # a local folder only inside the server's model roots (invalid_args otherwise); the weights load at the first
        # step (a missing folder there ends the job with an error event, as documented)
        model = files.resolve_model(req.services.model_roots, model, "stage2.refine: model", missing_ok=True)
        local, device, cache = a["local_files_only"], req.device, req.services.guidance_cache
        config = spec.config() if spec is not None else None

        def loader():
            # the same loaded model as Stage I, drag and edit (the server's guidance cache)
            return cache.get("sd", model, device, local_files_only=local, config=config)

    try:
        cfg = RefineConfig(
            steps=a["steps"], rays_per_step=a["rays_per_step"], render=RenderConfig(n_samples=a["n_samples"], stratified=True), seed=a["seed"],
            prompt=prompt or "", fixed_t=a["fixed_t"], sds_size=a["resolution"], orientation_weight=a["orientation_weight"],
        )
        req.services.memory.check(
            f"stage2.refine ({a['rays_per_step']} rays × {a['n_samples']} samples, {a['views']} views of {a['resolution']}²)",
            costs.rays_bytes(a["rays_per_step"], a["n_samples"], 32) + costs.render_output_bytes(a["views"], a["resolution"] ** 2) * 2,
        )
        with s.lock:
            _state(req)
            job = RefineJob(s, list(a["parts"]), cfg, views=a["views"], resolution=a["resolution"], background=tuple(a["background"]), load_guidance=loader,
                            mesh_every=a["mesh_every"], mesh_resolution=a["mesh_resolution"])
    except ValueError as exc:
        raise InvalidArgs(f"stage2.refine: {exc}") from exc
    job_id = req.start_job(job, label="stage2.refine")
    return Reply({"job": job_id, "total": cfg.steps})


def _mesh_targets(req: Request, fmt: str) -> dict[str, str]:
    """Every file extract_mesh will write for its ``path`` arg, by suffix, each checked as a request path before
    anything is written (an OBJ's .mtl and .png beside it too). The path's suffix must be the format's or none."""
    a = req.args
    first = files.resolve_write(req.services.roots, a["path"], "stage2.extract_mesh: path")
    stem, suffix = os.path.splitext(first)
    if suffix and suffix.lower() != "." + fmt:
        raise InvalidArgs(f"stage2.extract_mesh: path {a['path']!r} ends in {suffix!r} but format is {fmt!r}; name a .{fmt} file")
    out = {"." + fmt: first if fmt != "obj" else stem + ".obj"}
    if fmt == "obj" and a["texture"]:
        out.update({s: stem + s for s in (".mtl", ".png")})
    for s, p in out.items():  # the same checks for the side files (inside the roots, never a symlink …)
        out[s] = files.resolve_write(req.services.roots, p, f"stage2.extract_mesh: {s} file")
    return out


def extract(req: Request) -> Reply:
    s, a = req.session, req.args
    _idle(req)
    fmt = (a["format"] or (files.suffix_of(a["path"], ".glb") if a["path"] else ".glb").lstrip(".")).lower()
    if fmt not in ("glb", "obj", "ply"):
        raise InvalidArgs(f"stage2.extract_mesh: path {a['path']!r} has no mesh suffix (.glb, .obj, .ply); give format")
    targets = _mesh_targets(req, fmt) if a["path"] else {}
    buffers: list = []
    try:
        cfg = MeshConfig(
            resolution=a["resolution"], surface=a["surface"], opacity_level=a["opacity_level"], threshold=a["threshold"],
            min_component_fraction=a["min_component_fraction"], texture=a["texture"], texture_size=a["texture_size"],
            texture_padding=a["texture_padding"],
        )
        est = costs.grid_bytes(a["resolution"], costs.MESH_VOXEL_BYTES)
        if a["texture"]:  # the bake's per-texel arrays, and the PNG/GLB hold the texture again
            est += a["texture_size"] ** 2 * costs.TEXEL_BYTES
        what = f"stage2.extract_mesh at {a['resolution']}³" + (f", {a['texture_size']}² texture" if a["texture"] else "")
        req.services.memory.check(what, est)  # what the arguments alone ask for, before the field is looked up
        # the density grid and the bake query the field in chunks of cfg.chunk points (the bake's chunk is the same):
        # as large as the budget leaves room for (up to MeshConfig's 2^18, 878 MiB at 16 levels), down to 2^12, so a
        # small budget costs time, not a refusal
        levels = _levels(_state(req).refined)
        chunk = min(cfg.chunk, max(MIN_MESH_CHUNK, (req.services.memory.cap - est) // costs.field_query_bytes(1, levels)))
        cfg = replace(cfg, chunk=int(chunk))
        est += costs.field_query_bytes(cfg.chunk, levels)
        with req.services.memory.reserve(what, est), s.lock:
            st = _state(req)
            m = extract_mesh(st.refined, cfg, st.occupancy)
            error = surface_error(m.vertices, m.faces, s.gaussians)  # against the Gaussians' surface (None: no Gaussians)
        main = targets.get("." + fmt)
        data = mesh_file_bytes(m, fmt, os.path.splitext(os.path.basename(main))[0] if main else "mesh")
        if a["return_file"]:
            cap = req.services.max_file_bytes
            if len(data["." + fmt]) > cap:
                raise TooLarge(f"stage2.extract_mesh: the mesh file is {len(data['.' + fmt])} bytes, over the cap of {cap} for a reply frame")
            buffers = [np.frombuffer(data["." + fmt], np.uint8)]
        for suffix in (".png", ".mtl", "." + fmt):  # an OBJ last: when it appears, what it names is there
            if suffix in data and suffix in targets:
                files.write_bytes(req.services.roots, targets[suffix], [data[suffix]], f"stage2.extract_mesh: {suffix} file")
        path = main
    except MeshError as exc:
        raise InvalidArgs(f"stage2.extract_mesh: {exc}") from exc
    except OSError as exc:
        raise InvalidArgs(f"stage2.extract_mesh: cannot write {a['path']!r}: {exc}") from exc
    textured = m.texture is not None
    return Reply(
        {"vertices": int(len(m.vertices)), "faces": int(len(m.faces)), "path": path, "removed_components": m.removed_components,
         "textured": textured, "signed_error": None if error is None else error.as_dict()},
        # vertices, faces, colours; with a texture: uvs, texture; with return_file: the file's bytes, last
        [m.vertices, m.faces, m.colors] + ([m.uvs, m.texture] if textured else []) + buffers,
    )


def render(req: Request) -> Reply:
    """The (refined) field from Blender cameras, as ``gaussians.render``: rgb, alpha, depth (camera z),
    normals (world, opacity-weighted; 0 where the ray is empty)."""
    from ..stage1.cameras import cameras_from_blender
    from ..stage2.render import render_image

    s, a = req.session, req.args
    c2w = torch.from_numpy(np.array(req.buffers[0], dtype=np.float32))
    if c2w.ndim == 2:
        c2w = c2w[None]
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or not 1 <= c2w.shape[0] <= 64:
        raise InvalidArgs(f"stage2.render: c2w must be [4,4] or [B,4,4] with B ≤ 64, got {list(c2w.shape)}")
    bottom = c2w[:, 3, :]
    if not torch.allclose(bottom, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand_as(bottom), atol=1e-5):
        raise InvalidArgs(f"stage2.render: c2w last row must be (0,0,0,1), got {bottom.tolist()}")
    b, w, h, n = c2w.shape[0], a["width"], a["height"], a["n_samples"]
    if b * w * h * n > _MAX_RENDER_SAMPLES:  # a bound on the work (time on a worker); memory is the budget's
        raise TooLarge(f"stage2.render: {b}×{w}×{h} pixels × {n} samples exceeds {_MAX_RENDER_SAMPLES} samples; render smaller or fewer")
    render_cfg = RenderConfig(n_samples=n, normals=a["normals"])
    # no idle check: a copy of the field is taken between two steps of a running job, and rendered without the
    # session lock, so a long render never stops the owner's job (issue 25)
    with s.lock:
        st = _state(req)
        levels = _levels(st.refined)
        # the copy of the field is held beside the session's: its tables count too
        est = costs.stage2_render_bytes(b, w, h, n, levels, render_cfg.chunk, a["normals"]) + sum(p.numel() * 4 for p in st.refined.parameters())
        req.services.memory.check(f"stage2.render ({b} view(s) of {w}×{h}, {n} samples per ray, {levels} hash-grid levels"
                                  + (", normals" if a["normals"] else "") + ")", est)
        st = type(st).from_state_dict(st.state_dict(), st.device)
    try:
        cams = cameras_from_blender(c2w, a["fov_x"], w, h).to(st.device)
    except ValueError as exc:
        raise InvalidArgs(f"stage2.render: {exc}") from exc
    bg = torch.tensor(a["background"], dtype=torch.float32, device=st.device)
    with torch.no_grad():
        out = render_image(st.refined, cams, render_cfg, st.occupancy, bg)
    # ray distance → camera-space z (the Gaussian renderer's depth): z = t·(d·forward)
    from ..stage2.rays import camera_rays

    d_cam = camera_rays(cams).dirs.reshape(b, h, w, 3)
    fwd = torch.linalg.inv(cams.viewmats.float())[:, :3, 2]  # [B,3] the OpenCV camera's +z in world
    z = out.depth[..., 0] / out.opacity[..., 0].clamp_min(1e-6) * (d_cam * fwd[:, None, None]).sum(-1)
    z = torch.where(out.opacity[..., 0] > 1e-6, z, torch.zeros_like(z))
    bufs = [out.rgb.clamp(0, 1), out.opacity, z[..., None]]
    bufs.append(out.normals if out.normals is not None else torch.zeros(b, h, w, 3))
    return Reply({"count": b}, [np.ascontiguousarray(t.float().cpu().numpy()) for t in bufs])


_MAX_RENDER_SAMPLES = 1 << 28  # ≈ 268M field queries (a 1024² image at 256 samples)


def _levels(field) -> int:
    """Hash-grid levels a sample may be looked up in: the base field's and every part's (worst case: all)."""
    return field.base.cfg.grid.n_levels + sum(p.cfg.n_levels for p in field.parts.values())


def preview(req: Request) -> Reply:
    s = req.session
    runner = s.job
    job = getattr(runner, "job", None)
    img = getattr(job, "preview", None)
    if not isinstance(job, DistillJob) or img is None:
        raise NotFound(f"stage2.preview: session {s.id} has no distillation preview yet")
    return Reply({"step": int(runner.step), "height": int(img.shape[0]), "width": int(img.shape[1])}, [np.ascontiguousarray(img, np.float32)])


HANDLERS: dict = {name: with_revision(fn) for name, fn in {
    "stage2.distill": distill,
    "stage2.occupancy": occupancy,
    "stage2.add_part": add_part,
    "stage2.refine": refine,
    "stage2.extract_mesh": extract,
    "stage2.preview": preview,
    "stage2.render": render,
}.items()}  # replies carry `revision` (issue 14), as every session op's
