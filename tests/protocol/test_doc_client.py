"""A third-party client written from docs/protocol.md alone: its own msgpack packing and unpacking, its own
HMAC-SHA256 signing, a ZeroMQ DEALER with the CURVE keys the doc derives from the key (pyzmq's Z85 and
curve_public), nothing imported from protocol/. The domains, the CURVE key names and the version come from the
doc's text, so the doc and the server cannot drift apart unnoticed. It runs a signed session through a real
``i3d serve`` subprocess with a key file."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text()


def _doc_domain(what: str) -> bytes:
    """The domain the doc names, e.g. "the 15 bytes `i3d-request-v1\\0`" → b"i3d-request-v1\\x00"."""
    m = re.search(r"`(i3d-" + what + r"-v\d+)\\0`", DOC)
    assert m, f"docs/protocol.md names no {what} domain"
    return m.group(1).encode("ascii") + b"\x00"


def _doc_curve_name(role: str) -> bytes:
    """The name the doc derives ``role``'s CURVE secret with: `HMAC-SHA256(key, "i3d-curve-server-v1")`."""
    m = re.search(r'`HMAC-SHA256\(key, "(i3d-curve-' + role + r'-v\d+)"\)`', DOC)
    assert m, f"docs/protocol.md names no CURVE {role} key"
    return m.group(1).encode("ascii")


VERSION = int(re.search(r"Protocol version: \*\*(\d+)\*\*", DOC).group(1))
REQUEST_DOMAIN, REPLY_DOMAIN = _doc_domain("request"), _doc_domain("reply")
CURVE_SERVER, CURVE_CLIENT = _doc_curve_name("server"), _doc_curve_name("client")


def curve_secret(key: bytes, name: bytes) -> bytes:
    """The doc's CURVE secret: HMAC-SHA256(key, name), Z85-encoded."""
    from zmq.utils import z85

    return z85.encode(hmac.new(key, name, hashlib.sha256).digest())


# -- msgpack, only what the envelope uses (msgpack.org spec) -------------------------------------------
def pack(obj) -> bytes:
    if obj is None:
        return b"\xc0"
    if obj is True or obj is False:
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 128:
            return bytes([obj])
        if -32 <= obj < 0:
            return struct.pack("b", obj)
        return b"\xd3" + struct.pack(">q", obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        raw = obj.encode("utf-8")
        return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xda" + struct.pack(">H", len(raw))) + raw
    if isinstance(obj, bytes):
        return (b"\xc4" + bytes([len(obj)]) if len(obj) < 256 else b"\xc5" + struct.pack(">H", len(obj))) + obj
    if isinstance(obj, list):
        return (bytes([0x90 | len(obj)]) if len(obj) < 16 else b"\xdc" + struct.pack(">H", len(obj))) + b"".join(map(pack, obj))
    if isinstance(obj, dict):  # insertion order is the wire order: "auth" must come last
        head = bytes([0x80 | len(obj)]) if len(obj) < 16 else b"\xde" + struct.pack(">H", len(obj))
        return head + b"".join(pack(k) + pack(v) for k, v in obj.items())
    raise TypeError(type(obj))


def unpack(raw: bytes):
    def one(i: int):
        b = raw[i]
        if b <= 0x7F:
            return b, i + 1
        if b >= 0xE0:
            return b - 256, i + 1
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            n, i = (b & 0x0F, i + 1) if b <= 0x8F else (struct.unpack_from(">H" if b == 0xDE else ">I", raw, i + 1)[0], i + (3 if b == 0xDE else 5))
            out = {}
            for _ in range(n):
                k, i = one(i)
                out[k], i = one(i)
            return out, i
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            n, i = (b & 0x0F, i + 1) if b <= 0x9F else (struct.unpack_from(">H" if b == 0xDC else ">I", raw, i + 1)[0], i + (3 if b == 0xDC else 5))
            items = []
            for _ in range(n):
                v, i = one(i)
                items.append(v)
            return items, i
        if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
            if b <= 0xBF:
                n, i = b & 0x1F, i + 1
            else:
                size = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}[b]
                n, i = int.from_bytes(raw[i + 1:i + 1 + size], "big"), i + 1 + size
            data = raw[i:i + n]
            return (data if b in (0xC4, 0xC5, 0xC6) else data.decode("utf-8")), i + n
        fixed = {0xC0: (None, 0), 0xC2: (False, 0), 0xC3: (True, 0)}
        if b in fixed:
            return fixed[b][0], i + 1
        fmt = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}[b]
        return struct.unpack_from(fmt, raw, i + 1)[0], i + 1 + struct.calcsize(fmt)

    value, end = one(0)
    assert end == len(raw)
    return value


# -- the doc's signing, step by step -------------------------------------------------------------------
def sign(key: bytes, header: dict, buffers: list[bytes], domain: bytes = REQUEST_DOMAIN, ts: float | None = None) -> bytes:
    header = dict(header)
    header["auth"] = {"ts": time.time() if ts is None else ts, "nonce": secrets.token_hex(16), "sig": bytes(32)}  # step 1
    h = pack(header)
    assert h[-34:-32] == b"\xc4\x20"
    sig = hmac.new(key, domain + h + b"".join(buffers), hashlib.sha256).digest()  # step 2
    return h[:-32] + sig  # step 3


def check_reply(key: bytes, raw: bytes, buffers: list[bytes]) -> dict:
    """The reply's header after verifying its signature under the reply domain (as the doc says)."""
    header = unpack(raw)
    assert raw[-34:-32] == b"\xc4\x20" and header["auth"]["sig"] == raw[-32:]
    want = hmac.new(key, REPLY_DOMAIN + raw[:-32] + bytes(32) + b"".join(buffers), hashlib.sha256).digest()
    assert hmac.compare_digest(want, raw[-32:]), "reply signature does not verify"
    return header


class DocClient:
    def __init__(self, address: str, key: bytes, curve: bool = True) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve:  # the doc's transport: the server's public key and the client pair, all from the key
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, zmq.curve_public(curve_secret(key, CURVE_SERVER)))
            secret = curve_secret(key, CURVE_CLIENT)
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, zmq.curve_public(secret))
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.sock.connect(address)
        self.address = address
        self.key = key

    def send_raw(self, frames: list[bytes]) -> tuple[bytes, list[bytes]]:
        """Send, then the reply with the same id (the doc: replies come in any order; match them by id)."""
        rid = unpack(frames[0]).get("id")
        self.sock.send_multipart(frames)
        while True:
            if not self.sock.poll(30_000):
                raise TimeoutError("no reply")
            got = self.sock.recv_multipart()
            if unpack(got[0]).get("id") == rid:
                return got[0], got[1:]

    def call(self, op: str, args: dict, arrays: list[np.ndarray] = (), **sign_kw) -> tuple[dict, list[np.ndarray]]:
        specs = [{"dtype": str(a.dtype), "shape": list(a.shape)} for a in arrays]
        bufs = [np.ascontiguousarray(a).tobytes() for a in arrays]
        header = {"v": VERSION, "id": secrets.token_hex(8), "op": op, "args": args, "buffers": specs}
        raw, frames = self.send_raw([sign(self.key, header, bufs, **sign_kw), *bufs])
        reply = check_reply(self.key, raw, frames)
        out = [np.frombuffer(f, np.dtype(s["dtype"]).newbyteorder("<")).reshape(s["shape"]) for s, f in zip(reply["buffers"], frames)]
        return reply, out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docclient")
    key = secrets.token_hex(32).encode()
    keyfile = tmp / "key"
    keyfile.write_bytes(b"  " + key + b"\n")  # the doc: surrounding whitespace is stripped
    keyfile.chmod(0o600)
    addr = f"ipc://{tmp}/serve.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("I3D_AUTH")}
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", addr, "--device", "cpu",
                             "--state-dir", str(tmp / "st"), "--auth-key-file", str(keyfile)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = DocClient(addr, key)
    try:
        deadline = time.monotonic() + 120
        while True:  # the server starts (imports torch) while we knock
            try:
                client.sock.send_multipart([sign(key, {"v": VERSION, "id": "hello", "op": "ping", "args": {}, "buffers": []}, [])],
                                           flags=zmq.NOBLOCK)
            except zmq.Again:  # no pipe (a refused handshake): never block the knock
                time.sleep(1.0)
            if client.sock.poll(1000):
                client.sock.recv_multipart()
                break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
        yield client, key
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_signed_session_from_the_doc_alone(served):
    """ping, session.create, gaussians.init, parts.add with a float32 state buffer (so buffer bytes are in the
    signature), state.get: every request signed as the doc says is accepted, every reply verifies under the
    reply domain, and the numbers add up (64 + 5 Gaussians, the 5 rows as sent)."""
    client, _ = served
    reply, _ = client.call("ping", {})
    assert reply["ok"] and reply["v"] == VERSION == 2 and reply["result"]["version"] == VERSION
    reply, _ = client.call("session.create", {"name": "doc"})
    sid = reply["result"]["session"]
    reply, _ = client.call("gaussians.init", {"session": sid, "kind": "random", "n": 64})
    assert reply["ok"], reply.get("error")
    rows = np.tile(np.array([[0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.9, 0.05, 0.05, 0.05, 1, 0, 0, 0]], np.float32), (5, 1))
    rows[:, 0] += np.arange(5, dtype=np.float32)
    reply, _ = client.call("parts.add", {"session": sid, "name": "doc part"}, [rows])
    assert reply["ok"] and reply["result"]["added"] == 5, reply.get("error")
    reply, (state,) = client.call("state.get", {"session": sid})
    assert state.dtype == np.float32 and state.shape == (69, 14)
    np.testing.assert_allclose(state[-5:], rows, atol=1e-6)


def test_what_the_server_refuses_is_what_the_doc_says(served):
    """Signed without the domain (version 1's formula): 'bad signature'; a stale timestamp and a replayed
    message: unauthorized; a version-1 envelope: unsupported_version, answered in version 1 (so an old client can
    read it) and naming both versions and the domain that changed."""
    client, key = served
    header = {"v": VERSION, "id": "nodomain", "op": "ping", "args": {}, "buffers": []}
    raw, _ = client.send_raw([sign(key, header, [], domain=b"")])
    reply = unpack(raw)
    assert reply["error"]["code"] == "unauthorized" and "bad signature" in reply["error"]["message"]
    raw, _ = client.send_raw([sign(key, dict(header, id="stale"), [], ts=time.time() - 301)])
    assert "stale" in unpack(raw)["error"]["message"]
    frames = [sign(key, dict(header, id="twice"), [])]
    assert unpack(client.send_raw(frames)[0])["ok"]
    reply = unpack(client.send_raw(frames)[0])
    assert reply["error"]["code"] == "unauthorized" and "replayed" in reply["error"]["message"]  # the same nonce
    raw, _ = client.send_raw([sign(key, dict(header, v=1, id="old"), [], domain=b"")])
    reply = unpack(raw)
    assert reply["v"] == 1 and reply["id"] == "old" and reply["error"]["code"] == "unsupported_version"
    msg = reply["error"]["message"]
    assert "version 1" in msg and f"version {VERSION}" in msg and "i3d-request-v1" in msg


def test_without_the_curve_keys_nothing_is_answered(served):
    """The doc's transport is required: the same correctly signed ping from a DEALER without CURVE, and from one
    whose client keys come from another key, gets no reply within 3 s (the handshake refuses them), while the
    doc client's next ping is answered."""
    client, key = served
    address = client.address
    for other in (DocClient(address, key, curve=False), DocClient(address, secrets.token_hex(32).encode())):
        try:
            other.sock.setsockopt(zmq.SNDTIMEO, 3000)
            try:
                other.sock.send_multipart([sign(key, {"v": VERSION, "id": "x", "op": "ping", "args": {}, "buffers": []}, [])])
            except zmq.Again:
                pass  # no pipe after a refused handshake: the send cannot even be queued
            assert other.sock.poll(3000) == 0
        finally:
            other.close()
    assert client.call("ping", {})[0]["ok"]
