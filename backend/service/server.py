"""The backend server: a ZeroMQ ROUTER loop that validates every message and dispatches it to a handler.

Dispatch table (explicit, no registry): ``ops_session.HANDLERS``, ``ops_stage1.HANDLERS``,
``ops_interactions.HANDLERS``, ``ops_stage2.HANDLERS`` (+ ``extra_handlers`` given to :class:`Server`,
for tests and experiments), each a dict ``op → handler``. Every op needs an :class:`OpSpec` in
``protocol/catalogue.py`` (or ``extra_ops``): args and buffers are validated generically before the
handler runs, so handlers only do semantic checks.

A handler gets a :class:`Request` and returns a :class:`Reply` (or raises a protocol error from
``interactive3d.protocol.errors``). Any other exception becomes an ``internal`` error reply, logged
with its traceback; the server never dies of a message.

Jobs run on worker threads (:mod:`.jobs`); their events come back to this thread through a queue and an
inproc wake-up socket, since zmq sockets must stay on one thread.

The router thread never waits (issue 15): it only decodes, verifies, validates, dispatches and sends.
Ops in :data:`INLINE_OPS` answer from memory on it; every other op runs on a worker — the session's own
:class:`_Lane` (one thread per open session, so one client's requests on a session keep their order)
or the shared pool for ops without a session — and its reply comes back through the same queue as job
events. ``state.get`` while a job runs answers from the job's last state snapshot, at once.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import signal
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import zmq
from interactive3d.protocol import catalogue
from interactive3d.protocol.auth import Signer, check_key, curve_client_public, curve_server_secret, is_loopback
from interactive3d.protocol.catalogue import OpSpec
from interactive3d.protocol.codec import (
    PROTOCOL_VERSION,
    UNSIGNED_VERSIONS,
    Limits,
    buffer_frames,
    decode,
    error_header,
    pack_header,
)
from interactive3d.protocol.errors import (
    Busy,
    InvalidArgs,
    NotFound,
    ProtocolError,
    Unauthorized,
    UnknownOp,
)

from . import checkpoint as ckpt_mod
from . import ops_interactions, ops_session, ops_stage1, ops_stage2
from .costs import MemoryBudget, default_budget
from .logsafe import PeerLogLimiter, printable
from .jobs import JobConfig, JobRunner
from .requests import Handler, Reply, Request, Services, preemptible
from .session import DEFAULT_HISTORY_DEPTH, SESSION_ID_RE, Session
from ..stage1.guidance_cache import DEFAULT_CACHE_BYTES, GuidanceCache

log = logging.getLogger(__name__)

REPLY_CACHE_ENTRIES = 256
# Ops answered on the router thread: they read memory only and never take a session lock.
INLINE_OPS = frozenset({"ping", "session.create", "session.attach", "job.status", "job.pause", "job.resume", "job.cancel", "stage2.preview"})
POOL_WORKERS = 4  # ops without a session (session.list, session.resume) that do file I/O
REPLY_CACHE_BYTES = 64 << 20
FOREIGN_READS = 1  # reads of a session by clients other than its owner, in flight at once (the rest: busy)
PEER_MEMORY = 4096  # identities whose peer address is remembered (enough for every owner of 64 sessions)
DEFAULT_BIND = "tcp://127.0.0.1:5555"


def max_frame_size(limits: Limits) -> int:
    """The largest single frame a message within ``limits`` can hold (the router's ZMQ_MAXMSGSIZE)."""
    return max(limits.max_header_bytes, min(limits.max_frame_bytes, limits.max_total_bytes))


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "interactive3d")


def resolve_device(device: str) -> torch.device:
    """"cpu", "cuda", "cuda:N" or "auto" (CUDA when available). ValueError for CUDA without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda[:N] or auto, got {device!r}")
    return torch.device(device)


@dataclass(frozen=True)
class ServerConfig:
    """Server settings (``i3d serve`` flags).

    Attributes:
        bind: ZeroMQ address (``tcp://127.0.0.1:5555``, ``ipc:///tmp/i3d.sock``).
        state_dir: where checkpoints go; None disables checkpoints (tests).
        auth_key: shared HMAC key; required for a non-loopback bind. With a key the router speaks CURVE and admits
            only the client key derived from it (:mod:`interactive3d.protocol.auth`): a peer without the key never
            gets a frame in. Without a key the server must bind loopback (or ipc://), and any local user who can
            reach the port or socket file can send it messages up to the caps and hold memory with unfinished
            multipart messages: set a key on shared machines.
        device: "cpu" | "cuda" | "auto".
        limits: caps on incoming messages.
        job: progress/state/checkpoint intervals of jobs.
        history_depth: undo entries kept per session.
        max_sessions: open sessions at most.
        shutdown_timeout: seconds to wait for a job's current step at shutdown.
        keep_checkpoints_days: at start-up, checkpoints of sessions untouched for longer are deleted
            (0 keeps them all).
        guidance_cache_bytes: memory bound of the loaded diffusion models shared by all jobs.
        max_sessions_per_client: open sessions one client identity may own.
        max_sessions_per_address: open sessions all the identities of one peer may own together: one IP address
            over TCP (loopback clients share it), one process over IPC. Fresh routing identities cannot bypass it.
        idle_timeout: seconds after which a session no request has named and no job runs on is checkpointed and
            closed (session.resume brings it back); 0 never. Only with a state dir (else nothing could bring it back).
        data_dirs: roots that request paths are resolved in (:mod:`.files`); empty: ``<state_dir>/data``
            (no roots at all without a state dir: paths are refused, frames still work).
        max_file_bytes: largest file a request may read (.ply, mesh).
        memory_budget: bytes an op may estimate to need at peak (:mod:`.costs`); None: a fraction of
            the device's free memory (RAM on CPU) measured at start-up.
        curve_secret_key: Z85 CURVE secret key of the server, or None: with an auth key, the key pair derived from it
            (:func:`~interactive3d.protocol.auth.curve_server_secret`); without one, no CURVE.
        model_dirs: the only folders local model args (diffusers/Shap-E folders, SAM checkpoints) may name
            (:func:`.files.resolve_model`); none by default: only hub ids (the Hugging Face cache). The data folders
            are not model folders (requests write files there, and loading weights can unpickle).
    """

    bind: str = DEFAULT_BIND
    state_dir: str | None = None
    auth_key: bytes | None = None
    device: str = "auto"
    limits: Limits = Limits()
    job: JobConfig = JobConfig()
    history_depth: int = DEFAULT_HISTORY_DEPTH
    max_sessions: int = 64
    shutdown_timeout: float = 120.0
    keep_checkpoints_days: float = 30.0
    guidance_cache_bytes: int = DEFAULT_CACHE_BYTES
    max_sessions_per_client: int = 16
    max_sessions_per_address: int = 32
    idle_timeout: float = 86400.0
    data_dirs: tuple[str, ...] = ()
    max_file_bytes: int = 1 << 30
    memory_budget: int | None = None
    curve_secret_key: bytes | None = None
    model_dirs: tuple[str, ...] = ()

    def check(self) -> None:
        if not isinstance(self.bind, str) or "://" not in self.bind:
            raise ValueError(f"bind must look like tcp://host:port or ipc:///path, got {self.bind!r}")
        if not is_loopback(self.bind) and not self.auth_key:
            raise ValueError(
                f"refusing to bind {self.bind}: a non-loopback address needs an auth key "
                "(--auth-key-file, $I3D_AUTH_KEY_FILE or $I3D_AUTH_KEY)"
            )
        if self.auth_key is not None:
            check_key(self.auth_key, "the server config")
        if not self.keep_checkpoints_days >= 0:  # also NaN
            raise ValueError(f"keep_checkpoints_days must be >= 0 (0 keeps all), got {self.keep_checkpoints_days!r}")
        if self.max_sessions_per_client < 1 or self.max_sessions_per_address < 1 or self.max_file_bytes < 1:
            raise ValueError("max_sessions_per_client, max_sessions_per_address and max_file_bytes must be >= 1")
        if not self.idle_timeout >= 0:  # also NaN
            raise ValueError(f"idle_timeout must be >= 0 seconds (0: never), got {self.idle_timeout!r}")
        if self.memory_budget is not None and self.memory_budget < 1:
            raise ValueError(f"memory_budget must be > 0 bytes, got {self.memory_budget!r}")
        if self.state_dir is not None:  # requests write in the data folders: checkpoints must be out of their reach
            ckpts = os.path.realpath(ckpt_mod.sessions_dir(os.path.expanduser(self.state_dir)))
            for r in self.roots():
                if os.path.commonpath([ckpts, r]) in (ckpts, r):
                    raise ValueError(f"data folder {r!r} overlaps the checkpoint folder {ckpts!r}; requests could write checkpoints")

    def roots(self) -> tuple[str, ...]:
        """The data roots (absolute, symlinks resolved); the default is created on first use."""
        if self.data_dirs:
            return tuple(os.path.realpath(os.path.expanduser(d)) for d in self.data_dirs)
        if self.state_dir is None:
            return ()
        return (os.path.realpath(os.path.join(os.path.expanduser(self.state_dir), "data")),)

    def model_roots(self) -> tuple[str, ...]:
        """The model roots (absolute, symlinks resolved); empty unless ``model_dirs`` names some."""
        return tuple(os.path.realpath(os.path.expanduser(d)) for d in self.model_dirs)


_REFUSED_HANDSHAKES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
MAX_ARG_DEPTH = 32  # the deepest real args are lists of [x, y] pairs; deeper nesting is refused before validation


def _check_depth(value: Any, limit: int = MAX_ARG_DEPTH) -> None:
    """InvalidArgs when lists/maps in ``value`` nest deeper than ``limit`` (checked without recursion: a
    1,000-deep list must be a typed error, not a RecursionError)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            if depth > limit:
                raise InvalidArgs(f"args nest lists/maps deeper than {limit} levels")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def _plain(v: Any) -> Any:
    """Convert numpy scalars/arrays and tuples in a result map to msgpack-able values."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, Path):
        return str(v)
    return v


class _Lane:
    """One worker thread per open session: its requests run in the order they arrived, off the router thread
    (they may wait for the session lock while a job steps, or do I/O and heavy compute)."""

    def __init__(self, name: str) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"i3d-lane-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn) -> None:
        self._q.put(fn)

    def close(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                return
            fn()  # never raises: Server._reply catches everything


class Server:
    """The backend. ``Server(config).serve_forever()`` until :meth:`request_stop` (signals do that).

    Args:
        config: settings.
        extra_ops: op specs beyond the catalogue (tests, experiments).
        extra_handlers: handlers for them (or overriding nothing: duplicates are an error).
        context: zmq context (default: a new one, terminated at shutdown).
    """

    def __init__(
        self,
        config: ServerConfig = ServerConfig(),
        extra_ops: Sequence[OpSpec] = (),
        extra_handlers: Mapping[str, Handler] | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.device = resolve_device(config.device)
        self.specs: dict[str, OpSpec] = dict(catalogue.OPS)
        for s in extra_ops:
            if s.name in self.specs:
                raise ValueError(f"extra op {s.name!r} is already in the catalogue")
            self.specs[s.name] = s
        self.handlers: dict[str, Handler] = {}
        for table in (ops_session.HANDLERS, ops_stage1.HANDLERS, ops_interactions.HANDLERS, ops_stage2.HANDLERS, dict(extra_handlers or {})):
            for op, h in table.items():
                if op in self.handlers:
                    raise ValueError(f"two handlers for op {op!r}")
                if op not in self.specs:
                    # Not dispatchable: nothing could validate its args. Logged, not fatal, so one module's
                    # work in progress cannot take the whole backend down.
                    log.error("handler for op %r has no OpSpec in the catalogue; op disabled", op)
                    continue
                self.handlers[op] = h
        self.sessions: dict[str, Session] = {}
        # Diffusion models loaded once per (model, dtype, device) for every job of every session; owned here
        # (not process-wide) so that two servers in one process (tests) never share weights or counts.
        self.guidance_cache = GuidanceCache(config.guidance_cache_bytes)
        # session → identities that get its events (the creator by default; session.attach adds one)
        self._subscribers: dict[str, set[bytes]] = {}
        self._owners: dict[str, bytes] = {}  # session → identity that created (or resumed) it
        self._owner_peers: dict[str, str] = {}  # session → its owner's peer (IP address, IPC process): the per-address cap
        self._peers: OrderedDict[bytes, str] = OrderedDict()  # identity → its peer, the latest PEER_MEMORY identities
        self._last_use: dict[str, float] = {}  # session → monotonic time a request last named it (idle reaping)
        self._reaping: set[str] = set()
        self._foreign_reads: dict[str, int] = {}  # session → reads by non-owners in flight (_sessions_lock)
        self._sessions_lock = threading.Lock()  # sessions/_subscribers/_owners change on workers too
        self._signer = Signer(config.auth_key, role="server") if config.auth_key else None
        self.roots = config.roots()
        self.model_roots = config.model_roots()
        self.memory = MemoryBudget(config.memory_budget if config.memory_budget is not None else default_budget(self.device))
        self._lanes: dict[str, _Lane] = {}
        self._pool = ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix="i3d-pool")
        self._inflight: set[tuple[bytes, str]] = set()  # (identity, request id) being worked on
        self._peer_log = PeerLogLimiter()
        self._last_state: dict[str, tuple] = {}  # session → (job id, [N,14] frame, parts, part counts, revision)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._wake_addr = f"inproc://i3d-wake-{id(self):x}"
        self._wake_local = threading.local()
        self._router: zmq.Socket | None = None
        self._wake_pull: zmq.Socket | None = None
        self.bound_address: str | None = None
        self._zap = None  # the CURVE key gate (bind), whenever there is an auth key
        self._handshakes: zmq.Socket | None = None  # the router's refused-handshake events (with the gate)
        self._loop_thread: int | None = None
        self._recent: OrderedDict[tuple[bytes, str], tuple[list, int]] = OrderedDict()  # (identity, id) → reply frames
        self._recent_bytes = 0
        # what handlers may use of this server (they never get the server object itself)
        self.services = Services(
            device=self.device, ops=tuple(sorted(self.handlers)), specs=self.specs, memory=self.memory,
            guidance_cache=self.guidance_cache, roots=self.roots, model_roots=self.model_roots,
            state_dir=config.state_dir, max_file_bytes=config.max_file_bytes, job=config.job,
            post_event=self._post_event, job_ended=self._job_ended, get_session=self.get_session,
            sessions=lambda: list(self.sessions.values()), create_session=self.create_session,
            close_session=self.close_session, resume_session=self.resume_session, owner=self.owner,
            subscribe=self.subscribe, take_over=self.take_over, last_state=self.last_state,
        )

    # -- life cycle ---------------------------------------------------------------------------------
    def bind(self) -> str:
        """Bind the sockets; returns the bound address (the real port for ``tcp://127.0.0.1:*``)."""
        r = self._ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client's fresh socket (same routing id) takes over its route
        r.setsockopt(zmq.SNDHWM, 1000)
        r.setsockopt(zmq.RCVHWM, 1000)
        # The largest frame any op legitimately accepts (uploads and arrays are capped by max_frame_bytes and the
        # total, the header by its own cap): libzmq drops a connection whose frame is larger as it arrives, before
        # allocating it. Messages over the caps in other ways (total, frame count) are still answered too_large.
        r.setsockopt(zmq.MAXMSGSIZE, max_frame_size(self.config.limits))
        secret = self.config.curve_secret_key
        if secret is None and self._signer is not None:
            secret = curve_server_secret(self.config.auth_key)  # issue 25: a key always means CURVE
        if secret is not None:
            # CURVE (pyzmq's libsodium build): encrypted, server-authenticated transport; clients need the server's
            # public key (derived from the shared key, or zmq.curve_public of the --curve-secret-file secret).
            r.setsockopt(zmq.CURVE_SERVER, 1)
            r.setsockopt(zmq.CURVE_SECRETKEY, secret)
            if self._signer is not None:
                # and with the shared key, only its holders pass the handshake (their client keys derive from it):
                # a peer without the key cannot make the server hold a single frame (issue 25: unfinished
                # multipart messages pinned gigabytes, and 1 GiB frames were hashed, before any signature check)
                self._zap = self._start_zap(curve_client_public(self.config.auth_key))
                # refused handshakes are logged (rate-limited): an old client or one without the key learns nothing
                # over the wire, the operator reads why here
                self._handshakes = r.get_monitor_socket(_REFUSED_HANDSHAKES, addr=f"inproc://i3d-handshakes-{id(self):x}")
        r.bind(self.config.bind)
        self._router = r
        self.bound_address = r.getsockopt(zmq.LAST_ENDPOINT).decode()
        w = self._ctx.socket(zmq.PULL)
        w.setsockopt(zmq.LINGER, 0)
        w.bind(self._wake_addr)
        self._wake_pull = w
        curve = "none" if secret is None else ("file" if self.config.curve_secret_key is not None else "derived from the key")
        log.info("listening address=%s device=%s auth=%s curve=%s state_dir=%s", self.bound_address, self.device, bool(self._signer),
                 curve, self.config.state_dir)
        return self.bound_address

    def _start_zap(self, allowed: bytes):
        """A ZAP handler (a thread of this context) that admits the CURVE client key ``allowed`` only."""
        from zmq.auth.thread import ThreadAuthenticator

        class OneKey:
            def callback(self, domain: str, key: bytes) -> bool:
                return hmac.compare_digest(key, allowed)

        zap = ThreadAuthenticator(self._ctx)
        zap.start()
        zap.configure_curve_callback("*", credentials_provider=OneKey())
        return zap

    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler or another thread)."""
        self._stopping.set()

    def serve_forever(self) -> None:
        if self._router is None:
            self.bind()
        self._loop_thread = threading.get_ident()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_pull, zmq.POLLIN)
        if self._handshakes is not None:
            poller.register(self._handshakes, zmq.POLLIN)
        next_reap = time.monotonic() + 1.0
        try:
            while not self._stopping.is_set():
                try:
                    ready = dict(poller.poll(200))
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EINTR:  # a signal arrived; the flag says whether to stop
                        continue
                    raise
                if self._wake_pull in ready:
                    while self._wake_pull.poll(0):
                        self._wake_pull.recv(copy=False)
                if self._handshakes in ready:
                    self._log_handshakes()
                if self._router in ready:
                    for _ in range(100):  # fairness with events
                        try:
                            frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
                self._flush_events()
                if time.monotonic() >= next_reap:
                    self._reap_idle()
                    next_reap = time.monotonic() + 1.0
        finally:
            self.shutdown()

    def _log_handshakes(self) -> None:
        """Log the router's refused CURVE handshakes (router thread), at most a burst and then ~2 a second."""
        from zmq.utils.monitor import recv_monitor_message

        while self._handshakes.poll(0):
            ev = recv_monitor_message(self._handshakes)
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and ev["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                why = "it does not speak CURVE: a client without the auth key, or one released before a key implied CURVE"
            else:
                why = "its CURVE keys are not derived from this server's auth key"
            self._peer_log.warning(log, b"handshakes", "refused a connection on %s: %s",
                                   printable(ev.get("endpoint", b"").decode(errors="replace")), why)

    def shutdown(self) -> None:
        """Stop jobs between two steps, checkpoint every session, close the sockets."""
        for s in list(self.sessions.values()):
            self._stop_and_checkpoint(s)
        for lane in list(self._lanes.values()):
            lane.close()
        self._lanes.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._flush_events()
        if self._handshakes is not None:
            self._router.disable_monitor()
        for sock in (self._handshakes, self._router, self._wake_pull):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._wake_pull = self._handshakes = None
        if self._zap is not None:
            self._zap.stop()
            self._zap = None
        if self._own_ctx:
            # destroy, not term: a job thread that did not stop in time must not hang the exit
            self._ctx.destroy(linger=0)
        log.info("stopped")

    def _stop_and_checkpoint(self, s: Session) -> None:
        if s.suspended is not None:  # a Stage I job paused for an interaction: recorded with it (checkpoint.capture)
            s.suspended[0].stop()
        runner = s.job
        if runner is not None and not runner.finished:
            runner.stop()
            if not runner.join(self.config.shutdown_timeout):
                log.error("job %s did not stop within %.0f s; checkpointing without it", runner.job_id, self.config.shutdown_timeout)
        if self.config.state_dir is None:
            return
        try:
            keep = runner is not None and runner.state in ("stopped",)
            rec = runner.record() if keep else None
            ckpt_mod.write(self.config.state_dir, ckpt_mod.capture(s, rec))
        except Exception:  # noqa: BLE001 - one session's failed checkpoint must not block the others
            log.exception("checkpoint of session %s failed at shutdown", s.id)

    # -- sessions -----------------------------------------------------------------------------------
    def get_session(self, session_id: Any) -> Session:
        s = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if s is None:
            raise NotFound(f"no open session {session_id!r} (session.list shows open and resumable ones)")
        return s

    def _check_caps(self, identity: bytes | None) -> None:
        """Busy over the global cap or the caller's own (call with _sessions_lock held)."""
        if len(self.sessions) >= self.config.max_sessions:
            raise Busy(f"{len(self.sessions)} sessions are open (max_sessions={self.config.max_sessions}); close one")
        if identity is not None:
            self._check_client_cap(identity)

    def _check_client_cap(self, identity: bytes) -> None:
        """Busy when ``identity``, or its peer (address / process), already owns its cap of open sessions
        (_sessions_lock held)."""
        mine = sum(1 for o in self._owners.values() if o == identity)
        if mine >= self.config.max_sessions_per_client:
            raise Busy(f"this client owns {mine} open sessions (max_sessions_per_client={self.config.max_sessions_per_client}); close one")
        peer = self._peers.get(identity)
        if peer is not None:
            ours = sum(1 for p in self._owner_peers.values() if p == peer)
            if ours >= self.config.max_sessions_per_address:
                raise Busy(f"clients from this address own {ours} open sessions (max_sessions_per_address="
                           f"{self.config.max_sessions_per_address}); close one")

    def _set_owner(self, sid: str, identity: bytes) -> None:
        """``identity`` owns ``sid`` (_sessions_lock held); its peer is counted for the per-address cap."""
        self._owners[sid] = identity
        peer = self._peers.get(identity)
        if peer is None:
            self._owner_peers.pop(sid, None)
        else:
            self._owner_peers[sid] = peer

    def _adopt(self, s: Session, identity: bytes | None) -> None:
        """Register an open session, owned by and subscribed to ``identity`` (_sessions_lock held)."""
        self.sessions[s.id] = s
        self._subscribers[s.id] = set()
        self._last_use[s.id] = time.monotonic()
        if identity is not None:
            self._set_owner(s.id, identity)
            self._subscribers[s.id].add(identity)

    def subscribe(self, s: Session, identity: bytes) -> None:
        """Send ``s``'s job events to ``identity`` too (session.attach; starting a job on it)."""
        with self._sessions_lock:
            if s.id in self._subscribers:
                self._subscribers[s.id].add(identity)

    def owner(self, session_id: str) -> bytes | None:
        return self._owners.get(session_id)

    def check_owner(self, op: str, session_id: Any, identity: bytes | None) -> None:
        """Unauthorized when ``session_id`` names an open session owned by another client (owner-only ops,
        ``OpSpec.mutates``). Sessions without an owner (made in-process) are open to everyone."""
        owner = self._owners.get(session_id) if isinstance(session_id, str) else None
        if owner is not None and owner != identity:
            raise Unauthorized(
                f"{op}: session {session_id} belongs to another client, and {op} changes it; take the session over "
                "first with session.attach take_over=true (or session.resume), which makes you its owner"
            )

    def take_over(self, s: Session, identity: bytes) -> None:
        """Make ``identity`` the owner of ``s`` (session.attach take_over, session.resume of an open session);
        the previous owner stays a subscriber. Busy over the caller's own session cap."""
        with self._sessions_lock:
            if s.id not in self.sessions:
                raise NotFound(f"no open session {s.id!r}")
            if self._owners.get(s.id) == identity:
                self._subscribers[s.id].add(identity)
                return
            self._check_client_cap(identity)
            previous = self._owners.get(s.id)
            self._set_owner(s.id, identity)
            self._subscribers[s.id].add(identity)
        log.info("session %s taken over by another client (previous owner %s)", s.id, "none" if previous is None else "kept as subscriber")

    def create_session(self, name: str = "", identity: bytes | None = None) -> Session:
        with self._sessions_lock:
            self._check_caps(identity)
            s = Session(uuid.uuid4().hex[:16], name, device=self.device, history_depth=self.config.history_depth)
            self._adopt(s, identity)
        return s

    def close_session(self, s: Session, checkpoint: bool = False) -> None:
        if s.suspended is not None:
            s.suspended[0].cancel()
        runner = s.job
        if runner is not None and not runner.finished:
            runner.cancel()
            runner.join(self.config.shutdown_timeout)
        if self.config.state_dir is not None:
            if checkpoint:
                ckpt_mod.write(self.config.state_dir, ckpt_mod.capture(s))
            else:  # closed for good: its periodic checkpoints must not show up as resumable
                ckpt_mod.remove(self.config.state_dir, s.id)
        with self._sessions_lock:
            self.sessions.pop(s.id, None)
            self._subscribers.pop(s.id, None)
            self._owners.pop(s.id, None)
            self._owner_peers.pop(s.id, None)
            self._last_use.pop(s.id, None)
            self._reaping.discard(s.id)
            self._last_state.pop(s.id, None)
            lane = self._lanes.pop(s.id, None)
        if lane is not None:
            lane.close()  # after the op that closes: it runs on this lane and finishes first

    def resume_session(self, session_id: str, identity: bytes | None, paused: bool) -> tuple[Session, str | None, int]:
        """Re-open ``session_id`` from its checkpoint and restart its job; (session, job id, step)."""
        if not SESSION_ID_RE.match(session_id):
            raise InvalidArgs(f"session.resume: arg 'session' is not a valid session id: {session_id!r}")
        with self._sessions_lock:
            live = self.sessions.get(session_id)
            if live is None:
                self._check_caps(identity)
        if live is not None:
            # still open (the client lost its connection, not the server its state): hand it over as it is
            if identity is not None:
                self.take_over(live, identity)
            runner = live.job
            active = runner is not None and not runner.finished
            return live, runner.job_id if active else None, int(runner.step) if active else 0
        if self.config.state_dir is None:
            raise NotFound("this server has no state dir, so no checkpoints")
        try:
            c = ckpt_mod.read(self.config.state_dir, session_id, self.device)
        except FileNotFoundError:
            raise NotFound(f"no checkpoint for session {session_id!r} in {self.config.state_dir}") from None
        except ValueError as exc:
            raise NotFound(f"session {session_id!r} has no checkpoint this server can read: {exc}") from None
        s = ckpt_mod.restore_session(c, self.device)
        s.history.depth = self.config.history_depth
        with self._sessions_lock:
            if s.id in self.sessions:
                raise Busy(f"session {session_id} is already open")
            self._adopt(s, identity)
        if c.job is None:
            return s, None, 0
        try:
            if c.suspended is not None and self._restart_job(s, c.suspended, paused=True):
                # a Stage I job was paused behind an interaction: it is back paused, the interaction starts
                # in front of it (preempts), and Stage I goes on afterwards as the checkpoint says
                if not self._restart_job(s, c.job, paused or c.job.paused):
                    return s, s.job.job_id, c.suspended.step
                s.suspended = (s.suspended[0], not (paused or c.suspended.paused))
                return s, s.job.job_id, c.job.step
            if not self._restart_job(s, c.job, paused or c.job.paused):
                return s, None, 0
        except Exception:
            for runner in (s.job, s.suspended and s.suspended[0]):
                if runner:
                    runner.cancel()
            with self._sessions_lock:
                self.sessions.pop(s.id, None)
                self._subscribers.pop(s.id, None)
                self._owners.pop(s.id, None)
            raise
        return s, s.job.job_id if s.job is not None else None, c.job.step

    def _restart_job(self, s: Session, rec: ckpt_mod.JobRecord, paused: bool) -> bool:
        """Re-run the op that started a checkpointed job, continuing from its record; False if the op
        is not served here (the session is then restored without the job)."""
        handler = self.handlers.get(rec.op)
        if rec.op not in self.specs or handler is None:
            log.warning("checkpointed job op %s of session %s is not served here; session restored without it", rec.op, s.id)
            return False
        handler(Request(rec.op, uuid.uuid4().hex, dict(rec.args), list(rec.buffers), s, self.services, resume=rec, paused=paused))
        return True

    # -- events from job threads ---------------------------------------------------------------------
    def _post_event(self, session_id: str, header: dict, buffers: list) -> None:
        """Queue an event for the server thread (any thread) and wake the loop."""
        if header.get("event") == "state" and buffers:  # state.get during a job answers from this at once
            self._snapshot(session_id, header.get("job"), buffers[0], header.get("revision"))
        self._outbox.put(("event", session_id, header, buffers))
        self._wake()

    def _snapshot(self, session_id: str, job_id: Any, frame: np.ndarray, revision: int | None = None) -> None:
        """Keep a job's latest state frame (+ parts, when the lock is free now) for state.get (job thread)."""
        s = self.sessions.get(session_id)
        if s is None:
            return
        parts, counts = [], {}
        if s.lock.acquire(blocking=False):  # never wait here: the job must go on stepping
            try:
                g = s.gaussians
                if g is not None and g.n == frame.shape[0]:
                    parts = g.part_names()
                    counts = {p: int(g.part_mask(p).sum()) for p in parts}
            finally:
                s.lock.release()
        self._last_state[session_id] = (job_id, frame, parts, counts, revision)

    def last_state(self, s: Session) -> tuple | None:
        """(frame, parts, part_counts, revision) of the running job's latest state event, or None."""
        snap = self._last_state.get(s.id)
        if snap is None or s.job is None or snap[0] != s.job.job_id:
            return None
        return snap[1:]

    def _post_reply(self, identity: bytes, rid: str, header: dict, buffers: Sequence[Any], remember: bool) -> None:
        """Queue a worker's reply for the server thread (which alone touches the socket)."""
        self._outbox.put(("reply", identity, rid, header, buffers, remember))
        self._wake()

    def _wake(self) -> None:
        if threading.get_ident() == self._loop_thread or self._router is None:
            return
        if self._stopping.is_set():
            return  # shutdown flushes the queue; the context may be going away
        sock = getattr(self._wake_local, "sock", None)
        if sock is None:
            try:
                sock = self._ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(self._wake_addr)
                self._wake_local.sock = sock
            except zmq.ZMQError:
                return
        try:
            sock.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the loop also polls with a timeout; a lost wake-up only delays the event

    def _job_ended(self, s: Session, runner: JobRunner) -> None:
        """Called on a job's thread as it ends: give the session back to a Stage I job it preempted."""
        self._release_thread()
        with s.lock:
            if s.suspended is None or s.job is not runner:
                return
            (suspended, was_running), s.suspended = s.suspended, None
            s.job = suspended
        try:  # the interaction's last checkpoint has no job: record the Stage I job again right away
            suspended.write_checkpoint(keep_job=True)
        except Exception:  # noqa: BLE001 - a failed checkpoint must not strand the paused job
            log.exception("checkpoint of session %s after job %s failed", s.id, runner.job_id)
        if was_running:
            suspended.resume()
        log.info("session %s: job %s ended; %s job %s is back (%s)", s.id, runner.job_id, suspended.kind, suspended.job_id, suspended.state)

    def _release_thread(self) -> None:
        """Close the calling thread's wake-up socket (a job thread calls this as it ends)."""
        sock = getattr(self._wake_local, "sock", None)
        if sock is not None:
            sock.close(linger=0)
            self._wake_local.sock = None

    def _flush_events(self) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if self._router is None:
                continue
            if item[0] == "reply":
                _, ident, rid, header, buffers, remember = item
                self._inflight.discard((ident, rid))
                sent = self._send(ident, header, buffers)
                if remember:
                    self._remember(ident, rid, sent)
                continue
            _, sid, header, buffers = item
            idents = self._subscribers.get(sid)
            if not idents:
                continue
            h = {"v": PROTOCOL_VERSION, **header, "data": _plain(header.get("data", {}))}
            for ident in list(idents):
                self._send(ident, h, buffers)

    # -- messages -----------------------------------------------------------------------------------
    def _send(self, identity: bytes, header: dict, buffers: Sequence[Any] = ()) -> list:
        """Encode (sign) and send; returns the frames sent (without the identity)."""
        try:
            specs, frames = buffer_frames(buffers)
            h = {**header, "buffers": specs}
            raw = self._signer.sign(h, pack_header, frames) if self._signer else pack_header(h)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("cannot encode %s for %s: %s", header.get("op") or header.get("event") or "reply", header.get("id"), exc)
            rid = header.get("id", "")
            h = error_header(rid if isinstance(rid, str) else "", "internal", f"the backend could not encode its reply: {exc}")
            frames = []
            raw = self._signer.sign(h, pack_header, []) if self._signer else pack_header(h)
        self._send_frames(identity, [raw, *frames])
        return [raw, *frames]

    def _send_frames(self, identity: bytes, frames: list) -> None:
        try:
            self._router.send_multipart([identity, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone or its queue full: drop, as ROUTER does
            log.warning("dropping a message to a peer: %s", exc)

    def _error(self, identity: bytes, rid: str, exc: ProtocolError, version: int | None = None) -> list:
        """Send ``exc`` in ``version`` (the request's), else in the version an UnsupportedVersion names, else ours."""
        return self._send(identity, error_header(rid, exc.code, exc.message, version or getattr(exc, "peer_version", None)))

    def _remember(self, identity: bytes, rid: str, frames: list) -> None:
        """Keep a successful reply so that a Lazy Pirate retry of the same request id gets it again instead of
        running a non-idempotent op twice (bounded by count and bytes). Keyed by the sender too: another
        client reusing the id must not get this client's result."""
        if not rid:
            return
        nbytes = sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)
        if nbytes > REPLY_CACHE_BYTES // 4:
            return
        key = (identity, rid)
        old = self._recent.pop(key, None)
        if old is not None:
            self._recent_bytes -= old[1]
        self._recent[key] = (frames, nbytes)
        self._recent_bytes += nbytes
        while len(self._recent) > REPLY_CACHE_ENTRIES or self._recent_bytes > REPLY_CACHE_BYTES:
            _, (_, n) = self._recent.popitem(last=False)
            self._recent_bytes -= n

    def _handle(self, frames: list) -> None:
        """Decode, verify, validate; answer inline ops here and hand the rest to a worker (router thread)."""
        identity, body = frames[0].bytes, frames[1:]
        self._note_peer(identity, frames[0])
        verified = [False]

        def verify(raw: bytes, header: dict, views: list) -> None:
            self._signer.verify(raw, header, views)
            verified[0] = True

        try:
            # a keyless server also answers unsigned version-1 messages (their bytes did not change in version 2)
            msg = decode(body, self.config.limits, verify if self._signer else None,
                         (PROTOCOL_VERSION,) if self._signer else UNSIGNED_VERSIONS)
        except ProtocolError as exc:
            # an old client's version is not a secret: its refusal says what changed, signed or not
            if self._signer is not None and not verified[0] and exc.code not in ("unauthorized", "too_large", "unsupported_version"):
                exc = Unauthorized("message is not signed (authentication is required)")
            self._peer_log.warning(log, identity, "rejected message code=%s message=%s", exc.code, printable(exc.message))
            # an oversized message still names its request id (read from its header) so the client fails fast;
            # an unauthenticated peer learns nothing from its own id being echoed
            self._error(identity, exc.request_id, exc)
            return
        rid = msg.id
        op = msg.header.get("op")
        key = (identity, rid)
        cached = self._recent.get(key) if rid else None
        if cached is not None:
            self._peer_log.info(log, identity, "op=%s id=%s retried: sending the reply again", printable(op), printable(rid))
            self._send_frames(identity, cached[0])
            return
        if rid and key in self._inflight:
            self._peer_log.info(log, identity, "op=%s id=%s retried while in flight: its reply follows when done", printable(op), printable(rid))
            return
        try:
            if "id" not in msg.header:
                raise ProtocolError("header has no 'id'", code="bad_message")
            if not isinstance(op, str):
                raise ProtocolError(f"header field 'op' must be a string, got {type(op).__name__}", code="bad_message")
            spec, handler = self.specs.get(op), self.handlers.get(op)
            if spec is None or handler is None:
                raise UnknownOp(f"unknown op {printable(op[:100])}" + ("" if spec is None else " (no handler in this server)"))
            if spec.session and spec.mutates:  # before the args: another client's session is not its to change
                raw = msg.header.get("args")
                self.check_owner(op, raw.get("session") if isinstance(raw, dict) else None, identity)
            _check_depth(msg.header.get("args", {}))
            args = catalogue.validate_request(spec, msg.header.get("args", {}), msg.buffers)
            session = self.get_session(args.get("session")) if spec.session else None
            if session is not None:
                self._last_use[session.id] = time.monotonic()
            if spec.starts_job and session is not None and session.job_active and not (spec.preempts and preemptible(session)):
                raise Busy(f"session {session.id} already has job {session.job.job_id} ({session.job.kind}, {session.job.state})")
            req = Request(op, rid, args, msg.buffers, session, self.services, identity=identity, version=msg.header["v"])
        except ProtocolError as exc:
            self._peer_log.info(log, identity, "op=%s id=%s error code=%s message=%s", printable(op), printable(rid), exc.code, printable(exc.message))
            self._error(identity, rid, exc, msg.header["v"])
            return
        except Exception as exc:  # noqa: BLE001 - the server never dies of a message
            log.exception("op=%s id=%s failed", printable(op), printable(rid))
            self._error(identity, rid, ProtocolError(f"{type(exc).__name__}: {exc}", code="internal"), msg.header["v"])
            return
        if op in INLINE_OPS or (op == "state.get" and self.last_state(session) is not None):
            self._reply(req, handler, self._send_now)
            return
        if session is not None and self._owners.get(session.id) not in (None, identity):  # a read by another client
            with self._sessions_lock:
                n = self._foreign_reads.get(session.id, 0)
                if n >= FOREIGN_READS:
                    self._error(identity, rid, Busy(f"{op}: another client's read of session {session.id} is running; retry when it is done"))
                    return
                self._foreign_reads[session.id] = n + 1
            work = lambda: self._foreign_read(req, handler)  # noqa: E731
        else:
            work = lambda: self._reply(req, handler, self._post_reply)  # noqa: E731
        if rid:
            self._inflight.add(key)
        if session is None:
            self._pool.submit(work)
            return
        self._lane(session).submit(work)

    def _lane(self, session: Session) -> _Lane:
        with self._sessions_lock:
            lane = self._lanes.get(session.id)
            if lane is None:
                lane = self._lanes[session.id] = _Lane(session.id)
        return lane

    def _note_peer(self, identity: bytes, frame) -> None:
        """Remember which peer (TCP: IP address; IPC: process) ``identity`` sends from, for the per-address cap."""
        try:
            addr = frame.get("Peer-Address")
        except (zmq.ZMQError, AttributeError):  # inproc has none
            return
        if addr:
            self._peers[identity] = addr
            self._peers.move_to_end(identity)
            while len(self._peers) > PEER_MEMORY:
                self._peers.popitem(last=False)

    def _reap_idle(self) -> None:
        """Checkpoint and close sessions idle for longer than ``idle_timeout`` (router thread; the work runs on
        each session's lane, after the requests already queued there)."""
        limit = self.config.idle_timeout
        if limit <= 0 or self.config.state_dir is None:
            return
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if sid in self._reaping or now - self._last_use.get(sid, now) <= limit or s.job_active or s.suspended is not None:
                continue
            self._reaping.add(sid)
            log.info("session %s idle for %.0f s: checkpointed and closed (session.resume brings it back)", sid, now - self._last_use[sid])
            self._lane(s).submit(lambda s=s: self._reap(s))

    def _reap(self, s: Session) -> None:
        """(lane) Close ``s`` into its checkpoint unless a request named it since it was picked."""
        if time.monotonic() - self._last_use.get(s.id, 0.0) <= self.config.idle_timeout or s.job_active:
            self._reaping.discard(s.id)
            return
        try:
            self.close_session(s, checkpoint=True)
        except Exception:  # noqa: BLE001 - a failed checkpoint keeps the session open, never loses it
            log.exception("idle session %s could not be checkpointed; it stays open", s.id)
            self._reaping.discard(s.id)

    def _foreign_read(self, req: Request, handler: Handler) -> None:
        """(lane) A non-owner's read, counted against :data:`FOREIGN_READS` until it is answered."""
        try:
            self._reply(req, handler, self._post_reply)
        finally:
            with self._sessions_lock:
                self._foreign_reads[req.session.id] -= 1

    def _send_now(self, identity: bytes, rid: str, header: dict, buffers: Sequence[Any], remember: bool) -> None:
        sent = self._send(identity, header, buffers)
        if remember:
            self._remember(identity, rid, sent)

    def _reply(self, req: Request, handler: Handler, deliver) -> None:
        """Run ``handler`` and deliver its reply or error (router thread for inline ops, else a worker)."""
        t0 = time.perf_counter()
        op, rid, identity = req.op, req.id, req.identity
        try:
            out = handler(req)
            if out is None:
                out = Reply()
            elif isinstance(out, dict):
                out = Reply(result=out)
            if not isinstance(out, Reply):
                raise TypeError(f"handler for {op} returned {type(out).__name__}, expected Reply or dict")
            header = {"v": req.version, "id": rid, "ok": True, "result": _plain(out.result)}
            # only successes are remembered: a failed op changed nothing and may be retried
            deliver(identity, rid, header, out.buffers, True)
            log.debug("op=%s id=%s ok ms=%.1f", op, printable(rid), (time.perf_counter() - t0) * 1e3)
        except ProtocolError as exc:
            self._peer_log.info(log, identity, "op=%s id=%s error code=%s message=%s", op, printable(rid), exc.code, printable(exc.message))
            deliver(identity, rid, error_header(rid, exc.code, exc.message, req.version), (), False)
        except Exception as exc:  # noqa: BLE001 - the server never dies of a message
            log.exception("op=%s id=%s failed", op, printable(rid))
            deliver(identity, rid, error_header(rid, "internal", f"{type(exc).__name__}: {exc}", req.version), (), False)


def run(config: ServerConfig, extra_ops: Sequence[OpSpec] = (), extra_handlers: Mapping[str, Handler] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (0 after a graceful shutdown)."""
    server = Server(config, extra_ops, extra_handlers)
    server.bind()
    if config.state_dir is not None:
        orphans = ckpt_mod.remove_orphans(config.state_dir)
        if orphans:
            log.info("deleted %d temp file(s) left by checkpoint writes that were killed", orphans)
        gone = ckpt_mod.prune(config.state_dir, config.keep_checkpoints_days * 86400.0)
        if gone:
            log.info("deleted %d checkpoint(s) older than %g days: %s", len(gone), config.keep_checkpoints_days, " ".join(gone))

    def on_signal(signum, _frame) -> None:
        log.info("signal %s: stopping after the current step", signal.Signals(signum).name)
        server.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.serve_forever()
    return 0
