"""The add-on's connection reaches a backend with an auth key over its CURVE handshake with nothing but the key
(the server and client CURVE keys derive from it), and without the key it shows DISCONNECTED with the reason.
Real bpy, a real backend subprocess with a key."""

from __future__ import annotations

import subprocess
import time

import pytest

bpy = pytest.importorskip("bpy")

from interactive3d.blender_addon import connection, splat  # noqa: E402
from interactive3d.protocol.client import Client  # noqa: E402
from interactive3d.protocol.errors import RemoteError, RequestTimeout  # noqa: E402
from tests.blender_addon.test_connection import BACKEND_PYTHON, REPO, BackendProcess  # noqa: E402
from tests.blender_addon.test_disconnect import scene  # noqa: E402,F401 - the fixture: a clean scene, the add-on registered

KEY = b"an-auth-key-for-the-add-on-test-0123456789"


def test_the_add_on_connects_to_a_backend_with_a_key(scene):
    """With the key: blocking connect → CONNECTED, a session, test.init 25 → a 25-vertex splat object. Without it:
    the connect raises a timeout whose text says the backend requires the CURVE handshake; status DISCONNECTED."""
    backend = BackendProcess(extra=("--auth-key", KEY.decode()))
    # BackendProcess.start pings without a key: start the process here and wait with a key holder's ping
    backend.proc = subprocess.Popen([BACKEND_PYTHON, "-m", backend.module, "--bind", backend.address, "--state-dir",
                                     backend.state_dir, *backend.extra], cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    try:
        with Client(backend.address, auth_key=KEY, routing_id=b"waiter") as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    c.request("ping", timeout=2.0, retries=0)
                    break
                except (RequestTimeout, RemoteError):  # not up yet, or a ping signed before it started
                    assert backend.proc.poll() is None and time.monotonic() < deadline
        conn = connection.get()
        timeout = conn.timeout_s
        conn.connect(backend.address, auth_key=KEY, blocking=True)
        assert conn.status == connection.CONNECTED and conn.session
        conn.call("test.init", {"n": 25, "seed": 1}, kind="edit")
        assert len(splat.read_state(bpy.data.objects[conn.object_name])) == 25
        conn.disconnect()
        conn.timeout_s = 2.0
        with pytest.raises(RequestTimeout, match="requires the CURVE handshake"):
            conn.connect(backend.address, blocking=True)
        assert conn.status == connection.DISCONNECTED
        conn.timeout_s = timeout
    finally:
        connection.get().disconnect()
        backend.cleanup()
