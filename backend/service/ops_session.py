"""Handlers of the server and session ops (specs: ``_SERVER_OPS`` in protocol/catalogue.py)."""

from __future__ import annotations

import functools

import numpy as np
from interactive3d.protocol.catalogue import STATE_COLUMNS
from interactive3d.protocol.codec import PROTOCOL_VERSION
from interactive3d.protocol.errors import Busy, NotFound

from . import checkpoint as ckpt_mod
from .requests import SERVER_NAME, Reply, Request, with_revision


@functools.lru_cache(maxsize=1)  # ping answers on the router thread: read the package metadata once
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interactive3d")
    except PackageNotFoundError:
        return "0+unknown"


FAST_COMPONENTS = (("render", "gsplat"), ("hashgrid", "tinycudann/triton"), ("volrend", "nerfacc"))


def fastpath_backends(device, self_test: bool = False) -> dict[str, dict]:
    """Which backend each GPU component uses on ``device``: {component: {backend, fast, ok, reason}}.

    Read from the fast-path record (backend/accel/fastpath.py). With ``self_test`` the render and volume
    rendering choices are made now (their self-tests run on CUDA; ``i3d serve`` does this at start-up, the
    ping handler never does: a first gsplat JIT compile can take minutes). A component not chosen yet reports
    backend "pending" (it is chosen at its first use); on a CPU device everything is the torch twin.
    """
    import torch

    from ..accel.fastpath import FASTPATHS

    dev = torch.device(device)
    if self_test:
        from ..stage1.render import choose_backend
        from ..stage2.render import choose_volrend

        choose_backend(dev)
        choose_volrend(dev)
    out = {}
    for comp, fast in FAST_COMPONENTS:
        c = FASTPATHS.get(comp, dev)
        if c is not None:
            out[comp] = {"backend": c.backend, "fast": c.fast, "ok": c.ok, "reason": c.reason}
        elif dev.type != "cuda":
            out[comp] = {"backend": "torch", "fast": fast, "ok": True, "reason": f"no CUDA device: {fast} needs one"}
        else:
            out[comp] = {"backend": "pending", "fast": fast, "ok": True, "reason": "chosen (with its self-test) at its first use"}
    return out


def ping(req: Request) -> Reply:
    return Reply({
        "name": SERVER_NAME,
        "version": PROTOCOL_VERSION,
        "server_version": _package_version(),
        "device": str(req.device),
        "ops": list(req.services.ops),
        "backends": fastpath_backends(req.device),
    })


def session_create(req: Request) -> Reply:
    s = req.services.create_session(req.args["name"], identity=req.identity)
    return Reply({"session": s.id})


def session_list(req: Request) -> Reply:
    srv = req.services
    cks = [] if srv.state_dir is None else ckpt_mod.list_checkpoints(srv.state_dir)
    out = []
    for s in srv.sessions():
        row = s.summary()
        row["step"] = 0 if s.job is None else int(s.job.step)  # documented field (issue 15)
        owner = srv.owner(s.id)
        row["mine"] = owner is not None and owner == req.identity
        out.append(row)
    return Reply({"sessions": out, "checkpoints": cks})


def session_attach(req: Request) -> Reply:
    """Observe a session: its job events also go to this client (the creator gets them by default); with
    take_over this client becomes its owner (the only one whose ops may change it)."""
    srv, s = req.services, req.session
    if req.identity is not None:
        if req.args["take_over"]:
            srv.take_over(s, req.identity)
        else:
            srv.subscribe(s, req.identity)
    owner = srv.owner(s.id)
    return Reply({"session": s.id, "job": None if s.job is None else s.job.job_id,
                  "owner": owner is not None and owner == req.identity})


def session_close(req: Request) -> Reply:
    req.services.close_session(req.session, checkpoint=req.args["checkpoint"])
    return Reply({"closed": True})


def session_resume(req: Request) -> Reply:
    s, job, step = req.services.resume_session(req.args["session"], req.identity, req.args["paused"])
    n = 0 if s.gaussians is None else s.gaussians.n
    behind = None if s.suspended is None else s.suspended[0].job_id
    return Reply({"session": s.id, "count": n, "job": job, "step": step, "suspended": behind, "revision": s.revision_now()})


def session_checkpoint(req: Request) -> Reply:
    s = req.session
    if req.services.state_dir is None:
        raise NotFound("this server has no state dir (start it with --state-dir)")
    runner = s.job
    if runner is not None and not runner.finished:
        with s.lock:  # between two steps: the job record and the session state agree
            c = ckpt_mod.capture(s, runner.record())
        step = runner.step
    else:
        c, step = ckpt_mod.capture(s), 0
    path = ckpt_mod.write(req.services.state_dir, c)
    return Reply({"path": str(path), "step": step})


def _job_status(req: Request) -> dict:
    s = req.session
    r, behind = s.job, s.suspended
    if r is None:
        return {"job": None, "kind": None, "state": "idle", "step": 0, "total": 0, "metrics": {}, "suspended": None}
    return {**r.status(), "suspended": None if behind is None else behind[0].job_id}


def _active_job(req: Request):
    r = req.session.job
    if r is None or r.finished:
        raise NotFound(f"session {req.session.id} has no job in flight")
    return r


def job_status(req: Request) -> Reply:
    return Reply(_job_status(req))


def job_pause(req: Request) -> Reply:
    _active_job(req).pause()
    return Reply(_job_status(req))


def job_resume(req: Request) -> Reply:
    _active_job(req).resume()
    return Reply(_job_status(req))


def job_cancel(req: Request) -> Reply:
    _active_job(req).cancel()
    return Reply(_job_status(req))


def _history_result(req: Request) -> dict:
    s = req.session
    with s.lock:
        n = 0 if s.gaussians is None else s.gaussians.n
    return {**s.history.labels(), "count": n}


def _idle(req: Request) -> None:
    if req.session.job_active:
        raise Busy(f"session {req.session.id} has job {req.session.job.job_id} in flight; cancel it or wait for it first")


def history_undo(req: Request) -> Reply:
    _idle(req)
    try:
        label = req.session.undo()
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return Reply({**_history_result(req), "label": label})


def history_redo(req: Request) -> Reply:
    _idle(req)
    try:
        label = req.session.redo()
    except LookupError as exc:
        raise NotFound(str(exc)) from None
    return Reply({**_history_result(req), "label": label})


def history_list(req: Request) -> Reply:
    return Reply(_history_result(req))


def state_get(req: Request) -> Reply:
    s = req.session
    snap = req.services.last_state(s) if s.job_active else None
    if snap is not None:  # a job is stepping: its latest state frame, without waiting for the lock
        frame, parts, counts, revision = snap
        result = {"count": int(frame.shape[0]), "columns": list(STATE_COLUMNS), "parts": parts, "part_counts": counts}
        if revision is not None:  # the revision the frame belongs to (its state event's), not the session's now
            result["revision"] = int(revision)
        return Reply(result, [frame])
    with s.lock:
        g = s.gaussians
        revision = s.current_revision()  # under the lock: the frame and its revision agree
        if g is None:
            return Reply({"count": 0, "columns": list(STATE_COLUMNS), "parts": [], "part_counts": {}, "revision": revision},
                         [np.zeros((0, 14), np.float32)])
        frame = g.state_array()
        parts = g.part_names()
        counts = {p: int(g.part_mask(p).sum()) for p in parts}
    return Reply({"count": int(frame.shape[0]), "columns": list(STATE_COLUMNS), "parts": parts, "part_counts": counts,
                  "revision": revision}, [frame])


HANDLERS: dict = {name: with_revision(fn) for name, fn in {
    "ping": ping,
    "session.create": session_create,
    "session.list": session_list,
    "session.attach": session_attach,
    "session.close": session_close,
    "session.resume": session_resume,
    "session.checkpoint": session_checkpoint,
    "job.status": job_status,
    "job.pause": job_pause,
    "job.resume": job_resume,
    "job.cancel": job_cancel,
    "history.undo": history_undo,
    "history.redo": history_redo,
    "history.list": history_list,
    "state.get": state_get,
}.items()}  # replies carry `revision` (issue 14)
