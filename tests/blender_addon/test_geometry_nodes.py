"""The splat geometry-nodes group and material, evaluated by real (headless) Blender."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import interactive3d.blender_addon as addon  # noqa: E402
from interactive3d.blender_addon import geometry_nodes, materials, splat  # noqa: E402


@pytest.fixture(autouse=True)
def registered_empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if not hasattr(bpy.types, "I3D_OT_import_ply"):
        addon.register()
    yield


def line_state(n: int) -> np.ndarray:
    state = np.zeros((n, 14), np.float32)
    state[:, 0] = np.arange(n) * 0.1
    state[:, 3:6] = 0.5
    state[:, 6] = np.linspace(0.0, 1.0, n)
    state[:, 7:10] = 0.01
    state[:, 10] = 1.0
    return state


def evaluated(obj) -> tuple[int, int]:
    """(ellipsoid instances, points in a point cloud) produced by the object's modifier."""
    dg = bpy.context.evaluated_depsgraph_get()
    inst = pts = 0
    for i in dg.object_instances:
        if i.is_instance and i.parent is not None and i.parent.original == obj:
            if i.object.type == "POINTCLOUD":
                pts += len(i.object.data.points)
            else:
                inst += 1
    return inst, pts


def test_one_ellipsoid_per_splat_and_light_points_mode():
    """200 splats → 200 ellipsoid instances and no points; Points mode → 0 instances, 200 points."""
    obj = splat.new_splat_object("s", line_state(200), light=False)
    assert evaluated(obj) == (200, 0)
    geometry_nodes.set_inputs(obj.modifiers[splat.MODIFIER_NAME], points=True)
    assert evaluated(obj) == (0, 200)


def test_opacity_threshold_and_density():
    """Threshold 0.5 keeps exactly the splats with opacity ≥ 0.5 (100 of 200 here); density 0.5 keeps
    a random half of 2000 (binomial: within 5σ ≈ 112 of 1000) and the same half on re-evaluation."""
    obj = splat.new_splat_object("s", line_state(200), light=False)
    mod = obj.modifiers[splat.MODIFIER_NAME]
    geometry_nodes.set_inputs(mod, opacity_threshold=0.5)
    assert evaluated(obj)[0] == int((line_state(200)[:, 6] >= 0.5).sum()) == 100
    big = splat.new_splat_object("big", line_state(2000), light=True)
    geometry_nodes.set_inputs(big.modifiers[splat.MODIFIER_NAME], density=0.5)
    first = evaluated(big)[1]
    assert abs(first - 1000) < 112
    big.data.update()
    assert evaluated(big)[1] == first


def test_display_properties_drive_the_modifier():
    """Setting Object.i3d_display (the panel's settings) writes the modifier inputs."""
    obj = splat.new_splat_object("s", line_state(10), light=False)
    obj.i3d_display.mode = "POINTS"
    obj.i3d_display.opacity_threshold = 0.25
    mod = obj.modifiers[splat.MODIFIER_NAME]
    assert geometry_nodes.get_input(mod, "points") is True or geometry_nodes.get_input(mod, "points") == 1
    assert geometry_nodes.get_input(mod, "opacity_threshold") == pytest.approx(0.25)
    assert evaluated(obj) == (0, int((line_state(10)[:, 6] >= 0.25).sum()))


def test_modifier_inputs_read_back_what_was_written():
    """Every group input written by set_inputs reads back through get_input, and sits where this Blender keeps
    it: ``modifier.properties.inputs.<id>.value`` on 5.2+ (whose modifier refuses ID properties), the
    modifier's ID property ``modifier[<id>]`` before. The evaluated display follows (Points mode, 3 of 10 kept
    by the threshold); an unknown name is a ValueError that changes nothing."""
    obj = splat.new_splat_object("s", line_state(10), light=False)
    mod = obj.modifiers[splat.MODIFIER_NAME]
    other = bpy.data.materials.new("other")
    values = {"points": True, "opacity_threshold": 0.75, "density": 1.0, "scale_multiplier": 2.5,
              "point_radius": 0.25, "subdivisions": 3, "material": other}
    geometry_nodes.set_inputs(mod, **values)
    tree = mod.node_group
    new_form = hasattr(mod, "properties") and hasattr(mod.properties, "inputs")
    for key, want in values.items():
        got = geometry_nodes.get_input(mod, key)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (key, got)
        ident = geometry_nodes.input_identifier(tree, key.replace("_", " ").title())
        stored = getattr(mod.properties.inputs, ident).value if new_form else mod[ident]
        assert stored == got, (key, stored)
    if new_form:
        with pytest.raises(TypeError):
            mod["Socket_1"] = 1.0
    assert evaluated(obj) == (0, int((line_state(10)[:, 6] >= 0.75).sum())) == (0, 3)
    with pytest.raises(ValueError, match="unknown splat display input 'opacity'"):
        geometry_nodes.set_inputs(mod, opacity=0.1)
    assert geometry_nodes.get_input(mod, "opacity_threshold") == pytest.approx(0.75)


def test_node_group_and_materials_are_shared_and_versioned():
    """Two objects share one node group and one material; an old-version group is replaced, not reused."""
    a = splat.new_splat_object("a", line_state(3))
    b = splat.new_splat_object("b", line_state(3))
    assert a.modifiers[0].node_group == b.modifiers[0].node_group
    assert materials.splat_material() == materials.splat_material()
    bpy.data.node_groups[geometry_nodes.GROUP_NAME]["i3d_version"] = -1
    assert geometry_nodes.splat_node_group().get("i3d_version") == geometry_nodes.GROUP_VERSION
    assert bpy.data.node_groups.get(geometry_nodes.GROUP_NAME + " (old)") is not None


def _render_center(obj_maker, tmp_path) -> np.ndarray:
    from mathutils import Matrix

    scene = bpy.context.scene
    obj_maker()
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    cam.matrix_world = Matrix(((1, 0, 0, 0), (0, 0, -1, -3), (0, 1, 0, 0), (0, 0, 0, 1)))  # looks along +Y
    scene.camera = cam
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 24
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    world = bpy.data.worlds.new("w")
    scene.world = world
    world.color = (0, 0, 0)
    out = tmp_path / "r.png"
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(out))
    px = np.array(img.pixels[:], np.float32).reshape(24, 24, 4)
    return px[10:14, 10:14, :3].mean(axis=(0, 1))


@pytest.mark.parametrize("points", [False, True])
def test_cycles_render_shows_the_splat_colour(tmp_path, points):
    """A single opaque splat filling the view renders (Cycles, Standard view transform) at its sRGB
    colour (0.8, 0.4, 0.2) within 0.02 — ellipsoid and points modes alike: the material reads i3d_color
    from instances and from point clouds, and converts sRGB → linear for shading."""
    state = np.array([[0, 0, 0, 0.8, 0.4, 0.2, 1.0, 1.0, 1.0, 1.0, 1, 0, 0, 0]], np.float32)

    def make():
        obj = splat.new_splat_object("s", state, light=points)
        geometry_nodes.set_inputs(obj.modifiers[splat.MODIFIER_NAME], point_radius=1.0, subdivisions=3)

    centre = _render_center(make, tmp_path)
    np.testing.assert_allclose(centre, [0.8, 0.4, 0.2], atol=0.02)
