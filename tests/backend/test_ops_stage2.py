"""backend/service/ops_stage2.py through a real server and ZeroMQ client: distill (job) → preview → occupancy →
add part → refine (job) → mesh, undo of a part, and typed errors for bad inputs."""

import time

import numpy as np
import pytest
import torch

from interactive3d.protocol.errors import RemoteError

# a tiny field so every job step is fast on CPU
FIELD = {"levels": 4, "log2_table_size": 12, "base_resolution": 8, "per_level_scale": 1.5}


def _wait_done(client, job, timeout=120.0, seen=None):
    """The job's done/error header; its events so far are appended to ``seen`` when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in client.poll(200):
            if msg.header.get("job") == job and seen is not None:
                seen.append(msg)
            if msg.header.get("job") == job and msg.header.get("event") in ("done", "error"):
                return msg.header
    raise AssertionError(f"job {job} did not finish")


def _shell_session(client) -> str:
    sid = client.request("session.create", {}).result["session"]
    g = torch.Generator().manual_seed(0)
    p = torch.randn(800, 3, generator=g)
    p = (0.5 * p / p.norm(dim=-1, keepdim=True)).numpy().astype(np.float32)
    rgb = np.clip((p + 0.5), 0, 1).astype(np.float32)
    client.request("gaussians.init", {"session": sid, "kind": "points", "opacity": 0.9, "scale": 0.05}, [p, rgb])
    return sid


def _code(client, op, args):
    with pytest.raises(RemoteError) as err:
        client.request(op, args)
    return err.value.code


def test_stage2_pipeline_and_errors(client, tmp_path):
    """Distil 6 steps (done event, finite loss), preview [32,32,3] in [0,1]; occupancy 32³ uint8 with
    occupied cells; add_part: radius 0 → invalid_args, a region in empty space → invalid_args, a valid
    region → cells > 0, undo removes it (add again succeeds); refine 3 steps → done; extract_mesh at 32³
    writes a GLB and returns float32/int32/uint8 arrays; resolution 4096 → invalid_args (cap 512)."""
    sid = _shell_session(client)
    assert _code(client, "stage2.occupancy", {"session": sid}) == "not_found"
    r = client.request("stage2.distill", {"session": sid, "steps": 6, "resolution": 16, "view_pool": 4, "rays_per_step": 256, "n_samples": 16, "preview_every": 3, **FIELD}).result
    seen = []
    done = _wait_done(client, r["job"], seen=seen)
    assert done["event"] == "done" and np.isfinite(done["data"]["loss"]), done
    # the previews (steps 3 and 6) ride on the progress events of those steps, [32,32,3] float32
    with_preview = [m for m in seen if m.event == "progress" and "preview" in m.data]
    assert [m.data["step"] for m in with_preview] == [3, 6]
    assert all(m.data["preview"] == [32, 32] and np.array(m.buffers[0]).shape == (32, 32, 3) for m in with_preview)
    assert all(not m.buffers for m in seen if m.event == "progress" and "preview" not in m.data)
    pv = client.request("stage2.preview", {"session": sid})
    img = np.array(pv.buffers[0])
    assert img.shape == (32, 32, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1

    occ = client.request("stage2.occupancy", {"session": sid, "resolution": 32})
    grid = np.array(occ.buffers[0])
    assert grid.shape == (32, 32, 32) and grid.dtype == np.uint8 and occ.result["occupied"] == int(grid.sum()) > 0

    assert _code(client, "stage2.add_part", {"session": sid, "name": "p", "center": [0.0, 0.0, 0.0], "radius": 0.0}) == "invalid_args"
    assert _code(client, "stage2.add_part", {"session": sid, "name": "p", "center": [0.97, 0.97, 0.97], "radius": 0.02}) == "invalid_args"
    labels = client.request("history.list", {"session": sid}).result
    huge = {"session": sid, "name": "h", "center": [0.3, 0.0, 0.0], "radius": 0.3, "levels": 32, "log2_table_size": 24, "features": 8}
    assert _code(client, "stage2.add_part", huge) == "too_large"  # 64 GiB of tables: estimated, not tried
    assert client.request("history.list", {"session": sid}).result == labels  # and no undo entry left (issue 25)
    args = {"session": sid, "name": "p", "center": [0.3, 0.0, 0.0], "radius": 0.3, "levels": 4, "log2_table_size": 12}
    assert client.request("stage2.add_part", args).result["cells"] > 0
    assert _code(client, "stage2.add_part", args) == "invalid_args"  # duplicate name
    client.request("history.undo", {"session": sid})
    assert client.request("stage2.add_part", args).result["parts"] == ["p"]

    r = client.request("stage2.refine", {"session": sid, "parts": ["p"], "steps": 3, "views": 2, "resolution": 16, "rays_per_step": 128, "n_samples": 16}).result
    assert _wait_done(client, r["job"])["event"] == "done"
    assert _code(client, "stage2.refine", {"session": sid, "parts": ["nope"], "steps": 1}) == "invalid_args"
    assert _code(client, "stage2.refine", {"session": sid, "parts": ["p"], "guidance": "sd"}) == "invalid_args"  # no prompt
    r = client.request("stage2.refine", {"session": sid, "parts": ["p"], "guidance": "sd", "prompt": "a hat", "fixed_t": 0.3,
                                         "model": str(tmp_path / "no-such-model"), "steps": 2}).result
    assert _wait_done(client, r["job"])["event"] == "error"  # weights are loaded on the worker: missing → error event

    out = tmp_path / "m.glb"
    m = client.request("stage2.extract_mesh", {"session": sid, "resolution": 32, "path": str(out)})
    v, f, c = (np.array(b) for b in m.buffers)
    assert v.dtype == np.float32 and f.dtype == np.int32 and c.dtype == np.uint8 and c.shape == (len(v), 4)
    assert m.result["vertices"] == len(v) > 0 and out.is_file() and m.result["textured"] is False
    # Stage II replies carry the session's state revision too (they leave the Gaussians as they were)
    assert m.result["revision"] == client.request("state.get", {"session": sid}).result["revision"]
    # textured: uvs [V,2] and a 64² sRGB texture follow; the OBJ comes with its MTL and PNG
    t = client.request("stage2.extract_mesh", {"session": sid, "resolution": 32, "path": str(tmp_path / "t.obj"),
                                               "texture": True, "texture_size": 64})
    tv, tf, tc, tuv, tex = (np.array(b) for b in t.buffers)
    assert t.result["textured"] is True and len(tf) == len(f) and len(tv) >= len(v)
    assert tuv.shape == (len(tv), 2) and tex.shape == (64, 64, 4) and tex.dtype == np.uint8
    assert all((tmp_path / n).is_file() for n in ("t.obj", "t.mtl", "t.png"))
    assert _code(client, "stage2.extract_mesh", {"session": sid, "texture": True, "texture_size": 8}) == "invalid_args"
    # return_file (remote clients): the same file's bytes as the last frame, with or without a path on the server
    both = client.request("stage2.extract_mesh", {"session": sid, "resolution": 32, "path": str(out), "return_file": True})
    assert len(both.buffers) == 4 and bytes(both.buffers[3]) == out.read_bytes()
    only = client.request("stage2.extract_mesh", {"session": sid, "resolution": 32, "return_file": True, "format": "obj"})
    assert only.result["path"] is None and bytes(only.buffers[3][:2]) in (b"# ", b"v ")
    tex_file = client.request("stage2.extract_mesh", {"session": sid, "resolution": 32, "return_file": True, "texture": True, "texture_size": 64})
    assert len(tex_file.buffers) == 6 and bytes(tex_file.buffers[5][:4]) == b"glTF"
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "path": "/outside-the-roots/m.glb"}) == "invalid_args"
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "path": str(out.parent / "no" / "m.glb")}) == "not_found"
    assert not (out.parent / "no").exists()  # no folder created
    # issue 25: every file is checked before anything is written, and the reply names the file written
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "path": str(tmp_path / "x.glb"), "format": "obj"}) == "invalid_args"
    assert not (tmp_path / "x.obj").exists() and not (tmp_path / "x.glb").exists()
    (tmp_path / "s.mtl").symlink_to(tmp_path / "elsewhere.mtl")  # where a textured OBJ's side file goes
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "path": str(tmp_path / "s.obj"), "texture": True,
                                                 "texture_size": 64}) == "invalid_args"
    assert (tmp_path / "s.mtl").is_symlink() and not (tmp_path / "elsewhere.mtl").exists() and not (tmp_path / "s.obj").exists()
    bare = client.request("stage2.extract_mesh", {"session": sid, "resolution": 16, "path": str(tmp_path / "n"), "format": "obj"})
    assert bare.result["path"] == str((tmp_path / "n.obj").resolve()) and (tmp_path / "n.obj").is_file()
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 4096}) == "invalid_args"
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "surface": "density", "threshold": 1e9}) == "invalid_args"
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "surface": "sdf"}) == "invalid_args"
    assert _code(client, "stage2.extract_mesh", {"session": sid, "resolution": 16, "opacity_level": 1.0}) == "invalid_args"
    assert _code(client, "stage2.distill", {"session": sid, "steps": 1, "depth_weight": -1.0}) == "invalid_args"


def _blender_cam(y=-2.5):
    """Blender matrix_world of a camera at (0, y, 0) looking at the origin along +Y (+Z up)."""
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)  # columns: camera x, y, z in world
    m[:3, 3] = (0.0, y, 0.0)
    return m


def test_stage2_render_like_gaussians_render(client):
    """stage2.render takes gaussians.render's arguments and c2w buffer and returns its rgb [B,H,W,3] and alpha
    [B,H,W,1] plus depth and normals. On the distilled shell (r = 0.5) seen from 2.5 units: the centre pixel is
    opaque (alpha > 0.5), its camera-space depth is in [1.7, 2.3] (surface at 2.0), its normal faces the camera
    (n·(−y) > 0.5); empty pixels are the background exactly with depth 0 and normals 0. Two cameras → B = 2.
    No field → not_found; 65 cameras or a bad last row → invalid_args; a huge render → too_large."""
    sid = _shell_session(client)
    args = {"session": sid, "fov_x": 0.8, "width": 24, "height": 16, "background": [0.0, 0.0, 1.0]}
    cam = _blender_cam()
    assert _code_buf(client, "stage2.render", args, [cam]) == "not_found"
    r = client.request("stage2.distill", {"session": sid, "steps": 30, "resolution": 32, "view_pool": 8, "rays_per_step": 512, "n_samples": 32,
                                          "preview_every": 0, "orientation_weight": 0.0, **FIELD}).result
    assert _wait_done(client, r["job"])["event"] == "done"
    g = client.request("gaussians.render", args, [cam])
    out = client.request("stage2.render", args, [np.stack([cam, _blender_cam(-3.0)])])
    rgb, alpha, depth, normals = (np.array(b) for b in out.buffers)
    assert out.result["count"] == 2 and [np.array(b).shape[1:] for b in g.buffers] == [rgb.shape[1:], alpha.shape[1:]]
    assert rgb.shape == (2, 16, 24, 3) and depth.shape == (2, 16, 24, 1) and normals.shape == (2, 16, 24, 3)
    assert rgb.dtype == alpha.dtype == depth.dtype == normals.dtype == np.float32
    c = alpha[0, 8, 12, 0]
    assert c > 0.5 and 1.7 <= depth[0, 8, 12, 0] <= 2.3, (c, depth[0, 8, 12, 0])
    n = normals[0, 8, 12] / np.linalg.norm(normals[0, 8, 12])
    assert -n[1] > 0.5, n
    empty = alpha[..., 0] < 1e-6
    assert empty.any() and np.allclose(rgb[empty], [0.0, 0.0, 1.0], atol=1e-5)
    assert np.all(depth[empty] == 0) and np.abs(normals[empty]).max() < 1e-5
    assert depth[1, 8, 12, 0] > depth[0, 8, 12, 0] + 0.3  # the second camera is 0.5 further away
    assert _code_buf(client, "stage2.render", args, [np.stack([cam] * 65)]) == "invalid_args"
    bad = cam.copy()
    bad[3, 0] = 1.0
    assert _code_buf(client, "stage2.render", args, [bad]) == "invalid_args"
    assert _code_buf(client, "stage2.render", dict(args, width=4096, height=4096, n_samples=1024), [cam]) == "too_large"


def _code_buf(client, op, args, buffers):
    with pytest.raises(RemoteError) as err:
        client.request(op, args, buffers)
    return err.value.code


def test_distill_targets_are_never_finer_than_the_stage1_fit(client):
    """Distillation supersamples its Gaussian targets 4× (issue 26) unless the set was fitted by stage1.start at a
    coarser size: a set made by gaussians.init (origin unknown) gets 4 at 16²; after a Stage I run at 24² a
    distillation at 16² gets 24 // 16 = 1, at 8² 3; a new gaussians.init forgets the fit again."""
    sid = _shell_session(client)
    args = {"session": sid, "steps": 1, "view_pool": 2, "rays_per_step": 64, "n_samples": 8, **FIELD}
    r = client.request("stage2.distill", {**args, "resolution": 16}).result
    assert r["target_supersample"] == 4
    _wait_done(client, r["job"])
    client.request("stage1.set_reference", {"session": sid})
    job = client.request("stage1.start", {"session": sid, "guidance": "oracle", "steps": 2, "batch": 1, "resolution": 24,
                                          "densify": False, "seed": 1}).result["job"]
    assert _wait_done(client, job)["event"] == "done"
    for res, expect in ((16, 1), (8, 3)):
        r = client.request("stage2.distill", {**args, "resolution": res}).result
        assert r["target_supersample"] == expect, res
        _wait_done(client, r["job"])
    assert client.request("gaussians.init", {"session": sid, "kind": "random", "n": 200}).result["count"] == 200
    r = client.request("stage2.distill", {**args, "resolution": 16}).result
    assert r["target_supersample"] == 4
    _wait_done(client, r["job"])


def test_extract_mesh_fits_its_field_queries_to_a_small_budget():
    """A server with a 24 MiB memory budget: extract_mesh at 32³ used to reserve a fixed 2^18-query chunk (at this
    field's 4 levels 436 MB, at the default 16 levels 878 MiB) and was refused too_large; it now queries the field
    in chunks the budget leaves room for and meshes. The arguments alone over the budget are still too_large."""
    from _server_helpers import ThreadedServer
    from interactive3d.backend.service import costs
    from interactive3d.protocol.client import Client

    budget = 24 << 20
    assert costs.field_query_bytes(1 << 18, FIELD["levels"]) > budget
    ts = ThreadedServer(memory_budget=budget)
    try:
        with Client(ts.address) as c:
            sid = _shell_session(c)
            r = c.request("stage2.distill", {"session": sid, "steps": 4, "resolution": 16, "view_pool": 2, "rays_per_step": 128,
                                             "n_samples": 16, **FIELD}).result
            assert _wait_done(c, r["job"])["event"] == "done"
            m = c.request("stage2.extract_mesh", {"session": sid, "resolution": 32}, timeout=120.0)
            assert len(np.array(m.buffers[0])) > 0 and len(np.array(m.buffers[1])) > 0
            assert _code(c, "stage2.extract_mesh", {"session": sid, "resolution": 512}) == "too_large"  # 512³ voxels alone
    finally:
        ts.stop()
