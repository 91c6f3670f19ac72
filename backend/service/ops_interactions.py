"""Protocol ops of the Stage I interactions (paper §3.1.1–3.1.5, issue 4).

Parts: ``parts.select`` (indices / sphere / aabb / box / masks / all, combined with an existing part),
``parts.list``, ``parts.forget``, ``parts.remove`` (Eq. 1), ``parts.add`` (merge a splat file — a path
or its bytes as a frame —, another session or a state-frame payload, with a 4×4), ``parts.transform`` (Eq. 2). Jobs: ``interact.drag``
(Eq. 3–6) and ``interact.edit`` (semantic edit, §3.1.4), both with interactive SDS options (§3.1.5).
Optional: ``segment.sam``.

Every mutating op takes the session lock (so it lands between two steps of a running job), validates
everything first (ValueError → ``invalid_args``, unknown part/session/file → ``not_found``, a stale
state ``revision`` → ``conflict``), and only then records a history entry and changes the Gaussians: a
refused op changes nothing. The ops that take Gaussian indices (select by indices, remove, and the
transform of a selection) check the revision the client's indices refer to (issue 14).
"""

from __future__ import annotations

import numpy as np
import torch
from interactive3d.protocol.errors import Busy, InvalidArgs, NotFound

from ..interact import selection
from ..interact.drag import DragConfig, DragJob
from ..interact.interactive_sds import InteractiveSDSConfig
from ..interact.parts import check_part_name, merge_gaussians, remove_part
from ..interact.semantic_edit import SemanticEditConfig, SemanticEditJob
from ..interact.transform import check_matrix, transform_part
from ..stage1.densify import SDS_GRAD_THRESHOLD, DensifyConfig
from ..stage1.guidance import GuidanceConfig
from ..stage1.gaussians import Gaussians
from .requests import Reply, with_revision

COMBINE = ("replace", "add", "subtract", "intersect")
SELECT_KINDS = ("indices", "sphere", "aabb", "box", "masks", "all")


# -- helpers ---------------------------------------------------------------------------------------
def _gaussians(session) -> Gaussians:
    g = session.gaussians
    if g is None or g.n == 0:
        raise InvalidArgs("the session has no Gaussians: initialise them first (gaussians.init)")
    return g


def _part(g: Gaussians, name: str) -> torch.Tensor:
    try:
        mask = g.part_mask(name)
    except KeyError:
        raise NotFound(f"no part named {name!r}; parts are {g.part_names()}") from None
    if not bool(mask.any()):
        raise InvalidArgs(f"part {name!r} is empty")
    return mask


def _matrix(args: dict, buffers: list, key: str = "matrix") -> torch.Tensor | None:
    """A 4×4 from the first [4,4] buffer or from 16 row-major numbers in ``args[key]``; None if neither."""
    mats = [b for b in buffers if tuple(b.shape) == (4, 4)]
    if mats:
        m = np.array(mats[0], dtype=np.float64)
    elif args.get(key) is not None:
        m = np.asarray(args[key], dtype=np.float64).reshape(-1)
        if m.shape != (16,):
            raise InvalidArgs(f"{key} must be 16 numbers (row-major 4×4), got {m.size}")
        m = m.reshape(4, 4)
    else:
        return None
    if not np.isfinite(m).all():
        raise InvalidArgs(f"{key} must be finite")
    return torch.from_numpy(m).float()


def _invalid(exc: Exception) -> InvalidArgs:
    return InvalidArgs(str(exc))


def _sds_config(args: dict, prompt_key: str = "prompt") -> InteractiveSDSConfig:
    fixed_t = args.get("fixed_t")
    try:
        return InteractiveSDSConfig(
            prompt=args.get(prompt_key) or "",
            negative_prompt=args.get("negative_prompt") or "",
            fixed_t=fixed_t,
            t_range=(float(args["t_min"]), float(args["t_max"])),
            batch=int(args["batch"]),
            width=int(args["resolution"]),
            height=int(args["resolution"]),
        )
    except ValueError as exc:
        raise _invalid(exc) from None


def _session_guidance(req, required: bool, oracle: bool = False):
    """The guidance of an interaction's SDS: the session's (``session.guidance``, set by stage1.start with
    guidance sd/pixart/oracle and kept whatever jobs ran since, and in checkpoints), served by the server's
    guidance cache and loaded on the job thread at first use; the oracle (built from the session's
    reference object, ``stage1.set_reference``) only when asked for or when it is the session's guidance.
    None / InvalidArgs when the session has none."""
    from ..stage1.guidance import OracleGuidance
    from ..stage1.guidance_cache import DeferredGuidance
    from ..stage1.trainer import (  # imports the renderer: only when needed
        OracleReference,
        oracle_render_fn,
    )

    session = req.session
    spec = session.guidance
    if oracle or (spec is not None and spec.kind == "oracle"):
        ref = session.extras.get(OracleReference.SLOT)
        if ref is None:
            raise InvalidArgs("oracle guidance needs a reference object: call stage1.set_reference first")
        return OracleGuidance(ref.gaussians, oracle_render_fn, spec.config() if spec is not None else GuidanceConfig())
    if spec is None:
        if required:
            raise InvalidArgs(
                "no guidance on this session: run stage1.start with guidance 'sd' or 'pixart' (its model and prompt "
                "become the session's), or pass oracle=true after stage1.set_reference, or set guidance=false"
            )
        return None
    cache, device = req.services.guidance_cache, req.device

    def load():
        return cache.get(spec.kind, spec.model, device, local_files_only=spec.local_files_only, config=spec.config())

    return DeferredGuidance(load, f"{spec.kind}:{spec.model_or_default}")


# -- selection -------------------------------------------------------------------------------------
def select_mask(session, g: Gaussians, args: dict, buffers: list) -> torch.Tensor:
    """The bool [N] mask an args/buffers selection describes (ValueError/InvalidArgs on bad input)."""
    kind = args["kind"]
    means = g.means.detach()
    try:
        if kind == "all":
            return torch.ones(g.n, dtype=torch.bool, device=g.device)
        if kind == "indices":
            idx = buffers[0] if buffers else args.get("indices")
            if idx is None:
                raise ValueError("kind 'indices' needs an indices buffer [K] or an 'indices' list")
            return selection.select_indices(g.n, np.asarray(idx)).to(g.device)
        if kind == "sphere":
            if args.get("center") is None or args.get("radius") is None:
                raise ValueError("kind 'sphere' needs center and radius")
            return selection.select_sphere(means, args["center"], args["radius"])
        if kind == "aabb":
            if args.get("min") is None or args.get("max") is None:
                raise ValueError("kind 'aabb' needs min and max")
            return selection.select_aabb(means, args["min"], args["max"])
        if kind == "box":
            m = _matrix(args, buffers)
            if m is None:
                raise ValueError("kind 'box' needs a [4,4] matrix buffer or a 16-number 'matrix'")
            return selection.select_oriented_box(means, m)
        if kind == "masks":
            return _select_masks(g, args, buffers)
    except ValueError as exc:
        raise _invalid(exc) from None
    raise InvalidArgs(f"kind must be one of {SELECT_KINDS}, got {kind!r}")


def _select_masks(g: Gaussians, args: dict, buffers: list) -> torch.Tensor:
    from ..stage1.cameras import cameras_from_blender

    if len(buffers) < 2:
        raise ValueError("kind 'masks' needs two buffers: masks [B,H,W] and camera c2w [B,4,4]")
    masks, c2w = np.asarray(buffers[0]), np.array(buffers[1], dtype=np.float32)  # c2w: writable copy
    if masks.ndim != 3 or c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or c2w.shape[0] != masks.shape[0]:
        raise ValueError(f"masks [B,H,W] and c2w [B,4,4] must agree, got {list(masks.shape)} and {list(c2w.shape)}")
    if args.get("fov_x") is None:
        raise ValueError("kind 'masks' needs fov_x (radians)")
    h, w = int(masks.shape[1]), int(masks.shape[2])
    cams = cameras_from_blender(torch.from_numpy(c2w), float(args["fov_x"]), w, h).to(g.device)
    cfg = selection.MaskSelectConfig(bool(args["occlusion_aware"]), float(args["depth_tolerance"]))
    depth = None
    if cfg.occlusion_aware:
        from ..stage1.render import render

        with torch.no_grad():
            depth = render(g, cams).depth
    return selection.select_by_masks(g.means.detach(), cams, torch.from_numpy(masks != 0), depth, cfg)


def _no_interaction_job(session) -> None:
    """Ops that change rows cannot run under a drag or edit job (its masks index the rows); they can
    under Stage I (its statistics live in Gaussians buffers that keep()/append() move along)."""
    job = getattr(session, "job", None)
    if job is not None and not job.finished and job.kind in (DragJob.kind, SemanticEditJob.kind):
        raise Busy(f"session {session.id} is running a {job.kind} job; wait for it or cancel it")


# -- handlers --------------------------------------------------------------------------------------
def handle_select(req) -> dict:
    s = req.session
    args = req.args
    name = args["name"]
    try:
        check_part_name(name)
    except ValueError as exc:
        raise _invalid(exc) from None
    with s.lock:
        g = _gaussians(s)
        _no_interaction_job(s)
        s.check_revision(args.get("revision"))
        mask = select_mask(s, g, args, req.buffers)
        combine = args["combine"]
        if combine != "replace" and name in g.part_names():
            old = g.part_mask(name)
            mask = {"add": old | mask, "subtract": old & ~mask, "intersect": old & mask}[combine]
        if not bool(mask.any()) and not args["allow_empty"]:
            raise InvalidArgs(f"the selection for part {name!r} is empty (kind {args['kind']!r})")
        s.record(f"select {name}")
        g.set_part(name, mask)
        return {"name": name, "count": int(mask.sum()), "total": g.n}


def handle_list(req) -> dict:
    s = req.session
    with s.lock:
        g = s.gaussians
        if g is None:
            return {"parts": {}, "total": 0}
        return {"parts": {p: int(g.part_mask(p).sum()) for p in g.part_names()}, "total": g.n}


def handle_forget(req) -> dict:
    s = req.session
    name = req.args["name"]
    with s.lock:
        g = _gaussians(s)
        if name not in g.part_names():
            raise NotFound(f"no part named {name!r}; parts are {g.part_names()}")
        s.record(f"forget {name}")
        del g.buffers[f"part:{name}"]
        return {"parts": g.part_names()}


def handle_remove(req) -> dict:
    s = req.session
    args = req.args
    with s.lock:
        g = _gaussians(s)
        _no_interaction_job(s)
        s.check_revision(args.get("revision"))
        if args.get("part"):
            mask = _part(g, args["part"])
            label = f"remove {args['part']}"
        else:
            idx = req.buffers[0] if req.buffers else args.get("indices")
            if idx is None:
                raise InvalidArgs("give a part name or an indices buffer [K]")
            try:
                mask = selection.select_indices(g.n, np.asarray(idx)).to(g.device)
            except ValueError as exc:
                raise _invalid(exc) from None
            label = f"remove {int(mask.sum())} Gaussians"
        if bool(mask.all()):
            raise InvalidArgs("refusing to remove every Gaussian of the session")
        s.record(label)
        res = remove_part(g, s.optimizers, mask)
        if args.get("part"):
            del g.buffers[f"part:{args['part']}"]  # the part is gone, not an empty name (undo restores it)
        return {"removed": res.removed, "count": res.remaining}


def _gaussians_to_merge(req) -> Gaussians:
    args = req.args
    sources = [k for k in ("path", "source_session") if args.get(k)]
    states = [b for b in req.buffers if b.ndim == 2 and b.shape[1] == 14 and b.dtype != np.uint8]
    uploads = [b for b in req.buffers if b.dtype == np.uint8]  # a splat file's bytes (remote clients)
    if len(sources) + (1 if states else 0) + len(uploads) != 1:
        raise InvalidArgs("give exactly one of: path (a splat file), source_session, a state buffer [M,14], "
                          "or the splat file's bytes as a uint8 frame")
    if args.get("path") or uploads:
        # the same reader, caps and errors as gaussians.load_ply (on this session's lane, off the router thread)
        from .ops_stage1 import load_splat

        return load_splat(req, args.get("path"), "path", buffer=uploads[0] if uploads else None)
    if args.get("source_session"):
        other = req.get_session(args["source_session"])
        with other.lock:
            if other.gaussians is None or other.gaussians.n == 0:
                raise InvalidArgs(f"session {args['source_session']!r} has no Gaussians")
            return other.gaussians.clone()
    st = np.array(states[0], dtype=np.float32)  # a writable copy of the read-only frame
    if st.shape[0] == 0:
        raise InvalidArgs("the state buffer is empty")
    if (st[:, 7:10] <= 0).any() or (st[:, 6] < 0).any() or (st[:, 6] > 1).any():
        raise InvalidArgs("state buffer: scales must be > 0 and opacity in [0, 1]")
    t = torch.from_numpy(st)
    return Gaussians.from_activated(t[:, :3], t[:, 3:6].clamp(0, 1), t[:, 6], t[:, 7:10], t[:, 10:14])


def handle_add(req) -> dict:
    s = req.session
    args = req.args
    name = args.get("name") or None
    if name is not None:
        try:
            check_part_name(name)
        except ValueError as exc:
            raise _invalid(exc) from None
    matrix = _matrix(args, req.buffers)
    other = _gaussians_to_merge(req)
    if matrix is not None:
        try:  # validate (singular, non-affine) before anything changes
            check_matrix(matrix)
        except ValueError as exc:
            raise _invalid(exc) from None
    with s.lock:
        _no_interaction_job(s)
        s.record(f"add {name or 'part'}")
        if s.gaussians is None:  # adding to an empty session: start from zero rows of the same layout
            empty = {k: v[:0].detach().clone().to(s.device).requires_grad_(True) for k, v in other.params.items()}
            s.gaussians, s.optimizers = Gaussians(params=empty, sh_degree=other.sh_degree), None
        res = merge_gaussians(s.gaussians, s.optimizers, other, matrix, name)
        return {"added": res.added, "count": res.total, "name": name}


def handle_transform(req) -> dict:
    s = req.session
    args = req.args
    matrix = _matrix(args, req.buffers)
    if matrix is None:
        raise InvalidArgs("parts.transform needs a [4,4] matrix buffer or a 16-number 'matrix'")
    pivot = None if args.get("pivot") is None else torch.tensor(args["pivot"], dtype=torch.float32)
    with s.lock:
        g = _gaussians(s)
        _no_interaction_job(s)
        s.check_revision(args.get("revision"))
        mask = _part(g, args["part"])
        try:
            check_matrix(matrix)
        except ValueError as exc:
            raise _invalid(exc) from None
        s.record(f"transform {args['part']}")
        res = transform_part(g, mask, matrix, pivot=pivot, optimizers=s.optimizers)
        s.bump()  # the rows stay, but a client's copy of them is stale
        return {"count": res.count, "pivot": res.pivot.tolist(), "similarity": res.similarity}


def _check_sds_memory(req, g: Gaussians, cfg: InteractiveSDSConfig) -> None:
    """Interactive SDS renders cfg.batch zoom-in views of cfg.width² per step: estimated like a Stage I step
    from a camera 1 unit away with a 60° fov (zoom-in views frame the part about that closely)."""
    from . import costs

    est = costs.stage1_bytes(g, cfg.batch, cfg.width, 1.0, 60.0)
    req.services.memory.check(f"{req.op}: {cfg.batch} zoom-in views of {cfg.width}² per step, {g.n} Gaussians", est)


def handle_drag(req) -> dict:
    s = req.session
    args = req.args
    steps = int(args["steps"])
    ps, pt = np.asarray(args["source"], float), np.asarray(args["target"], float)
    dist = float(np.linalg.norm(pt - ps))
    # Default α: reach the target half-way through, the rest of the steps settle the losses.
    step_size = args.get("step_size") or (dist / max(1, steps // 2) if dist > 0 else 1.0)
    use_guidance = bool(args["guidance"])
    spec = s.guidance
    if use_guidance and not (args.get("prompt") or "").strip() and spec is not None and spec.prompt:
        args = {**args, "prompt": spec.prompt, "negative_prompt": args.get("negative_prompt") or spec.negative_prompt}
    try:
        cfg = DragConfig(
            radius=float(args["radius"]), step_size=float(step_size), steps=steps, mode=args["mode"],
            motion_weight=float(args["motion_weight"]), rigid_weight=float(args["rigid_weight"]),
            lr_scale=float(args["lr_scale"]), densify_after=bool(args["densify_after"]),
            sds=_sds_config(args) if use_guidance else InteractiveSDSConfig(),
        )
    except ValueError as exc:
        raise _invalid(exc) from None
    with s.lock:
        g = _gaussians(s)
        if use_guidance:
            _check_sds_memory(req, g, cfg.sds)
        guidance = _session_guidance(req, required=use_guidance, oracle=bool(args.get("oracle"))) if use_guidance else None
        if use_guidance and not cfg.sds.prompt:
            raise InvalidArgs("a drag with guidance needs a prompt")
        try:
            job = DragJob(s, args["source"], args["target"], cfg, guidance, seed=int(args["seed"]), resume=req.resume is not None)
        except ValueError as exc:
            raise _invalid(exc) from None
        job_id = req.start_job(job, label=f"drag ({cfg.mode})")
    return {"job": job_id, "steps": steps, "active": int(job.state.fixed_set.sum())}


def handle_edit(req) -> dict:
    s = req.session
    args = req.args
    every = int(args.get("densify_every") or 0)
    spec = s.guidance
    if not (args.get("negative_prompt") or "") and spec is not None and spec.negative_prompt:
        args = {**args, "negative_prompt": spec.negative_prompt}  # the part's prompt is new; the negative persists
    try:
        # SDS view-space gradients: Stage I's threshold (3DGS's 0.0002 would densify every Gaussian of the part)
        dcfg = DensifyConfig(
            from_step=every, every=every, until_step=int(args["steps"]), opacity_reset_every=None, grad_threshold=SDS_GRAD_THRESHOLD,
        ) if every else None
        cfg = SemanticEditConfig(steps=int(args["steps"]), sds=_sds_config(args), seed=int(args["seed"]), densify=dcfg)
    except ValueError as exc:
        raise _invalid(exc) from None
    with s.lock:
        g = _gaussians(s)
        _part(g, args["part"])
        _check_sds_memory(req, g, cfg.sds)
        guidance = _session_guidance(req, required=True, oracle=bool(args.get("oracle")))
        job = SemanticEditJob(s, args["part"], guidance, cfg)
        job_id = req.start_job(job, label=f"edit {args['part']}")
    return {"job": job_id, "steps": cfg.steps, "part_size": int(g.part_mask(args["part"]).sum())}


def handle_sam(req):
    from . import files

    args = req.args
    # the checkpoint is unpickled: only a file inside the server's model roots (--model-dir)
    checkpoint = files.resolve_model_file(req.services.model_roots, args["checkpoint"], req.services.max_file_bytes, "segment.sam: checkpoint")
    try:
        mask = selection.sam_masks(np.asarray(req.buffers[0]), np.asarray(args["points"], dtype=np.float32), checkpoint, args["model_type"])
    except selection.SegmentorUnavailableError as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise _invalid(exc) from None

    return Reply({"count": int(mask.sum())}, [mask.astype(np.uint8)])


HANDLERS = {name: with_revision(fn) for name, fn in {
    "parts.select": handle_select,
    "parts.list": handle_list,
    "parts.forget": handle_forget,
    "parts.remove": handle_remove,
    "parts.add": handle_add,
    "parts.transform": handle_transform,
    "interact.drag": handle_drag,
    "interact.edit": handle_edit,
    "segment.sam": handle_sam,
}.items()}  # replies carry `revision` (issue 14)
