"""A session: one object's Gaussians, optimiser state, extra stage state, undo history, and its job.

Concurrency: ``session.lock`` (re-entrant) is held by the job thread during every step; handlers that
read or mutate the session take it too, so an edit lands *between* two optimisation steps.

History: :meth:`Session.record` pushes an exact snapshot (parameters, buffers such as part masks,
optimiser moments, every extra slot) before an edit; :meth:`undo` / :meth:`redo` swap snapshots.

State revision (issue 14): ``session.revision`` counts changes of the Gaussians that can invalidate what
a client holds — their number or order (remove, add, densify/prune in a job step), their replacement
(init, undo, redo, resume) and ops that move them (transform). Clients send the revision their Gaussian
indices refer to; a stale one is refused (``conflict``). Row edits are noticed by identity: every edit
of the rows (stage1.gaussians._edit_rows) and every restore makes new parameter tensors, so the session
remembers (weakly) the ``means`` tensor it last accounted for and bumps when it differs. The check runs
whenever the revision is read (:meth:`current_revision`) and after every job step, so a client can never
see new rows under an old revision.

Extra state of other stages lives in named slots, ``session.extras["stage2"] = obj``, where ``obj``
implements :class:`Extra` (``state_dict`` / ``load_state_dict`` / ``from_state_dict``). Slots are part of
history snapshots and of checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from interactive3d.protocol.errors import Conflict

from ..stage1.gaussians import Gaussians, deep_copy_optimizers, make_optimizers

SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # ids name folders in the state dir
DEFAULT_HISTORY_DEPTH = 32


@runtime_checkable
class Extra(Protocol):
    """Extra per-session state of a stage (e.g. the Stage II field), checkpointable and undoable.

    ``state_dict()`` must return tensors/arrays/plain values that ``copy.deepcopy`` and ``torch.save``
    handle; ``load_state_dict`` restores it exactly in place; ``from_state_dict`` rebuilds an object
    after a restart (checkpoints store the class as ``module:qualname``; only ``interactive3d.*``
    classes are loaded).
    """

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> "Extra": ...


class JobHandle(Protocol):
    """What a session reads of its job runner (backend/service/jobs.py JobRunner, which imports this module)."""

    job_id: str
    state: str  # running | pausing | paused | cancelling | done | cancelled | error | stopped
    finished: bool


@dataclass
class SessionState:
    """An exact copy of a session's mutable state (one history entry)."""

    label: str
    gaussians: dict | None  # Gaussians.snapshot() (numpy copies) or None
    optimizers: dict | None  # name → optimiser state_dict (deep copies) or None
    extras: dict[str, tuple[Any, dict]]  # slot → (object, deep-copied state_dict)
    time: float = field(default_factory=time.time)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # names its file in checkpoints (written once)


def restore_optimizers(g: Gaussians, states: dict | None) -> dict | None:
    """Optimisers for ``g`` (as :func:`make_optimizers` builds them) with ``states`` loaded."""
    if states is None:
        return None
    opts = make_optimizers(g)
    for k, sd in states.items():
        if k not in opts:
            raise ValueError(f"optimiser state for unknown group {k!r}; session.optimizers must come from make_optimizers")
        opts[k].load_state_dict(copy.deepcopy(sd))
    return opts


class History:
    """Undo and redo stacks of :class:`SessionState` (newest last), bounded to ``depth`` entries."""

    def __init__(self, depth: int = DEFAULT_HISTORY_DEPTH) -> None:
        if depth < 1:
            raise ValueError(f"history depth must be >= 1, got {depth}")
        self.depth = depth
        self.undo: list[SessionState] = []
        self.redo: list[SessionState] = []

    def labels(self) -> dict[str, list[str]]:
        return {"undo": [s.label for s in self.undo], "redo": [s.label for s in reversed(self.redo)]}


class Session:
    """One object being edited. Create through the server (``session.create``), not directly, in ops."""

    def __init__(self, session_id: str, name: str = "", device: torch.device | str = "cpu", history_depth: int = DEFAULT_HISTORY_DEPTH) -> None:
        if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
            raise ValueError(f"session id must match {SESSION_ID_RE.pattern}, got {session_id!r}")
        self.id = session_id
        self.name = name
        self.device = torch.device(device)
        self.gaussians: Gaussians | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] | None = None
        self.extras: dict[str, Any] = {}
        self.lock = threading.RLock()
        self.history = History(history_depth)
        self.job: JobHandle | None = None  # the JobRunner of the current or last job
        self.suspended = None  # (JobRunner, was_running): a Stage I job paused for an interaction job
        # The session's guidance (stage1.guidance_cache.GuidanceSpec: model, prompt, negative prompt), set by
        # stage1.start and used by drag, semantic edit and refinement. A setting, not an edit: it is kept in
        # checkpoints but not in undo history (undoing Stage I's result does not forget its prompt).
        self.guidance = None
        # The render size (px) the Gaussians were last optimised at by stage1.start; None for a set loaded or made
        # by gaussians.init. Distillation renders its targets no finer (stage2/distill.py target_supersample).
        # A setting like ``guidance``: kept in checkpoints, not in undo history.
        self.fit_resolution: int | None = None
        self.created = time.time()
        self.revision = 0  # the state revision (see the module docstring); only grows
        self._rows_seen: weakref.ref | None = None  # the ``means`` tensor the revision accounts for

    # -- state revision -----------------------------------------------------------------------------
    def _rows(self) -> torch.Tensor | None:
        g = self.gaussians
        return None if g is None else g.params.get("means")

    def _adopt_rows(self) -> None:
        rows = self._rows()
        self._rows_seen = None if rows is None else weakref.ref(rows)

    def note_rows(self) -> int:
        """Bump the revision if the Gaussians were replaced or their rows edited since it was last read;
        returns it. Called after every job step and by :meth:`current_revision`."""
        with self.lock:
            seen = None if self._rows_seen is None else self._rows_seen()
            if seen is not self._rows() or (self._rows_seen is not None and seen is None):
                self.revision += 1
                self._adopt_rows()
            return self.revision

    def current_revision(self) -> int:
        """The revision of the Gaussians as they are now (what replies and state frames carry)."""
        return self.note_rows()

    def revision_now(self) -> int:
        """The revision for a reply, without waiting for a running job's step: exact when the lock is free
        (or held by this thread), else the last one counted (the job counts its own step's changes)."""
        if self.lock.acquire(blocking=False):
            try:
                return self.note_rows()
            finally:
                self.lock.release()
        return self.revision

    def bump(self) -> int:
        """A change of the Gaussians that keeps their rows (a transform moves them): a new revision."""
        with self.lock:
            self.note_rows()
            self.revision += 1
            return self.revision

    def check_revision(self, revision: int | None) -> None:
        """Raise ``conflict`` if ``revision`` (None: not checked) is not the current one. Call it under
        ``self.lock`` before changing anything, so nothing changes when it raises."""
        if revision is None:
            return
        current = self.current_revision()
        if int(revision) != current:
            raise Conflict(
                f"the indices refer to state revision {revision}, but session {self.id} is at revision {current}: its "
                "Gaussians changed since (an edit, undo/redo, or a job step that added or removed some); "
                "fetch state.get and select again"
            )

    # -- snapshots --------------------------------------------------------------------------------
    def capture(self, label: str = "") -> SessionState:
        """An exact copy of the current state (take ``self.lock`` around it when a job may run)."""
        with self.lock:
            return SessionState(
                label=label,
                gaussians=None if self.gaussians is None else self.gaussians.snapshot(),
                optimizers=deep_copy_optimizers(self.optimizers),
                extras={k: (v, copy.deepcopy(v.state_dict())) for k, v in self.extras.items()},
            )

    def restore(self, state: SessionState) -> None:
        """Make ``state`` current (new parameter tensors; optimisers rebuilt with their moments)."""
        with self.lock:
            if state.gaussians is None:
                self.gaussians, self.optimizers = None, None
            else:
                self.gaussians = Gaussians.from_snapshot(state.gaussians, device=self.device)
                self.optimizers = restore_optimizers(self.gaussians, state.optimizers)
            extras = {}
            for k, (obj, sd) in state.extras.items():
                obj.load_state_dict(copy.deepcopy(sd))
                extras[k] = obj
            self.extras = extras

    # -- history ----------------------------------------------------------------------------------
    def record(self, label: str) -> None:
        """Push the current state as an undo point before an edit labelled ``label``; clears redo."""
        self._push(self.capture(label))

    @contextlib.contextmanager
    def recorded(self, label: str):
        """An edit that becomes an undo point only if it completes: an exception inside restores the state
        before it and leaves the history as it was (issue 25: a failed op leaves no entry)."""
        state = self.capture(label)
        try:
            yield
        except BaseException:
            self.restore(state)
            raise
        self._push(state)

    def _push(self, state: SessionState) -> None:
        h = self.history
        h.undo.append(state)
        del h.undo[: max(0, len(h.undo) - h.depth)]
        h.redo.clear()

    def undo(self) -> str:
        """Restore the state before the last recorded edit; returns its label. LookupError if none."""
        with self.lock:
            h = self.history
            if not h.undo:
                raise LookupError("nothing to undo")
            prev = h.undo.pop()
            h.redo.append(self.capture(prev.label))
            self.restore(prev)
            return prev.label

    def redo(self) -> str:
        """Re-apply the last undone edit; returns its label. LookupError if none."""
        with self.lock:
            h = self.history
            if not h.redo:
                raise LookupError("nothing to redo")
            nxt = h.redo.pop()
            h.undo.append(self.capture(nxt.label))
            self.restore(nxt)
            return nxt.label

    # -- job --------------------------------------------------------------------------------------
    @property
    def job_active(self) -> bool:
        """A job is running, pausing, paused or cancelling (not finished)."""
        return (self.job is not None and not self.job.finished) or self.suspended is not None

    def summary(self) -> dict:
        g = self.gaussians  # no lock (issue 25): session.list must not wait for a job's step or a long op
        n = 0 if g is None else g.n
        return {
            "session": self.id,
            "name": self.name,
            "count": n,
            "job": None if self.job is None else self.job.job_id,
            "state": "idle" if self.job is None else self.job.state,
            "history": len(self.history.undo),
        }
