"""Session checkpoints: one file per session in the server's state dir, written atomically.

``<state_dir>/sessions/<session>/checkpoint.pt`` holds the session (Gaussians, optimiser moments, extra slots,
the ids of its undo/redo entries) and, when a job was in flight, what is needed to continue it: the op and args that
started it, its request buffers, the step it reached and the job's own ``state_dict()`` (RNG state
included). Writes go to a temp file in the same folder, are fsync'ed, then ``os.replace``d over the old
file, so a ``kill -9`` at any moment leaves the previous or the new checkpoint, never a torn one.

History entries never change once recorded, so each is written once to ``history/<uid>.pt`` (same
atomic write) and a periodic checkpoint only rewrites the current state; entries no longer referenced
are deleted after the new checkpoint is in place.

Trust (issue 25): ``<state_dir>/sessions`` is written by the server only — the server refuses a data folder that
overlaps it, so no request can put a file there. Even so, files are read with ``torch.load(weights_only=True)``
(tensors and plain containers; numpy arrays are stored as tagged uint8 tensors), so a file cannot run code when loaded.
Each session folder carries a :data:`MARKER` naming its session, written before anything else in it; listing and
clean-up consider only folders with a matching marker, so they never touch what the server did not make.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
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

FORMAT_VERSION = 2  # 2: numpy arrays tagged as uint8 tensors (weights_only loading), sessions/ folder, marker
FILE_NAME = "checkpoint.pt"
HISTORY_DIR = "history"
SESSIONS_DIR = "sessions"
MARKER = ".i3d-session"
TMP_PREFIX = ".tmp-"
_NDARRAY = "__i3d_ndarray__"


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
    fit_resolution: int | None = None  # Session.fit_resolution
    revision: int = 0  # the session's state revision (issue 14); a resumed session continues above it


def sessions_dir(state_dir: str | Path) -> Path:
    """The folder of every session's checkpoint folder (written by the server only)."""
    return Path(state_dir) / SESSIONS_DIR


def checkpoint_path(state_dir: str | Path, session_id: str) -> Path:
    return sessions_dir(state_dir) / session_id / FILE_NAME


def _to_safe(v: Any) -> Any:
    """``v`` with numpy arrays and scalars replaced by plain values weights_only loading accepts."""
    if isinstance(v, np.ndarray):
        # (the shape of v itself: ascontiguousarray makes a 0-d array 1-d)
        raw = np.frombuffer(np.ascontiguousarray(v).tobytes(), np.uint8).copy()  # a tensor: weights_only loads it
        return {_NDARRAY: torch.from_numpy(raw), "dtype": v.dtype.str, "shape": list(v.shape)}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _to_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_to_safe(x) for x in v)
    return v


def _from_safe(v: Any) -> Any:
    if isinstance(v, dict):
        if _NDARRAY in v:
            raw = v[_NDARRAY].cpu().numpy().tobytes()
            return np.frombuffer(raw, dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
        return {k: _from_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_from_safe(x) for x in v)
    return v


def _load(path: Path, device: torch.device) -> Any:
    """A file this module wrote, loaded without unpickling anything but tensors and plain containers."""
    with open(path, "rb") as f:
        return _from_safe(torch.load(f, map_location=device, weights_only=True))


def _owned(folder: Path) -> bool:
    """True when ``folder`` is a real folder (not a symlink) holding this server's marker for its own name."""
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        return (folder / MARKER).read_text(encoding="utf-8") == folder.name
    except (OSError, UnicodeDecodeError):
        return False


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
            fit_resolution=session.fit_resolution,
            revision=session.current_revision(),
        )


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(_to_safe(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(state_dir: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically to ``<state_dir>/sessions/<session>/checkpoint.pt``; returns the path."""
    path = checkpoint_path(state_dir, ckpt.session_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _owned(path.parent):
        (path.parent / MARKER).write_text(ckpt.session_id, encoding="utf-8")
    hist = path.parent / HISTORY_DIR
    hist.mkdir(exist_ok=True)
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
        "fit_resolution": ckpt.fit_resolution,
        "revision": ckpt.revision,
    }
    _atomic_save(payload, path)
    keep = {f"{s.uid}.pt" for s in (*ckpt.undo, *ckpt.redo)}
    for f in hist.iterdir():
        if f.name not in keep and not f.name.startswith(TMP_PREFIX):
            f.unlink(missing_ok=True)
    return path


def read(state_dir: str | Path, session_id: str, device: torch.device | str = "cpu", trusted: tuple[str, ...] = TRUSTED_MODULES) -> Checkpoint:
    """Load a checkpoint. FileNotFoundError if there is none; ValueError if it is not one of ours.

    Extra-slot classes are imported only from modules whose names start with one of ``trusted``.
    """
    path = checkpoint_path(state_dir, session_id)
    if not _owned(path.parent):
        raise FileNotFoundError(path)
    device = torch.device(device)
    try:
        payload = _load(path, device)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} is not an interactive3d checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or payload.get("session") != session_id:
        raise ValueError(f"{path} is not an interactive3d checkpoint of format {FORMAT_VERSION} for session {session_id}")
    objects: dict[str, Any] = {}
    job, suspended = payload["job"], payload.get("suspended")  # files from before preemption have no "suspended"

    def entry(uid: str) -> SessionState:
        d = _load(path.parent / HISTORY_DIR / f"{uid}.pt", device)
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
        fit_resolution=_fit_resolution(payload.get("fit_resolution")),  # files from before it have none
        revision=int(payload.get("revision", 0)),  # files from before revisions have none
    )


def _fit_resolution(v) -> int | None:
    """A checkpoint's fit_resolution, None unless a positive int (a damaged value must not break a resume)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16 else None


def restore_session(ckpt: Checkpoint, device: torch.device | str = "cpu") -> Session:
    """A live Session from a checkpoint (no job attached yet)."""
    s = Session(ckpt.session_id, ckpt.name, device=device)
    s.restore(ckpt.current)
    s.revision = ckpt.revision
    s.bump()  # resuming is a change: indices a client took before the restart are refused
    s.history.undo = list(ckpt.undo)
    s.history.redo = list(ckpt.redo)
    s.fit_resolution = ckpt.fit_resolution
    if ckpt.guidance is not None:
        from ..stage1.guidance_cache import GuidanceSpec

        s.guidance = GuidanceSpec.from_dict(ckpt.guidance)
    return s


def remove(state_dir: str | Path, session_id: str) -> None:
    """Delete a session's checkpoint folder (nothing if there is none, or if the server did not make it)."""
    folder = checkpoint_path(state_dir, session_id).parent
    if folder.parent == sessions_dir(state_dir) and _owned(folder):
        shutil.rmtree(folder)


def list_checkpoints(state_dir: str | Path) -> list[dict]:
    """[{session, time}] for every checkpoint the server wrote in ``state_dir`` (marked folders only)."""
    root = sessions_dir(state_dir)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob(f"*/{FILE_NAME}")):
        if _owned(p.parent) and not p.is_symlink():
            out.append({"session": p.parent.name, "time": p.stat().st_mtime})
    return out


def remove_orphans(state_dir: str | Path) -> int:
    """Delete the temp files a write killed mid-way left in the server's own session folders (start-up, before
    any session is open); returns how many."""
    gone = 0
    root = sessions_dir(state_dir)
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        if not _owned(folder):
            continue
        for d in (folder, folder / HISTORY_DIR):
            for f in d.glob(f"{TMP_PREFIX}*") if d.is_dir() and not d.is_symlink() else ():
                if f.is_file() and not f.is_symlink():
                    f.unlink(missing_ok=True)
                    gone += 1
    return gone


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
