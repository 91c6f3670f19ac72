"""Initial Gaussian sets (backend/stage1/init.py): points, meshes, .ply conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from interactive3d.backend.stage1 import init as init_mod
from interactive3d.backend.stage1.gaussians import init_random
from interactive3d.protocol import splat_data


def _random_gaussians(n=50, degree=1, seed=0):
    g = init_random(n, sh_degree=degree, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # make every parameter non-trivial so the round trip is meaningful
        for p in g.params.values():
            p.add_(torch.randn(p.shape, generator=gen))
    return g


def test_ply_round_trip_bit_exact(tmp_path):
    """Gaussians → .ply file → Gaussians reproduces every parameter bit for bit (degree 1: 3 rest bands),
    and the file carries the INRIA names with f_rest channel-major (f_rest_{c*3+k})."""
    g = _random_gaussians()
    path = tmp_path / "g.ply"
    init_mod.save_ply(g, path)
    back = init_mod.load_ply(path)
    assert back.sh_degree == 1
    for name, p in g.params.items():
        assert torch.equal(p.detach(), back.params[name].detach()), name
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    assert np.array_equal(np.asarray(v["f_rest_4"]), g.params["sh"].detach().numpy()[:, 2, 1])  # channel 1, band 2
    assert np.array_equal(np.asarray(v["rot_0"]), g.params["quats"].detach().numpy()[:, 0])  # w first


def test_splatdata_to_gaussians_and_back_bit_exact():
    """SplatData → Gaussians → SplatData keeps means, SH, opacity logits, log scales, quaternions exactly."""
    rng = np.random.default_rng(0)
    n = 20
    d = splat_data.SplatData(
        means=rng.normal(size=(n, 3)).astype(np.float32), sh_dc=rng.normal(size=(n, 3)).astype(np.float32),
        sh_rest=rng.normal(size=(n, 8, 3)).astype(np.float32), opacity_logits=rng.normal(size=n).astype(np.float32),
        log_scales=rng.normal(size=(n, 3)).astype(np.float32), quats=rng.normal(size=(n, 4)).astype(np.float32),
    )
    back = init_mod.gaussians_to_ply(init_mod.ply_to_gaussians(d))
    for f in ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats"):
        assert np.array_equal(getattr(d, f), getattr(back, f)), f


def test_points_with_colours_and_nn_scales():
    """A 10×10×10 grid with spacing 0.1: every NN-based scale is 0.1 (RMS of 3 NNs at distance 0.1);
    uint8 colours map to /255 and reappear as the activated rgb to 1e-6."""
    ax = np.arange(10) * 0.1
    pts = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    cols = np.random.default_rng(0).integers(0, 256, size=(1000, 3)).astype(np.uint8)
    g = init_mod.init_from_points(pts, cols)
    assert g.n == 1000
    assert torch.allclose(g.scales, torch.full((1000, 3), 0.1), atol=1e-6)
    assert torch.allclose(g.rgb, torch.from_numpy(cols / 255.0).float(), atol=1e-6)
    assert torch.allclose(g.opacities, torch.full((1000,), 0.1), atol=1e-6)


@pytest.mark.parametrize(
    "points, colors, match",
    [
        (np.zeros((0, 3)), None, "empty"),
        (np.array([[0.0, np.nan, 0.0]]), None, "non-finite"),
        (np.zeros((4, 2)), None, "shape"),
        (np.zeros((4, 3)), np.zeros((3, 3)), "rows"),
        (np.zeros((4, 3)), np.full((4, 3), 2.0), r"\[0,1\]"),
    ],
)
def test_points_validation(points, colors, match):
    with pytest.raises(ValueError, match=match):
        init_mod.init_from_points(points, colors)


def test_mesh_vertex_colours_and_fit_radius(tmp_path):
    """A unit cube with red vertices at z<0 and blue at z>0, fitted to radius 1: all 2000 samples lie on
    the surface (max |coord| = 1/√3 to 1e-5) and a sample's red ≈ 1 − its height fraction (vertex
    colours interpolated barycentrically, error < 1e-5)."""
    box = trimesh.creation.box(extents=(2, 2, 2))
    colors = np.where(box.vertices[:, 2:3] < 0, [255, 0, 0, 255], [0, 0, 255, 255]).astype(np.uint8)
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=colors)
    path = tmp_path / "box.ply"
    box.export(path)
    g = init_mod.init_from_mesh(path, n=2000, fit_radius=1.0)
    m = g.means.detach().numpy()
    assert g.n == 2000
    assert np.allclose(np.abs(m).max(axis=1), 1 / np.sqrt(3), atol=1e-5)
    frac = (m[:, 2] + 1 / np.sqrt(3)) / (2 / np.sqrt(3))
    assert np.allclose(g.rgb[:, 0].detach().numpy(), 1 - frac, atol=1e-5)
    assert np.allclose(g.rgb[:, 1].detach().numpy(), 0.0, atol=1e-6)


def test_mesh_texture_colours():
    """A textured quad whose 16×2 texture is green (left half) / white (right half): samples with u<0.4 are
    pure green and u>0.6 pure white (bilinear lookup stays inside a half there), to 1e-6."""
    from PIL import Image

    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = verts[:, :2].copy()
    tex = np.full((2, 16, 3), 255, np.uint8)
    tex[:, :8] = [0, 255, 0]
    img = Image.fromarray(tex)
    mesh = trimesh.Trimesh(verts, faces, visual=trimesh.visual.TextureVisuals(uv=uv, image=img), process=False)
    g = init_mod.init_from_mesh(mesh, n=400)
    x = g.means[:, 0].detach().numpy()
    rgb = g.rgb.detach().numpy()
    left, right = x < 0.4, x > 0.6
    assert np.allclose(rgb[left], [0, 1, 0], atol=1e-6)
    assert np.allclose(rgb[right], [1, 1, 1], atol=1e-6)


def test_missing_files_and_zero_gaussians(tmp_path):
    with pytest.raises(FileNotFoundError):
        init_mod.load_ply(tmp_path / "nope.ply")
    with pytest.raises(FileNotFoundError):
        init_mod.init_from_mesh(tmp_path / "nope.obj")
    empty = splat_data.SplatData(
        means=np.zeros((0, 3), np.float32), sh_dc=np.zeros((0, 3), np.float32), sh_rest=np.zeros((0, 0, 3), np.float32),
        opacity_logits=np.zeros(0, np.float32), log_scales=np.zeros((0, 3), np.float32), quats=np.zeros((0, 4), np.float32),
    )
    with pytest.raises(ValueError, match="zero Gaussians"):
        init_mod.ply_to_gaussians(empty)


@pytest.mark.parametrize("ext", ["glb", "obj", "ply"])
def test_mesh_files_come_in_by_their_conventions(tmp_path, ext):
    """A tall box (0.2 × 0.4 × 1.0 along Blender's x, y, z) with a colour per height, written by the
    project's own exporter (glTF Y-up with linear COLOR_0, OBJ Y-up, PLY Z-up): load_mesh_file gives the
    same vertices in the backend's Z-up frame (1e-6) and the same sRGB colours (±1 of 255), so a mesh the
    project wrote, or any glTF, initialises Gaussians standing up and in its colours."""
    from interactive3d.backend.stage2 import mesh_files

    box = trimesh.creation.box(extents=(0.2, 0.4, 1.0))
    v = np.asarray(box.vertices, np.float32) + np.float32([0.1, 0.2, 0.5])
    c = np.where(v[:, 2:3] > 0.5, [200, 40, 30, 255], [20, 90, 220, 255]).astype(np.uint8)
    f = np.asarray(box.faces, np.int32)
    path = tmp_path / f"box.{ext}"
    writer = {"glb": lambda: mesh_files.glb_bytes(v, f, c), "obj": lambda: mesh_files.obj_files(v, f, c, stem="box")[".obj"],
              "ply": lambda: mesh_files.ply_bytes(v, f, c)}[ext]
    path.write_bytes(writer())
    mesh = init_mod.load_mesh_file(path)
    got = np.asarray(mesh.vertices)
    d = np.linalg.norm(got[:, None] - v[None], axis=2)
    assert d.min(axis=1).max() < 1e-6 and d.min(axis=0).max() < 1e-6
    cols = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(int)
    assert np.abs(cols - c[d.argmin(axis=1), :3]).max() <= 1
    g = init_mod.init_from_mesh(path, n=300)
    assert g.means[:, 2].max() - g.means[:, 2].min() > 0.95  # standing up
