"""Tests of backend/stage1/shap_e.py and ``gaussians.init kind=shap_e`` (issue 18): diffusers' ShapEPipeline with a
tiny prior and renderer built from configs (marching-cubes tables filled in, SDF positive inside the grid, so the
decoded mesh is a closed box with the colour head's vertex colours); N points land on that mesh with its colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _server_helpers import ThreadedServer
from _tiny_diffusion import tiny_shap_e_with_surface
from interactive3d.backend.stage1.shap_e import ShapEConfig, _linear_to_srgb, init_from_shap_e, shap_e_mesh
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import RemoteError

CFG = ShapEConfig(n=300, steps=2, grid_size=24, seed=0)


@pytest.fixture(scope="module")
def pipe():
    return tiny_shap_e_with_surface()


def test_mesh_is_the_decoders_with_srgb_colours(pipe):
    """shap_e_mesh returns decode_to_mesh's vertices and faces (a watertight box inside [-1,1]³) and its linear
    colours converted to sRGB bytes (≤ 0.5/255 off); the same seed gives the same mesh."""
    m = shap_e_mesh(pipe, "a red chair", CFG)
    gen = torch.Generator().manual_seed(CFG.seed)
    lat = pipe("a red chair", num_inference_steps=CFG.steps, guidance_scale=CFG.guidance_scale, generator=gen, output_type="latent").images
    raw = pipe.shap_e_renderer.decode_to_mesh(lat[:1], pipe.device, grid_size=CFG.grid_size)
    assert np.array_equal(m.vertices, raw.verts.numpy()) and np.array_equal(m.faces, raw.faces.numpy())
    assert m.is_watertight and len(m.faces) > 100 and np.abs(m.vertices).max() < 1.0
    lin = torch.stack([raw.vertex_channels[c] for c in "RGB"], 1).numpy()
    assert np.abs(m.visual.vertex_colors[:, :3] / 255.0 - _linear_to_srgb(lin)).max() <= 0.5 / 255 + 1e-9
    assert np.array_equal(shap_e_mesh(pipe, "a red chair", CFG).vertices, m.vertices)
    with pytest.raises(ValueError, match="prompt"):
        shap_e_mesh(pipe, "  ", CFG)


def test_init_samples_n_points_on_the_mesh(pipe):
    """300 Gaussians; after the same centring and scaling (farthest vertex at 0.6) every centre lies on the mesh
    (distance < 1e-5) and every colour lies inside the per-channel range of the mesh's vertex colours."""
    import trimesh

    g = init_from_shap_e(pipe, "a red chair", CFG)
    assert g.n == CFG.n
    m = shap_e_mesh(pipe, "a red chair", CFG)
    m.apply_translation(-m.bounds.mean(axis=0))
    m.apply_scale(CFG.fit_radius / np.linalg.norm(m.vertices, axis=1).max())
    pts = g.means.detach().numpy().astype(np.float64)
    # distance to the mesh: the closest point on each of the 32 triangles with the nearest centroids (the
    # triangles are ~0.03 wide, so the closest one is among them); trimesh.proximity would need rtree
    from scipy.spatial import cKDTree

    _, near = cKDTree(m.triangles_center).query(pts, k=32)
    tris = m.triangles[near.reshape(-1)]
    closest = trimesh.triangles.closest_point(tris, np.repeat(pts, 32, axis=0))
    dist = np.linalg.norm(closest - np.repeat(pts, 32, axis=0), axis=1).reshape(-1, 32).min(1)
    assert dist.max() < 1e-5
    vc = m.visual.vertex_colors[:, :3] / 255.0
    rgb = g.rgb.detach().numpy()
    assert (rgb >= vc.min(0) - 1e-5).all() and (rgb <= vc.max(0) + 1e-5).all()
    assert float(g.opacities.detach().mean()) == pytest.approx(0.1, rel=1e-5)


def test_gaussians_init_shap_e_op_loads_once(pipe, tmp_path):
    """gaussians.init kind=shap_e from a local folder (save_pretrained of the tiny pipeline, loaded by
    ShapEPipeline.from_pretrained with local_files_only): count 300, an undo point; a second init with another
    seed reuses the server's cached pipeline (1 load); a missing folder is not_found, no prompt is invalid_args,
    and neither changes the Gaussians."""
    folder = tmp_path / "shap-e"
    pipe.save_pretrained(folder)
    ts = ThreadedServer()
    try:
        with Client(ts.address) as c:
            sid = c.request("session.create", {}).result["session"]
            args = {"session": sid, "kind": "shap_e", "prompt": "a red chair", "model": str(folder), "local_files_only": True,
                    "n": 300, "shap_e_steps": 2, "shap_e_grid": 24}
            assert c.request("gaussians.init", args).result["count"] == 300
            first = np.array(c.request("state.get", {"session": sid}).buffers[0])
            assert c.request("gaussians.init", {**args, "seed": 1}).result["count"] == 300
            assert ts.server.guidance_cache.loads == 1
            state = np.array(c.request("state.get", {"session": sid}).buffers[0])
            assert not np.array_equal(state, first)
            for bad, code in (({"model": str(tmp_path / "none")}, "not_found"), ({"prompt": ""}, "invalid_args")):
                with pytest.raises(RemoteError) as err:
                    c.request("gaussians.init", {**args, **bad})
                assert err.value.code == code
            assert np.array_equal(np.array(c.request("state.get", {"session": sid}).buffers[0]), state)
            assert c.request("history.undo", {"session": sid}).result
            assert np.array_equal(np.array(c.request("state.get", {"session": sid}).buffers[0]), first)
    finally:
        ts.stop()
