"""backend/service/ops_interactions.py through a real server and ZeroMQ client: every interaction is a validated,
undoable protocol op; bad arguments get typed errors and change nothing."""

import math
import os
import tempfile
import time

import numpy as np
import pytest
import torch
from _server_helpers import ThreadedServer
from interactive3d.backend.interact import transform as T
from interactive3d.backend.stage1 import gaussians as G
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import RemoteError

N = 2000


@pytest.fixture()
def session(client):
    """A session with N random Gaussians (seed 0) and one part 'right' = x > 0.1."""
    sid = client.request("session.create", {}).result["session"]
    client.request("test.init", {"session": sid, "n": N, "seed": 0})
    client.request("parts.select", {"session": sid, "name": "right", "kind": "aabb", "min": [0.1, -1, -1], "max": [1, 1, 1]})
    return sid


def _state(client, sid):
    r = client.request("state.get", {"session": sid})
    return np.array(r.buffers[0]), r.result


def _history(client, sid):
    return client.request("history.list", {"session": sid}).result


def _wait_done(client, job, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in client.poll(200):
            if msg.header.get("job") == job and msg.header.get("event") in ("done", "error"):
                return msg.header
    raise AssertionError(f"job {job} did not finish")


def test_select_counts_and_list(client, session):
    """Sphere / aabb / indices selections give exactly the counts computed directly on the state frame."""
    st, _ = _state(client, session)
    pts = st[:, :3]
    r = client.request("parts.select", {"session": session, "name": "ball", "kind": "sphere", "center": [0, 0, 0], "radius": 0.25}).result
    assert r["count"] == int((np.linalg.norm(pts, axis=1) <= 0.25).sum()) > 0
    r = client.request("parts.select", {"session": session, "name": "some", "kind": "indices"}, [np.array([0, 5, 7], np.int64)]).result
    assert r["count"] == 3
    r = client.request("parts.select", {"session": session, "name": "some", "kind": "indices", "indices": [7, 9], "combine": "add"}).result
    assert r["count"] == 4
    parts = client.request("parts.list", {"session": session}).result["parts"]
    assert parts["some"] == 4 and parts["right"] == int((pts[:, 0] >= 0.1).sum())


def _raw(server, sid):
    """The session's exact parameter and buffer tensors (snapshot) from the in-process server."""
    return server.server.sessions[sid].gaussians.snapshot()


def test_transform_matches_direct_call_and_undo_is_exact(server, client, session):
    """parts.transform (stretch + shear about the bbox centre) equals transform_part on the same state to
    float32 bit-identity; history.undo restores the exact parameter tensors and part masks, redo re-applies
    them exactly."""
    before, _ = _state(client, session)
    raw_before = _raw(server, session)
    m = np.array([[1.5, 0.2, 0, 0.1], [0, 0.7, 0, 0], [0, 0, 1.2, -0.05], [0, 0, 0, 1]], np.float32)
    r = client.request("parts.transform", {"session": session, "part": "right"}, [m]).result
    after, _ = _state(client, session)
    g = G.init_random(N, seed=0)
    mask = torch.from_numpy(before[:, 0] >= 0.1)
    T.transform_part(g, mask, torch.from_numpy(m))
    assert r["count"] == int(mask.sum()) and not r["similarity"]
    np.testing.assert_array_equal(after, g.state_array())
    raw_after = _raw(server, session)
    client.request("history.undo", {"session": session})
    np.testing.assert_array_equal(_state(client, session)[0], before)
    undone = _raw(server, session)
    assert undone.keys() == raw_before.keys() and all(np.array_equal(undone[k], raw_before[k]) for k in undone)
    client.request("history.redo", {"session": session})
    np.testing.assert_array_equal(_state(client, session)[0], after)
    redone = _raw(server, session)
    assert all(np.array_equal(redone[k], raw_after[k]) for k in redone)


def test_remove_and_merge(client, session, tmp_path):
    """parts.remove drops exactly the part (and its name); parts.add merges a state-frame payload with a translation as
    part 'copy' (count and positions exact); undo twice returns the original frame bit for bit."""
    before, _ = _state(client, session)
    n_right = int((before[:, 0] >= 0.1).sum())
    r = client.request("parts.remove", {"session": session, "part": "right"}).result
    assert {k: v for k, v in r.items() if k != "revision"} == {"removed": n_right, "count": N - n_right}
    assert "right" not in client.request("parts.list", {"session": session}).result["parts"]
    payload = before[:10].copy()
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (2.0, 0.0, 0.0)
    r = client.request("parts.add", {"session": session, "name": "copy"}, [m, payload]).result
    assert r["added"] == 10 and r["count"] == N - n_right + 10
    st, res = _state(client, session)
    np.testing.assert_allclose(st[-10:, :3], payload[:, :3] + [2.0, 0.0, 0.0], atol=1e-6)
    assert res["part_counts"]["copy"] == 10
    client.request("history.undo", {"session": session})
    client.request("history.undo", {"session": session})
    np.testing.assert_array_equal(_state(client, session)[0], before)
    assert client.request("parts.list", {"session": session}).result["parts"]["right"] == n_right


def test_rigid_drag_job_and_undo(client, session):
    """interact.drag (rigid) runs as a job to 'done'; the Gaussians near p_s moved by ≈ d (centroid error
    < 5% of |d|), those beyond r are bit-identical; one undo restores the frame exactly."""
    before, _ = _state(client, session)
    ps, d = np.array([0.3, 0.0, 0.0]), np.array([0.0, 0.2, 0.1])
    r = client.request("interact.drag", {"session": session, "source": ps.tolist(), "target": (ps + d).tolist(), "radius": 0.15, "mode": "rigid", "steps": 10, "densify_after": False}).result
    done = _wait_done(client, r["job"])
    assert done["event"] == "done"
    after, _ = _state(client, session)
    inside = np.linalg.norm(before[:, :3] - ps, axis=1) <= 0.15
    assert inside.sum() == r["active"] > 0
    moved = after[inside, :3].mean(0) - before[inside, :3].mean(0)
    assert np.linalg.norm(moved - d) < 0.05 * np.linalg.norm(d)
    np.testing.assert_array_equal(after[~inside], before[~inside])
    client.request("history.undo", {"session": session})
    np.testing.assert_array_equal(_state(client, session)[0], before)


M_SINGULAR = np.diag([1.0, 0.0, 1.0, 1.0]).astype(np.float32)


@pytest.mark.parametrize(
    "op, args, buffers, code",
    [
        ("interact.drag", {"source": [0.3, 0, 0], "target": [0.5, 0, 0], "radius": 0.0}, [], "invalid_args"),
        ("interact.drag", {"source": [0.3, 0, 0], "target": [0.5, 0, 0], "radius": -1.0}, [], "invalid_args"),
        ("interact.drag", {"source": [float("nan"), 0, 0], "target": [0.5, 0, 0], "radius": 0.1}, [], "invalid_args"),
        ("interact.drag", {"source": [0.3, 0, 0], "target": [0.3, 0, 0], "radius": 0.1}, [], "invalid_args"),
        ("interact.drag", {"source": [5.0, 5, 5], "target": [6.0, 0, 0], "radius": 0.1}, [], "invalid_args"),
        ("interact.edit", {"part": "nope", "prompt": "x"}, [], "not_found"),
        ("interact.edit", {"part": "right", "prompt": "  "}, [], "invalid_args"),
        ("interact.edit", {"part": "right", "prompt": "x", "fixed_t": 1.0}, [], "invalid_args"),
        ("interact.drag", {"source": [0.3, 0, 0], "target": [0.5, 0, 0], "radius": 0.1, "guidance": True}, [], "invalid_args"),
        ("parts.transform", {"part": "nope"}, [np.eye(4, dtype=np.float32)], "not_found"),
        ("parts.transform", {"part": "right"}, [M_SINGULAR], "invalid_args"),
        ("parts.transform", {"part": "right", "matrix": [float("nan")] * 16}, [], "invalid_args"),
        ("parts.remove", {"part": "nope"}, [], "not_found"),
        ("parts.remove", {}, [np.array([0, N], np.int64)], "invalid_args"),
        ("parts.select", {"name": "empty", "kind": "sphere", "center": [9, 9, 9], "radius": 0.1}, [], "invalid_args"),
        ("parts.select", {"name": "bad/name", "kind": "all"}, [], "invalid_args"),
        ("parts.select", {"name": "oob", "kind": "indices", "indices": [N]}, [], "invalid_args"),
        ("parts.select", {"name": "flat", "kind": "box"}, [M_SINGULAR], "invalid_args"),
        ("parts.add", {"path": os.path.join(tempfile.gettempdir(), "i3d-nonexistent", "x.ply")}, [], "not_found"),
        ("parts.add", {"path": "/nonexistent/x.ply"}, [], "invalid_args"),  # outside the data folders
        ("parts.add", {"name": "x"}, [M_SINGULAR, np.zeros((3, 14), np.float32) + 0.5], "invalid_args"),
        ("parts.add", {"name": "x"}, [np.frombuffer(b"ply\nformat garbage\n", np.uint8)], "invalid_args"),  # not a splat file
        ("parts.add", {"name": "x"}, [np.zeros(0, np.uint8)], "invalid_args"),  # an empty file frame
        ("parts.add", {"name": "x"}, [np.zeros((4, 14), np.uint8)], "invalid_args"),  # bytes must be 1-D
        ("parts.add", {"name": "x", "path": "/nonexistent/x.ply"}, [np.frombuffer(b"ply\n", np.uint8)], "invalid_args"),  # both
        ("parts.forget", {"name": "nope"}, [], "not_found"),
    ],
)
def test_bad_arguments_change_nothing(client, session, op, args, buffers, code):
    """Each bad request gets its typed error code; the state frame, parts and history are unchanged."""
    before, res = _state(client, session)
    hist = _history(client, session)
    with pytest.raises(RemoteError) as err:
        client.request(op, {"session": session, **args}, buffers)
    assert err.value.code == code, err.value
    after, res_after = _state(client, session)
    np.testing.assert_array_equal(after, before)
    assert res_after["parts"] == res["parts"] and _history(client, session) == hist


def test_history_survives_checkpoint_and_resume(tmp_path):
    """select + remove + transform, session.checkpoint, a NEW server on the same state dir,
    session.resume: the frame equals the one before the restart, and three undos walk back through
    transform, remove and select to the initial frame, bit for bit."""
    srv = ThreadedServer(state_dir=str(tmp_path))
    try:
        with Client(srv.address) as c:
            sid = c.request("session.create", {}).result["session"]
            c.request("test.init", {"session": sid, "n": 500, "seed": 1})
            initial, _ = _state(c, sid)
            c.request("parts.select", {"session": sid, "name": "top", "kind": "aabb", "min": [-1, -1, 0.1], "max": [1, 1, 1]})
            c.request("parts.remove", {"session": sid}, [np.arange(0, 500, 50, dtype=np.int64)])
            after_remove, _ = _state(c, sid)
            c.request("parts.transform", {"session": sid, "part": "top", "matrix": [1, 0, 0, 0.2, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1]})
            final, _ = _state(c, sid)
            c.request("session.checkpoint", {"session": sid})
    finally:
        srv.stop()
    srv2 = ThreadedServer(state_dir=str(tmp_path))
    try:
        with Client(srv2.address) as c:
            c.request("session.resume", {"session": sid})
            np.testing.assert_array_equal(_state(c, sid)[0], final)
            c.request("history.undo", {"session": sid})
            np.testing.assert_array_equal(_state(c, sid)[0], after_remove)
            c.request("history.undo", {"session": sid})
            c.request("history.undo", {"session": sid})
            np.testing.assert_array_equal(_state(c, sid)[0], initial)
    finally:
        srv2.stop()


def test_add_from_ply_and_state_first(client, session, tmp_path):
    """parts.add from a .ply path with a [4,4] buffer, and from [state, matrix] (the add-on's order):
    the merged centres equal the file's / payload's centres moved by the matrix (to 1e-6)."""
    from interactive3d.protocol import ply, splat_data, splats

    before, _ = _state(client, session)
    payload = before[:20].copy()
    path = tmp_path / "part.ply"
    ply.write_ply(path, splat_data.state_to_splat(payload))
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (0.0, 0.0, 1.5)
    r = client.request("parts.add", {"session": session, "name": "fromfile", "path": str(path)}, [m]).result
    assert r["added"] == 20
    st, _ = _state(client, session)
    np.testing.assert_allclose(st[-20:, :3], payload[:, :3] + [0.0, 0.0, 1.5], atol=1e-6)
    r = client.request("parts.add", {"session": session, "name": "fromstate"}, [payload, m]).result
    st, res = _state(client, session)
    assert r["count"] == N + 40 and res["part_counts"]["fromstate"] == 20
    np.testing.assert_allclose(st[-20:, :3], payload[:, :3] + [0.0, 0.0, 1.5], atol=1e-6)


def test_add_from_file_frame_like_load_ply(client, session, tmp_path):
    """parts.add with the splat file's bytes as a uint8 frame (remote clients), the matrix before or after it, merges
    exactly what the path form merges (centres moved by the matrix, to 1e-6); a .spz frame named by filename gives
    protocol.splats.read_any's 300 Gaussians, and so does a .sog frame; a frame over the server's file cap is too_large and changes nothing."""
    from pathlib import Path

    from interactive3d.protocol import ply, splat_data, splats

    before, _ = _state(client, session)
    payload = before[:20].copy()
    path = tmp_path / "part.ply"
    ply.write_ply(path, splat_data.state_to_splat(payload))
    blob = np.frombuffer(path.read_bytes(), np.uint8)
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (0.0, 0.0, 1.5)
    for i, buffers in enumerate(([blob, m], [m, blob])):
        r = client.request("parts.add", {"session": session, "name": f"up{i}"}, buffers).result
        assert r["added"] == 20 and r["count"] == N + 20 * (i + 1) and r["name"] == f"up{i}"
        st, res = _state(client, session)
        assert res["part_counts"][f"up{i}"] == 20
        np.testing.assert_allclose(st[-20:, :3], payload[:, :3] + [0.0, 0.0, 1.5], atol=1e-6)
        np.testing.assert_allclose(st[-20:, 3:], payload[:, 3:], atol=1e-6)
    spz = Path(__file__).resolve().parents[1] / "fixtures" / "splats" / "source_v4.spz"
    want = splat_data.splat_to_state(splats.read_any(str(spz)))
    r = client.request("parts.add", {"session": session, "name": "spz", "filename": "source_v4.spz"},
                       [np.frombuffer(spz.read_bytes(), np.uint8)]).result
    assert r["added"] == 300
    np.testing.assert_allclose(_state(client, session)[0][-300:], want, atol=1e-6)
    sog = spz.with_name("source.sog")  # a zip: recognised by its magic whatever the filename says
    r = client.request("parts.add", {"session": session, "name": "sog"}, [np.frombuffer(sog.read_bytes(), np.uint8)]).result
    assert r["added"] == 300
    np.testing.assert_allclose(_state(client, session)[0][-300:], splat_data.splat_to_state(splats.read_any(sog)), atol=1e-6)

    small = ThreadedServer(max_file_bytes=blob.size - 1)
    try:
        with Client(small.address) as c:
            sid = c.request("session.create", {}).result["session"]
            c.request("test.init", {"session": sid, "n": 50})
            hist = _history(c, sid)
            with pytest.raises(RemoteError) as err:
                c.request("parts.add", {"session": sid, "name": "big"}, [blob])
            assert err.value.code == "too_large"
            assert _state(c, sid)[1]["count"] == 50 and _history(c, sid) == hist
    finally:
        small.stop()


def test_select_by_masks_op_matches_direct(client, session):
    """parts.select kind=masks (2 views, Blender c2w + fov_x over the wire) selects exactly what
    selection.select_by_masks selects on the same state (same count, same rows)."""
    pytest.importorskip("interactive3d.backend.stage1.cameras")
    from interactive3d.backend.interact import selection as S
    from interactive3d.backend.stage1.cameras import cameras_from_blender, look_at

    eyes = torch.tensor([[1.6, -1.6, 0.6], [1.2, 0.3, 2.0]])
    c2w = look_at(eyes, torch.zeros(2, 3)).float()
    masks = np.zeros((2, 48, 64), np.uint8)
    masks[:, 10:30, 20:50] = 1
    fov = math.radians(50)
    r = client.request(
        "parts.select", {"session": session, "name": "painted", "kind": "masks", "fov_x": fov}, [masks, c2w.numpy()]
    ).result
    st, _ = _state(client, session)
    cams = cameras_from_blender(c2w, fov, 64, 48)
    direct = S.select_by_masks(torch.from_numpy(st[:, :3]), cams, torch.from_numpy(masks != 0))
    assert r["count"] == int(direct.sum()) > 0


def test_edits_land_between_steps_of_a_running_job(client, session):
    """While an optimisation job runs (the test fit job, 30 steps), parts.remove and parts.transform are
    answered at once and applied between two steps; the job still finishes 'done' with N − 10 Gaussians."""
    r = client.request("test.fit", {"session": session, "steps": 50, "sleep": 0.03}).result
    removed = client.request("parts.remove", {"session": session}, [np.arange(10, dtype=np.int64)]).result
    assert {k: v for k, v in removed.items() if k != "revision"} == {"removed": 10, "count": N - 10}
    client.request("parts.transform", {"session": session, "part": "right", "matrix": [1, 0, 0, 0, 0, 1, 0, 0.1, 0, 0, 1, 0, 0, 0, 0, 1]})
    status = client.request("job.status", {"session": session}).result
    assert status["state"] == "running" and status["step"] < 50  # the edits landed before the job ended
    done = _wait_done(client, r["job"])
    assert done["event"] == "done" and done["data"]["count"] == N - 10


def test_semantic_edit_job_with_oracle_reference(server, client, session):
    """interact.edit (3 steps, 16×16 zoom-in views, fixed t 0.5) with the oracle guidance built from the
    session's reference slot: the job ends 'done' and every parameter row outside the part is
    bit-identical while the part's rows changed; one undo restores the exact tensors."""
    stage1 = pytest.importorskip("interactive3d.backend.stage1.trainer")
    s = server.server.sessions[session]
    with s.lock:
        ref = s.gaussians.clone()
        ref.params["sh"].data[:, 0, 0] = 2.0  # a redder reference
        s.extras[stage1.OracleReference.SLOT] = stage1.OracleReference(ref)
    raw_before = _raw(server, session)
    part = raw_before["buffer/part:right"]
    r = client.request("interact.edit", {"session": session, "part": "right", "prompt": "make it red", "steps": 3, "resolution": 16, "fixed_t": 0.5, "oracle": True}).result
    assert r["part_size"] == int(part.sum())
    assert _wait_done(client, r["job"])["event"] == "done"
    raw_after = _raw(server, session)
    for k in ("param/means", "param/log_scales", "param/quats", "param/opacity_logits", "param/sh"):
        assert np.array_equal(raw_after[k][~part], raw_before[k][~part]), k
    assert not np.array_equal(raw_after["param/sh"][part], raw_before["param/sh"][part])
    client.request("history.undo", {"session": session})
    undone = _raw(server, session)
    assert all(np.array_equal(undone[k], raw_before[k]) for k in raw_before)


def test_add_from_another_session(client, session):
    """parts.add with source_session copies the other session's 300 Gaussians (exact centres, rotated
    90° about z by the matrix) and leaves the source session unchanged."""
    other = client.request("session.create", {}).result["session"]
    client.request("test.init", {"session": other, "n": 300, "seed": 7})
    src, _ = _state(client, other)
    rot = [0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    r = client.request("parts.add", {"session": session, "name": "guest", "source_session": other, "matrix": rot}).result
    assert r["added"] == 300 and r["count"] == N + 300
    st, _ = _state(client, session)
    np.testing.assert_allclose(st[-300:, :3], np.stack([-src[:, 1], src[:, 0], src[:, 2]], 1), atol=1e-6)
    np.testing.assert_array_equal(_state(client, other)[0], src)
    with pytest.raises(RemoteError) as err:
        client.request("parts.add", {"session": session, "source_session": "nosuchsession"})
    assert err.value.code == "not_found"
