"""Issue 25's attacks replayed against a real server over real ZeroMQ sockets; each must be refused with a
typed error and nothing lost for other clients.

Files read through an uploaded mesh, client files taken for sessions, replay-floor lock-out, memory pinned
before authentication, nested arguments, extract_mesh's side files, orphaned temp files, session caps and
idle reaping, readers starving the owner, byte estimates, swaps after the check.
"""

from __future__ import annotations

import base64
import json
import os
import time

import numpy as np
import pytest
from _server_helpers import ThreadedServer
from interactive3d.protocol.client import Client, RemoteError

EMPTY = [np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)]
TRIANGLE = np.float32([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).tobytes() + np.uint16([0, 1, 2]).tobytes()


def _code(c: Client, op: str, args: dict, buffers=()) -> str:
    with pytest.raises(RemoteError) as err:
        c.request(op, args, list(buffers))
    return err.value.code


def _frame(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


def _gltf(uri: str) -> bytes:
    """A one-triangle glTF whose only buffer is ``uri`` (positions then uint16 indices, 42 bytes)."""
    return json.dumps({
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"uri": uri, "byteLength": len(TRIANGLE)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 6}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"},
        ],
    }).encode()


OBJ = b"mtllib %s\nusemtl m\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


@pytest.fixture()
def sandboxed(tmp_path):
    """A server whose only data root is tmp_path/data, and a client."""
    root = tmp_path / "data"
    root.mkdir()
    ts = ThreadedServer(data_dirs=(str(root),), max_file_bytes=1 << 20)
    c = Client(ts.address)
    try:
        yield c, root, ts
    finally:
        c.close()
        ts.stop()


# -- 1. files named inside an uploaded mesh -----------------------------------------------------------------
def test_meshes_cannot_name_files_outside_the_data_folders(sandboxed, tmp_path):
    """A glTF whose buffer URI is ``../outside.bin`` or an absolute path, and an OBJ whose ``mtllib`` is outside:
    uploaded as a frame or read from the data folder, all are invalid_args, and the named files are never even
    opened (they are FIFOs: opening one for reading would block the request forever). The same glTF with its
    buffer embedded as a data: URI, or next to it inside the data folder, loads (3 vertices → 50 Gaussians)."""
    c, root, _ = sandboxed
    for name in ("outside.bin", "outside.mtl"):
        os.mkfifo(tmp_path / name)
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 7})
    args = {"session": sid, "kind": "mesh", "n": 50}
    attacks = [("m.gltf", _gltf("../outside.bin")), ("m.gltf", _gltf(str(tmp_path / "outside.bin"))),
               ("m.gltf", _gltf("file://" + str(tmp_path / "outside.bin"))), ("m.obj", OBJ % b"../outside.mtl"),
               ("m.obj", OBJ % str(tmp_path / "outside.mtl").encode()), ("m.gltf", _gltf("inside.bin"))]
    (root / "inside.bin").write_bytes(TRIANGLE)
    for name, body in attacks:  # uploads refer to nothing, not even files inside the data folder
        assert _code(c, "gaussians.init", {**args, "filename": name}, [*EMPTY, _frame(body)]) == "invalid_args", (name, body[:80])
    for i, (name, body) in enumerate(attacks[:-1]):  # by path: only files inside the data folders
        (root / f"a{i}{os.path.splitext(name)[1]}").write_bytes(body)
        assert _code(c, "gaussians.init", {**args, "path": f"a{i}{os.path.splitext(name)[1]}"}) == "invalid_args", name
    assert c.request("state.get", {"session": sid}).buffers[0].shape == (7, 14)  # nothing lost
    embedded = _gltf("data:application/octet-stream;base64," + base64.b64encode(TRIANGLE).decode())
    assert c.request("gaussians.init", {**args, "filename": "e.gltf"}, [*EMPTY, _frame(embedded)]).result["count"] == 50
    (root / "ok.gltf").write_bytes(_gltf("inside.bin"))
    assert c.request("gaussians.init", {**args, "path": "ok.gltf"}).result["count"] == 50
    # an archive or a format that fetches is not parsed at all
    assert _code(c, "gaussians.init", {**args, "filename": "m.zip"}, [*EMPTY, _frame(b"PK\x03\x04" + bytes(40))]) == "invalid_args"
