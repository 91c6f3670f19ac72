"""Mesh extraction (backend/stage2/mesh.py): marching cubes of the field's density, colours, floaters, export."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.mesh import (
    MeshConfig,
    MeshError,
    MeshResult,
    export_mesh,
    extract_mesh,
)
from interactive3d.backend.stage2.nerf import FieldOutput, NeRFConfig, NeRFField

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
from shapes import BareSession, chamfer, surface, surfel_sample  # noqa: E402  (scripts/bench/shapes.py)

TINY = NeRFConfig(grid=HashGridConfig(n_levels=2, n_features=2, log2_table_size=10, base_resolution=4), hidden=8)


def _sphere_field():
    """σ = exp(10(1 − |x|/0.5)) exactly (MLP output zeroed): the σ = 1 iso-surface is the sphere r = 0.5."""
    f = NeRFField(TINY, backend="torch")
    with torch.no_grad():
        f.density_mlp[2].weight.zero_()
        f.density_mlp[2].bias.zero_()
    return f


class _WithFloater(torch.nn.Module):
    """The sphere plus a tiny dense ball at (0.8, 0.8, 0.8) (a floater) and a colour gradient in x."""

    def __init__(self, base):
        super().__init__()
        self.base, self.cfg, self.device = base, base.cfg, base.device

    def forward(self, x):
        d = self.base(x).density + 100.0 * ((x - 0.8).norm(dim=-1) < 0.05).float()
        rgb = torch.stack([(x[:, 0] + 1) / 2, torch.full_like(x[:, 0], 0.25), torch.full_like(x[:, 0], 0.75)], dim=-1)
        return FieldOutput(d, rgb)


def test_sphere_chamfer_colours_and_floater_removed(tmp_path):
    """64³ marching cubes of the analytic sphere r=0.5: Chamfer to 4000 exact surface points < 2% of the
    diameter (it is ~0.3%); outward normals (positive volume ≈ 4/3·π·0.5³ within 3%); the floater is
    dropped (1 component removed); vertex colours follow the field (red = (x+1)/2·255 to ±1)."""
    m = extract_mesh(_WithFloater(_sphere_field()), MeshConfig(resolution=64, surface="density", threshold=1.0))
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32 and m.colors.dtype == np.uint8
    assert m.colors.shape == (len(m.vertices), 4)
    assert m.removed_components == 1
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(4000, 3, generator=g)
    gt = (0.5 * gt / gt.norm(dim=-1, keepdim=True)).numpy()
    ch = chamfer(m.vertices, gt)
    assert ch < 0.02 * 1.0, ch
    import trimesh

    tm = trimesh.Trimesh(m.vertices, m.faces, process=False)
    assert abs(tm.volume - 4 / 3 * np.pi * 0.125) / (4 / 3 * np.pi * 0.125) < 0.03, tm.volume
    want_r = np.clip((m.vertices[:, 0] + 1) / 2 * 255 + 0.5, 0, 255).astype(int)
    assert np.abs(m.colors[:, 0].astype(int) - want_r).max() <= 1


class _Hollow(torch.nn.Module):
    """The sphere r=0.5 with an empty interior ball r=0.2 (an occluded void, as distillation leaves)."""

    def __init__(self, base):
        super().__init__()
        self.base, self.cfg, self.device = base, base.cfg, base.device

    def forward(self, x):
        out = self.base(x)
        return FieldOutput(torch.where(x.norm(dim=-1) < 0.2, torch.zeros_like(out.density), out.density), out.rgb)


class _Ball(torch.nn.Module):
    """σ = 400·sigmoid((0.5 − r)/0.01), optionally hollow inside r = 0.2. Along a radial ray from outside
    the optical depth is τ(r) = 400·0.01·softplus((0.5 − r)/0.01), so the 50 % opacity surface is the
    sphere r* = 0.5 − 0.01·ln(exp(ln2/4) − 1) ≈ 0.5167."""

    R_STAR = 0.5 - 0.01 * float(np.log(np.expm1(np.log(2) / 4.0)))

    def __init__(self, hollow: bool = False):
        super().__init__()
        self.cfg, self.device, self.hollow = NeRFConfig(), torch.device("cpu"), hollow

    def forward(self, x):
        r = x.norm(dim=-1)
        d = 400.0 * torch.sigmoid((0.5 - r) / 0.01)
        if self.hollow:
            d = torch.where(r < 0.2, torch.zeros_like(d), d)
        return FieldOutput(d, torch.full_like(x, 0.5))


def test_opacity_surface_of_a_soft_ball_and_its_voids():
    """surface='opacity' (default) meshes where the accumulated opacity from outside is 0.5: at 96³ every
    vertex lies within half a grid cell (0.0105) of the analytic r* (measured +0.003 … +0.008: off the
    axes the six axis paths cross the edge obliquely, which moves the surface out a little), Chamfer to
    that sphere < 2 % of its diameter (1.3 % measured, mostly vertex spacing); a ball hollow inside
    meshes identically (τ there is large, so no void is seen)."""
    solid = extract_mesh(_Ball(), MeshConfig(resolution=96))
    r = np.linalg.norm(solid.vertices, axis=1)
    print(f"r* {_Ball.R_STAR:.4f}: vertices r in [{r.min():.4f}, {r.max():.4f}], mean {r.mean():.4f}")
    assert np.abs(r - _Ball.R_STAR).max() < 0.5 * 2.0 / 95
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(4000, 3, generator=g)
    gt = (_Ball.R_STAR * gt / gt.norm(dim=-1, keepdim=True)).numpy()
    assert chamfer(solid.vertices, gt) < 0.02 * 2 * _Ball.R_STAR
    hollow = extract_mesh(_Ball(hollow=True), MeshConfig(resolution=96))
    assert np.array_equal(hollow.faces, solid.faces) and np.array_equal(hollow.vertices, solid.vertices)


def test_interior_voids_filled():
    """A hollow sphere meshes as the outer surface only when fill_cavities is on (default): same face
    count as the solid sphere, all vertices at r ≈ 0.5 (> 0.45); with it off the inner r=0.2 surface
    appears (more faces, vertices at r < 0.25)."""
    solid = extract_mesh(_sphere_field(), MeshConfig(resolution=48, surface="density", threshold=1.0))
    filled = extract_mesh(_Hollow(_sphere_field()), MeshConfig(resolution=48, surface="density", threshold=1.0))
    raw = extract_mesh(_Hollow(_sphere_field()), MeshConfig(resolution=48, surface="density", threshold=1.0, fill_cavities=False))
    assert len(filled.faces) == len(solid.faces)
    assert np.linalg.norm(filled.vertices, axis=1).min() > 0.45
    assert len(raw.faces) > len(solid.faces) and np.linalg.norm(raw.vertices, axis=1).min() < 0.25


def test_export_formats_load_in_trimesh(tmp_path):
    """GLB/OBJ/PLY written atomically reload in trimesh (an independent reader) with the same faces and
    colours: sRGB bytes in OBJ/PLY, linear floats in the GLB's COLOR_0 (the field's green 0.25 → 0.0508);
    the GLB is +Y up (the sphere's red gradient in Blender's x stays along x; its z is glTF's −y)."""
    import trimesh

    from interactive3d.backend.stage2.mesh_files import srgb_to_linear

    m = extract_mesh(_WithFloater(_sphere_field()), MeshConfig(resolution=24, surface="density", threshold=1.0))
    for fmt in ("glb", "obj", "ply"):
        p = export_mesh(m, tmp_path / f"m.{fmt}")
        loaded = trimesh.load(p, force="mesh", process=False)
        assert len(loaded.faces) == len(m.faces), fmt
        if fmt == "glb":  # a material (metallic 0) comes with it: trimesh keeps COLOR_0 as a float attribute
            geom = list(trimesh.load(p, process=False).geometry.values())[0]  # force="mesh" drops the attribute
            cols = 255.0 * np.asarray(geom.visual.vertex_attributes["color"], np.float64)[:, :3]
        else:
            cols = np.asarray(loaded.visual.vertex_colors)[:, :3]
        want = m.colors[:, 1].mean() if fmt != "glb" else 255 * srgb_to_linear(m.colors[:, 1] / 255.0).mean()
        assert cols.shape[0] == len(loaded.vertices) and cols[:, 1].mean() == pytest.approx(want, abs=1.5), fmt
        if fmt == "glb":
            lv = np.asarray(loaded.vertices)
            np.testing.assert_allclose(np.sort(lv[:, 2]), np.sort(-m.vertices[:, 1]), atol=1e-6)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.glb", "m.obj", "m.ply"]  # no temp files left


_BPY_IMPORT = r"""
import json, sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
obj = [o for o in bpy.context.scene.objects if o.type == "MESH"][0]
me = obj.data
attrs = {a.name: (a.domain, a.data_type) for a in me.attributes}
ca = me.color_attributes[0]
vals = [0.0] * (len(ca.data) * 4)
ca.data.foreach_get("color", vals)
print(json.dumps({"verts": len(me.vertices), "faces": len(me.polygons), "color": ca.name, "mean_g": sum(vals[1::4]) / len(ca.data)}))
"""


def test_glb_imports_in_bpy_with_vertex_colours(tmp_path):
    """bpy.ops.import_scene.gltf reads the GLB: same face count, a colour attribute whose mean green is
    the field's byte 64 decoded from sRGB (linear 0.0513) to 0.002: COLOR_0 is linear, as glTF defines."""
    pytest.importorskip("bpy")
    m = extract_mesh(_sphere_field(), MeshConfig(resolution=20, surface="density", threshold=1.0))
    m.colors[:, :3] = (64, 64, 191)
    p = export_mesh(m, tmp_path / "s.glb")
    out = subprocess.run([sys.executable, "-c", _BPY_IMPORT, str(p)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
    assert info["faces"] == len(m.faces)
    g = 64 / 255
    lin = ((g + 0.055) / 1.055) ** 2.4
    assert abs(info["mean_g"] - lin) < 0.002, info


def test_bad_inputs():
    """Resolution above the cap, a threshold with no surface, an unknown format: MeshError (ValueError)."""
    with pytest.raises(MeshError, match="resolution"):
        MeshConfig(resolution=4096)
    with pytest.raises(MeshError, match="no surface"):
        extract_mesh(_sphere_field(), MeshConfig(resolution=8, surface="density", threshold=1e9))
    with pytest.raises(MeshError, match="transparent"):
        extract_mesh(_sphere_field(), MeshConfig(resolution=8, opacity_level=1 - 1e-12))
    for bad in ({"surface": "sdf"}, {"opacity_level": 0.0}, {"opacity_level": 1.0}):
        with pytest.raises(MeshError):
            MeshConfig(**bad)
    m = MeshResult(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.int32), np.zeros((3, 4), np.uint8), 0)
    with pytest.raises(MeshError, match="format"):
        export_mesh(m, "/tmp/x.fbx")


@pytest.mark.slow
@pytest.mark.parametrize("geometry", [True, False], ids=["default-loss", "eq7-only"])
def test_mesh_of_a_distilled_sphere_sample(tmp_path, geometry):
    """Distil a Gaussian sample of the sphere r = 0.5 (80 steps on a 24-view pool of 128² renders,
    8-level 2^14 grid, 64 samples per ray: ≈ 12 s on CPU), extract the default (50 % opacity) surface at
    96³: the Chamfer distance to the exact sphere is < 2 % of its bounding box's diagonal (issue 17), with the
    default loss (Eq. 7 + opacity 0.1 + depth 0.03 + orientation 0.01) and with Eq. 7 alone. The sample is
    scripts/bench/shapes.py's (drawn in float64, as mesh_quality.py's). Measured on this AMD EPYC, shared
    (2026-12-07): 0.89 % and 1.17 % (Chamfer 0.0155, 0.0202; radius 0.494 ± 0.014, 0.487 ± 0.019), with the
    4× supersampled targets (issue 26) 1.07 % and 1.11 % (0.0185, 0.0192; radius 0.486 ± 0.017, 0.488 ± 0.015); the
    earlier float32 draw of the same sphere gave 1.17 % and 1.11 % here, 0.83 % and 1.15 % on the machine of
    the earlier stops: the 80 training steps amplify float rounding and the sample, so which loss wins at this
    length is not asserted (scripts/bench/mesh_quality.py measures the default settings: 0.78 %). The GLB reloads in trimesh with
    the vertex colours (linear COLOR_0; back in sRGB, red follows x: correlation > 0.9)."""
    import trimesh
    from interactive3d.backend.stage2.distill import DistillConfig, DistillJob
    from interactive3d.backend.stage2.rays import RenderConfig
    from interactive3d.backend.stage2.state import SLOT

    s = BareSession(surfel_sample("sphere"))
    cfg = DistillConfig(
        steps=80, resolution=128, view_pool=24, rays_per_step=1024, lr_grid=0.03, lr_mlp=0.01,
        render=RenderConfig(n_samples=64, stratified=True), occupancy_warmup=16, occupancy_every=8, preview_every=0,
        **({} if geometry else {"opacity_weight": 0.0, "depth_weight": 0.0, "orientation_weight": 0.0}),
    )
    field_cfg = NeRFConfig(grid=HashGridConfig(n_levels=8, n_features=2, log2_table_size=14), hidden=32)
    job = DistillJob(s, cfg, field_cfg, backend="torch")
    for i in range(cfg.steps):
        job.step(i)
    m = extract_mesh(s.extras[SLOT].field, MeshConfig(resolution=96))
    ch = chamfer(m.vertices, surface("sphere", 4000, seed=1)[0].numpy())
    r = np.linalg.norm(m.vertices, axis=1)
    print(f"geometry terms {geometry}: Chamfer {ch:.4f}, vertex radius {r.mean():.4f} ± {r.std():.4f}, {len(m.faces)} faces")
    assert ch < 0.02 * math.sqrt(3.0), ch  # the bounding box of r = 0.5 is the unit cube
    scene = trimesh.load(export_mesh(m, tmp_path / "sphere.glb"), process=False)
    (loaded,) = scene.geometry.values()
    assert len(loaded.faces) == len(m.faces)
    # glTF keeps COLOR_0 as linear floats beside a material (trimesh: a float vertex attribute); x is x in
    # both Blender's frame and glTF's +Y-up one
    from interactive3d.backend.maths.conventions import linear_to_srgb

    red = linear_to_srgb(np.asarray(loaded.visual.vertex_attributes["color"], np.float64)[:, 0])
    assert np.corrcoef(red, np.asarray(loaded.vertices)[:, 0])[0, 1] > 0.9


def _smooth_colour(p):
    p = np.asarray(p, np.float64)
    return np.stack([0.5 + 0.4 * np.sin(3 * p[:, 0]), 0.5 + 0.4 * np.cos(2 * p[:, 1]), 0.5 + 0.4 * np.sin(2 * p[:, 2] + 1)], axis=1)


def test_baked_texture_matches_the_colour_at_the_vertices_and_inside_faces():
    """xatlas unwrap + bake at 256² (padding 4) of an ellipsoid coloured by a smooth function (gradient
    ≤ 1.2 per unit), with ten sub-micrometre slivers: sampled bilinearly at each vertex's UV the texture
    gives the colour there within 0.02 (max; measured 0.010) and 0.003 (mean; measured 0.0013), and
    likewise at 5000 random points inside faces; every vertex UV lies on a covered texel; vertex colours
    follow the split vertices."""
    import trimesh

    from interactive3d.backend.stage2 import mesh_texture
    from interactive3d.backend.stage2.mesh import texture_mesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    v = (sphere.vertices * [0.3, 0.5, 0.9] + [0.1, -0.2, 0.4]).astype(np.float32)
    # marching cubes makes sub-micrometre slivers that xatlas leaves out of its charts (at UV 0,0); ten of
    # them, each sharing a corner with the surface, must not paint across the atlas
    fan = sphere.faces[:10]
    extra = np.stack([v[fan[:, 0]], v[fan[:, 0]] + np.float32(1e-7) * (v[fan[:, 1]] - v[fan[:, 0]])], axis=1).reshape(-1, 3)[1::2]
    v = np.concatenate([v, extra, extra + np.float32(1e-7)])
    n0 = len(sphere.vertices)
    slivers = np.stack([fan[:, 0], n0 + np.arange(10), n0 + 10 + np.arange(10)], axis=1)
    faces = np.concatenate([sphere.faces, slivers]).astype(np.int32)
    c = np.concatenate([np.round(_smooth_colour(v) * 255), np.full((len(v), 1), 255)], axis=1).astype(np.uint8)
    r = texture_mesh(MeshResult(v, faces, c, 0), _smooth_colour, size=256, padding=4)
    assert r.texture.shape == (256, 256, 4) and r.texture.dtype == np.uint8 and r.uvs.shape == (len(r.vertices), 2)
    assert len(r.faces) == len(faces) and len(r.vertices) >= len(v)  # seams split vertices
    assert np.all((r.uvs >= 0) & (r.uvs <= 1))
    err = np.abs(mesh_texture.sample(r.texture, r.uvs)[:, :3] / 255.0 - _smooth_colour(r.vertices))
    assert err.max() < 0.02 and err.mean() < 0.003, (err.max(), err.mean())
    assert np.all(mesh_texture.sample(r.texture, r.uvs)[:, 3] == 255)
    rng = np.random.default_rng(0)
    ft, b = rng.integers(0, len(r.faces), 5000), rng.dirichlet([1, 1, 1], 5000)
    pts = (b[:, :, None] * r.vertices[r.faces[ft]]).sum(axis=1)
    uv = (b[:, :, None] * r.uvs[r.faces[ft]]).sum(axis=1)
    err = np.abs(mesh_texture.sample(r.texture, uv)[:, :3] / 255.0 - _smooth_colour(pts))
    assert err.max() < 0.02 and err.mean() < 0.003, (err.max(), err.mean())
    dist, nearest = torch.cdist(torch.from_numpy(r.vertices).double(), torch.from_numpy(v).double()).min(dim=1)
    exact = dist.numpy() == 0  # (sliver corners 1e-7 apart can tie)
    np.testing.assert_array_equal(r.colors[exact], c[nearest.numpy()][exact])


def test_textured_extraction_exports_glb_and_obj_mtl_png(tmp_path):
    """extract_mesh(texture=True) on the sphere field: the GLB has TEXCOORD_0 and a baseColorTexture PNG
    (no COLOR_0, which glTF would multiply in a second time); the OBJ names its MTL, which names the PNG
    (the texture itself, 128²); the texture's red follows the field's (x+1)/2 at the vertices to 0.03."""
    import struct

    from PIL import Image

    from interactive3d.backend.stage2 import mesh_texture

    m = extract_mesh(_WithFloater(_sphere_field()), MeshConfig(resolution=20, surface="density", threshold=1.0,
                                                               texture=True, texture_size=128, texture_padding=2))
    assert m.texture.shape == (128, 128, 4) and m.uvs.shape == (len(m.vertices), 2)
    red = mesh_texture.sample(m.texture, m.uvs)[:, 0] / 255.0
    assert np.abs(red - (m.vertices[:, 0] + 1) / 2).max() < 0.03
    glb = export_mesh(m, tmp_path / "t.glb").read_bytes()
    (jlen,) = struct.unpack_from("<I", glb, 12)
    doc = json.loads(glb[20:20 + jlen])
    prim = doc["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    assert doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] == {"index": 0}
    assert doc["images"][0]["mimeType"] == "image/png"
    export_mesh(m, tmp_path / "t.obj")
    obj = (tmp_path / "t.obj").read_text()
    assert "mtllib t.mtl" in obj and "usemtl" in obj and obj.count("\nvt ") == len(m.vertices)
    assert "map_Kd t.png" in (tmp_path / "t.mtl").read_text()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t.png")), m.texture)
    with pytest.raises(MeshError, match="texture_size"):
        MeshConfig(texture=True, texture_size=8)


_BPY_IMPORT_ALL = r"""
import json, sys, bpy
import numpy as np
out = {}
for path in sys.argv[1:]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    kind = path.rsplit(".", 1)[1]
    {"glb": lambda: bpy.ops.import_scene.gltf(filepath=path), "obj": lambda: bpy.ops.wm.obj_import(filepath=path),
     "ply": lambda: bpy.ops.wm.ply_import(filepath=path)}[kind]()
    obj = [o for o in bpy.context.scene.objects if o.type == "MESH"][0]
    me = obj.data
    co = np.empty(len(me.vertices) * 3, np.float32); me.vertices.foreach_get("co", co)
    m = np.array(obj.matrix_world)
    world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    ca = me.color_attributes[0]
    col = np.empty(len(ca.data) * 4, np.float32); ca.data.foreach_get("color_srgb", col)
    col = col.reshape(-1, 4)[:, :3]
    if ca.domain == "CORNER":  # one value per corner: give each vertex its corners' mean
        idx = np.empty(len(me.loops), np.int32); me.loops.foreach_get("vertex_index", idx)
        acc = np.zeros((len(me.vertices), 3)); np.add.at(acc, idx, col)
        col = acc / np.maximum(np.bincount(idx, minlength=len(me.vertices)), 1)[:, None]
    out[kind] = {"world": world.tolist(), "srgb": col.tolist(), "faces": len(me.polygons)}
print("JSON " + json.dumps(out))
"""


def test_blender_importers_place_and_colour_an_extracted_mesh_as_the_field(tmp_path):
    """A mesh extracted from a field (the sphere, red = (x+1)/2, green 0.25, blue 0.75), exported as
    GLB/OBJ/PLY by export_mesh and read back by Blender's own importers with default options: every
    imported vertex sits on an extracted vertex (≤ 1e-5; the splat object's frame, identity here, is
    the add-on's placement) and its colour read as sRGB is the field's colour there within half an
    8-bit step + 1e-3."""
    pytest.importorskip("bpy")
    f = _WithFloater(_sphere_field())
    m = extract_mesh(f, MeshConfig(resolution=20, surface="density", threshold=1.0))
    paths = [str(export_mesh(m, tmp_path / f"x.{k}")) for k in ("glb", "obj", "ply")]
    out = subprocess.run([sys.executable, "-c", _BPY_IMPORT_ALL, *paths], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads([l for l in out.stdout.splitlines() if l.startswith("JSON ")][-1][5:])
    for kind, info in got.items():
        world = np.array(info["world"])
        d = torch.cdist(torch.from_numpy(world), torch.from_numpy(m.vertices).double())
        dist, idx = d.min(dim=1)
        assert dist.max() < 1e-5 and info["faces"] == len(m.faces), kind
        with torch.no_grad():
            field_rgb = f(torch.from_numpy(m.vertices[idx.numpy()])).rgb.double().numpy()
        np.testing.assert_allclose(np.array(info["srgb"]), field_rgb, atol=0.5 / 255 + 1e-3, err_msg=kind)


class _CountingCalls(torch.nn.Module):
    """_WithFloater, recording the number of points of every field call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg, self.device, self.calls = inner, inner.cfg, inner.device, []

    def forward(self, x):
        self.calls.append(len(x))
        return self.inner(x)


def test_a_small_chunk_gives_the_same_mesh_and_texture_and_bounds_every_call():
    """extract_mesh with chunk 2^8 (a budget-starved server, ops_stage2.MIN_MESH_CHUNK is 2^12) against the
    default 2^18, on the sphere-with-floater field at 20³ with a 64² texture: the same vertices, faces, colours
    and texture, and no field call over the chunk — also where one slab of the grid (20² = 400 points) is more
    than the chunk, which the density grid used to query whole."""
    ref = extract_mesh(_WithFloater(_sphere_field()), MeshConfig(resolution=20, surface="density", threshold=1.0,
                                                                 texture=True, texture_size=64, texture_padding=2))
    field = _CountingCalls(_WithFloater(_sphere_field()))
    small = extract_mesh(field, MeshConfig(resolution=20, surface="density", threshold=1.0, texture=True,
                                           texture_size=64, texture_padding=2, chunk=256))
    assert field.calls and max(field.calls) <= 256
    for name in ("vertices", "faces", "colors", "texture", "uvs"):
        np.testing.assert_array_equal(getattr(small, name), getattr(ref, name), err_msg=name)
    for bad in (0, -5, 2.5):
        with pytest.raises(MeshError, match="chunk"):
            MeshConfig(chunk=bad)
