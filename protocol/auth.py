"""HMAC-SHA256 message signatures with a shared key (as Jupyter kernels sign their messages).

Scheme (byte-exact, no re-encoding): the sender adds ``"auth": {"ts": float, "nonce": str,
"sig": <32 zero bytes>}`` as the *last* field of the header, packs it, computes
``HMAC-SHA256(key, packed_header + buf0 + buf1 + …)`` and writes the digest over the 32 zero bytes — the
last 32 bytes of the packed header (same length, so the rest of the bytes are unchanged). The receiver
puts the zeros back, recomputes, compares with :func:`hmac.compare_digest`, then rejects timestamps
more than ``max_skew`` seconds away and nonces it has already seen. The header declares every buffer's
dtype and shape, so frame boundaries are covered by the signature too.

The key comes from a file (``--auth-key-file`` / ``I3D_AUTH_KEY_FILE``) or the ``I3D_AUTH_KEY``
variable; surrounding whitespace is stripped.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from typing import Mapping, Sequence

from .errors import Unauthorized

SIG_BYTES = 32
_SIG_PREFIX = b"\xc4\x20"  # msgpack "bin 8" with length 32: the bytes right before the signature
ENV_KEY = "I3D_AUTH_KEY"
ENV_KEY_FILE = "I3D_AUTH_KEY_FILE"


def load_key(path: str | None = None, env: Mapping[str, str] | None = None) -> bytes | None:
    """The shared key from ``path``, else ``$I3D_AUTH_KEY_FILE``, else ``$I3D_AUTH_KEY``; None if none.

    Raises ValueError for an empty key or an unreadable key file.
    """
    env = os.environ if env is None else env
    path = path or env.get(ENV_KEY_FILE) or None
    if path:
        try:
            with open(path, "rb") as f:
                key = f.read().strip()
        except OSError as exc:
            raise ValueError(f"auth key file {path!r} cannot be read: {exc.strerror}") from None
        if not key:
            raise ValueError(f"auth key file {path!r} is empty")
        return key
    value = env.get(ENV_KEY)
    if value is None:
        return None
    key = value.strip().encode()
    if not key:
        raise ValueError(f"${ENV_KEY} is set but empty")
    return key


class Signer:
    """Signs outgoing headers and verifies incoming ones with one shared key.

    Args:
        key: the shared secret (at least 16 bytes is sensible; any non-empty key is accepted).
        max_skew: seconds a timestamp may differ from this machine's clock.
        max_nonces: most nonces remembered for the replay check (older ones expire with max_skew).
    """

    def __init__(self, key: bytes, max_skew: float = 300.0, max_nonces: int = 100_000) -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
            raise ValueError("auth key must be non-empty bytes")
        self._key = bytes(key)
        self.max_skew = float(max_skew)
        self.max_nonces = int(max_nonces)
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce → ts, oldest first

    def _digest(self, header_bytes: bytes, buffers: Sequence) -> bytes:
        mac = hmac.new(self._key, header_bytes, hashlib.sha256)
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
        return raw[:-SIG_BYTES] + self._digest(raw, buffers)

    def verify(self, raw_header: bytes, header: dict, buffers: Sequence, check_replay: bool = True) -> None:
        """Raise :class:`Unauthorized` unless the header carries a valid, fresh, unused signature."""
        auth = header.get("auth")
        if not isinstance(auth, dict):
            raise Unauthorized("message is not signed (authentication is required)")
        sig, ts, nonce = auth.get("sig"), auth.get("ts"), auth.get("nonce")
        if not isinstance(sig, bytes) or len(sig) != SIG_BYTES or not isinstance(nonce, str) or not isinstance(ts, (int, float)):
            raise Unauthorized("malformed auth field")
        if raw_header[-SIG_BYTES:] != sig or raw_header[-SIG_BYTES - 2 : -SIG_BYTES] != _SIG_PREFIX:
            raise Unauthorized("signature must be the last field of the header")
        expected = self._digest(raw_header[:-SIG_BYTES] + bytes(SIG_BYTES), buffers)
        if not hmac.compare_digest(expected, sig):
            raise Unauthorized("bad signature")
        now = time.time()
        if abs(now - float(ts)) > self.max_skew:
            raise Unauthorized(f"stale timestamp ({now - float(ts):+.0f} s from this clock, limit ±{self.max_skew:.0f} s)")
        if not check_replay:
            return
        while self._seen and (next(iter(self._seen.values())) < now - 2 * self.max_skew or len(self._seen) >= self.max_nonces):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise Unauthorized("replayed message (nonce already seen)")
        self._seen[nonce] = float(ts)


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or localhost."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")
