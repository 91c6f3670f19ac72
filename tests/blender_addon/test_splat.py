"""Splat objects in real (headless) bpy: state frames in and out, rotation order, Edit-Mode selection,
mesh objects from arrays, and the affine transform used by "apply object transform"."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
bmesh = pytest.importorskip("bmesh")

from interactive3d.blender_addon import geometry_nodes, splat  # noqa: E402
from interactive3d.protocol import splat_data  # noqa: E402


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


def random_state(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return np.concatenate([
        rng.normal(size=(n, 3)), rng.random((n, 3)), rng.random((n, 1)), rng.uniform(0.01, 0.2, (n, 3)),
        q / np.linalg.norm(q, axis=1, keepdims=True)], axis=1).astype(np.float32)


def quat_matrix(q) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def test_state_round_trip_is_bit_exact_and_count_changes_rebuild():
    """read_state(new_splat_object(s)) == s bit for bit (float32 foreach_set/get, no conversion), also
    after an update with fewer splats (mesh rebuilt to exactly N=700 vertices), with part masks kept."""
    state = random_state(1000)
    obj = splat.new_splat_object("splats", state)
    assert splat.is_splat_object(obj)
    np.testing.assert_array_equal(splat.read_state(obj), state)
    smaller = random_state(700, seed=1)
    parts = {"arm": np.arange(700) < 100, "head": np.arange(700) % 2 == 0}
    splat.apply_state(obj, smaller, parts=parts)
    assert len(obj.data.vertices) == 700
    np.testing.assert_array_equal(splat.read_state(obj), smaller)
    got = splat.read_parts(obj)
    assert sorted(got) == ["arm", "head"]
    np.testing.assert_array_equal(got["arm"], parts["arm"])
    np.testing.assert_array_equal(got["head"], parts["head"])
    assert obj.data.attributes["i3d_rotation"].data_type == "QUATERNION"


def test_bad_state_is_rejected_with_the_field_named():
    """Wrong shape / dtype / object: ValueError or TypeError whose message names the argument."""
    obj = splat.new_splat_object("s", random_state(3))
    with pytest.raises(ValueError, match=r"state must have shape \[N,14\]"):
        splat.apply_state(obj, np.zeros((3, 13), np.float32))
    with pytest.raises(TypeError, match="state must be floating"):
        splat.apply_state(obj, np.zeros((3, 14), np.int32))
    with pytest.raises(ValueError, match=r"parts\['x'\]"):
        splat.apply_state(obj, random_state(3), parts={"x": np.ones(4, bool)})
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    with pytest.raises(TypeError, match="obj must be a mesh object"):
        splat.read_state(cam)


def test_asymmetric_gaussian_instance_matrix_is_w_first():
    """One Gaussian with scales (0.1, 0.2, 0.4) and a rotation without symmetry: the evaluated ellipsoid
    instance's 3x3 equals R(q) · diag(s) · multiplier with q read w-first (max error < 1e-5), and differs
    by > 0.05 from the matrix an x-y-z-w reading would give (the bug BLENDER.md warns about)."""
    q = np.array([0.8, 0.1, -0.5, 0.3])
    q /= np.linalg.norm(q)
    state = np.array([[0.3, -0.2, 0.5, 0.2, 0.4, 0.6, 0.9, 0.1, 0.2, 0.4, *q]], np.float32)
    obj = splat.new_splat_object("one", state, light=False)
    mult = geometry_nodes.get_input(obj.modifiers[splat.MODIFIER_NAME], "scale_multiplier")
    dg = bpy.context.evaluated_depsgraph_get()
    mats = [np.array(i.matrix_world) for i in dg.object_instances if i.is_instance]
    assert len(mats) == 1
    expected = quat_matrix(q) @ np.diag([0.1, 0.2, 0.4]) * mult
    np.testing.assert_allclose(mats[0][:3, :3], expected, atol=1e-5)
    np.testing.assert_allclose(mats[0][:3, 3], state[0, :3], atol=1e-6)
    xyzw = quat_matrix(np.roll(q, -1)) @ np.diag([0.1, 0.2, 0.4]) * mult
    assert np.abs(xyzw - mats[0][:3, :3]).max() > 0.05


def test_edit_mode_selection_maps_to_indices():
    """Vertices selected in Edit Mode with bmesh (as any selection tool does) come back as exactly those
    Gaussian indices — in Edit Mode and after returning to Object Mode."""
    obj = splat.new_splat_object("s", random_state(500))
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    wanted = np.array([0, 3, 17, 250, 499])
    bm = bmesh.from_edit_mesh(obj.data)
    bm.verts.ensure_lookup_table()
    for v in bm.verts:
        v.select_set(False)
    for i in wanted:
        bm.verts[int(i)].select_set(True)
    bmesh.update_edit_mesh(obj.data)
    np.testing.assert_array_equal(splat.selected_indices(obj), wanted)
    bpy.ops.object.mode_set(mode="OBJECT")
    np.testing.assert_array_equal(splat.selected_indices(obj), wanted)
    # Object-mode selection by foreach_set (what select-by-attribute scripts do).
    sel = np.zeros(500, bool)
    sel[100:110] = True
    obj.data.vertices.foreach_set("select", sel)
    np.testing.assert_array_equal(splat.selected_indices(obj), np.arange(100, 110))


def test_state_update_during_edit_mode_keeps_selection_and_survives_exit():
    """A backend update arriving while the artist is in Edit Mode: the new positions are what the
    edit-mesh shows (exact), the 3 selected vertices stay selected, and leaving Edit Mode keeps the new
    state (the edit-mesh does not write the old positions back)."""
    state = random_state(50)
    obj = splat.new_splat_object("s", state)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    bm.verts.ensure_lookup_table()
    for v in bm.verts:
        v.select_set(v.index in (2, 7, 40))
    bmesh.update_edit_mesh(obj.data)
    new = random_state(50, seed=9)
    splat.apply_state(obj, new)
    bm = bmesh.from_edit_mesh(obj.data)
    bm.verts.ensure_lookup_table()
    np.testing.assert_array_equal(np.array([v.co for v in bm.verts], np.float32), new[:, :3])
    np.testing.assert_array_equal(splat.selected_indices(obj), [2, 7, 40])
    np.testing.assert_array_equal(splat.read_state(obj), new)  # readable in Edit Mode too
    bpy.ops.object.mode_set(mode="OBJECT")
    np.testing.assert_array_equal(splat.read_state(obj), new)


def test_mesh_object_from_arrays_has_faces_colours_and_transform():
    """A 2-triangle mesh with uint8 sRGB colours: 4 vertices, 2 faces, colours read back within 1/255,
    the vertex-colour material, and the given matrix_world."""
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], np.uint8)
    matrix = np.eye(4)
    matrix[:3, 3] = (1, 2, 3)
    obj = splat.mesh_object_from_arrays("mesh", verts, faces, colors, matrix)
    assert (len(obj.data.vertices), len(obj.data.polygons)) == (4, 2)
    got = np.empty(16, np.float32)
    obj.data.color_attributes["Col"].data.foreach_get("color_srgb", got)
    np.testing.assert_allclose(got.reshape(4, 4)[:, :3], colors / 255.0, atol=1 / 255)
    np.testing.assert_allclose(np.array(obj.matrix_world), matrix, atol=1e-7)
    assert obj.data.materials[0].name == "I3D Vertex Colour"
    with pytest.raises(ValueError, match="faces index vertices outside"):
        splat.mesh_object_from_arrays("bad", verts, faces + 2, None, matrix)


def covariance(data) -> np.ndarray:
    q = data.quats.astype(np.float64)
    r = np.stack([quat_matrix(x) for x in q])
    s = np.exp(data.log_scales.astype(np.float64))
    m = r * s[:, None, :]
    return m @ np.swapaxes(m, 1, 2)


@pytest.mark.parametrize("kind", ["rotation_uniform", "nonuniform_shear", "mirror"])
def test_transform_splat_data_is_exact_for_any_affine(kind):
    """μ' = Aμ + t and Σ' = AΣAᵀ (relative error < 1e-5) for a similarity, a non-uniform scale with shear
    and a mirror; output quaternions are unit with w ≥ 0."""
    rng = np.random.default_rng(3)
    data = splat_data.state_to_splat(random_state(300, seed=3))
    m = np.eye(4)
    angle = 0.7
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    m[:3, :3] = {"rotation_uniform": 2.0 * rot,
                 "nonuniform_shear": rot @ np.array([[1.0, 0.3, 0], [0, 2.0, 0], [0, 0, 0.5]]),
                 "mirror": np.diag([-1.0, 1.0, 1.5]) @ rot}[kind]
    m[:3, 3] = rng.normal(size=3)
    out = splat.transform_splat_data(data, m)
    np.testing.assert_allclose(out.means, data.means @ m[:3, :3].T + m[:3, 3], atol=1e-5)
    a = m[:3, :3]
    want = a @ covariance(data) @ a.T
    got = covariance(out)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(out.quats, axis=1), 1.0, atol=1e-6)
    assert (out.quats[:, 0] >= 0).all()
