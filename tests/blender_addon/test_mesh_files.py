"""Mesh files (backend/stage2/mesh_files.py) through Blender's own importers in real (headless) bpy.

Each file must come in where the add-on's own mesh import (splat.mesh_object_from_arrays at the splat
object's matrix_world) puts the mesh, with the field's colours: GLB via bpy.ops.import_scene.gltf, OBJ
via wm.obj_import, PLY via wm.ply_import, all with their default options."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from scipy.spatial import cKDTree  # noqa: E402

from interactive3d.backend.stage2 import mesh_files  # noqa: E402
from interactive3d.blender_addon import splat  # noqa: E402


def _colour(p: np.ndarray) -> np.ndarray:
    """The 'field': smooth sRGB colours in [0.1, 0.9] that differ along every axis."""
    return np.stack([0.5 + 0.4 * np.sin(3 * p[:, 0]), 0.5 + 0.4 * np.cos(2 * p[:, 1]), 0.5 + 0.4 * np.sin(2 * p[:, 2] + 1)], axis=1)


def _mesh():
    """An ellipsoid off the origin, taller along Blender's Z than along X or Y (so a lost axis swap shows)."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2)
    v = (m.vertices * [0.3, 0.5, 0.9] + [0.1, -0.2, 0.4]).astype(np.float32)
    rgb = _colour(v.astype(np.float64))
    c = np.concatenate([np.round(rgb * 255), np.full((len(v), 1), 255)], axis=1).astype(np.uint8)
    return v, m.faces.astype(np.int32), c


@pytest.fixture()
def scene_with_splat():
    """An empty scene with a splat object (identity transform, as after an import or a backend session)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    state = np.zeros((4, 14), np.float32)
    state[:, 6], state[:, 7:10], state[:, 10] = 0.9, 0.01, 1.0
    return splat.new_splat_object("I3D Splats", state)


def _world_vertices(obj) -> np.ndarray:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3).astype(np.float64)
    m = np.array(obj.matrix_world, np.float64)
    return co @ m[:3, :3].T + m[:3, 3]


def _srgb_per_vertex(obj) -> np.ndarray:
    """[V,3] the object's colour attribute as sRGB, per vertex (corner colours averaged onto their vertex)."""
    me = obj.data
    attr = me.color_attributes.active_color or me.color_attributes[0]
    vals = np.empty(len(attr.data) * 4, np.float32)
    attr.data.foreach_get("color_srgb", vals)
    vals = vals.reshape(-1, 4)[:, :3].astype(np.float64)
    if attr.domain == "POINT":
        return vals
    idx = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", idx)
    out, count = np.zeros((len(me.vertices), 3)), np.zeros(len(me.vertices))
    np.add.at(out, idx, vals)
    np.add.at(count, idx, 1)
    return out / np.maximum(count, 1)[:, None]


def _import(kind: str, path) -> bpy.types.Object:
    before = set(bpy.data.objects)
    if kind == "glb":
        assert bpy.ops.import_scene.gltf(filepath=str(path)) == {"FINISHED"}
    elif kind == "obj":
        assert bpy.ops.wm.obj_import(filepath=str(path)) == {"FINISHED"}
    else:
        assert bpy.ops.wm.ply_import(filepath=str(path)) == {"FINISHED"}
    new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    assert len(new) == 1
    return new[0]


def _write(kind: str, tmp_path, v, f, c, **tex):
    path = tmp_path / f"mesh.{kind}"
    if kind == "glb":
        path.write_bytes(mesh_files.glb_bytes(v, f, c, **tex))
    elif kind == "obj":
        for suffix, data in mesh_files.obj_files(v, f, c, stem="mesh", **tex).items():
            path.with_suffix(suffix).write_bytes(data)
    else:
        path.write_bytes(mesh_files.ply_bytes(v, f, c))
    return path


@pytest.mark.parametrize("kind", ["glb", "obj", "ply"])
def test_blender_importers_put_the_mesh_where_the_addon_does(tmp_path, scene_with_splat, kind):
    """Every vertex Blender's importer makes lies on a vertex of the add-on's mesh object (imported at the
    splat object's transform) within 1e-6 and vice versa; the height is the ellipsoid's 1.8 along Z (not
    lying on its side); its colours, read as sRGB, are the field's within 1e-3 (< ¼ of an 8-bit step),
    so glTF's COLOR_0 is linear and OBJ/PLY colours are sRGB as Blender reads them."""
    v, f, c = _mesh()
    addon_obj = splat.mesh_object_from_arrays("I3D Splats Mesh", v, f, c, scene_with_splat.matrix_world)
    want = _world_vertices(addon_obj)
    got_obj = _import(kind, _write(kind, tmp_path, v, f, c))
    got = _world_vertices(got_obj)
    d_fwd, idx = cKDTree(want).query(got)
    d_back, _ = cKDTree(got).query(want)
    assert d_fwd.max() < 1e-6 and d_back.max() < 1e-6, (d_fwd.max(), d_back.max())
    assert got[:, 2].max() - got[:, 2].min() == pytest.approx(1.8, abs=0.02)
    assert len(got_obj.data.polygons) == len(f)
    np.testing.assert_allclose(_srgb_per_vertex(got_obj), c[idx, :3] / 255.0, atol=1e-3)
    np.testing.assert_allclose(_srgb_per_vertex(addon_obj)[idx], c[idx, :3] / 255.0, atol=1e-3)


@pytest.mark.parametrize("kind", ["glb", "obj"])
def test_textured_files_import_with_uvs_and_an_srgb_image_material(tmp_path, scene_with_splat, kind):
    """A textured GLB / OBJ+MTL+PNG: Blender's importer gives the same UVs per corner (v-up, so glTF's
    flipped v is undone) within 1e-6, and a material whose image texture (sRGB, the PNG's size) feeds the
    Principled BSDF's Base Color."""
    v, f, c = _mesh()
    uvs = np.stack([0.1 + 0.8 * (v[:, 0] - v[:, 0].min()) / np.ptp(v[:, 0]), 0.05 + 0.3 * (v[:, 2] - v[:, 2].min()) / np.ptp(v[:, 2])], axis=1).astype(np.float32)
    tex = np.zeros((64, 32, 4), np.uint8)
    tex[..., 0], tex[..., 3] = np.arange(64, dtype=np.uint8)[:, None] * 4, 255
    obj = _import(kind, _write(kind, tmp_path, v, f, c, uvs=uvs, texture=tex))
    me = obj.data
    loops_v = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", loops_v)
    uv_got = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers.active.data.foreach_get("uv", uv_got)
    _, idx = cKDTree(v.astype(np.float64)).query(_world_vertices(obj))
    np.testing.assert_allclose(uv_got.reshape(-1, 2), uvs[idx[loops_v]], atol=1e-6)
    mat = me.materials[0]
    images = [n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(images) == 1 and tuple(images[0].image.size) == (32, 64)
    assert images[0].image.colorspace_settings.name == "sRGB"
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].is_linked


def test_addon_textured_mesh_object_has_uvs_image_and_colours(scene_with_splat):
    """splat.mesh_object_from_arrays with uvs and a texture (the add-on's import of a textured
    stage2.extract_mesh reply): per-corner UVs equal the vertex UVs, the image holds the texture (rows
    flipped to Blender's bottom-up order, sRGB, packed), the material samples it into Base Color, and the
    vertex colour attribute stays."""
    v, f, c = _mesh()
    rng = np.random.default_rng(0)
    uvs = rng.random((len(v), 2)).astype(np.float32)
    tex = rng.integers(0, 256, (16, 8, 4)).astype(np.uint8)
    obj = splat.mesh_object_from_arrays("T", v, f, c, scene_with_splat.matrix_world, uvs=uvs, texture=tex)
    me = obj.data
    got = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers.active.data.foreach_get("uv", got)
    np.testing.assert_array_equal(got.reshape(-1, 2), uvs[f.ravel()])
    node = next(n for n in me.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    img = node.image
    px = np.empty(16 * 8 * 4, np.float32)
    img.pixels.foreach_get(px)
    np.testing.assert_allclose(px.reshape(16, 8, 4)[::-1] * 255.0, tex, atol=1e-3)
    assert img.colorspace_settings.name == "sRGB" and img.packed_file is not None
    bsdf = next(n for n in me.materials[0].node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node == node
    assert me.color_attributes.active_color is not None
