"""Shared fixtures of the backend tests: one in-process server per test module, a fresh client per test.

A module overrides ``server`` to change its settings (tests/backend/test_server.py: small message limits)."""

import pytest
from _server_helpers import ThreadedServer
from interactive3d.protocol.client import Client


@pytest.fixture(scope="module")
def server():
    """A :class:`ThreadedServer` (test ops included) for the whole module; stopped after its last test."""
    ts = ThreadedServer()
    yield ts
    ts.stop()


@pytest.fixture()
def client(server):
    """A protocol client connected to ``server``, closed after the test."""
    with Client(server.address) as c:
        yield c


@pytest.fixture()
def sandboxed(tmp_path):
    """A server whose only data root is tmp_path/data (files up to 1 MiB) and only model root tmp_path/models
    (so no relative path from the working folder — wherever the checkout is — lands in a root), a client, and
    the data root: ``(client, root, threaded_server)`` (the security tests)."""
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "models").mkdir()
    ts = ThreadedServer(data_dirs=(str(root),), model_dirs=(str(tmp_path / "models"),), max_file_bytes=1 << 20)
    c = Client(ts.address)
    try:
        yield c, root, ts
    finally:
        c.close()
        ts.stop()
