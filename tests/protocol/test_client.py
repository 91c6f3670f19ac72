"""The client against a live server (thread): events that arrive during blocking requests are queued,
not lost; send() does not block and poll() returns the reply; a request to nobody times out and the
client reconnects and works once a server is there."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from _server_helpers import ThreadedServer  # noqa: E402

from interactive3d.protocol.client import Client, ConnectionLost  # noqa: E402


@pytest.fixture(scope="module")
def server():
    ts = ThreadedServer()
    yield ts
    ts.stop()


def test_events_during_blocking_requests_are_kept(server):
    """All 30 progress events (steps 1..30, in order) and the done event are delivered by poll() even
    though the client spent the job's whole run inside blocking request() calls."""
    c = Client(server.address)
    try:
        sid = c.request("session.create").result["session"]
        c.request("test.init", {"session": sid, "n": 32})
        c.request("test.fit", {"session": sid, "steps": 30, "sleep": 0.01})
        while c.request("job.status", {"session": sid}).result["state"] != "done":
            c.request("ping")
        msgs = c.poll(0)
        deadline = time.monotonic() + 10
        while not any(m.event == "done" for m in msgs):  # sent right after the state flips
            assert time.monotonic() < deadline
            msgs += c.poll(100)
        steps = [m.data["step"] for m in msgs if m.event == "progress"]
        assert steps == list(range(1, 31))
        assert [m.data["status"] for m in msgs if m.event == "done"] == ["done"]
    finally:
        c.close()


def test_events_follow_a_reconnected_client(server):
    """After reconnect() (a fresh socket, as a Lazy Pirate retry makes) the job's events keep arriving
    without naming the session again: the client keeps its routing id and the server hands it over."""
    c = Client(server.address)
    try:
        sid = c.request("session.create").result["session"]
        c.request("test.init", {"session": sid, "n": 16})
        c.request("test.fit", {"session": sid, "steps": 40, "sleep": 0.02})
        c.reconnect()
        c.request("ping")  # any request re-establishes the route; it does not name the session
        c.poll(0)
        steps = []
        deadline = time.monotonic() + 20
        while not steps or steps[-1] != 40:
            assert time.monotonic() < deadline, steps
            steps += [m.data["step"] for m in c.poll(100) if m.event == "progress"]
        assert steps == list(range(steps[0], 41)) and steps[0] < 40
    finally:
        c.close()


def test_send_and_poll(server):
    c = Client(server.address)
    try:
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        rid = c.send("test.echo", {"x": 2.0}, [a])
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = [m for m in c.poll(100) if m.id == rid]
        m = got[0]
        assert m.kind == "reply" and m.ok and m.result["args"]["x"] == 2.0
        assert np.array_equal(m.buffers[0], a) and not m.buffers[0].flags.writeable
    finally:
        c.close()


def test_timeout_then_reconnect(tmp_path):
    """Nobody at the address: ConnectionLost after 2 attempts; then a server binds it and the same
    client object gets its reply."""
    addr = f"ipc://{tmp_path}/late.sock"
    c = Client(addr)
    try:
        with pytest.raises(ConnectionLost):
            c.request("ping", timeout=0.2, retries=1)
        ts = ThreadedServer(bind=addr)
        try:
            assert c.request("ping", timeout=5).result["version"] == 2
        finally:
            ts.stop()
    finally:
        c.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="address"):
        Client("localhost:5555")
    c = Client("ipc:///tmp/i3d-unused.sock")
    with pytest.raises(ValueError, match="timeout"):
        c.request("ping", timeout=0)
    with pytest.raises(TypeError, match="cannot be sent"):
        c.send("ping", {}, [np.array(["s"])])
    c.close()


def test_an_older_backend_fails_the_request_naming_both_versions(tmp_path):
    """A backend of protocol version 1 (a bare ROUTER answering as one would: an error reply in version 1) makes
    request() raise unsupported_version at once, naming both versions, instead of timing out."""
    import threading

    import msgpack
    import zmq

    addr = f"ipc://{tmp_path}/old.sock"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(addr)

    def answer() -> None:
        if router.poll(10_000):
            ident, raw = router.recv_multipart()[:2]
            rid = msgpack.unpackb(raw)["id"]
            old = {"v": 1, "id": rid, "ok": False, "error": {"code": "unsupported_version", "message": "protocol version 2 is not supported (this side speaks 1)"}}
            router.send_multipart([ident, msgpack.packb(old)])

    t = threading.Thread(target=answer)
    t.start()
    c = Client(addr)
    try:
        t0 = time.monotonic()
        with pytest.raises(Exception) as e:
            c.request("ping", timeout=5, retries=0)
        assert time.monotonic() - t0 < 4
        assert getattr(e.value, "code", None) == "unsupported_version"
        assert "protocol version 1" in str(e.value) and "version 2" in str(e.value)
    finally:
        c.close()
        t.join()
        router.close(0)
