"""Stage II live in Blender (real bpy, a real backend process): the preview mesh that distillation sends
every K steps is applied by the sync step and replaced in place; i3d.render_nerf renders the field from the
scene camera into an image. Timers never fire in bpy, so the test calls the sync step directly, as the
timer would."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from interactive3d.blender_addon import connection  # noqa: E402

from tests.blender_addon.test_operators_backend import adopted_object, backend, conn  # noqa: E402,F401


def test_camera_fov_conversions():
    """fov_x for each sensor fit: AUTO gives the angle to the longer side, VERTICAL keeps angle_y on the
    height (tan scales with the aspect), HORIZONTAL keeps angle_x; a 50 mm viewport has a 72 mm sensor."""
    a = 0.9
    assert connection.camera_fov_x("AUTO", a, a, 0.5, 640, 480) == pytest.approx(a)
    assert connection.camera_fov_x("AUTO", a, 0.1, 0.1, 480, 640) == pytest.approx(2 * math.atan(math.tan(a / 2) * 0.75))
    assert connection.camera_fov_x("VERTICAL", 0.1, 0.1, a, 640, 480) == pytest.approx(2 * math.atan(math.tan(a / 2) * 640 / 480))
    assert connection.camera_fov_x("HORIZONTAL", 0.1, a, 0.1, 480, 640) == pytest.approx(a)
    assert connection.viewport_fov_x(50.0, 200, 100) == pytest.approx(2 * math.atan(36 / 50))
    with pytest.raises(ValueError):
        connection.viewport_fov_x(0.0, 10, 10)


@pytest.mark.slow
def test_live_preview_mesh_replaced_in_place_then_nerf_render(conn):
    """i3d.to_nerf (20 steps, a preview mesh every 5 at 24³) runs while the test drives the sync step: the
    mesh events land on ONE preview object whose mesh is replaced ≥ 2 times (new data, same object), the old
    meshes are freed (no orphans pile up), the last preview is step 20 and sits at the splat object's
    matrix_world. Then i3d.render_nerf from a scene camera aimed at the object writes "I3D NeRF Render"
    (32×24, from a 640×480 camera) equal to 8-bit rounding (½/255) to a direct stage2.render with the camera in the object's
    frame (the add-on's conversion), opaque at the centre (alpha > 0.5)."""
    from mathutils import Vector

    obj, _ = adopted_object(n=2000, seed=1)
    p = bpy.context.scene.i3d
    p.preview_mesh_every, p.preview_mesh_resolution = 5, 24
    meshes_before = len(bpy.data.meshes)
    assert bpy.ops.i3d.to_nerf(steps=20, resolution=32, levels=4, capacity=12, rays_per_step=512, wait=False) == {"FINISHED"}
    seen = []
    for _ in range(3000):
        connection.sync_step(conn, timeout_ms=100)
        prev = bpy.data.objects.get(conn.preview_mesh or "")
        if prev is not None:
            key = (prev.as_pointer(), prev.data.as_pointer(), conn.preview_step)
            if not seen or seen[-1] != key:
                seen.append(key)
        if conn.job.state in connection.JOB_FINISHED and not conn.pending:
            break
    assert conn.job.state == "done", conn.job
    assert len({s[0] for s in seen}) == 1, seen  # one preview object
    assert len({s[1] for s in seen}) >= 2, seen  # its mesh replaced
    assert conn.preview_step == 20
    previews = [o for o in bpy.data.objects if o.name.startswith(obj.name) and "Preview" in o.name]
    prev = bpy.data.objects[conn.preview_mesh]
    assert len(previews) == 1 and len(prev.data.polygons) > 0
    assert len(bpy.data.meshes) == meshes_before + 1  # the replaced meshes were freed
    np.testing.assert_allclose(np.array(prev.matrix_world), np.array(obj.matrix_world), atol=1e-6)

    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    bpy.context.scene.collection.objects.link(cam)
    target = obj.matrix_world.translation
    cam.location = target + Vector((0.0, -3.5, 1.0))
    cam.rotation_euler = (target - cam.location).to_track_quat("-Z", "Y").to_euler()
    bpy.context.scene.camera = cam
    bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y = 640, 480
    bpy.context.view_layer.update()
    assert bpy.ops.i3d.render_nerf(source="CAMERA", size=32, n_samples=32) == {"FINISHED"}
    img = bpy.data.images[conn.nerf_image]
    assert tuple(img.size) == (32, 24)
    px = np.empty(32 * 24 * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(24, 32, 4)[::-1]  # back to row 0 at the top
    c2w = np.linalg.solve(np.array(obj.matrix_world), np.array(cam.matrix_world)).astype(np.float32)
    direct = conn.client.request("stage2.render", {"session": conn.session, "fov_x": cam_data.angle, "width": 32, "height": 24,
                                                   "n_samples": 32}, [c2w], timeout=120)
    rgb, alpha = np.array(direct.buffers[0])[0], np.array(direct.buffers[1])[0]
    q = 0.5 / 255 + 1e-6  # the image stores 8 bits per channel (sRGB display values, as the render)
    np.testing.assert_allclose(px[..., :3], rgb, atol=q)
    np.testing.assert_allclose(px[..., 3:], alpha, atol=q)
    assert alpha[12, 16, 0] > 0.5, alpha[12, 16, 0]
    # the extracted mesh takes the live preview's place: the preview object and its mesh are gone
    assert bpy.ops.i3d.extract_mesh(resolution=24) == {"FINISHED"}
    assert conn.preview_mesh is None and not [o for o in bpy.data.objects if "Preview" in o.name]
