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
