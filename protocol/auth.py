"""HMAC-SHA256 message signatures with a shared key (as Jupyter kernels sign their messages).

Scheme (byte-exact, no re-encoding): the sender adds ``"auth": {"ts": float, "nonce": str,
"sig": <32 zero bytes>}`` as the *last* field of the header, packs it, computes
``HMAC-SHA256(key, domain + packed_header + buf0 + buf1 + …)`` and writes the digest over the 32 zero
bytes — the last 32 bytes of the packed header (same length, so the rest of the bytes are unchanged). The
receiver puts the zeros back, recomputes, compares with :func:`hmac.compare_digest`, then rejects
timestamps that are not finite or more than ``max_skew`` seconds away, and nonces it has already seen.
The header declares every buffer's dtype and shape, so frame boundaries are covered by the signature too.

Domains: requests are signed under :data:`REQUEST_DOMAIN`, replies and events under
:data:`REPLY_DOMAIN`, so a captured reply sent back to the server fails as a request (and vice versa).

Replays (issue 15): the nonce store is bounded by *time*, not count — a nonce is remembered until its
timestamp leaves the ±``max_skew`` window, after which the staleness check refuses it anyway. If the
store reaches ``max_nonces`` (a flood), the oldest entries are dropped and the *floor* rises to their
timestamp: every message signed at or before the floor is refused, so nothing dropped can come back.
The floor never passes this clock by more than :data:`AHEAD_GRACE_S` (issue 25: one key holder stamping a
flood ``now + 280 s`` locked every client out): messages stamped further ahead are kept in a store of their
own that is never evicted (they move to the main store as the clock reaches them); when it is full, further
messages stamped that far ahead are refused, and only they.
The floor starts at the verifier's creation time, which makes a restart safe too: a message signed
before this server started may have been seen by its predecessor and is refused. (A remote client whose
clock runs behind by d seconds is refused for the first d seconds after a restart; keep clocks in sync.)

The key comes from a file (``--auth-key-file`` / ``I3D_AUTH_KEY_FILE``, readable by its owner only) or
the ``I3D_AUTH_KEY`` variable; surrounding whitespace is stripped; at least :data:`MIN_KEY_BYTES` bytes.
Transport (issue 25): a server with a key always speaks ZeroMQ CURVE, and both CURVE key pairs derive from the
key (:func:`curve_server_secret`, :func:`curve_client_secret`, domain-separated); the server's ZAP handler admits
only the derived client key. A peer without the key fails the handshake and never gets a frame into the server,
so nothing it sends is buffered, hashed or parsed; the traffic is encrypted too. ``i3d serve --curve-secret-file``
replaces the derived server key pair with one of the operator's (clients are then given its public key). HMAC
still signs every message: CURVE admits key holders, the signature binds each message to the key, its time and
its nonce.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import math
import os
import secrets
import stat
import time
from typing import Mapping, Sequence

from .errors import Unauthorized

SIG_BYTES = 32
_SIG_PREFIX = b"\xc4\x20"  # msgpack "bin 8" with length 32: the bytes right before the signature
ENV_KEY = "I3D_AUTH_KEY"
ENV_KEY_FILE = "I3D_AUTH_KEY_FILE"
MIN_KEY_BYTES = 32
REQUEST_DOMAIN = b"i3d-request-v1\x00"
REPLY_DOMAIN = b"i3d-reply-v1\x00"
AHEAD_GRACE_S = 5.0  # how far ahead of this clock a message may be stamped and still share the evictable store


def check_key(key: bytes, where: str) -> bytes:
    """``key`` if it is long enough; ValueError naming ``where`` otherwise."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"auth key from {where} is {len(key)} bytes; at least {MIN_KEY_BYTES} are needed "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))' > key && chmod 600 key)"
        )
    return key


def read_secret_file(path: str, what: str) -> bytes:
    """The stripped contents of a secret file (``what`` names it in errors: "auth key file", ...).

    ValueError when it cannot be read or when its group or other users may read it (POSIX)."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read().strip()
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{what} {path!r} is readable by other users (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
    return data


def load_key(path: str | None = None, env: Mapping[str, str] | None = None) -> bytes | None:
    """The shared key from ``path``, else ``$I3D_AUTH_KEY_FILE``, else ``$I3D_AUTH_KEY``; None if none.

    Raises ValueError for an unreadable, empty, short (< MIN_KEY_BYTES) key, or a key file that its group
    or other users may read.
    """
    env = os.environ if env is None else env
    path = path or env.get(ENV_KEY_FILE) or None
    if path:
        key = read_secret_file(path, "auth key file")
        if not key:
            raise ValueError(f"auth key file {path!r} is empty")
        return check_key(key, f"file {path!r}")
    value = env.get(ENV_KEY)
    if value is None:
        return None
    key = value.strip().encode()
    if not key:
        raise ValueError(f"${ENV_KEY} is set but empty")
    return check_key(key, f"${ENV_KEY}")


class Signer:
    """Signs outgoing headers and verifies incoming ones with one shared key.

    Args:
        key: the shared secret (``load_key`` insists on at least MIN_KEY_BYTES; here any non-empty key).
        max_skew: seconds a timestamp may differ from this machine's clock.
        max_nonces: most nonces remembered (≈ 200 B each), and as many again for messages stamped ahead of this
            clock; past it the replay floor rises (see the module docstring) — at 20,000 messages/s the floor
            trails the clock by 10 s, far inside max_skew.
        role: "client" signs requests and verifies replies; "server" signs replies and verifies requests.
    """

    def __init__(self, key: bytes, max_skew: float = 300.0, max_nonces: int = 200_000, role: str = "client") -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
            raise ValueError("auth key must be non-empty bytes")
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        if not (math.isfinite(max_skew) and max_skew > 0) or max_nonces < 1:
            raise ValueError("max_skew must be finite and > 0, max_nonces >= 1")
        self._key = bytes(key)
        self.max_skew = float(max_skew)
        self.max_nonces = int(max_nonces)
        self.sign_domain, self.verify_domain = (REQUEST_DOMAIN, REPLY_DOMAIN) if role == "client" else (REPLY_DOMAIN, REQUEST_DOMAIN)
        self.floor = time.time()  # messages signed at or before this are refused (restart, flood)
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # heap of (ts, nonce), ts <= clock + AHEAD_GRACE_S: evictable
        self._ahead: list[tuple[float, str]] = []  # heap of (ts, nonce) stamped further ahead: never evicted

    def _digest(self, domain: bytes, header_bytes: bytes, buffers: Sequence) -> bytes:
        mac = hmac.new(self._key, domain, hashlib.sha256)
        mac.update(header_bytes)
        for b in buffers:
            mac.update(b)
        return mac.digest()

    def sign(self, header: dict, pack, buffers: Sequence) -> bytes:
        """Packed header bytes with an ``auth`` field whose signature covers them and ``buffers``."""
        h = {k: v for k, v in header.items() if k != "auth"}
        h["auth"] = {"ts": time.time(), "nonce": secrets.token_hex(16), "sig": bytes(SIG_BYTES)}
        raw = pack(h)
        if raw[-SIG_BYTES - 2 : -SIG_BYTES] != _SIG_PREFIX:  # cannot happen with msgpack's packer
            raise RuntimeError("signature placeholder is not the last field of the packed header")
        return raw[:-SIG_BYTES] + self._digest(self.sign_domain, raw, buffers)

    def verify(self, raw_header: bytes, header: dict, buffers: Sequence, check_replay: bool = True) -> None:
        """Raise :class:`Unauthorized` unless the header carries a valid, fresh, unused signature."""
        auth = header.get("auth")
        if not isinstance(auth, dict):
            raise Unauthorized("message is not signed (authentication is required)")
        sig, ts, nonce = auth.get("sig"), auth.get("ts"), auth.get("nonce")
        if (not isinstance(sig, bytes) or len(sig) != SIG_BYTES or not isinstance(nonce, str) or not 16 <= len(nonce) <= 128
                or not isinstance(ts, (int, float)) or isinstance(ts, bool)):
            raise Unauthorized("malformed auth field")
        if raw_header[-SIG_BYTES:] != sig or raw_header[-SIG_BYTES - 2 : -SIG_BYTES] != _SIG_PREFIX:
            raise Unauthorized("signature must be the last field of the header")
        # the checks that need no hashing first (issue 25): a stale, pre-floor or replayed message is refused
        # before its buffers (up to the frame caps) are hashed
        try:
            ts = float(ts)
        except OverflowError:  # a huge msgpack int
            raise Unauthorized("timestamp is not a finite number") from None
        if not math.isfinite(ts):
            raise Unauthorized("timestamp is not a finite number")
        now = time.time()
        if abs(now - ts) > self.max_skew:
            raise Unauthorized(f"stale timestamp ({now - ts:+.0f} s from this clock, limit ±{self.max_skew:.0f} s)")
        if check_replay and ts <= self.floor:
            raise Unauthorized("message signed before the replay window this server can vouch for (signed before it started, or during a flood); sign it again")
        if check_replay and nonce in self._seen:
            raise Unauthorized("replayed message (nonce already seen)")
        expected = self._digest(self.verify_domain, raw_header[:-SIG_BYTES] + bytes(SIG_BYTES), buffers)
        if not hmac.compare_digest(expected, sig):
            raise Unauthorized("bad signature")
        if not check_replay:
            return
        while self._ahead and self._ahead[0][0] <= now + AHEAD_GRACE_S:  # the clock caught up: evictable now
            heapq.heappush(self._expiry, heapq.heappop(self._ahead))
        while self._expiry and self._expiry[0][0] < now - self.max_skew:  # outside the window: staleness refuses it
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if nonce in self._seen:
            raise Unauthorized("replayed message (nonce already seen)")
        if ts > now + AHEAD_GRACE_S:
            if len(self._ahead) >= self.max_nonces:
                raise Unauthorized(f"too many messages signed more than {AHEAD_GRACE_S:.0f} s ahead of this server's clock; check the sender's clock")
            self._seen.add(nonce)
            heapq.heappush(self._ahead, (ts, nonce))
            return
        while len(self._expiry) >= self.max_nonces:  # every entry here is stamped <= clock + grace: so is the floor
            old_ts, old = heapq.heappop(self._expiry)
            self._seen.discard(old)
            self.floor = max(self.floor, old_ts)
        if ts <= self.floor:
            raise Unauthorized("message signed before the replay window this server can vouch for; sign it again")
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (ts, nonce))


def _curve_secret(key: bytes, role: bytes) -> bytes:
    """A Z85 CURVE secret key derived from ``key`` for ``role`` (b"client" or b"server"): HMAC-SHA256 with a
    domain per role, so the two key pairs are unrelated and neither reveals ``key``."""
    from zmq.utils import z85

    return z85.encode(hmac.new(bytes(key), b"i3d-curve-" + role + b"-v1", hashlib.sha256).digest())


def curve_client_secret(key: bytes) -> bytes:
    """The Z85 CURVE secret key every holder of ``key`` uses as a client (derived from it, so the server can admit
    exactly the key holders at the CURVE handshake: a peer without the key never gets to send a frame)."""
    return _curve_secret(key, b"client")


def curve_client_public(key: bytes) -> bytes:
    """The Z85 CURVE public key of :func:`curve_client_secret`."""
    import zmq

    return zmq.curve_public(curve_client_secret(key))


def curve_server_secret(key: bytes) -> bytes:
    """The Z85 CURVE secret key of a server with ``key`` and no ``--curve-secret-file`` (issue 25): every key holder
    can derive the server's public key, so the handshake needs nothing beyond the shared key."""
    return _curve_secret(key, b"server")


def curve_server_public(key: bytes) -> bytes:
    """The Z85 CURVE public key of :func:`curve_server_secret`: what a client with ``key`` expects the server to be."""
    import zmq

    return zmq.curve_public(curve_server_secret(key))


def curve_client_options(key: bytes | None, server_key: bytes | None = None) -> list[tuple[int, bytes]]:
    """The ``(zmq option, value)`` pairs that make a socket a CURVE client: of a server with ``key`` (its public key
    derived from ``key`` unless ``server_key``, a ``--curve-secret-file`` server's, is given), with the client pair
    derived from ``key`` (a fresh pair without one). Empty with neither key (no CURVE)."""
    import zmq

    if server_key is None and key:
        server_key = curve_server_public(key)
    if server_key is None:
        return []
    public, secret = (curve_client_public(key), curve_client_secret(key)) if key else zmq.curve_keypair()
    return [(zmq.CURVE_SERVERKEY, server_key), (zmq.CURVE_PUBLICKEY, public), (zmq.CURVE_SECRETKEY, secret)]


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:  # an IP literal only: a name like 127.0.0.1.example.com is whatever DNS says it is
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
