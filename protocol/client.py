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

from .auth import Signer, curve_client_public, curve_client_secret
from .codec import PROTOCOL_VERSION, Limits, Message, buffer_frames, decode, error_header, pack_header
from .errors import ConnectionLost, ProtocolError, RemoteError, RequestTimeout, UnsupportedVersion

__all__ = ["Client", "Reply", "Message", "RemoteError", "RequestTimeout", "ConnectionLost"]

log = logging.getLogger(__name__)


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
        curve_server_key: the server's Z85 CURVE public key: encrypt the connection (the server runs with
            ``--curve-secret-file``); this client makes its own key pair.
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
        # with the shared key too, the client's CURVE keys are derived from it: the server admits only key holders
        # at the handshake (issue 25); without one, a fresh pair
        keys = (curve_client_public(auth_key), curve_client_secret(auth_key)) if auth_key else zmq.curve_keypair()
        self._curve = None if curve_server_key is None else (curve_server_key, *keys)
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
        if self._curve is not None:
            server_key, public, secret = self._curve
            s.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)
        s.connect(self.address)
        self._sock = s

    def reconnect(self) -> None:
        """Close the socket (dropping anything queued in it) and connect a fresh one."""
        if self._sock is not None:
            self._sock.close(linger=0)
        self._connect()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
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
            raise ConnectionLost(f"send queue to {self.address} is full ({self.hwm} messages): is the backend running?") from None
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
            log.info("no reply to %s from %s after %.1f s (attempt %d/%d); reconnecting", op, self.address, timeout, attempt + 1, retries + 1)
            self.reconnect()
        raise ConnectionLost(f"no reply to {op!r} from {self.address} after {retries + 1} attempt(s) of {timeout:g} s")

    @staticmethod
    def _to_reply(op: str, msg: Message) -> Reply:
        if not msg.ok:
            err = msg.error
            raise RemoteError(str(err.get("code", "internal")), str(err.get("message", "")), op)
        return Reply(id=msg.id, result=msg.result, buffers=msg.buffers, header=msg.header)
