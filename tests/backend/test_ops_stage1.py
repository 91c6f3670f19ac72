"""Stage I ops (backend/ops_stage1.py) through a real server and the real ZeroMQ client."""

from __future__ import annotations

import numpy as np
import pytest

from _server_helpers import ThreadedServer
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import RemoteError


@pytest.fixture(scope="module")
def server():
    ts = ThreadedServer()
    c = Client(ts.address)
    yield c
    c.close()
    ts.stop()


def _session(c: Client) -> str:
    return c.request("session.create").result["session"]


def _state(c: Client, sid: str) -> np.ndarray:
    return np.array(c.request("state.get", {"session": sid}).buffers[0])


def _code(c: Client, op: str, args: dict, buffers=()) -> str:
    with pytest.raises(RemoteError) as err:
        c.request(op, args, list(buffers))
    return err.value.code


def test_init_random_points_and_undo(server):
    """random: 4096 Gaussians by default (the paper's init), all inside radius 0.5; points: 3 coloured
    points come back as the state frame's rgb to 1e-6; history.undo restores the random set exactly."""
    c = server
    sid = _session(c)
    assert c.request("gaussians.init", {"session": sid, "kind": "random"}).result["count"] == 4096
    s0 = _state(c, sid)
    assert np.linalg.norm(s0[:, :3], axis=1).max() <= 0.5 + 1e-6
    pts = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0]], np.float32)
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    assert c.request("gaussians.init", {"session": sid, "kind": "points"}, [pts, cols]).result["count"] == 3
    s1 = _state(c, sid)
    assert np.allclose(s1[:, :3], pts) and np.allclose(s1[:, 3:6], cols / 255.0, atol=1e-6)
    c.request("history.undo", {"session": sid})
    assert np.array_equal(_state(c, sid), s0)


def test_ply_save_load_bit_exact_and_mesh(server, tmp_path):
    """save_ply then load_ply in another session gives a bit-identical state frame; a mesh init samples
    n=500 points on a box fitted to radius 1 (every point at max-norm 1/√3 to 1e-5)."""
    import trimesh

    c = server
    a, b = _session(c), _session(c)
    c.request("gaussians.init", {"session": a, "kind": "random", "n": 300, "seed": 3, "sh_degree": 1})
    path = str(tmp_path / "a.ply")
    assert c.request("gaussians.save_ply", {"session": a, "path": path}).result["count"] == 300
    r = c.request("gaussians.load_ply", {"session": b, "path": path}).result
    assert r == {"count": 300, "sh_degree": 1}
    assert np.array_equal(_state(c, a), _state(c, b))
    mesh_path = str(tmp_path / "box.obj")
    trimesh.creation.box(extents=(1, 2, 3)).export(mesh_path)
    r = c.request("gaussians.init", {"session": b, "kind": "mesh", "path": mesh_path, "n": 500, "fit_radius": 1.0}).result
    assert r["count"] == 500
    s = _state(c, b)
    assert np.linalg.norm(s[:, :3], axis=1).max() <= 1.0 + 1e-5


def test_bad_inputs_get_typed_errors_and_change_nothing(server, tmp_path):
    """Each bad request gets its error code (invalid_args / not_found) and the session's state frame is
    unchanged afterwards (bit-identical)."""
    c = server
    sid = _session(c)
    empty = _session(c)
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 64})
    before = _state(c, sid)
    nan_pts = np.array([[0, np.nan, 0]], np.float32)
    cases = [
        ("gaussians.init", {"session": sid, "kind": "points"}, [np.zeros((0, 3), np.float32)], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "points"}, [nan_pts], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "points"}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "points"}, [np.zeros((4, 3), np.float32), np.full((4, 3), 2.0, np.float32)], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "random", "n": 0}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "random", "radius": float("inf")}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "cube"}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "ply", "path": str(tmp_path / "missing.ply")}, [], "not_found"),
        ("gaussians.init", {"session": sid, "kind": "mesh", "path": str(tmp_path / "missing.obj")}, [], "not_found"),
        ("gaussians.load_ply", {"session": sid, "path": str(tmp_path / "missing.ply")}, [], "not_found"),
        ("gaussians.save_ply", {"session": empty, "path": str(tmp_path / "x.ply")}, [], "invalid_args"),
        ("gaussians.save_ply", {"session": sid, "path": str(tmp_path / "no" / "dir.ply")}, [], "not_found"),
        ("gaussians.init", {"session": "nosuchsession", "kind": "random"}, [], "not_found"),
    ]
    (tmp_path / "garbage.ply").write_bytes(b"not a ply at all")
    cases.append(("gaussians.load_ply", {"session": sid, "path": str(tmp_path / "garbage.ply")}, [], "invalid_args"))
    for op, args, bufs, code in cases:
        assert _code(c, op, args, bufs) == code, (op, args)
    assert np.array_equal(_state(c, sid), before)
