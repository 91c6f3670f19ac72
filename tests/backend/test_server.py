"""The server over real ZeroMQ sockets (server loop on a thread, the real client and raw DEALERs).

Holds: bit-identical round trips of every dtype (incl. empty, 0-d, a 100k×14 state frame); a typed
error for each malformed message and the server still answers ping; random frames for a bounded time
never kill it; handler exceptions become `internal`; with a key, unsigned/wrongly-signed requests get
`unauthorized`.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from _server_helpers import ThreadedServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from interactive3d.protocol.auth import curve_client_options
from interactive3d.protocol.client import Client, ConnectionLost, RemoteError
from interactive3d.protocol.codec import DTYPES, Limits, decode, encode

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def server():
    ts = ThreadedServer(limits=Limits(max_frames=8, max_frame_bytes=8 << 20, max_total_bytes=16 << 20))
    yield ts
    ts.stop()


class Raw:
    """A bare DEALER to send arbitrary frames and read the reply's header (``key``: the CURVE keys of a key holder,
    which a server with a key requires before it takes a frame)."""

    def __init__(self, address: str, key: bytes | None = None) -> None:
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        for opt, value in curve_client_options(key):
            self.s.setsockopt(opt, value)
        self.s.connect(address)

    def ask(self, frames: list, timeout_ms: int = 5000) -> dict:
        self.s.send_multipart(frames)
        assert self.s.poll(timeout_ms), "no reply"
        frames = self.s.recv_multipart()
        h = msgpack.unpackb(frames[0], raw=False)
        # a version-1 header is answered in version 1 (so old clients can read why): only check ours fully
        return decode(frames).header if h.get("v") != 1 else h

    def close(self) -> None:
        self.s.close(0)


def _sample(dtype: str, shape: tuple) -> np.ndarray:
    n = int(np.prod(shape))
    return (np.arange(n) % 7).astype(dtype).reshape(shape) if dtype != "bool" else (np.arange(n) % 2 == 0).reshape(shape)


def test_ping(client):
    r = client.request("ping").result
    assert r["name"] == "interactive3d-backend" and r["version"] == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_echo_round_trip_every_dtype(client, dtype):
    """Through the server and back: same dtype, shape and bytes for empty, 0-d and 3-d arrays."""
    arrays = [_sample(dtype, s) for s in [(0,), (), (2, 3, 4)]]
    out = client.request("test.echo", {}, arrays).buffers
    assert len(out) == 3
    for a, b in zip(arrays, out):
        assert b.dtype == a.dtype and b.shape == a.shape and a.tobytes() == b.tobytes()


def test_state_frame_round_trip(client):
    """A 100k×14 float32 frame comes back bit-identical."""
    a = np.random.default_rng(1).standard_normal((100_000, 14)).astype(np.float32)
    b = client.request("test.echo", {"x": 1.5}, [a]).buffers[0]
    assert b.shape == (100_000, 14) and np.array_equal(a, b)


def _hdr(**kw) -> bytes:
    h = {"v": 2, "id": "m1", "op": "test.echo", "args": {}, "buffers": []}
    h.update(kw)
    return msgpack.packb(h, use_bin_type=True)


MALFORMED = [
    ("garbage bytes", [b"\xc1\x00\xff\xfe"], "bad_message"),
    ("non-map header", [msgpack.packb([1, "op"])], "bad_message"),
    ("missing id", [msgpack.packb({"v": 2, "op": "ping"})], "bad_message"),
    ("missing op", [msgpack.packb({"v": 2, "id": "m1"})], "bad_message"),
    ("unknown version", [_hdr(v=7)], "unsupported_version"),
    ("unknown op", [_hdr(op="no.such.op")], "unknown_op"),
    ("declared size != frame", [_hdr(buffers=[{"dtype": "float32", "shape": [4]}]), b"\0" * 12], "bad_message"),
    ("missing frame", [_hdr(buffers=[{"dtype": "float32", "shape": [1]}])], "bad_message"),
    ("extra frame", [_hdr(), b"\0\0\0\0"], "bad_message"),
    ("unsupported dtype", [_hdr(buffers=[{"dtype": "U4", "shape": [1]}]), b"\0" * 16], "bad_message"),
    ("dtype not allowed by the op", [_hdr(buffers=[{"dtype": "uint8", "shape": [1]}] * 4), b"\0", b"\0", b"\0", b"\0"], "invalid_args"),
    ("too many buffers for the op", [_hdr(buffers=[{"dtype": "uint8", "shape": [1]}] * 5), *[b"\0"] * 5], "invalid_args"),
    ("NaN where finite is required (arg)", [_hdr(args={"x": float("nan")})], "invalid_args"),
    ("NaN where finite is required (buffer)", [_hdr(buffers=[{"dtype": "float32", "shape": [1]}]), np.float32(np.nan).tobytes()], "invalid_args"),
    ("wrong arg type", [_hdr(args={"x": "one"})], "invalid_args"),
    ("args not a map", [_hdr(args=[1])], "invalid_args"),
    ("over the frame-count cap", [_hdr()] + [b""] * 8, "too_large"),
    ("over the total cap", [_hdr(buffers=[{"dtype": "uint8", "shape": [6 << 20]}] * 3), *[b"\0" * (6 << 20)] * 3], "too_large"),
    ("unknown session", [_hdr(op="state.get", args={"session": "nope"})], "not_found"),
    ("handler exception", [_hdr(op="test.crash")], "internal"),
]


@pytest.mark.parametrize("name, frames, code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_gets_typed_error_then_ping_works(server, client, name, frames, code):
    raw = Raw(server.address)
    try:
        h = raw.ask(frames)
    finally:
        raw.close()
    assert h["ok"] is False and h["error"]["code"] == code, (name, h)
    assert client.request("ping", timeout=5).result["version"] == 2


def test_error_reply_carries_request_id(server):
    raw = Raw(server.address)
    try:
        h = raw.ask([_hdr(id="abc", v=3)])
    finally:
        raw.close()
    assert h["id"] == "abc" and h["error"]["code"] == "unsupported_version"


def test_remote_error_is_typed(client):
    with pytest.raises(RemoteError) as e:
        client.request("state.get", {"session": "missing"})
    assert e.value.code == "not_found" and "missing" in e.value.message


_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
_ops = st.sampled_from(["ping", "session.create", "session.list", "state.get", "job.cancel", "history.undo", "test.echo", "test.init", "test.fit", "nope"])
_arg_keys = st.sampled_from(["session", "n", "x", "steps", "sleep", "name", "checkpoint", "paused", "seed"])
_bufspec = st.fixed_dictionaries({"dtype": st.sampled_from(["float32", "uint8", "bool", "int64", "U3", "x"]), "shape": st.lists(st.integers(-1, 5), max_size=3)})
_header = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1"]), "id": st.text(max_size=6), "op": _ops},
    optional={"args": st.dictionaries(_arg_keys, _values, max_size=4), "buffers": st.lists(_bufspec, max_size=3), "extra": _values},
).map(lambda h: msgpack.packb(h, use_bin_type=True))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.binary(max_size=64), _header), min_size=1, max_size=5))
def test_fuzz_random_frames(fuzz_server, frames):
    """Random frames (≤300 messages, a few seconds): every one gets an error or ok reply, never a crash."""
    h = fuzz_server.ask(frames)
    assert isinstance(h.get("ok"), bool)


@pytest.fixture(scope="module")
def fuzz_server(server):
    raw = Raw(server.address)
    yield raw
    raw.close()
    c = Client(server.address)
    try:
        assert c.request("ping", timeout=5).result["name"] == "interactive3d-backend"  # survived
    finally:
        c.close()


def test_auth():
    """With a key: the right key works. A client without the key, or with another key, fails the CURVE handshake
    (ConnectionLost naming why: the server requires CURVE / the keys differ); over a key holder's transport, an
    unsigned message, garbage and a message signed with another key get `unauthorized`. None of it has any effect
    (no session is created)."""
    from interactive3d.protocol.auth import Signer
    from interactive3d.protocol.codec import pack_header

    key = b"0123456789abcdef0123456789abcdef"
    ts = ThreadedServer(auth_key=key)
    try:
        good, nokey, badkey = Client(ts.address, auth_key=key), Client(ts.address), Client(ts.address, auth_key=b"w" * 32)
        assert good.request("ping").result["version"] == 2
        for c, why in ((nokey, "requires the CURVE handshake"), (badkey, "auth key differs")):
            with pytest.raises(ConnectionLost, match=why):
                c.request("session.create", timeout=1.5, retries=0)
        raw = Raw(ts.address, key)
        header = {"v": 2, "id": "x", "op": "session.create", "args": {}, "buffers": []}
        for frames in ([b"garbage"], [pack_header(header)], [Signer(b"w" * 32).sign(header, pack_header, [])]):
            assert raw.ask(frames)["error"]["code"] == "unauthorized"
        raw.close()
        assert good.request("session.list").result["sessions"] == []
        for c in (good, nokey, badkey):
            c.close()
    finally:
        ts.stop()


def test_a_frame_over_the_cap_is_dropped_at_the_socket(server, client):
    """ZMQ_MAXMSGSIZE is the largest frame the caps allow (8 MiB here): a frame one byte over it closes the sender's
    connection as it arrives, so it gets no reply and its Client's error says the backend dropped the connection
    after a good handshake; the server answers the next ping, and a frame of exactly the cap is echoed."""
    raw = Raw(server.address)
    try:
        raw.s.send_multipart([_hdr(buffers=[{"dtype": "uint8", "shape": [(8 << 20) + 1]}]), b"\0" * ((8 << 20) + 1)])
        assert raw.s.poll(2000) == 0
    finally:
        raw.close()
    with Client(server.address) as c:
        with pytest.raises(ConnectionLost, match="max-bytes"):
            c.request("test.echo", {}, [np.zeros((8 << 20) + 1, np.uint8)], timeout=1.5, retries=0)
        assert c.request("test.echo", {}, [np.zeros(8 << 20, np.uint8)]).buffers[0].nbytes == 8 << 20
    assert client.request("ping", timeout=5).result["version"] == 2


def test_non_loopback_bind_needs_key():
    from interactive3d.backend.service.server import Server, ServerConfig

    with pytest.raises(ValueError, match="auth key"):
        Server(ServerConfig(bind="tcp://0.0.0.0:0", device="cpu"))


def test_request_timeout_when_nobody_listens():
    c = Client("tcp://127.0.0.1:9")  # discard port: nothing answers
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost):
        c.request("ping", timeout=0.2, retries=1)
    assert time.monotonic() - t0 < 2.0
    c.close()


def test_every_handler_has_a_spec():
    """Each op in the four HANDLERS tables is dispatchable (has an OpSpec), and each handled op's spec
    documents it in docs/protocol.md (regenerate after adding ops: see docs/backend-api.md)."""
    from interactive3d.backend.service import (
        ops_interactions,
        ops_session,
        ops_stage1,
        ops_stage2,
    )
    from interactive3d.backend.service.server import Server, ServerConfig

    tables = [ops_session.HANDLERS, ops_stage1.HANDLERS, ops_interactions.HANDLERS, ops_stage2.HANDLERS]
    s = Server(ServerConfig(bind="tcp://127.0.0.1:*", device="cpu"))
    missing = sorted(set().union(*map(set, tables)) - set(s.handlers))
    assert missing == [], f"handlers without an OpSpec in protocol/catalogue.py: {missing}"


def test_session_close(client, tmp_path):
    """Closing a session with a running job cancels it; afterwards the id is not_found; with
    checkpoint=true the session is written to the state dir first."""
    ts = ThreadedServer(state_dir=str(tmp_path))
    c = Client(ts.address)
    try:
        sid = c.request("session.create", {"name": "a"}).result["session"]
        c.request("test.init", {"session": sid, "n": 16})
        c.request("test.fit", {"session": sid, "steps": 1000, "sleep": 0.02})
        listed = c.request("session.list").result["sessions"]
        assert [(x["session"], x["name"], x["count"]) for x in listed] == [(sid, "a", 16)]
        assert c.request("session.close", {"session": sid, "checkpoint": True}).result["closed"] is True
        assert (tmp_path / "sessions" / sid / "checkpoint.pt").is_file()
        with pytest.raises(RemoteError) as e:
            c.request("job.status", {"session": sid})
        assert e.value.code == "not_found"
        r = c.request("session.resume", {"session": sid}).result  # closed with checkpoint → resumable, no job
        assert r["count"] == 16 and r["job"] is None
        r = c.request("session.resume", {"session": sid}).result  # already open: handed over as it is (already ours)
        assert (r["session"], r["count"], r["job"]) == (sid, 16, None) and ts.server.owner(sid) == c.routing_id
        assert len(ts.server.sessions) == 1
        with pytest.raises(RemoteError) as e:
            c.request("session.resume", {"session": "../x"})
        assert e.value.code == "invalid_args"
        c.request("session.checkpoint", {"session": sid})
        c.request("session.close", {"session": sid})  # without checkpoint: closed for good
        assert not (tmp_path / sid).exists()
        assert c.request("session.list").result["checkpoints"] == []
    finally:
        c.close()
        ts.stop()


def test_retried_request_id_is_not_run_twice(tmp_path):
    """A Lazy Pirate retry re-sends the same request id: the server answers it with the first reply
    (same session id) instead of creating a second session."""
    ts = ThreadedServer()
    raw = Raw(ts.address)
    try:
        frames = encode({"id": "retry-1", "op": "session.create", "args": {}}, [])
        a, b = raw.ask(frames), raw.ask(frames)
        assert a["ok"] and a["result"] == b["result"]
        c = Client(ts.address)
        assert len(c.request("session.list").result["sessions"]) == 1
        c.close()
    finally:
        raw.close()
        ts.stop()


def test_unsigned_version_1_is_answered_by_a_keyless_server_and_refused_with_a_key():
    """Version 2 changed only the signature, so a keyless server answers an unsigned version-1 request (in
    version 1: ping, a typed error, an echo with buffers); a server with a key refuses version 1 with
    ``unsupported_version`` naming both versions and the signing change (answered in version 1)."""
    def v1(**kw) -> list:
        h = {"v": 1, "id": "old-1", "op": "ping", "args": {}, "buffers": []}
        h.update(kw)
        return [msgpack.packb(h, use_bin_type=True)]

    ts = ThreadedServer()
    raw = Raw(ts.address)
    try:
        h = raw.ask(v1())
        assert h["v"] == 1 and h["ok"] is True and h["result"]["name"] == "interactive3d-backend"
        h = raw.ask(v1(id="old-2", op="state.get", args={"session": "nope"}))
        assert h["v"] == 1 and h["ok"] is False and h["error"]["code"] == "not_found"
        h = raw.ask(v1(id="old-3", op="no.such.op"))
        assert h["v"] == 1 and h["error"]["code"] == "unknown_op"
        raw.s.send_multipart(v1(id="old-4", op="test.echo", buffers=[{"dtype": "float32", "shape": [3]}])
                             + [np.arange(3, dtype="<f4").tobytes()])
        assert raw.s.poll(5000)
        frames = raw.s.recv_multipart()
        h = msgpack.unpackb(frames[0], raw=False)
        assert h["v"] == 1 and h["ok"] and np.frombuffer(frames[1], "<f4").tolist() == [0.0, 1.0, 2.0]
    finally:
        raw.close()
        ts.stop()
    key = b"0123456789abcdef0123456789abcdef"
    ts = ThreadedServer(auth_key=key)
    raw = Raw(ts.address, key)
    try:
        h = raw.ask(v1())
        assert h["v"] == 1 and h["error"]["code"] == "unsupported_version"
        assert "version 1" in h["error"]["message"] and "version 2" in h["error"]["message"]
        assert "i3d-request-v1" in h["error"]["message"]
    finally:
        raw.close()
        ts.stop()
