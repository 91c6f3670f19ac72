"""i3d.import_ply / i3d.export_ply through the registered operators in real (headless) bpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import interactive3d.blender_addon as addon  # noqa: E402
from interactive3d.blender_addon import geometry_nodes, materials, splat  # noqa: E402
from interactive3d.protocol import ply, splat_data, splats  # noqa: E402

from tests.blender_addon.test_geometry_nodes import evaluated  # noqa: E402


@pytest.fixture(autouse=True)
def registered_empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if not hasattr(bpy.types, "I3D_OT_import_ply"):
        addon.register()
    yield


def random_splats(n: int, sh_degree: int = 1, seed: int = 0) -> splat_data.SplatData:
    rng = np.random.default_rng(seed)
    m = (sh_degree + 1) ** 2 - 1
    f = np.float32
    return splat_data.SplatData(
        means=rng.normal(size=(n, 3)).astype(f), sh_dc=rng.normal(size=(n, 3)).astype(f),
        sh_rest=(0.1 * rng.normal(size=(n, m, 3))).astype(f), opacity_logits=rng.normal(size=n).astype(f),
        log_scales=rng.uniform(-5, -1, (n, 3)).astype(f), quats=rng.normal(size=(n, 4)).astype(f),
        normals=rng.normal(size=(n, 3)).astype(f), extra={"confidence": rng.random(n).astype(f)})


def import_file(path) -> bpy.types.Object:
    assert bpy.ops.i3d.import_ply(filepath=str(path)) == {"FINISHED"}
    return bpy.context.view_layer.objects.active


def test_import_gives_attributes_and_modifier_with_the_files_values(tmp_path):
    """Positions equal the file's x y z bit for bit; i3d_color/opacity/scale/rotation equal
    protocol.splat_data.splat_to_state of the file (bit for bit: the same float32 code path); the object has the
    geometry-nodes modifier with the splat group and identity matrix_world."""
    data = random_splats(400)
    path = tmp_path / "in.ply"
    ply.write_ply(path, data)
    obj = import_file(path)
    assert splat.is_splat_object(obj) and len(obj.data.vertices) == 400
    want = splat_data.splat_to_state(ply.read_ply(path))
    np.testing.assert_array_equal(splat.read_state(obj), want)
    mod = obj.modifiers[splat.MODIFIER_NAME]
    assert mod.type == "NODES" and mod.node_group.name == "I3D Splats"
    np.testing.assert_array_equal(np.array(obj.matrix_world), np.eye(4))


def test_export_round_trip_is_byte_identical(tmp_path):
    """import → export (local coordinates) writes the same bytes: every pre-activation value (SH degree 1,
    unnormalised quaternions, normals, an extra property) survives exactly."""
    data = random_splats(300)
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    ply.write_ply(src, data)
    import_file(src)
    assert bpy.ops.i3d.export_ply(filepath=str(dst)) == {"FINISHED"}
    assert dst.read_bytes() == src.read_bytes()


def test_export_after_a_state_update_keeps_untouched_rows_exact(tmp_path):
    """After the backend changes rows 0-49 (positions, colours, scales, rotations), rows 50-299 are still
    written from the file's exact values and rows 0-49 from the new state (activated back within 1e-6);
    the changed rows lose their higher SH bands (they are zero)."""
    data = random_splats(300)
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    ply.write_ply(src, data)
    obj = import_file(src)
    state = splat.read_state(obj)
    rng = np.random.default_rng(5)
    state[:50, 0:3] += 0.5
    state[:50, 3:6] = rng.random((50, 3))
    state[:50, 7:10] *= 2.0
    q = rng.normal(size=(50, 4))
    state[:50, 10:14] = q / np.linalg.norm(q, axis=1, keepdims=True)
    splat.apply_state(obj, state)
    assert bpy.ops.i3d.export_ply(filepath=str(dst)) == {"FINISHED"}
    out = ply.read_ply(dst)
    for field in ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats", "normals"):
        np.testing.assert_array_equal(getattr(out, field)[50:], getattr(data, field)[50:], err_msg=field)
    np.testing.assert_allclose(splat_data.splat_to_state(out)[:50], state[:50], atol=1e-6)
    assert not out.sh_rest[:50].any()


def test_export_apply_transform_writes_world_coordinates(tmp_path):
    """With "Apply Object Transform" the file holds matrix_world · μ and A Σ Aᵀ (checked by reading it
    back: means within 1e-5, covariances within 1e-5 relative); without it, the local values. A warning
    says the SH bands were not rotated."""
    data = random_splats(200)
    src = tmp_path / "in.ply"
    ply.write_ply(src, data)
    obj = import_file(src)
    obj.location = (1.0, -2.0, 0.5)
    obj.rotation_euler = (0.3, -0.2, 1.1)
    obj.scale = (1.0, 2.0, 0.5)
    bpy.context.view_layer.update()
    m = np.array(obj.matrix_world, dtype=np.float64)
    world, local = tmp_path / "world.ply", tmp_path / "local.ply"
    assert bpy.ops.i3d.export_ply(filepath=str(world), apply_transform=True) == {"FINISHED"}
    assert bpy.ops.i3d.export_ply(filepath=str(local), apply_transform=False) == {"FINISHED"}
    np.testing.assert_array_equal(ply.read_ply(local).means, data.means)
    out = ply.read_ply(world)
    np.testing.assert_allclose(out.means, data.means @ m[:3, :3].T + m[:3, 3], atol=1e-5)

    def cov(d):
        q = d.quats.astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        r = splat._quat_to_matrix(q) * np.exp(d.log_scales.astype(np.float64))[:, None, :]
        return r @ np.swapaxes(r, 1, 2)

    want = m[:3, :3] @ cov(data) @ m[:3, :3].T
    assert np.abs(cov(out) - want).max() / np.abs(want).max() < 1e-5
    from interactive3d.blender_addon.operators.io import export_splat_file
    warnings = export_splat_file(obj, str(tmp_path / "again.ply"), apply_transform=True)
    assert any("spherical-harmonics" in w for w in warnings)


def test_splat_format_round_trip(tmp_path):
    """.splat files (8-bit colours/rotations) import and export: positions come back bit-identical,
    colour/opacity within one 8-bit step (1/255) and rotations within two steps (2/128; the codec
    re-normalises an already quantised quaternion before quantising again), scales within 1e-6 relative."""
    data = random_splats(100, sh_degree=0)
    src, dst = tmp_path / "in.splat", tmp_path / "out.splat"
    ply.write_splat(src, data)
    import_file(src)
    assert bpy.ops.i3d.export_ply(filepath=str(dst)) == {"FINISHED"}
    a, b = splat_data.splat_to_state(ply.read_splat(src)), splat_data.splat_to_state(ply.read_splat(dst))
    np.testing.assert_array_equal(b[:, 0:3], a[:, 0:3])
    np.testing.assert_allclose(b[:, 3:7], a[:, 3:7], atol=1.01 / 255)
    np.testing.assert_allclose(b[:, 7:10], a[:, 7:10], rtol=1e-6)
    q_a, q_b = a[:, 10:14], b[:, 10:14]
    assert np.minimum(np.abs(q_a - q_b).max(1), np.abs(q_a + q_b).max(1)).max() <= 2.01 / 128


def test_bad_file_is_an_error_report_not_a_traceback(tmp_path):
    """A non-PLY file: the operator reports an error naming the problem (bpy raises it as RuntimeError
    in background mode) and no object is created."""
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all\n")
    with pytest.raises(RuntimeError, match="not a PLY file"):
        bpy.ops.i3d.import_ply(filepath=str(bad))
    assert len(bpy.data.objects) == 0


def test_large_files_import_in_the_light_points_mode(tmp_path, monkeypatch):
    """Display "Auto": at or above LIGHT_MODE_THRESHOLD splats the modifier starts in Points mode (the
    threshold is lowered to 50 here to keep the test small); below it, ellipsoids; the panel's
    i3d_display.mode agrees with the modifier."""
    monkeypatch.setattr(splat, "LIGHT_MODE_THRESHOLD", 50)
    for n, points in ((60, True), (40, False)):
        path = tmp_path / f"n{n}.ply"
        ply.write_ply(path, random_splats(n, sh_degree=0))
        obj = import_file(path)
        assert bool(geometry_nodes.get_input(obj.modifiers[splat.MODIFIER_NAME], "points")) is points
        assert obj.i3d_display.mode == ("POINTS" if points else "SPLATS")


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "splats"


def assert_splat_object_from(path: Path, obj) -> None:
    """``obj`` is a splat object made from ``path``: 300 vertices with exactly the state protocol.splats.read_any
    decodes, and its geometry-nodes modifier draws one ellipsoid per splat (the display inputs readable)."""
    assert splat.is_splat_object(obj) and len(obj.data.vertices) == 300
    np.testing.assert_array_equal(splat.read_state(obj), splat_data.splat_to_state(splats.read_any(path)))
    mod = obj.modifiers[splat.MODIFIER_NAME]
    assert mod.type == "NODES" and mod.node_group.name == geometry_nodes.GROUP_NAME
    assert not geometry_nodes.get_input(mod, "points")
    assert geometry_nodes.get_input(mod, "material") == bpy.data.materials[materials.SPLAT_MATERIAL]
    assert evaluated(obj) == (300, 0)


@pytest.mark.parametrize("name", ["source.compressed.ply", "source_v3.spz", "source_v4.spz", "source.sog",
                                  "source_sog/meta.json"])
def test_import_reads_supersplat_and_spz_files(name):
    """SuperSplat's compressed .ply, .spz (v3 gzip, v4 ZSTD) and SOG (bundled, and unbundled as meta.json +
    images), written by splat-transform, import through the operator as splat objects (assert_splat_object_from;
    named without the double extension, an unbundled SOG after its folder); the File menu's filter lists .spz,
    .sog and meta.json. (test_blender_versions.py requires all but the unbundled SOG to pass under every tested bpy.)"""
    path = FIXTURES / name
    obj = import_file(path)
    assert obj.name == name.split(".")[0].split("/")[0]
    assert_splat_object_from(path, obj)
    glob = bpy.ops.i3d.import_ply.get_rna_type().properties["filter_glob"].default
    assert {"*.spz", "*.sog", "meta.json"} <= set(glob.split(";"))


@pytest.mark.parametrize("name", ["ours.spz.by-splat-transform.ply", "ours.compressed.by-splat-transform.ply"])
def test_import_reads_splat_transform_conversions_of_our_files(name):
    """Plain 3DGS .ply files splat-transform wrote (from our .spz / .compressed.ply) import as splat objects."""
    path = FIXTURES / name
    assert_splat_object_from(path, import_file(path))


@pytest.mark.parametrize("name, axes", [("source_st3.spz", "ply"), ("source_v3.spz", "rub")])
def test_import_spz_axes_choice(name, axes):
    """The import operator's '.spz Axes' option (shown in its panel: an operator property with both choices):
    splat-transform 3.10.2's .spz is right side up with the default 'As stored', 2.7.1's with 'RUB'; each within
    the .spz position step (2^-13) of source.ply, and mirrored in y and z with the other choice."""
    fix = FIXTURES
    prop = bpy.ops.i3d.import_ply.get_rna_type().properties["spz_axes"]
    assert prop.default == "ply" and {item.identifier for item in prop.enum_items} == {"ply", "rub"}
    src = ply.read_ply(fix / "source.ply")
    for choice in ("ply", "rub"):
        for obj in list(bpy.data.objects):
            bpy.data.objects.remove(obj)
        assert bpy.ops.i3d.import_ply(filepath=str(fix / name), spz_axes=choice) == {"FINISHED"}
        means = splat.read_state(bpy.context.active_object)[:, 0:3]
        err = np.abs(means - src.means).max()
        assert (err <= 0.5 / 4096 + 1e-6) if choice == axes else (err > 0.5)


@pytest.mark.parametrize("ext", [".spz", ".compressed.ply", ".sog"])
def test_export_writes_spz_and_compressed_ply_by_name(tmp_path, ext):
    """Export to x.spz / x.compressed.ply / x.sog writes that format (detected by magic/header on reading back),
    and the values are the object's within the format's quantisation (positions 2^-13 for .spz; 1/2047 of the
    0.3-unit extent along x for compressed .ply; 16 bits of the log-extent for .sog)."""
    data = random_splats(200, sh_degree=0)
    data.means *= 0.1
    src = tmp_path / "in.ply"
    ply.write_ply(src, data)
    import_file(src)
    dst = tmp_path / ("out" + ext)
    assert bpy.ops.i3d.export_ply(filepath=str(dst)) == {"FINISHED"}
    assert splats.format_of(dst) == ext.lstrip(".")
    back = splats.read_any(dst)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(back.means).query(data.means)
    ext_len = float((data.means.max(axis=0) - data.means.min(axis=0)).max())
    assert d.max() <= {".spz": np.sqrt(3) * 0.5 / 4096, ".compressed.ply": ext_len / 1023,
                       ".sog": 1e-4}[ext]  # .sog: 16 bits of the log-extent, ≈ 0.6/65535·(1+0.3)
