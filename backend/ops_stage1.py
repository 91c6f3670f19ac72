"""Handlers of the Stage I ops (specs: ``_STAGE1_OPS`` in protocol/catalogue.py; see docs/backend-api.md).

- ``gaussians.init``: initialise the session's Gaussians (random sphere/ellipsoid, a points buffer with
  colours, a 3DGS .ply, or a mesh) — an undoable history entry.
- ``gaussians.load_ply`` / ``gaussians.save_ply``: 3DGS .ply files (INRIA layout).
"""

from __future__ import annotations

import logging
import os


from interactive3d.protocol.errors import Busy, InvalidArgs, NotFound
from interactive3d.protocol.ply import PlyFormatError

from . import init as init_mod
from .gaussians import Gaussians, init_random, make_optimizers
from .server import Reply, Request

log = logging.getLogger(__name__)


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


HANDLERS: dict = {
    "gaussians.init": gaussians_init,
    "gaussians.load_ply": gaussians_load_ply,
    "gaussians.save_ply": gaussians_save_ply,
}
