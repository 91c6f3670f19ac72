"""The add-on's one connection to a backend: client, session, pending requests, local backend process.

Blender never waits on the network in the UI: operators :meth:`Connection.send` requests and
:func:`sync_step` — a plain function, called by a ``bpy.app.timers`` timer in the UI and directly by
tests and batch scripts — drains replies and events and applies them (state frames → splat.py, meshes →
splat.py, progress → ``Scene.i3d``). In background mode (``bpy.app.background``: timers never fire)
operators use the blocking :meth:`Connection.call` and :meth:`Connection.wait_job` instead; both apply
results through the same handlers, so the two paths cannot drift apart.

Liveness: while requests are pending or a job runs, a ``ping`` is sent when nothing arrived for
``heartbeat_s``; a request left unanswered for ``timeout_s`` marks the connection *disconnected* (the
client is closed; the session id and the bound object are kept so that :meth:`Connection.connect`
re-attaches: ``job.status`` if the session is still open (then ``session.attach`` with ``take_over``: the
backend lets only a session's owner change it, and the add-on keeps one client identity per Blender session,
``routing_id``, so this matters after a Blender restart), else ``session.resume`` from the backend's
checkpoint, else a fresh ``session.create``). No exception of the network side reaches the user.

Frames: the backend keeps Gaussians in the splat object's *local* frame (docs/conventions.md). Every
world-space input (points, radii, matrices) goes through the ``world_to_local_*`` functions below —
the one place where that conversion lives.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ._deps import protocol

# protocol/__init__ imports nothing. errors is pure Python; the client needs pyzmq and msgpack (the wheels
# bundled with the extension), so it is imported on first use, never at module load: an add-on whose wheels
# cannot load still registers and says why in its panel (issue 14, Blender 4.2.0's installer).
errors = importlib.import_module(protocol.__name__ + ".errors")
atomic_write = importlib.import_module(protocol.__name__ + ".files").atomic_write
_CLIENT_MODULE: list = []  # the imported protocol.client, once it imported
_DEPENDENCY_ERROR: list[str] = []  # why it did not (then every connect says so)


class MissingDependencies(RuntimeError):
    """pyzmq or msgpack cannot be imported in Blender's Python: the add-on cannot reach a backend."""


def client_module():
    """protocol.client (ZeroMQ + msgpack), imported on first use; MissingDependencies if it cannot be."""
    if _CLIENT_MODULE:
        return _CLIENT_MODULE[0]
    try:
        mod = importlib.import_module(protocol.__name__ + ".client")
    except ImportError as exc:
        import platform

        problem = (f"the network libraries (pyzmq, msgpack) do not load in Blender's Python "
                   f"{platform.python_version()}: {exc}. Reinstall the extension built for this Blender "
                   f"(scripts/build_extension.py), or install pyzmq and msgpack into Blender's Python")
        if not _DEPENDENCY_ERROR:
            log.error("Interactive3D: %s", problem)
        _DEPENDENCY_ERROR[:] = [problem]
        raise MissingDependencies(problem) from exc
    _DEPENDENCY_ERROR.clear()
    _CLIENT_MODULE.append(mod)
    return mod


def dependency_problem() -> str | None:
    """None when the network libraries load, else the plain-words reason (shown in the panel; a failed
    import is not retried on every redraw, only by the next connect)."""
    if _DEPENDENCY_ERROR:
        return _DEPENDENCY_ERROR[0]
    try:
        client_module()
    except MissingDependencies as exc:
        return str(exc)
    return None

log = logging.getLogger(__name__)

DISCONNECTED, CONNECTING, CONNECTED = "DISCONNECTED", "CONNECTING", "CONNECTED"
# Job states as the backend reports them (catalogue _JOB_RESULT); "idle" when there is no job.
JOB_ACTIVE = ("running", "pausing", "paused", "cancelling")
JOB_FINISHED = ("done", "cancelled", "error")
STAGE1_KINDS = ("stage1", "stage1.start")  # the job kind as job.status names it / the op that starts it
DEFAULT_OBJECT_NAME = "Interactive3D"
NERF_IMAGE = "I3D NeRF Render"


# -- frames: world → the splat object's local frame (the only place this conversion lives) ----------------
def _matrix(m, name: str) -> np.ndarray:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got {a.tolist()}")
    return a


def world_to_local_point(matrix_world, point) -> np.ndarray:
    """A world-space point [3] in the object's local frame [3] (float64): inv(M) @ [p, 1]."""
    m = _matrix(matrix_world, "matrix_world")
    p = np.asarray(point, dtype=np.float64)
    if p.shape != (3,) or not np.isfinite(p).all():
        raise ValueError(f"point must be 3 finite numbers, got {np.asarray(point).tolist()}")
    return (np.linalg.solve(m, np.append(p, 1.0)))[:3]


def local_to_world_point(matrix_world, point) -> np.ndarray:
    """Inverse of :func:`world_to_local_point`: M @ [p, 1]."""
    m = _matrix(matrix_world, "matrix_world")
    return (m @ np.append(np.asarray(point, dtype=np.float64), 1.0))[:3]


def world_to_local_length(matrix_world, length: float) -> float:
    """A world-space length (radius) in local units: divided by the object's mean scale ∛|det A|.

    Exact for uniformly scaled objects; for non-uniform scale a world sphere is a local ellipsoid and
    this is the radius of the sphere with the same volume.
    """
    m = _matrix(matrix_world, "matrix_world")
    det = abs(float(np.linalg.det(m[:3, :3])))
    if not det > 1e-12:
        raise ValueError(f"matrix_world is singular (|det| = {det:g}): the object has zero scale")
    length = float(length)
    if not np.isfinite(length) or length < 0:
        raise ValueError(f"length must be finite and >= 0, got {length}")
    return length / det ** (1.0 / 3.0)


def local_to_world_length(matrix_world, length: float) -> float:
    m = _matrix(matrix_world, "matrix_world")
    return float(length) * abs(float(np.linalg.det(m[:3, :3]))) ** (1.0 / 3.0)


def world_to_local_transform(matrix_world, transform) -> np.ndarray:
    """A world-space 4×4 transform T_w (applied to world positions) as the local transform
    T_l = inv(M) @ T_w @ M, so that M @ T_l @ p == T_w @ M @ p for every local point p."""
    m = _matrix(matrix_world, "matrix_world")
    t = _matrix(transform, "transform")
    return np.linalg.solve(m, t @ m)


def relative_matrix(target_world, source_world) -> np.ndarray:
    """The 4×4 taking ``source``'s local coordinates to ``target``'s: inv(M_target) @ M_source."""
    return np.linalg.solve(_matrix(target_world, "target matrix_world"), _matrix(source_world, "source matrix_world"))


def camera_fov_x(sensor_fit: str, angle: float, angle_x: float, angle_y: float, width: int, height: int) -> float:
    """The horizontal field of view (radians) of a Blender camera rendering a width × height image, as
    the backend's ``fov_x`` (``gaussians.render``, ``stage2.render``). ``sensor_fit`` AUTO gives ``angle``
    to the larger side; HORIZONTAL keeps ``angle_x``; VERTICAL keeps ``angle_y`` on the height."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if sensor_fit == "HORIZONTAL" or (sensor_fit == "AUTO" and width >= height):
        return float(angle_x if sensor_fit == "HORIZONTAL" else angle)
    vertical = angle_y if sensor_fit == "VERTICAL" else angle
    return float(2.0 * np.arctan(np.tan(0.5 * vertical) * width / height))


def viewport_fov_x(lens_mm: float, width: int, height: int) -> float:
    """The horizontal fov of a perspective 3D viewport of ``lens_mm``: Blender gives the viewport's
    larger side a 72 mm sensor (its 36 mm default × the perspective zoom of 2)."""
    if not lens_mm > 0:
        raise ValueError(f"lens must be > 0, got {lens_mm}")
    angle = 2.0 * float(np.arctan(36.0 / lens_mm))
    return camera_fov_x("AUTO", angle, angle, angle, width, height)


# -- requests ------------------------------------------------------------------------------------------------
@dataclass
class Pending:
    """A request in flight: what to do with its reply (``kind``) and when it was sent."""

    op: str
    kind: str
    sent_at: float
    context: dict = field(default_factory=dict)
    timeout: float = 10.0
    buffers: tuple = ()  # the request's frames (references), to send it again after a session resume


@dataclass
class JobProgress:
    """The session's job as last reported (events or job.status)."""

    job: str | None = None
    kind: str = ""
    state: str = "idle"
    step: int = 0
    total: int = 0
    metrics: dict = field(default_factory=dict)
    started_at: float = 0.0
    first_step: int = 0
    eta_s: float | None = None
    message: str = ""

    def update(self, step: int, total: int, now: float) -> None:
        self.step, self.total = int(step), int(total)
        done = self.step - self.first_step
        elapsed = now - self.started_at
        self.eta_s = (self.total - self.step) * elapsed / done if done > 0 and elapsed > 0 else None


class Connection:
    """One backend connection (one per Blender session; see :func:`get`).

    Args:
        timeout_s: a request unanswered this long marks the backend dead.
        heartbeat_s: while anything is pending or a job runs, ping when nothing arrived this long.
        client_factory: builds the protocol client (tests may pass a differently configured one).
    """

    def __init__(self, timeout_s: float = 10.0, heartbeat_s: float = 2.0,
                 client_factory: Callable[..., Any] | None = None) -> None:
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = float(heartbeat_s)
        self._client_factory = client_factory  # None: protocol.client.Client, imported on first connect
        self.client = None
        # One identity at the backend for this Blender session, whatever the clients made for it: the backend gives
        # a session to the identity that created it, and only that identity may change it (issue 15).
        self.routing_id = b"i3d-blender-" + uuid.uuid4().hex.encode()
        self.status = DISCONNECTED
        self.address = ""
        self.auth_key: bytes | None = None
        self.server_info: dict = {}
        self.session: str | None = None
        self.object_name: str | None = None
        self.count = 0  # Gaussians in the last state frame applied
        # The backend's state revision of the last frame applied (issue 14) and its positions [N,3] (to notice
        # splats moved in Blender); `stale` says why the object must be re-synced (set by Blender's undo/redo
        # and depsgraph handlers, edit_guard.py), acted on by the next sync step.
        self.revision: int | None = None
        self.positions: np.ndarray | None = None
        self.stale = ""
        self.object_mode = ""  # the splat object's mode at the last depsgraph update (edit_guard.py)
        self.applying = False  # True while a state frame is being written onto the object
        self.job = JobProgress()
        # A Stage I job the backend paused for an interaction job (drag, semantic edit): its events still
        # update it; it is the session's job again when the interaction ends (then kept in `ended`).
        self.suspended: JobProgress | None = None
        self.ended: JobProgress | None = None
        self.history: dict = {"undo": [], "redo": []}
        self.pending: dict[str, Pending] = {}
        self.last_error = ""
        self.last_message = ""
        self.preset_note = ""  # what the backend made of the Generate preset (scaled down on a CPU, …)
        self.init_note = ""  # how Generate initialised (Shap-E, or why not)
        self.preset_ops: dict = {}  # op → arguments of the last preset the backend resolved (zoom-in sizes, …)
        self.last_received = 0.0
        self.meshes: list[str] = []  # names of mesh objects imported from the backend, newest last
        self.preview_mesh: str | None = None  # the Stage II preview object, replaced in place by mesh events
        self.preview_step = 0
        self.nerf_image: str | None = None  # the image datablock that stage2.render results land in
        self.process: subprocess.Popen | None = None
        self.log_path = ""
        self._blocking = 0  # > 0 while a blocking call applies its reply: follow-ups block too

    # -- status ------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.status == CONNECTED and self.client is not None

    @property
    def job_active(self) -> bool:
        return self.job.state in JOB_ACTIVE or self.suspended is not None

    def can_interact(self, preempts: bool = False) -> bool:
        """Whether an interaction may be sent now: with no job in flight; with a paused Stage I job (the
        splats hold still, so Edit-Mode indices are valid); and for ops whose job pauses Stage I for its
        own duration (``preempts``: drag, semantic edit) also while Stage I runs."""
        if not self.connected:
            return False
        if not self.job_active:
            return True
        if self.suspended is not None or self.job.kind not in STAGE1_KINDS:
            return False
        return self.job.state in (("running", "pausing", "paused") if preempts else ("paused",))

    def _fail(self, message: str) -> None:
        """Mark the backend unreachable: close the client, keep session/object for a reconnect."""
        log.warning("backend %s: %s", self.address, message)
        self.last_error = message
        self.status = DISCONNECTED
        self.pending.clear()
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- connecting ----------------------------------------------------------------------------------------
    def connect(self, address: str, auth_key: bytes | None = None, blocking: bool = False) -> None:
        """Connect (or re-connect) to ``address``.

        Non-blocking: sends ``ping`` and returns; :func:`sync_step` finishes the handshake (status
        CONNECTING → CONNECTED). Blocking (batch scripts): returns connected or raises
        ``errors.RequestTimeout`` / ``RemoteError`` after marking the connection disconnected.
        """
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must look like tcp://host:port or ipc:///path, got {address!r}")
        factory = self._client_factory or client_module().Client  # MissingDependencies: nothing changed
        if self.client is not None:
            self.client.close()
        self.pending.clear()
        self.address, self.auth_key = address, auth_key
        self.client = factory(address, auth_key=auth_key, routing_id=self.routing_id)
        self.status = CONNECTING
        self.last_error = ""
        if blocking:
            self.call("ping", kind="ping")  # its handler's follow-ups (session) run blocking too
        else:
            self.send("ping", kind="ping", session=False)

    def disconnect(self) -> None:
        """Forget the backend and the session (the backend keeps the session until it closes)."""
        if self.client is not None:
            self.client.close()
        self.client = None
        self.status = DISCONNECTED
        self.session = None
        self.pending.clear()
        self.job = JobProgress()
        self.suspended = None
        self.last_error = ""

    # -- sending -------------------------------------------------------------------------------------------
    def _args(self, args: dict | None, session: bool) -> dict:
        out = dict(args or {})
        if session:
            if self.session is None:
                raise RuntimeError("no backend session: connect first")
            out["session"] = self.session
        return out

    def send(self, op: str, args: dict | None = None, buffers: Sequence[Any] = (), kind: str = "ignore",
             session: bool = True, timeout: float | None = None, **context) -> str:
        """Queue a request without waiting; its reply is handled by ``kind`` in :func:`sync_step`.
        ``timeout`` (default ``timeout_s``): longer for ops the server answers slowly (mesh extraction)."""
        if self.client is None:
            raise RuntimeError(f"not connected to a backend (status {self.status})")
        full = self._args(args, session)
        rid = self.client.send(op, full, buffers)
        self.pending[rid] = Pending(op, kind, time.monotonic(), dict(context, args=args), timeout or self.timeout_s, tuple(buffers))
        return rid

    def then(self, op: str, args: dict | None = None, kind: str = "ignore", session: bool = True) -> None:
        """A follow-up request from a handler: blocking inside :meth:`call`, else queued."""
        if self.client is None:
            return
        if self._blocking:
            self.call(op, args, kind=kind, session=session)
        else:
            self.send(op, args, kind=kind, session=session)

    def then_chain(self, chain: Sequence[dict] | None) -> None:
        """Send the first request of ``chain`` (dicts op/args/kind/context), carrying the rest in its context:
        the handler of its reply sends the next one (Generate: preset → initialisation → Stage I), so nothing
        waits on the network in the UI thread. Blocking inside :meth:`call` (batch mode)."""
        if not chain or self.client is None:
            return
        first, rest = dict(chain[0]), list(chain[1:])
        context = dict(first.get("context") or {}, chain=rest)
        if self._blocking:
            self.call(first["op"], first.get("args"), kind=first["kind"], timeout=first.get("timeout"), **context)
        else:
            self.send(first["op"], first.get("args"), kind=first["kind"], timeout=first.get("timeout"), **context)

    def call(self, op: str, args: dict | None = None, buffers: Sequence[Any] = (), kind: str = "ignore",
             session: bool | None = None, timeout: float | None = None, **context):
        """Blocking request (batch mode): the reply is applied by ``kind`` and its result returned.

        Raises ``RemoteError`` for an error reply, ``RequestTimeout`` (after marking the connection
        disconnected) when the backend does not answer, RuntimeError when not connected.
        """
        if self.client is None:
            raise RuntimeError(f"not connected to a backend (status {self.status})")
        if session is None:
            session = op not in ("ping", "session.create", "session.list")
        full = self._args(args, session)
        try:
            reply = self.client.request(op, full, buffers, timeout=timeout or self.timeout_s, retries=0)
        except errors.RequestTimeout as exc:
            self._fail(str(exc))
            raise
        except errors.RemoteError as exc:
            if self._reaped(exc.code, exc.message) and not context.get("rerun"):
                # the backend closed the session after it sat idle and refused this op untouched: resume, run it again
                self.call("session.resume", {"paused": False}, kind="session")
                self.last_message += f"; {op} ran again"
                return self.call(op, args, buffers, kind=kind, session=session, timeout=timeout, **dict(context, rerun=True))
            self._blocking += 1
            try:
                recovered = self._on_error(Pending(op, kind, time.monotonic(), dict(context, args=args)), exc.code, exc.message)
            finally:
                self._blocking -= 1
            if not recovered:
                raise
            return {}
        self.last_received = time.monotonic()
        self._blocking += 1
        try:
            _REPLY_HANDLERS[kind](self, Pending(op, kind, time.monotonic(), dict(context, args=args)),
                                  reply.result, list(reply.buffers))
        finally:
            self._blocking -= 1
        return reply.result

    # -- receiving -----------------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> list:
        """Messages that arrived (waiting up to ``timeout_ms``), after the liveness checks."""
        if self.client is None:
            return []
        msgs = self.client.poll(timeout_ms)
        now = time.monotonic()
        if msgs:
            self.last_received = now
            return msgs
        if self.pending or self.job_active:
            quiet = now - self.last_received
            for p in self.pending.values():
                if now - p.sent_at > p.timeout and quiet > p.timeout:
                    self._fail(f"no reply from {self.address} to {p.op!r} after {p.timeout:g} s: backend unreachable")
                    return []
            # No heartbeat while a slow request (longer timeout) is out: the server may be busy with it.
            slow = any(p.timeout > self.timeout_s for p in self.pending.values())
            if quiet > self.heartbeat_s and not slow and not any(p.kind == "heartbeat" for p in self.pending.values()):
                self.send("ping", kind="heartbeat", session=False)
        return []

    def handle(self, msg) -> None:
        """Apply one reply or event."""
        if msg.kind == "reply":
            p = self.pending.pop(msg.id, None)
            if p is None:
                return  # a reply to a request we gave up on
            if msg.ok:
                _REPLY_HANDLERS[p.kind](self, p, msg.result, list(msg.buffers))
            else:
                self._on_error(p, str(msg.error.get("code", "internal")), str(msg.error.get("message", "")))
        elif msg.kind == "event":
            if self.session is not None and msg.header.get("session") not in (None, self.session):
                return
            handler = _EVENT_HANDLERS.get(msg.event)
            if handler is None:
                return
            job = msg.header.get("job")
            if self.suspended is not None and job == self.suspended.job:
                self.job, self.suspended = self.suspended, self.job  # the paused Stage I job's own event
                try:
                    handler(self, msg.data, list(msg.buffers), job)
                finally:
                    self.job, self.suspended = self.suspended, self.job
                return
            handler(self, msg.data, list(msg.buffers), job)
            if self.suspended is not None and job == self.job.job and self.job.state in JOB_FINISHED:
                self.ended, self.job, self.suspended = self.job, self.suspended, None  # Stage I is back

    def _on_error(self, p: Pending, code: str, message: str) -> bool:
        """Apply an error reply; True when a follow-up recovered from it (re-attaching a session)."""
        text = f"{p.op}: {code}: {message}"
        log.warning("backend error %s", text)
        if p.kind == "reattach" and code in ("not_found", "invalid_args"):
            # The session is not open on this backend: try its checkpoint, then a fresh session.
            self.then("session.resume", {"paused": False}, kind="session")
            return True
        if p.kind == "session" and p.op == "session.resume" and code in ("not_found", "invalid_args"):
            self.last_message = f"session {self.session} could not be resumed; started a new one"
            self.session = None
            self.job = JobProgress()
            self.then("session.create", {"name": "blender"}, kind="session", session=False)
            return True
        if self._reaped(code, message) and not p.context.get("rerun") and not self._blocking:
            # The backend closed the session into its checkpoint (idle for --idle-timeout): take it back, as a
            # reconnect does, and send the refused op again (it changed nothing) once the resume is answered.
            self.send("session.resume", {"paused": False}, kind="session", resend=p)
            return True
        if self._reaped(code, message):
            self.last_error = (f"{p.op}: the backend had closed session {self.session} after it sat idle; it was resumed "
                               "from its checkpoint: run the operation again")
            self.then("session.resume", {"paused": False}, kind="session")
            return False
        if p.kind == "init_shap_e" and code in ("not_found", "invalid_args") and p.context.get("fallback"):
            # Shap-E is not available on the backend: say so and start from the random sphere instead
            self.last_message = self.init_note = f"Shap-E not available ({message[:160]}); random initialisation"
            log.info("%s", self.last_message)
            self.then_chain([{"op": "gaussians.init", "args": p.context["fallback"], "kind": "chain_edit"}, *(p.context.get("chain") or [])])
            return True
        if code == "conflict":
            # The indices were taken on an older state of the Gaussians: the backend changed nothing. Show the
            # artist the backend's state again and ask for a new selection.
            self.last_error = (f"{p.op} refused: the splats changed since they were selected ({message}). "
                               "The splat object was re-synced from the backend: select again")
            self.then("state.get", kind="state")
            return False
        self.last_error = text
        if p.kind in ("ping", "session", "reattach"):
            self._fail(text)
        return False

    def _reaped(self, code: str, message: str) -> bool:
        """An error saying the backend closed this connection's session (idle past --idle-timeout)."""
        return code == "not_found" and self.session is not None and f"no open session {self.session!r}" in message

    def resync(self, reason: str) -> None:
        """Rewrite the splat object from the backend's current state (state.get), telling the artist why."""
        self.stale = ""
        if not self.connected or self.session is None:
            return
        self.last_message = f"re-synced the splat object from the backend: {reason}"
        log.info("Interactive3D: %s", self.last_message)
        self.then("state.get", kind="state")

    # -- waiting (batch mode) --------------------------------------------------------------------------
    def wait_job(self, timeout: float = 600.0, scene=None) -> str:
        """Block until the session's job ends (or the backend is lost); returns the job state. An
        interaction that paused a Stage I job counts as ended when it ends (``ended`` keeps it)."""
        deadline = time.monotonic() + timeout
        waiting_for = self.job.job
        while time.monotonic() < deadline:
            sync_step(self, scene=scene, timeout_ms=100)
            if self.status == DISCONNECTED:
                return self.job.state
            if self.ended is not None and self.ended.job == waiting_for and self.job.job != waiting_for:
                return self.ended.state
            if (self.job.state in JOB_FINISHED or self.job.state == "paused") and not self.pending:
                return self.job.state
        raise TimeoutError(f"job {self.job.job} still {self.job.state} after {timeout:g} s")

    def wait_idle(self, timeout: float = 60.0, scene=None) -> None:
        """Block until no request is pending (replies applied)."""
        deadline = time.monotonic() + timeout
        while self.pending and self.status != DISCONNECTED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.pending)} request(s) still pending after {timeout:g} s")
            sync_step(self, scene=scene, timeout_ms=100)

    # -- the local backend process ---------------------------------------------------------------------
    def start_backend(self, python: str, address: str, log_dir: str, extra_args: Sequence[str] = ()) -> str:
        """Spawn ``python -m interactive3d.cli serve --bind address``; its output goes to a log file
        (returned). Raises ValueError for a bad python path, RuntimeError if one is already running."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"a local backend is already running (pid {self.process.pid})")
        if not python or not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise ValueError(f"python must be an executable file, got {python!r}")
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, "backend.log")
        cmd = [python, "-m", "interactive3d.cli", "serve", "--bind", address, *extra_args]
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
            logf.flush()
            self.process = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self.log_path

    def stop_backend(self, timeout: float = 10.0) -> int | None:
        """Terminate the spawned backend (SIGTERM: it stops jobs and checkpoints), kill after ``timeout``."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode


# -- reply handlers (kind → handler(conn, pending, result, buffers)) -----------------------------------------
def _on_ping(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    conn.server_info = dict(result)
    if conn.session is None:
        conn.then("session.create", {"name": "blender"}, kind="session", session=False)
    else:
        conn.then("job.status", kind="reattach")


def _on_session(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    conn.session = str(result.get("session", conn.session))
    conn.status = CONNECTED
    if p.op == "session.resume":
        conn.last_message = f"resumed session {conn.session} ({result.get('count', 0)} Gaussians)"
        if result.get("job"):
            conn.job = JobProgress(job=result["job"], state="running", step=int(result.get("step", 0)),
                                   started_at=time.monotonic(), first_step=int(result.get("step", 0)))
        _note_suspended(conn, result.get("suspended"))
        if result.get("count"):
            conn.then("state.get", kind="state")
        refused = p.context.get("resend")
        if refused is not None:  # the op the reaped session refused: run it again, once (``rerun`` marks it)
            conn.last_message += f"; {refused.op} ran again"
            context = {k: v for k, v in refused.context.items() if k != "args"}
            conn.send(refused.op, refused.context.get("args"), refused.buffers, kind=refused.kind, timeout=refused.timeout,
                      **dict(context, rerun=True))


def _on_reattach(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    conn.status = CONNECTED
    _on_job_status(conn, p, result, buffers)
    # the session is open: subscribe to its job events again and own it again — after a Blender restart this is a
    # new identity, and the backend refuses edits of a session another identity owns (take_over hands it over)
    conn.then("session.attach", {"take_over": True}, kind="ignore")
    conn.then("state.get", kind="state")


def _on_job_status(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    state = str(result.get("state", "idle"))
    if result.get("job") and result.get("job") != conn.job.job:
        conn.job = JobProgress(job=result.get("job"), started_at=time.monotonic(), first_step=int(result.get("step", 0)))
    conn.job.state = state
    conn.job.kind = str(result.get("kind") or "")
    conn.job.update(int(result.get("step", 0)), int(result.get("total", 0)), time.monotonic())
    conn.job.metrics = dict(result.get("metrics") or {})
    _note_suspended(conn, result.get("suspended"))


def _note_suspended(conn: Connection, job_id) -> None:
    """Track the Stage I job the backend holds paused behind the current job (after a resume or a
    reconnect the add-on learns of it only from the reply)."""
    if not job_id:
        conn.suspended = None
    elif conn.suspended is None or conn.suspended.job != job_id:
        conn.suspended = JobProgress(job=str(job_id), kind="stage1", state="paused")


def _on_job_started(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    if conn.job.state in JOB_ACTIVE and conn.job.kind in STAGE1_KINDS and result.get("job") != conn.job.job:
        conn.suspended = conn.job  # the backend paused Stage I for this job (catalogue: preempts)
    conn.job = JobProgress(job=result.get("job"), kind=p.op, state="running", step=0,
                           total=int(result.get("total", result.get("steps", 0)) or 0),
                           started_at=time.monotonic())


def _on_state(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    if buffers:
        _apply_state(conn, np.asarray(buffers[0]), result.get("parts"), result.get("revision"))


def _on_edit(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    """An edit changed the Gaussians: record its result, then fetch the new state."""
    if "undo" in result:
        conn.history = {"undo": list(result.get("undo") or []), "redo": list(result.get("redo") or [])}
    conn.last_message = f"{p.op}: {result.get('count', '')} Gaussians".rstrip(": ")
    if buffers and np.ndim(buffers[0]) == 2 and np.shape(buffers[0])[1] == 14:
        _apply_state(conn, np.asarray(buffers[0]), result.get("parts"), result.get("revision"))
    else:
        conn.then("state.get", kind="state")


def _on_history(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    conn.history = {"undo": list(result.get("undo") or []), "redo": list(result.get("redo") or [])}


def _on_mesh(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    if len(buffers) < 2:
        conn.last_error = f"{p.op}: the reply has no mesh arrays"
        return
    import bpy
    from . import splat

    obj = bpy.data.objects.get(conn.object_name or "")
    matrix = np.array(obj.matrix_world) if obj is not None else np.eye(4)
    colors = buffers[2] if len(buffers) > 2 else None
    # stage2.extract_mesh's frames: vertices, faces, colours; with a texture uvs, texture; the file's bytes last
    textured = bool(result.get("textured")) and len(buffers) > 4
    uvs, texture = (np.asarray(buffers[3]), np.asarray(buffers[4])) if textured else (None, None)
    file_index = 5 if textured else 3
    name = (conn.object_name or DEFAULT_OBJECT_NAME) + " Mesh"
    mesh_obj = splat.mesh_object_from_arrays(name, np.asarray(buffers[0]), np.asarray(buffers[1]), colors, matrix,
                                             uvs=uvs, texture=texture)
    _drop_preview(conn)  # the extracted mesh takes the live preview's place
    conn.meshes.append(mesh_obj.name)
    conn.last_message = f"mesh {mesh_obj.name!r}: {len(buffers[0])} vertices, {len(buffers[1])} faces"
    save_to = p.context.get("save_to")
    if save_to and len(buffers) > file_index:  # the file's bytes (return_file): written here, atomically
        try:
            os.makedirs(os.path.dirname(os.path.abspath(save_to)), exist_ok=True)
            atomic_write(save_to, [memoryview(np.ascontiguousarray(buffers[file_index], dtype=np.uint8))])
            conn.last_message += f"; saved {save_to}"
        except OSError as exc:
            conn.last_error = f"{p.op}: cannot save {save_to!r}: {exc}"


def _on_nerf_render(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    """A ``stage2.render`` reply: its first image (rgb + alpha) into the image datablock ``NERF_IMAGE``."""
    if len(buffers) < 2:
        conn.last_error = f"{p.op}: the reply has no images"
        return
    import bpy

    rgb, alpha = np.asarray(buffers[0])[0], np.asarray(buffers[1])[0]
    h, w = rgb.shape[:2]
    img = bpy.data.images.get(conn.nerf_image or NERF_IMAGE)
    if img is None or tuple(img.size) != (w, h):
        if img is not None:
            bpy.data.images.remove(img)
        img = bpy.data.images.new(NERF_IMAGE, w, h, alpha=True)
    rgba = np.concatenate([rgb, alpha], axis=-1)[::-1]  # row 0 is the top; Blender stores the bottom row first
    img.pixels.foreach_set(np.ascontiguousarray(rgba, dtype=np.float32).ravel())
    img.update()
    conn.nerf_image = img.name
    conn.last_message = f"NeRF render {w}x{h} in image {img.name!r}"


def _ignore(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    pass


def _on_chain_edit(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    _on_edit(conn, p, result, buffers)
    conn.then_chain(p.context.get("chain"))


def _on_init_shap_e(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    _on_edit(conn, p, result, buffers)
    conn.last_message = conn.init_note = f"initialised from Shap-E: {result.get('count', 0)} points"
    conn.then_chain(p.context.get("chain"))


def _on_preset(conn: Connection, p: Pending, result: dict, buffers: list) -> None:
    """The backend's resolved preset (scaled for its device, with a note): its op arguments go into the
    chained requests, then the chain goes on."""
    conn.last_message = conn.preset_note = str(result.get("note", ""))
    ops = dict(result.get("ops") or {})
    conn.preset_ops = ops
    chain = []
    for item in p.context.get("chain") or []:
        item = dict(item)
        preset_args = dict(ops.get(item["op"]) or {})
        if item["op"] == "gaussians.init":
            preset_args = {k: v for k, v in preset_args.items() if k != "kind"}  # the operator chose the kind
            if item.get("context", {}).get("fallback"):
                item["context"] = dict(item["context"], fallback=dict(item["context"]["fallback"], n=preset_args.get("n", 4096)))
        item["args"] = {**(item.get("args") or {}), **preset_args, **(item.get("context") or {}).get("explicit", {})}
        chain.append(item)
    conn.then_chain(chain)


_REPLY_HANDLERS: dict[str, Callable] = {
    "ping": _on_ping, "heartbeat": _ignore, "session": _on_session, "reattach": _on_reattach,
    "status": _on_job_status, "job": _on_job_started, "state": _on_state, "edit": _on_edit,
    "history": _on_history, "mesh": _on_mesh, "nerf_render": _on_nerf_render, "ignore": _ignore,
    "chain_edit": _on_chain_edit, "init_shap_e": _on_init_shap_e, "preset": _on_preset,
}


# -- events (event → handler(conn, data, buffers, job)) ---------------------------------------------------
def _ev_progress(conn: Connection, data: dict, buffers: list, job) -> None:
    if job and job != conn.job.job:
        conn.job = JobProgress(job=job, state="running", started_at=time.monotonic(), first_step=int(data.get("step", 0)))
    if conn.job.state not in ("paused", "pausing", "cancelling"):
        conn.job.state = "running"
    conn.job.update(int(data.get("step", 0)), int(data.get("total", conn.job.total)), time.monotonic())
    conn.job.metrics = dict(data.get("metrics") or {})


def _ev_state(conn: Connection, data: dict, buffers: list, job) -> None:
    if buffers:
        _apply_state(conn, np.asarray(buffers[0]), data.get("parts"), data.get("revision"))


def _ev_paused(conn: Connection, data: dict, buffers: list, job) -> None:
    conn.job.state = "paused"


def _ev_resumed(conn: Connection, data: dict, buffers: list, job) -> None:
    conn.job.state = "running"
    conn.job.started_at, conn.job.first_step = time.monotonic(), conn.job.step


def _ev_done(conn: Connection, data: dict, buffers: list, job) -> None:
    conn.job.state = "cancelled" if data.get("status") == "cancelled" else "done"
    conn.job.step = int(data.get("steps", conn.job.step))
    conn.job.eta_s = None
    conn.last_message = f"job {conn.job.kind or ''} {conn.job.state} after {conn.job.step} steps".replace("  ", " ")
    # The last snapshot may predate the last steps: fetch the final state and the history.
    conn.then("state.get", kind="state")
    conn.then("history.list", kind="history")


def _ev_error(conn: Connection, data: dict, buffers: list, job) -> None:
    conn.job.state = "error"
    conn.job.message = f"{data.get('code', 'internal')}: {data.get('message', '')}"
    conn.last_error = f"job failed at step {data.get('step', '?')}: {conn.job.message}"


def _ev_mesh(conn: Connection, data: dict, buffers: list, job) -> None:
    """A Stage II job's preview mesh: replace the preview object's mesh in place (same object, new data;
    the old mesh datablock is freed), at the splat object's transform."""
    if len(buffers) < 3:
        return
    import bpy
    from . import splat

    obj = bpy.data.objects.get(conn.object_name or "")
    matrix = np.array(obj.matrix_world) if obj is not None else np.eye(4)
    name = (conn.object_name or DEFAULT_OBJECT_NAME) + " Preview"
    fresh = splat.mesh_object_from_arrays(name, np.asarray(buffers[0]), np.asarray(buffers[1]), np.asarray(buffers[2]), matrix)
    prev = bpy.data.objects.get(conn.preview_mesh or "")
    if prev is None or prev.type != "MESH":
        conn.preview_mesh = fresh.name
    else:
        old, mesh = prev.data, fresh.data
        prev.data = mesh
        prev.matrix_world = fresh.matrix_world
        bpy.data.objects.remove(fresh)
        if old.users == 0:
            bpy.data.meshes.remove(old)
        mesh.name = name
    conn.preview_step = int(data.get("step", 0))


def _drop_preview(conn: Connection) -> None:
    """Remove the Stage II preview object and its mesh (once the real mesh is extracted)."""
    import bpy

    prev = bpy.data.objects.get(conn.preview_mesh or "")
    conn.preview_mesh = None
    if prev is None or prev.type != "MESH":
        return
    mesh = prev.data
    bpy.data.objects.remove(prev)
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)


_EVENT_HANDLERS: dict[str, Callable] = {
    "progress": _ev_progress, "state": _ev_state, "paused": _ev_paused, "resumed": _ev_resumed,
    "done": _ev_done, "error": _ev_error, "mesh": _ev_mesh,
}


# -- Blender side ------------------------------------------------------------------------------------------
def _apply_state(conn: Connection, state: np.ndarray, part_names=None, revision=None) -> None:
    """Write a state frame onto the session's splat object (created on the first frame), stamped with the
    backend's state revision it belongs to (sent back with the indices of the next selection)."""
    import bpy
    from . import splat

    if state.ndim != 2 or state.shape[1] != 14:
        conn.last_error = f"state frame with shape {list(state.shape)} ignored (expected [N,14])"
        return
    conn.count = int(state.shape[0])
    conn.revision = None if revision is None else int(revision)
    conn.positions = np.array(state[:, :3], dtype=np.float32)
    conn.stale = ""
    obj = bpy.data.objects.get(conn.object_name or "")
    conn.applying = True  # the mode switches and writes below are ours: edit_guard ignores them
    try:
        if obj is None or obj.type != "MESH":
            obj = splat.new_splat_object(conn.object_name or DEFAULT_OBJECT_NAME, state)
            conn.object_name = obj.name
        else:
            splat.apply_state(obj, state)  # handles Edit Mode itself
        splat.stamp_revision(obj, conn.revision, conn.session)
    finally:
        conn.applying = False
    conn.object_mode = obj.mode


def apply_to_scene(conn: Connection, scene) -> None:
    """Mirror the connection's status and progress onto ``scene.i3d`` (for the panels)."""
    props = getattr(scene, "i3d", None) if scene is not None else None
    if props is None:
        return
    job = conn.job
    values = {
        "status": conn.status, "job_state": job.state, "step": job.step, "total": job.total,
        "eta": -1.0 if job.eta_s is None else float(job.eta_s), "message": conn.last_error or conn.last_message,
        "session": conn.session or "",
    }
    for key, value in values.items():
        if getattr(props, key) != value:
            setattr(props, key, value)


def sync_step(conn: Connection | None = None, scene=None, timeout_ms: int = 0) -> int:
    """Drain replies and events without blocking (``timeout_ms`` = 0) and apply them; returns how many
    messages were applied. Never raises for network or backend failures: they set the status."""
    conn = conn or get()
    count = 0
    try:
        if conn.stale and conn.connected:
            conn.resync(conn.stale)
        msgs = conn.poll(timeout_ms)
        for msg in msgs:
            conn.handle(msg)
            count += 1
    except (errors.ProtocolError, errors.RequestTimeout, RuntimeError, OSError) as exc:
        conn._fail(f"connection error: {exc}")
    except Exception as exc:  # noqa: BLE001 — the timer must survive anything; the user sees a message
        log.exception("sync step failed")
        conn.last_error = f"sync failed: {type(exc).__name__}: {exc}"
    if scene is None:
        try:
            import bpy

            scene = bpy.context.scene
        except (ImportError, AttributeError):
            scene = None
    apply_to_scene(conn, scene)
    return count


# -- the one connection of this Blender session -----------------------------------------------------------
_CONNECTION: list[Connection] = []  # at most one item; a list so no `global` statement is needed


def get() -> Connection:
    """This Blender session's connection (created on first use)."""
    if not _CONNECTION:
        _CONNECTION.append(Connection())
    return _CONNECTION[0]


def reset() -> None:
    """Close and forget the connection (unregister, tests); the local backend is stopped too."""
    if _CONNECTION:
        conn = _CONNECTION.pop()
        conn.disconnect()
        conn.stop_backend()


def user_dir(package: str) -> str:
    """Where the add-on writes user files (logs): the extension's user directory when installed as
    an extension, else a temp folder (development)."""
    try:
        import bpy

        return bpy.utils.extension_path_user(package, create=True)
    except (ValueError, RuntimeError, AttributeError, ImportError):
        path = os.path.join(tempfile.gettempdir(), "interactive3d")
        os.makedirs(path, exist_ok=True)
        return path


def default_python() -> str:
    """The Python that runs a local backend when none is configured: this one, if it has torch."""
    return sys.executable
