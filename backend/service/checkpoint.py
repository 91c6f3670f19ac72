"""Session checkpoints: one file per session in the server's state dir, written atomically.

``<state_dir>/<session>/checkpoint.pt`` holds the session (Gaussians, optimiser moments, extra slots,
the ids of its undo/redo entries) and, when a job was in flight, what is needed to continue it: the op and args that
started it, its request buffers, the step it reached and the job's own ``state_dict()`` (RNG state
included). Writes go to a temp file in the same folder, are fsync'ed, then ``os.replace``d over the old
file, so a ``kill -9`` at any moment leaves the previous or the new checkpoint, never a torn one.

History entries never change once recorded, so each is written once to ``history/<uid>.pt`` (same
atomic write) and a periodic checkpoint only rewrites the current state; entries no longer referenced
are deleted after the new checkpoint is in place.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .session import Session, SessionState

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "checkpoint.pt"
HISTORY_DIR = "history"


@dataclass
class JobRecord:
    """How to continue a job after a restart: re-run ``op`` with ``args``/``buffers``, then load
    ``state`` into the new job and continue at ``step``."""

    op: str
    args: dict
    buffers: list[np.ndarray]
    kind: str
    job_id: str
    step: int
    total: int
    state: dict | None
    paused: bool = False


@dataclass
class Checkpoint:
    session_id: str
    name: str
    current: SessionState
    undo: list[SessionState] = field(default_factory=list)
    redo: list[SessionState] = field(default_factory=list)
    job: JobRecord | None = None
    # a Stage I job paused behind ``job`` (an interaction that preempts it); its ``paused`` says how it
    # goes on once ``job`` ends: False resumes it, True leaves it paused as the artist had it
    suspended: JobRecord | None = None
    time: float = field(default_factory=time.time)
    guidance: dict | None = None  # the session's GuidanceSpec as plain values
    revision: int = 0  # the session's state revision (issue 14); a resumed session continues above it


def checkpoint_path(state_dir: str | Path, session_id: str) -> Path:
    return Path(state_dir) / session_id / FILE_NAME


def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _state_to_plain(s: SessionState) -> dict:
    return {
        "label": s.label,
        "time": s.time,
        "gaussians": s.gaussians,
        "optimizers": s.optimizers,
        "extras": {k: {"class": _class_path(obj), "state": sd} for k, (obj, sd) in s.extras.items()},
    }


TRUSTED_MODULES = ("interactive3d.",)


def _load_class(path: str, trusted: tuple[str, ...]):
    module, _, qualname = path.partition(":")
    if not module.startswith(trusted):
        raise ValueError(f"refusing to load extra state class {path!r} from a checkpoint (trusted: {trusted})")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _state_from_plain(d: dict, device: torch.device, objects: dict[str, Any], trusted: tuple[str, ...]) -> SessionState:
    extras = {}
    for k, e in d["extras"].items():
        obj = objects.get(k)
        if obj is None:  # one object per slot, shared by every history entry (as in a live session)
            obj = _load_class(e["class"], trusted).from_state_dict(e["state"], device)
            objects[k] = obj
        extras[k] = (obj, e["state"])
    return SessionState(label=d["label"], gaussians=d["gaussians"], optimizers=d["optimizers"], extras=extras, time=d["time"])


def capture(session: Session, job: JobRecord | None = None, with_history: bool = True) -> Checkpoint:
    """Copy everything a checkpoint needs (hold ``session.lock`` only this long; writing is separate).

    With a ``job`` record, a Stage I job the session holds suspended behind it is recorded too."""
    with session.lock:
        suspended = None
        if job is not None and session.suspended is not None:
            runner, was_running = session.suspended
            suspended = runner.record()
            suspended.paused = not was_running
        return Checkpoint(
            session_id=session.id,
            name=session.name,
            current=session.capture("current"),
            undo=list(session.history.undo) if with_history else [],
            redo=list(session.history.redo) if with_history else [],
            job=job,
            suspended=suspended,
            guidance=None if session.guidance is None else session.guidance.to_dict(),
            revision=session.current_revision(),
        )


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(state_dir: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically to ``<state_dir>/<session>/checkpoint.pt``; returns the path."""
    path = checkpoint_path(state_dir, ckpt.session_id)
    hist = path.parent / HISTORY_DIR
    hist.mkdir(parents=True, exist_ok=True)
    for s in (*ckpt.undo, *ckpt.redo):
        f = hist / f"{s.uid}.pt"
        if not f.exists():
            _atomic_save(_state_to_plain(s), f)
    payload = {
        "format": FORMAT_VERSION,
        "session": ckpt.session_id,
        "name": ckpt.name,
        "time": ckpt.time,
        "current": _state_to_plain(ckpt.current),
        "undo": [s.uid for s in ckpt.undo],
        "redo": [s.uid for s in ckpt.redo],
        "job": None if ckpt.job is None else vars(ckpt.job),
        "suspended": None if ckpt.suspended is None else vars(ckpt.suspended),
        "guidance": ckpt.guidance,
        "revision": ckpt.revision,
    }
    _atomic_save(payload, path)
    keep = {f"{s.uid}.pt" for s in (*ckpt.undo, *ckpt.redo)}
    for f in hist.iterdir():
        if f.name not in keep and not f.name.startswith(".tmp-"):
            f.unlink(missing_ok=True)
    return path


def read(state_dir: str | Path, session_id: str, device: torch.device | str = "cpu", trusted: tuple[str, ...] = TRUSTED_MODULES) -> Checkpoint:
    """Load a checkpoint. FileNotFoundError if there is none; ValueError if it is not one of ours.

    Extra-slot classes are imported only from modules whose names start with one of ``trusted``.
    """
    path = checkpoint_path(state_dir, session_id)
    # Our own file in our own state dir: full unpickling is needed for optimiser and RNG states.
    payload = torch.load(path, map_location=torch.device(device), weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an interactive3d checkpoint of format {FORMAT_VERSION}")
    device = torch.device(device)
    objects: dict[str, Any] = {}
    job, suspended = payload["job"], payload.get("suspended")  # files from before preemption have no "suspended"

    def entry(uid: str) -> SessionState:
        d = torch.load(path.parent / HISTORY_DIR / f"{uid}.pt", map_location=device, weights_only=False)
        st = _state_from_plain(d, device, objects, trusted)
        st.uid = uid
        return st

    return Checkpoint(
        session_id=payload["session"],
        name=payload["name"],
        current=_state_from_plain(payload["current"], device, objects, trusted),
        undo=[entry(u) for u in payload["undo"]],
        redo=[entry(u) for u in payload["redo"]],
        job=None if job is None else JobRecord(**job),
        suspended=None if suspended is None else JobRecord(**suspended),
        time=payload["time"],
        guidance=payload.get("guidance"),  # files from before issue 18 have none
        revision=int(payload.get("revision", 0)),  # files from before revisions have none
    )


def restore_session(ckpt: Checkpoint, device: torch.device | str = "cpu") -> Session:
    """A live Session from a checkpoint (no job attached yet)."""
    s = Session(ckpt.session_id, ckpt.name, device=device)
    s.restore(ckpt.current)
    s.revision = ckpt.revision
    s.bump()  # resuming is a change: indices a client took before the restart are refused
    s.history.undo = list(ckpt.undo)
    s.history.redo = list(ckpt.redo)
    if ckpt.guidance is not None:
        from ..stage1.guidance_cache import GuidanceSpec

        s.guidance = GuidanceSpec.from_dict(ckpt.guidance)
    return s


def remove(state_dir: str | Path, session_id: str) -> None:
    """Delete a session's checkpoint folder (nothing if there is none)."""
    folder = checkpoint_path(state_dir, session_id).parent
    if folder.is_dir() and folder.parent == Path(state_dir):
        shutil.rmtree(folder)


def list_checkpoints(state_dir: str | Path) -> list[dict]:
    """[{session, time}] for every checkpoint file in ``state_dir``."""
    root = Path(state_dir)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob(f"*/{FILE_NAME}")):
        out.append({"session": p.parent.name, "time": p.stat().st_mtime})
    return out


def prune(state_dir: str | Path, max_age_s: float, now: float | None = None) -> list[str]:
    """Delete the checkpoint folders of sessions not written for more than ``max_age_s`` seconds (crashed
    or never-closed sessions nobody resumed); returns their ids. ``max_age_s`` <= 0 keeps everything."""
    if max_age_s <= 0:
        return []
    limit = (time.time() if now is None else now) - max_age_s
    old = [c["session"] for c in list_checkpoints(state_dir) if c["time"] < limit]
    for sid in old:
        remove(state_dir, sid)
    return old
