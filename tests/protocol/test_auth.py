"""HMAC-SHA256 signatures: a signed message verifies; any flipped byte of header or buffers, a wrong
key, a stale timestamp or a replayed nonce is rejected as unauthorized."""

from __future__ import annotations

import time

import numpy as np
import pytest

from interactive3d.protocol.auth import Signer, is_loopback, load_key
from interactive3d.protocol.codec import buffer_frames, decode, pack_header
from interactive3d.protocol.errors import ProtocolError, Unauthorized

KEY = b"k" * 32


def _signed(signer: Signer, buffers=()):
    specs, frames = buffer_frames(buffers)
    raw = signer.sign({"v": 2, "id": "a", "op": "ping", "args": {"x": 1}, "buffers": specs}, pack_header, frames)
    return [raw, *[bytes(f) for f in frames]]


def _verify(signer: Signer, frames):
    return decode(frames, verify=signer.verify)


def _server(key: bytes = KEY) -> Signer:
    """A receiver of requests (it verifies under the request domain)."""
    return Signer(key, role="server")


def test_signed_message_verifies_once():
    recv = _server()  # before the message is signed: a receiver refuses what was signed before it started
    frames = _signed(Signer(KEY), [np.arange(10, dtype=np.float32)])
    assert _verify(recv, frames).op == "ping"
    with pytest.raises(ProtocolError, match="replayed") as e:
        _verify(recv, frames)  # same nonce again
    assert e.value.code == "unauthorized"


def test_any_flipped_byte_is_rejected():
    """Every single-byte change in the header (outside the signature's own bytes) or a buffer fails."""
    frames = _signed(Signer(KEY), [np.arange(4, dtype=np.uint8)])
    header, buf = frames
    positions = list(range(0, len(header) - 34, 3))
    rejected = 0
    for i in positions:
        bad = bytearray(header)
        bad[i] ^= 0x01
        try:
            _verify(_server(), [bytes(bad), buf])
        except ProtocolError as e:
            rejected += e.code in ("unauthorized", "bad_message", "unsupported_version")
    assert rejected == len(positions)
    with pytest.raises(ProtocolError) as e:
        _verify(_server(), [header, b"\x00\x01\x02\x04"])
    assert e.value.code == "unauthorized"


def test_wrong_key_unsigned_and_stale_are_rejected():
    with pytest.raises(ProtocolError, match="bad signature"):
        _verify(_server(), _signed(Signer(b"other-key")))
    with pytest.raises(ProtocolError, match="not signed"):
        _verify(_server(), [pack_header({"v": 2, "id": "a", "op": "ping", "buffers": []})])
    old = Signer(KEY)
    real_time = time.time
    try:
        time.time = lambda: real_time() - 1000.0  # the sender's clock is 1000 s behind
        frames = _signed(old)
    finally:
        time.time = real_time
    with pytest.raises(ProtocolError, match="stale"):
        _verify(_server(), frames)


def test_load_key(tmp_path):
    f = tmp_path / "key"
    secret = b"s" * 32
    f.write_bytes(b"  " + secret + b"\n")
    f.chmod(0o600)
    assert load_key(str(f), env={}) == secret
    assert load_key(None, env={"I3D_AUTH_KEY_FILE": str(f)}) == secret
    assert load_key(None, env={"I3D_AUTH_KEY": "a" * 40}) == b"a" * 40
    assert load_key(None, env={}) is None
    with pytest.raises(ValueError, match="empty"):
        load_key(None, env={"I3D_AUTH_KEY": " "})
    with pytest.raises(ValueError, match="cannot be read"):
        load_key(str(tmp_path / "missing"), env={})


@pytest.mark.parametrize(
    "addr, local",
    [
        ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:5", True),
        ("ipc:///tmp/x", True), ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://10.0.0.2:1", False),
    ],
)
def test_is_loopback(addr, local):
    assert is_loopback(addr) is local


def test_secret_files_must_be_owner_only(tmp_path):
    """One reader for every secret file (auth key, CURVE secret): readable by group/others → ValueError
    naming the file; owner-only → its stripped bytes. The CURVE key must also be 40 Z85 characters."""
    from interactive3d.commands import _curve_key
    from interactive3d.protocol.auth import read_secret_file

    f = tmp_path / "secret"
    f.write_bytes(b"  abc\n")
    f.chmod(0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        read_secret_file(str(f), "auth key file")
    with pytest.raises(ValueError, match="CURVE secret file .* readable by other users"):
        _curve_key(str(f))
    f.chmod(0o600)
    assert read_secret_file(str(f), "auth key file") == b"abc"
    with pytest.raises(ValueError, match="40-character Z85"):
        _curve_key(str(f))
    f.write_bytes(b"x" * 40)
    assert _curve_key(str(f)) == b"x" * 40
    with pytest.raises(ValueError, match="cannot be read"):
        read_secret_file(str(tmp_path / "missing"), "CURVE secret file")


def test_the_floor_never_passes_the_clock_under_a_future_stamped_flood():
    """Issue 25: 1,000 messages stamped now + 280 s into a 100-nonce store: 100 pass, the rest are refused, the
    floor stays at or below this clock, a message stamped now passes, and none of the accepted ones replays."""
    import secrets

    from interactive3d.protocol.codec import pack_header

    recv = Signer(KEY, role="server", max_nonces=100)
    sender = Signer(KEY)

    def at(ts: float) -> tuple[bytes, dict]:
        h = {"v": 1, "id": "x", "op": "ping", "args": {}, "buffers": [], "auth": {"ts": ts, "nonce": secrets.token_hex(16), "sig": bytes(32)}}
        raw = pack_header(h)
        raw = raw[:-32] + sender._digest(sender.sign_domain, raw, [])
        h["auth"]["sig"] = raw[-32:]
        return raw, h

    msgs = [at(time.time() + 280) for _ in range(1000)]
    passed = 0
    for raw, h in msgs:
        try:
            recv.verify(raw, h, [])
            passed += 1
        except Unauthorized:
            pass
    assert passed == 100 and recv.floor <= time.time()
    recv.verify(*at(time.time()), [])
    for raw, h in msgs[:100]:
        with pytest.raises(Unauthorized, match="replayed"):
            recv.verify(raw, h, [])
