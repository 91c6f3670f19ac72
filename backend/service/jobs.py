"""Jobs: long optimisations (Stage I, a drag, Stage II distillation, …) on a session's worker thread.

A job is any object with::

    kind: str                          # e.g. "stage1"
    total_steps: int
    def step(self, i: int) -> dict[str, float]     # one optimisation step; metrics for 'progress'
    # optional:
    def result(self) -> dict                      # fields of the 'done' event
    def state_payload(self) -> np.ndarray         # [N,14] float32 for 'state' events (default: the
                                                  #   session's Gaussians' state_array())
    def state_dict(self) -> dict                  # the job's own progress (RNG state, schedules, …)
    def load_state_dict(self, d: dict) -> None    #   for checkpoints and session.resume

The :class:`JobRunner` calls ``step(i)`` for i = start … total_steps-1 under ``session.lock``. Pause,
resume, cancel and shutdown are flags checked *between* two steps, so they take effect within one step
while the server thread keeps answering. Every ``progress_every`` steps it emits ``progress``, every
``state_every`` steps a ``state`` frame, every ``checkpoint_every`` steps it writes a checkpoint
(atomic), and at the end ``done`` (status "done" or "cancelled") or ``error``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from . import checkpoint as ckpt_mod
from .session import Session

log = logging.getLogger(__name__)


@runtime_checkable
class Job(Protocol):
    kind: str
    total_steps: int

    def step(self, i: int) -> dict[str, float]: ...


@dataclass(frozen=True)
class JobConfig:
    """How often a running job reports and checkpoints (steps; 0 disables).

    Attributes:
        progress_every: a ``progress`` event every K steps (and after the last step).
        state_every: a ``state`` event with the [N,14] frame every K steps (and at the end).
        checkpoint_every: an atomic checkpoint every C steps; a ``kill -9`` loses at most C steps.
    """

    progress_every: int = 1
    state_every: int = 10
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("progress_every", "state_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"JobConfig.{name} must be an int >= 0, got {v!r}")


@dataclass
class JobOrigin:
    """The request that started a job (kept so session.resume can rebuild it after a restart)."""

    op: str
    args: dict
    buffers: list[np.ndarray]
    request_id: str


# emit(session_id, header_fields, buffers): hands an event to the server thread (thread-safe).
Emit = Callable[[str, dict, list], None]


def _finite_metrics(m: Any) -> dict[str, float]:
    """Metrics as a {str: float} map that msgpack can carry (NaN/inf become None)."""
    if not isinstance(m, dict):
        return {}
    out = {}
    for k, v in m.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            f = float(v)
            out[str(k)] = f if math.isfinite(f) else None
    return out


class JobRunner:
    """Runs one job on a daemon thread. Created by the server (``Request.start_job``), not by ops."""

    def __init__(
        self,
        session: Session,
        job: Any,
        job_id: str,
        origin: JobOrigin,
        emit: Emit,
        state_dir: str | None,
        cfg: JobConfig = JobConfig(),
        start_step: int = 0,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        total = getattr(job, "total_steps", None)
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ValueError(f"job.total_steps must be an int >= 0, got {total!r}")
        if not callable(getattr(job, "step", None)):
            raise TypeError(f"job {type(job).__name__} has no step(i) method")
        self.session = session
        self.job = job
        self.job_id = job_id
        self.kind = str(getattr(job, "kind", type(job).__name__))
        self.origin = origin
        self.total = total
        self.step = int(start_step)
        self.metrics: dict[str, float] = {}
        self.state = "running"  # running | pausing | paused | cancelling | done | cancelled | error | stopped
        self.error: str | None = None
        self._emit_fn = emit
        self._on_exit = on_exit  # called on the worker thread as it ends (the server closes its wake socket)
        self._state_dir = state_dir
        # a job may carry its own snapshot cadence (stage1.start's snapshot_every); the server's default otherwise
        own = getattr(job, "state_every", None)
        if isinstance(own, int) and not isinstance(own, bool) and own >= 0:
            cfg = dataclasses.replace(cfg, state_every=own)
        self.cfg = cfg
        self._cond = threading.Condition()
        self._pause = False
        self._cancel = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"job-{job_id}", daemon=True)
        self.started = time.time()

    # -- control (any thread) ---------------------------------------------------------------------
    def start(self, paused: bool = False) -> None:
        if paused:
            self._pause, self.state = True, "paused"
        self._thread.start()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "error", "stopped")

    def pause(self) -> None:
        with self._cond:
            if not self.finished and not self._pause:
                self._pause = True
                if self.state == "running":
                    self.state = "pausing"
                self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            if not self.finished and self._pause:
                self._pause = False
                if self.state in ("pausing", "paused"):
                    self.state = "running"
                self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            if not self.finished:
                self._cancel = True
                self.state = "cancelling"
                self._cond.notify_all()

    def stop(self) -> None:
        """Shutdown: stop between steps *without* cancelling (the checkpoint keeps the job resumable)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> dict:
        return {"job": self.job_id, "kind": self.kind, "state": self.state, "step": self.step, "total": self.total, "metrics": dict(self.metrics)}

    # -- checkpoints --------------------------------------------------------------------------------
    def record(self, keep_job: bool = True) -> ckpt_mod.JobRecord | None:
        """The job part of a checkpoint (None once it no longer needs continuing)."""
        if not keep_job:
            return None
        sd_fn = getattr(self.job, "state_dict", None)
        import copy

        state = copy.deepcopy(sd_fn()) if callable(sd_fn) else None
        return ckpt_mod.JobRecord(
            op=self.origin.op, args=dict(self.origin.args), buffers=[np.array(b) for b in self.origin.buffers],
            kind=self.kind, job_id=self.job_id, step=self.step, total=self.total, state=state,
            paused=self._pause,
        )

    def write_checkpoint(self, keep_job: bool = True) -> str | None:
        """Capture (under the session lock) and write the session's checkpoint; None without a state dir."""
        if self._state_dir is None:
            return None
        with self.session.lock:
            if self.session.job is not self:  # paused behind an interaction: that job's checkpoints record this one
                return None
            c = ckpt_mod.capture(self.session, self.record(keep_job))
        return str(ckpt_mod.write(self._state_dir, c))

    # -- the worker thread --------------------------------------------------------------------------
    def _emit(self, event: str, data: dict, buffers: list | None = None) -> None:
        header = {"event": event, "id": self.origin.request_id, "session": self.session.id, "job": self.job_id, "data": data}
        self._emit_fn(self.session.id, header, buffers or [])

    def _emit_progress(self, i: int) -> None:
        data: dict = {"step": i, "total": self.total, "metrics": self.metrics}
        buffers: list = []
        take = getattr(self.job, "take_preview", None)  # a job's new low-resolution preview rides along
        img = take() if callable(take) else None
        if img is not None:
            img = np.ascontiguousarray(img, dtype=np.float32)
            data["preview"] = [int(img.shape[0]), int(img.shape[1])]
            buffers = [img]
        self._emit("progress", data, buffers)
        take_mesh = getattr(self.job, "take_mesh", None)  # a Stage II job's low-resolution preview mesh
        m = take_mesh() if callable(take_mesh) else None
        if m is not None:
            self._emit("mesh", {"step": int(m.step), "vertices": int(len(m.vertices)), "faces": int(len(m.faces))},
                       [np.ascontiguousarray(m.vertices, np.float32), np.ascontiguousarray(m.faces, np.int32), np.ascontiguousarray(m.colors, np.uint8)])

    def _state_frame(self) -> tuple[np.ndarray, int]:
        """The state frame and the session's revision it belongs to (read together under the lock)."""
        with self.session.lock:
            revision = self.session.current_revision()
            fn = getattr(self.job, "state_payload", None)
            if callable(fn):
                return np.ascontiguousarray(fn(), dtype=np.float32), revision
            g = self.session.gaussians
            return (np.zeros((0, 14), np.float32) if g is None else g.state_array()), revision

    def _emit_state(self) -> None:
        frame, revision = self._state_frame()
        from interactive3d.protocol.catalogue import STATE_COLUMNS

        self._emit("state", {"step": self.step, "count": int(frame.shape[0]), "columns": list(STATE_COLUMNS), "revision": revision}, [frame])

    def _wait_if_paused(self) -> None:
        with self._cond:
            if not self._pause or self._cancel or self._stop:
                return
            self.state = "paused"
        self._emit("paused", {"step": self.step})
        with self._cond:
            while self._pause and not self._cancel and not self._stop:
                self._cond.wait()
            resumed = not self._cancel and not self._stop
            if resumed:
                self.state = "running"
        if resumed:
            self._emit("resumed", {"step": self.step})

    def _run(self) -> None:
        try:
            self._run_steps()
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _run_steps(self) -> None:
        cfg = self.cfg
        try:
            while self.step < self.total:
                self._wait_if_paused()
                if self._cancel or self._stop:
                    break
                with self.session.lock:
                    metrics = self.job.step(self.step)
                    self.step += 1  # inside the lock: a checkpoint taken under it sees state and step agree
                    self.session.note_rows()  # densify/prune changed the rows: a new revision before anyone reads
                self.metrics = _finite_metrics(metrics)
                i = self.step
                if cfg.progress_every and (i % cfg.progress_every == 0 or i == self.total):
                    self._emit_progress(i)
                if cfg.state_every and i % cfg.state_every == 0 and i < self.total:
                    self._emit_state()
                if cfg.checkpoint_every and i % cfg.checkpoint_every == 0 and i < self.total:
                    self.write_checkpoint(keep_job=True)
        except Exception as exc:  # noqa: BLE001 - a failing job must become an 'error' event, not a dead thread
            log.exception("job %s (%s) of session %s failed at step %d", self.job_id, self.kind, self.session.id, self.step)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "error"
            self._emit("error", {"code": "internal", "message": self.error, "step": self.step})
            return
        if self._stop and not self._cancel and self.step < self.total:
            # Shutdown: the server writes the resumable checkpoint after join().
            self.state = "stopped"
            return
        status = "cancelled" if self._cancel and self.step < self.total else "done"
        result: dict = {}
        fn = getattr(self.job, "result", None)
        try:
            if callable(fn):
                with self.session.lock:
                    result = dict(fn() or {})
            self._emit_state()
            self.write_checkpoint(keep_job=False)
        except Exception as exc:  # noqa: BLE001 - same: report, do not die
            log.exception("job %s finished but its result/checkpoint failed", self.job_id)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "error"
            self._emit("error", {"code": "internal", "message": self.error, "step": self.step})
            return
        self.state = status
        self._emit("done", {**result, "status": status, "steps": self.step, "total": self.total})
