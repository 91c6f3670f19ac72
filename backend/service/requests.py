"""What an op handler gets and returns: the request/reply types shared by the server and the ops modules.

Kept apart from server.py so that imports run one way: server → ops_* → requests (no import circle). The
handlers never see the server object: server.py builds one :class:`Services` (what a handler may use of
it: shared resources, settings, and a few callables) and hands it in with every :class:`Request`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from interactive3d.protocol.codec import PROTOCOL_VERSION
from interactive3d.protocol.errors import Busy

from . import checkpoint as ckpt_mod
from .jobs import JobConfig, JobOrigin, JobRunner
from .session import Session

if TYPE_CHECKING:
    from interactive3d.protocol.catalogue import OpSpec

    from ..stage1.guidance_cache import GuidanceCache
    from .costs import MemoryBudget

log = logging.getLogger(__name__)

SERVER_NAME = "interactive3d-backend"


@dataclass(frozen=True)
class Services:
    """What the server lends to handlers, built once by the server and handed in with every request.

    Attributes:
        device: the backend's torch device.
        ops: the names of the ops this server dispatches (sorted).
        specs: op name → its :class:`OpSpec` (``preempts`` decides whether an op may start a job in front
            of a running Stage I job).
        memory: the server's memory budget (``check`` / ``reserve`` before allocating what grows with args).
        guidance_cache: diffusion models loaded once per (model, dtype, device), shared by every session.
        roots, model_roots: the data roots and model roots paths in args must resolve into.
        state_dir: where checkpoints go (None: this server keeps none).
        max_file_bytes: the largest file an op reads or sends back.
        job: settings of every job runner (event cadence, checkpoint interval).
        post_event: ``(session_id, header, buffers)`` — queue a job event for the session's subscribers;
            callable from any thread.
        job_ended: ``(session, runner)`` — called by a runner when its job has finished.
        get_session: ``(session_id) → Session``; NotFound if it is not open.
        sessions: ``() → [Session]``, the open sessions.
        create_session: ``(name, identity) → Session``; Busy over the session caps.
        close_session: ``(session, checkpoint)`` — cancel its job, drop it (keep its checkpoint if asked).
        resume_session: ``(session_id, identity, paused) → (Session, job id | None, step)``.
        owner: ``(session_id) → identity | None``, the client whose ops may change the session.
        subscribe: ``(session, identity)`` — the session's events also go to ``identity``.
        take_over: ``(session, identity)`` — ``identity`` becomes the owner.
        last_state: ``(session) → (frame, parts, part_counts, revision) | None``, the running job's latest
            state event.
    """

    device: torch.device
    ops: tuple[str, ...]
    specs: Mapping[str, "OpSpec"]
    memory: "MemoryBudget"
    guidance_cache: "GuidanceCache"
    roots: tuple[str, ...]
    model_roots: tuple[str, ...]
    state_dir: str | None
    max_file_bytes: int
    job: JobConfig
    post_event: Callable[[str, dict, list], None]
    job_ended: Callable[[Session, JobRunner], None]
    get_session: Callable[[str], Session]
    sessions: Callable[[], list[Session]]
    create_session: Callable[[str, "bytes | None"], Session]
    close_session: Callable[[Session, bool], None]
    resume_session: Callable[[str, "bytes | None", bool], "tuple[Session, str | None, int]"]
    owner: Callable[[str], "bytes | None"]
    subscribe: Callable[[Session, bytes], None]
    take_over: Callable[[Session, bytes], None]
    last_state: Callable[[Session], "tuple | None"]


@dataclass
class Reply:
    """What a handler returns: the result map and reply arrays (sent zero-copy)."""

    result: dict = field(default_factory=dict)
    buffers: list = field(default_factory=list)


@dataclass
class Request:
    """What a handler gets.

    Attributes:
        op, id: the op name and the request id.
        args: validated args with defaults filled in (``args["session"]`` when the op acts on one).
        buffers: request arrays, read-only views of the received frames (``np.array(b)`` to mutate).
        session: the resolved :class:`Session` when the op's spec says ``session=True``, else None.
        services: what the server lends to handlers (:class:`Services`).
        resume: set only when session.resume re-runs the op that started a checkpointed job.
    """

    op: str
    id: str
    args: dict
    buffers: list[np.ndarray]
    session: Session | None
    services: Services
    resume: ckpt_mod.JobRecord | None = None
    paused: bool = False
    identity: bytes | None = None  # the sender's ROUTER identity (events of sessions it creates go there)
    version: int = PROTOCOL_VERSION  # the request's envelope version: its reply is sent in it

    @property
    def device(self) -> torch.device:
        return self.services.device

    def get_session(self, session_id: str) -> Session:
        """Another open session (e.g. the source of a merge); NotFound if it is not open."""
        return self.services.get_session(session_id)

    def start_job(self, job: Any, label: str | None = None, record: bool = True) -> str:
        """Run ``job`` (see backend/service/jobs.py) on this request's session; returns the job id.

        Records an undo point labelled ``label`` (default: the op name) before the first step, unless
        ``record`` is False. Raises Busy if the session already has a job in flight. Build the job (and
        do every validation) before calling this; mutate nothing before it.
        """
        s = self.session
        if s is None:
            raise ValueError(f"op {self.op!r} has no session: start_job needs an OpSpec with session=True")
        spec = self.services.specs.get(self.op)
        suspend = None
        if s.job_active:
            if not (spec is not None and spec.preempts and preemptible(s)):
                raise Busy(f"session {s.id} already has job {s.job.job_id} ({s.job.kind}, {s.job.state})")
            suspend = s.job
        start, job_id = 0, uuid.uuid4().hex[:12]
        if self.resume is not None:
            load = getattr(job, "load_state_dict", None)
            if self.resume.state is not None and callable(load):
                load(self.resume.state)
            start, job_id = int(self.resume.step), self.resume.job_id
        elif record:
            s.record(label or self.op)
        if suspend is not None:
            # the Stage I job stops before its next step and waits; the server's job_ended hands the session back to it
            s.suspended = (suspend, suspend.state == "running")
            suspend.pause()
        runner = JobRunner(
            s, job, job_id, JobOrigin(self.op, dict(self.args), list(self.buffers), self.id),
            self.services.post_event, self.services.state_dir, self.services.job, start_step=start,
            on_exit=lambda: self.services.job_ended(s, runner),
        )
        s.job = runner
        if self.identity is not None:  # whoever starts a job hears its events (besides the creator)
            self.services.subscribe(s, self.identity)
        runner.start(paused=self.paused)
        log.info("job started op=%s session=%s job=%s kind=%s step=%d/%d", self.op, s.id, job_id, runner.kind, start, runner.total)
        return job_id


Handler = Callable[[Request], "Reply | dict | None"]


def with_revision(handler: Handler) -> Handler:
    """``handler`` whose reply also carries the session's state revision after the op (``revision``,
    issue 14). Clients take the revision of their copy of the Gaussians from the state frame they apply
    (``state.get``, ``state`` events); this one tells them whether that copy is still current."""

    @functools.wraps(handler)
    def wrapped(req: Request) -> Reply:
        out = handler(req)
        if out is None:
            out = Reply()
        elif isinstance(out, dict):
            out = Reply(result=out)
        if req.session is not None and isinstance(out, Reply) and isinstance(out.result, dict):
            out.result.setdefault("revision", req.session.revision_now())  # never waits for a job's step
        return out

    return wrapped


PREEMPTIBLE_KINDS = ("stage1",)


def preemptible(s: Session) -> bool:
    """The session's job is a Stage I job that is running, pausing or paused (not cancelling, not
    already preempted): an op with ``preempts`` may start its own job in front of it."""
    j = s.job
    return s.suspended is None and j is not None and not j.finished and j.kind in PREEMPTIBLE_KINDS and j.state in ("running", "pausing", "paused")
