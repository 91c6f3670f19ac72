"""A session the backend reaped for sitting idle (``--idle-timeout``: checkpointed and closed) comes back to the
add-on whole: on a reconnect (i3d.connect) and on the next operation of a connection that stayed open — the same
session id, the same Gaussians, never an error that loses the work or a new empty session. Real bpy, a real
backend subprocess."""

from __future__ import annotations

import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from interactive3d.blender_addon import connection, splat  # noqa: E402
from interactive3d.protocol.client import Client, RemoteError  # noqa: E402
from tests.blender_addon.test_connection import BackendProcess, sync_until  # noqa: E402
from tests.blender_addon.test_disconnect import scene  # noqa: E402,F401 - the fixture: a clean scene, the add-on registered

IDLE_S = 1.0


@pytest.fixture()
def backend():
    b = BackendProcess(extra=("--idle-timeout", str(IDLE_S))).start()
    try:
        yield b
    finally:
        connection.get().disconnect()
        b.cleanup()


def _wait_reaped(address: str, sid: str, timeout: float = 60.0) -> None:
    """Until the backend lists ``sid`` among its checkpoints and not among its open sessions (another client
    asks: session.list names no session, so it keeps nothing alive)."""
    deadline = time.monotonic() + timeout
    with Client(address, routing_id=b"observer") as c:
        while time.monotonic() < deadline:
            listed = c.request("session.list", timeout=10.0).result
            if sid not in {x["session"] for x in listed["sessions"]} and sid in {x["session"] for x in listed["checkpoints"]}:
                return
            time.sleep(0.2)
    raise AssertionError(f"session {sid} was not reaped within {timeout} s")


def _splats(conn):
    obj = bpy.data.objects[conn.object_name]
    return splat.read_state(obj)


def test_reconnect_after_the_session_was_reaped_resumes_it(scene, backend):
    """50 Gaussians, the connection closed, the session reaped: i3d.connect takes back the same session id by
    session.resume ("resumed session … (50 Gaussians)"), the splat object keeps its 50 rows bit for bit, and an
    edit on it works (test.init 30 → 30 rows: the add-on owns the session again)."""
    assert bpy.ops.i3d.connect(address=backend.address) == {"FINISHED"}
    conn = connection.get()
    conn.call("test.init", {"n": 50, "seed": 3}, kind="edit")
    sid, before = conn.session, _splats(conn).copy()
    conn.client.close()
    conn.client, conn.status = None, connection.DISCONNECTED  # as a lost connection leaves it (Connection._fail)
    _wait_reaped(backend.address, sid)
    assert bpy.ops.i3d.connect(address=backend.address) == {"FINISHED"}
    sync_until(conn, lambda c: c.status == connection.CONNECTED and not c.pending, timeout=60.0)
    assert conn.session == sid and "resumed session" in conn.last_message and "(50 Gaussians)" in conn.last_message
    np.testing.assert_array_equal(_splats(conn), before)
    conn.call("test.init", {"n": 30, "seed": 4}, kind="edit")
    assert len(_splats(conn)) == 30


def test_an_open_connection_gets_its_reaped_session_back_on_the_next_operation(scene, backend):
    """The connection stays open while the backend reaps the idle session (the add-on's heartbeats name no
    session): the next operation is refused not_found — it changed nothing — and the add-on resumes the same
    session at once and runs the operation again, in batch mode (a blocking call returns the op's result) and
    in the UI's queued mode (the reply arrives through sync_step), with no error shown."""
    assert bpy.ops.i3d.connect(address=backend.address) == {"FINISHED"}
    conn = connection.get()
    sync_until(conn, lambda c: c.status == connection.CONNECTED and not c.pending, timeout=60.0)
    conn.call("test.init", {"n": 40, "seed": 5}, kind="edit")
    sid, before = conn.session, _splats(conn).copy()
    _wait_reaped(backend.address, sid)
    conn.last_error = ""
    result = conn.call("state.get", kind="state")  # batch mode: resumed and run again
    assert result["count"] == 40 and conn.session == sid
    assert "resumed session" in conn.last_message and "state.get ran again" in conn.last_message and not conn.last_error
    np.testing.assert_array_equal(_splats(conn), before)
    with Client(backend.address, routing_id=b"observer") as c:
        assert [x["session"] for x in c.request("session.list").result["sessions"]] == [sid]

    _wait_reaped(backend.address, sid)  # and again, now through the UI's queue
    conn.last_message = conn.last_error = ""
    conn.send("test.init", {"n": 25, "seed": 6}, kind="edit")
    sync_until(conn, lambda c: not c.pending and len(_splats(c)) == 25, timeout=60.0)
    assert conn.session == sid and not conn.last_error and conn.last_message == "test.init: 25 Gaussians"  # its own reply
    with Client(backend.address, routing_id=b"observer") as c:
        assert [x["session"] for x in c.request("session.list").result["sessions"]] == [sid]
