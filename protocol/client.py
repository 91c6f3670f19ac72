"""The one client of the backend (ZeroMQ DEALER), used by the Blender add-on and by scripts.

- :meth:`Client.send` queues a request and returns its id without waiting (Blender's UI thread).
- :meth:`Client.poll` returns replies and events that have arrived (call it from a timer).
- :meth:`Client.request` waits for one reply, with the ZeroMQ guide's *Lazy Pirate* pattern: on a
  timeout the socket is closed (LINGER 0) and a fresh one reconnects before the request is sent again,
  so a restarted backend is picked up. Replies and events that arrive meanwhile are queued for
  :meth:`poll`, never lost.

Example::

    with Client("tcp://127.0.0.1:5555") as c:
        print(c.request("ping").result["version"])
        sid = c.request("session.create").result["session"]
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import zmq

from .auth import Signer, curve_client_options
from .codec import PROTOCOL_VERSION, Limits, Message, buffer_frames, decode, error_header, pack_header
from .errors import ConnectionLost, ProtocolError, RemoteError, RequestTimeout, UnsupportedVersion

__all__ = ["Client", "Reply", "Message", "RemoteError", "RequestTimeout", "ConnectionLost"]

log = logging.getLogger(__name__)

_WATCHED = (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_MECHANISM_MISMATCH = -1  # our marker in Client._events: a HANDSHAKE_FAILED_PROTOCOL for the other security mechanism


class _ProcessIdentity:
    """One routing identity per process (issue 25): the server gives sessions to identities, so a Client made
    again after a lost connection must come back as the same one. While a Client holds it, another Client of
    the same process gets ``<id>-1``, ``<id>-2``, … (two live sockets with one identity would steal each other's
    replies); a closed Client gives its identity back. A forked child draws its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.base = b"i3d-" + uuid.uuid4().hex.encode()
        self._held: set[bytes] = set()

    def take(self) -> bytes:
        with self._lock:
            n = 0
            while (rid := self.base if n == 0 else self.base + b"-%d" % n) in self._held:
                n += 1
            self._held.add(rid)
            return rid

    def give_back(self, rid: bytes) -> None:
        with self._lock:
            self._held.discard(rid)


_IDENTITY = _ProcessIdentity()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_IDENTITY._reset)


@dataclass
class Reply:
    """A successful reply: its result map and its arrays (read-only views of the received frames)."""

    id: str
    result: dict
    buffers: list[np.ndarray] = field(default_factory=list)
    header: dict = field(default_factory=dict)


class Client:
    """A DEALER connection to one backend address.

    Args:
        address: ``tcp://host:port`` or ``ipc:///path``.
        auth_key: shared HMAC key (sign requests, verify replies); None when the server has none.
        limits: caps on received messages.
        hwm: send/receive high-water marks (messages).
        context: a zmq.Context to use (default: the process's shared instance).
        curve_server_key: the server's Z85 CURVE public key when it runs with ``--curve-secret-file``; None: with
            ``auth_key``, the public key derived from it (a server with a key always speaks CURVE, issue 25),
            without one, no CURVE. The client's own key pair derives from ``auth_key`` (the server admits only
            it), or is fresh without one.
        routing_id: this client's identity at the server (default: this process's identity, the same for every
            Client it makes one after another; a Client made while another is open gets a numbered variant). The
            server gives a session to the identity that created it (only that identity may change it), so a new
            Client for the same work (the add-on after a lost connection) is its owner again.

    Not thread-safe: use one Client per thread.
    """

    def __init__(
        self,
        address: str,
        auth_key: bytes | None = None,
        limits: Limits = Limits(max_total_bytes=4 << 30, max_frame_bytes=4 << 30),
        hwm: int = 1000,
        context: zmq.Context | None = None,
        curve_server_key: bytes | None = None,
        routing_id: bytes | None = None,
    ) -> None:
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"address must look like tcp://host:port or ipc:///path, got {address!r}")
        self.address = address
        self.limits = limits
        self.hwm = int(hwm)
        self._signer = Signer(auth_key) if auth_key else None
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._inbox: collections.deque[Message] = collections.deque()
        if routing_id is not None and (not isinstance(routing_id, bytes) or not 1 <= len(routing_id) <= 255 or routing_id[:1] == b"\x00"):
            raise ValueError("routing_id must be 1..255 bytes not starting with a zero byte (ZeroMQ reserves those)")
        self._pooled = routing_id is None
        self.routing_id = routing_id or _IDENTITY.take()
        # with the shared key, the client's CURVE keys are derived from it: the server admits only key holders at
        # the handshake (issue 25); without one, a fresh pair
        self._curve = curve_client_options(auth_key, curve_server_key)
        self._monitor: zmq.Socket | None = None
        self._events: set[int] = set()  # connection events seen on the current socket (for the timeout's message)
        self._connect()

    # -- socket life cycle ------------------------------------------------------------------------
    def _connect(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        # One routing id for the client's whole life: after a reconnect the server (ROUTER_HANDOVER)
        # routes job events to the fresh socket as before.
        s.setsockopt(zmq.ROUTING_ID, self.routing_id)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.hwm)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        for opt, value in self._curve:
            s.setsockopt(opt, value)
        # connection events say why nothing answers (no listener, handshake refused, other mechanism)
        self._monitor = s.get_monitor_socket(_WATCHED, addr=f"inproc://i3d-client-monitor-{uuid.uuid4().hex}")
        self._events = set()
        self._sock = s
        try:
            s.connect(self.address)
        except zmq.ZMQError:
            self._close_socket()
            raise

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._read_events()
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._sock = self._monitor = None

    def _read_events(self) -> None:
        """Move the monitor's pending connection events into ``_events``."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            self._events.add(ev["event"])
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and ev["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self._events.add(_MECHANISM_MISMATCH)

    def diagnosis(self) -> str:
        """Why the backend is not answering, as far as this socket's connection events tell (for error messages)."""
        self._read_events()
        ev = self._events
        # A peer that closes during the greeting shows as NO_DETAIL instead of a mismatch (which side reads the
        # other's mechanism first is a race); a client without CURVE fails a handshake only against CURVE.
        if _MECHANISM_MISMATCH in ev or (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL in ev and not self._curve):
            if self._curve:
                return ("the backend does not speak CURVE: it runs without an auth key (connect without one) or it is an "
                        "older release, from before a key implied CURVE (update it)")
            return ("the backend requires the CURVE handshake of a server with an auth key: connect with its key "
                    "(--auth-key-file, $I3D_AUTH_KEY_FILE, the add-on's preferences); a client released before a key "
                    "implied CURVE cannot connect to it (update the client)")
        if zmq.EVENT_HANDSHAKE_FAILED_AUTH in ev:
            return "the backend refused this client at the handshake: its auth key differs from this client's"
        if zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL in ev:
            return ("the CURVE handshake failed: the backend's auth key differs from this client's, it runs with "
                    "--curve-secret-file and this client was not given its public key, or it does not speak CURVE "
                    "(it runs without an auth key)")
        if zmq.EVENT_HANDSHAKE_SUCCEEDED in ev:
            return ("the backend accepted the connection but did not answer in time (busy or stuck; or a frame over its "
                    "--max-bytes cap made it drop the connection)")
        if zmq.EVENT_CONNECTED not in ev and not self.address.startswith("inproc://"):
            return "nothing accepted the connection: is the backend running at this address?"
        return "no reply"

    def reconnect(self) -> None:
        """Close the socket (dropping anything queued in it) and connect a fresh one."""
        self._close_socket()
        self._connect()

    def close(self) -> None:
        self._close_socket()
        if self._pooled:
            self._pooled = False
            _IDENTITY.give_back(self.routing_id)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sending and receiving ---------------------------------------------------------------------
    def send(self, op: str, args: dict | None = None, buffers: Sequence[Any] = (), request_id: str | None = None) -> str:
        """Send a request without waiting; returns its id. Raises TypeError for an unsendable buffer."""
        if self._sock is None:
            raise RuntimeError("client is closed")
        rid = request_id or uuid.uuid4().hex
        specs, frames = buffer_frames(buffers)
        header = {"v": PROTOCOL_VERSION, "id": rid, "op": op, "args": dict(args or {}), "buffers": specs}
        raw = self._signer.sign(header, pack_header, frames) if self._signer else pack_header(header)
        try:
            # Queued by zmq until the peer is connected; never blocks the caller (Blender's UI thread).
            self._sock.send_multipart([raw, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            # no pipe takes it: the queue is full, or a failed handshake dropped the connection (its monitor
            # event may still be on its way: wait for it briefly, so the error says which)
            if self._monitor is not None:
                self._monitor.poll(100)
            raise ConnectionLost(f"send queue to {self.address} is full ({self.hwm} messages) or no connection is up: "
                                 f"{self.diagnosis()}") from None
        return rid

    def _recv_one(self) -> Message | None:
        frames = self._sock.recv_multipart(copy=False)
        try:
            msg = decode(frames, self.limits)
        except UnsupportedVersion as exc:
            if not exc.request_id:
                return None
            # a backend of another protocol version: fail that request now, naming both versions, not by timeout
            theirs = f"version {exc.peer_version}" if exc.peer_version else "another version"
            return Message(header=error_header(exc.request_id, exc.code, f"the backend speaks protocol {theirs}, this client "
                                               f"version {PROTOCOL_VERSION}: update the older of the two"))
        except ProtocolError as exc:
            log.warning("dropping an undecodable message from %s: %s", self.address, exc)
            return None
        if self._signer is not None:
            try:
                self._signer.verify(msg.raw_header, msg.header, [f.buffer for f in frames[1:]], check_replay=False)
            except ProtocolError as exc:
                # A server that rejects our key answers unsigned 'unauthorized': surface that one.
                if not (msg.kind == "reply" and msg.error.get("code") == "unauthorized"):
                    log.warning("dropping a message with a bad signature from %s: %s", self.address, exc)
                    return None
        return msg

    def _drain(self, timeout_ms: int) -> list[Message]:
        out: list[Message] = []
        if self._sock is None:
            return out
        self._read_events()  # keep the monitor's queue short (a refused handshake repeats every reconnect)
        if self._sock.poll(max(0, int(timeout_ms)), zmq.POLLIN):
            while True:
                msg = self._recv_one()
                if msg is not None:
                    out.append(msg)
                if not self._sock.poll(0, zmq.POLLIN):
                    break
        return out

    def poll(self, timeout_ms: int = 0) -> list[Message]:
        """Replies and events received so far (waiting up to ``timeout_ms`` if there are none)."""
        out = list(self._inbox)
        self._inbox.clear()
        out += self._drain(0 if out else timeout_ms)
        return out

    def request(
        self,
        op: str,
        args: dict | None = None,
        buffers: Sequence[Any] = (),
        timeout: float = 10.0,
        retries: int = 2,
    ) -> Reply:
        """Send a request and wait for its reply (Lazy Pirate: ``retries`` re-sends on fresh sockets).

        Raises:
            RemoteError: the backend answered with an error (``.code``, ``.message``).
            ConnectionLost: no reply after ``1 + retries`` attempts of ``timeout`` seconds each.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        rid = uuid.uuid4().hex
        for attempt in range(retries + 1):
            self.send(op, args, buffers, request_id=rid)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                reply = None
                for msg in self._drain(int(left * 1000) + 1):
                    if reply is None and msg.kind == "reply" and msg.id == rid:
                        reply = msg
                    else:
                        self._inbox.append(msg)  # events and other replies wait for poll()
                if reply is not None:
                    return self._to_reply(op, reply)
            why = self.diagnosis()
            log.info("no reply to %s from %s after %.1f s (attempt %d/%d: %s); reconnecting", op, self.address, timeout, attempt + 1, retries + 1, why)
            self.reconnect()
        raise ConnectionLost(f"no reply to {op!r} from {self.address} after {retries + 1} attempt(s) of {timeout:g} s: {why}")

    @staticmethod
    def _to_reply(op: str, msg: Message) -> Reply:
        if not msg.ok:
            err = msg.error
            raise RemoteError(str(err.get("code", "internal")), str(err.get("message", "")), op)
        return Reply(id=msg.id, result=msg.result, buffers=msg.buffers, header=msg.header)
