"""The Blender scene of a pipeline run: scene.blend (final splats + mesh) and the demo's contact sheet.

Run in a subprocess (:func:`run_blender_scene` → ``python -m interactive3d.scene``) so that bpy and torch
stay in separate processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


SHEET_VIEWS = ((35.0, 20.0), (215.0, 20.0))  # (azimuth, elevation) in degrees of the contact sheet views


def _look_at_matrix(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Blender camera matrix_world [4,4] (looks down −Z, +Y up) from eye to target, world up +Z."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, (0.0, 0.0, 1.0))
    right = right / np.linalg.norm(right)
    up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, eye
    return m


def blender_scene(inputs: str, blend: str, sheet: str | None, resolution: int = 160, samples: int = 8) -> dict:
    """Build scene.blend (final splat object + mesh object) and render the contact sheet, in THIS process.

    ``inputs`` is an .npz with ``after`` [N,14] (final splats), optional ``before`` [M,14] (after Stage I,
    before the edits) and ``mesh_vertices`` [V,3], ``mesh_faces`` [F,3], ``mesh_colors`` [V,3|4] uint8.
    Objects are built with the add-on's own splat module (the same code the add-on uses). Renders are
    Cycles on the CPU (works headless, unlike Eevee/Workbench without a display); rows of the sheet are
    before / after / mesh, columns the views in SHEET_VIEWS. Returns what was made.
    """
    import bpy
    from mathutils import Matrix

    from interactive3d.blender_addon import splat as addon_splat

    data = np.load(inputs)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    made: dict = {"objects": []}

    after = addon_splat.new_splat_object("I3D_splats", data["after"].astype(np.float32))
    made["objects"].append(after.name)
    before = None
    if "before" in data:
        before = addon_splat.new_splat_object("I3D_splats_before", data["before"].astype(np.float32))
    mesh = None
    if "mesh_vertices" in data:
        mesh = addon_splat.mesh_object_from_arrays(
            "I3D_mesh", data["mesh_vertices"], data["mesh_faces"], data["mesh_colors"], Matrix.Identity(4)
        )
        made["objects"].append(mesh.name)

    if sheet:
        made["sheet"] = _render_sheet(bpy, scene, {"before": before, "after": after, "mesh": mesh}, sheet, resolution, samples)
    if before is not None:
        # The saved scene holds the product of the demo: the final splats and their mesh.
        bpy.data.objects.remove(before, do_unlink=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(blend))
    made["blend"] = blend
    return made


def _render_sheet(bpy, scene, rows: dict, sheet: str, resolution: int, samples: int) -> dict:
    from mathutils import Matrix
    from PIL import Image, ImageDraw

    world = bpy.data.worlds.new("I3D_world")
    scene.world = world
    world.color = (1.0, 1.0, 1.0)
    if hasattr(world, "use_nodes") and world.node_tree is None:
        world.use_nodes = True  # deprecated in 5.0 (always on); needed on 4.x
    bg = world.node_tree.nodes.get("Background")
    if bg is not None:
        bg.inputs[0].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs[1].default_value = 0.8
    sun_data = bpy.data.lights.new("I3D_sun", type="SUN")
    sun_data.energy = 3.0
    sun = bpy.data.objects.new("I3D_sun", sun_data)
    sun.matrix_world = Matrix(_look_at_matrix(np.array([1.0, -1.5, 2.5]), np.zeros(3)).tolist())
    scene.collection.objects.link(sun)
    cam_data = bpy.data.cameras.new("I3D_camera")
    cam_data.lens, cam_data.sensor_width = 50.0, 36.0
    cam = bpy.data.objects.new("I3D_camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"  # show the splats' display colours as they are

    tiles: list[list[Image.Image]] = []
    labels = []
    with tempfile.TemporaryDirectory() as tmp:
        for row_name, obj in rows.items():
            if obj is None:
                continue
            for other in rows.values():
                if other is not None:
                    other.hide_render = other is not obj
            row = []
            for azim, elev in SHEET_VIEWS:
                a, e = np.radians(azim), np.radians(elev)
                eye = 2.2 * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)]) + np.array([0, 0, 0.05])
                cam.matrix_world = Matrix(_look_at_matrix(eye, np.array([0.0, 0.0, 0.05])).tolist())
                path = os.path.join(tmp, f"{row_name}_{int(azim)}.png")
                scene.render.filepath = path
                bpy.ops.render.render(write_still=True)
                row.append(Image.open(path).convert("RGB"))
            tiles.append(row)
            labels.append(row_name)
        for obj in rows.values():
            if obj is not None:
                obj.hide_render = False
    pad = 18
    w = resolution * len(SHEET_VIEWS)
    canvas = Image.new("RGB", (w, (resolution + pad) * len(tiles)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(tiles, labels)):
        y = r * (resolution + pad)
        draw.text((4, y + 3), label, fill=(0, 0, 0))
        for c, img in enumerate(row):
            canvas.paste(img, (c * resolution, y + pad))
    canvas.save(sheet)
    return {"path": sheet, "rows": labels, "views": [list(v) for v in SHEET_VIEWS], "renderer": "blender-cycles-cpu"}


def run_blender_scene(inputs: str, blend: str, sheet: str | None, resolution: int = 160, samples: int = 8, timeout: float = 300.0) -> dict:
    """Run :func:`blender_scene` in a fresh Python with the bpy module; returns its result."""
    cmd = [sys.executable, "-m", "interactive3d.scene", "--blender-scene", inputs, "--blend", blend, "--resolution", str(resolution), "--samples", str(samples)]
    if sheet:
        cmd += ["--sheet", sheet]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Blender scene step failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("I3D_SCENE "):
            return json.loads(line[len("I3D_SCENE "):])
    raise RuntimeError(f"Blender scene step printed no result: {proc.stdout.strip()[-2000:]}")


def _scene_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m interactive3d.scene")
    p.add_argument("--blender-scene", required=True)
    p.add_argument("--blend", required=True)
    p.add_argument("--sheet", default=None)
    p.add_argument("--resolution", type=int, default=160)
    p.add_argument("--samples", type=int, default=8)
    a = p.parse_args(argv)
    made = blender_scene(a.blender_scene, a.blend, a.sheet, a.resolution, a.samples)
    sys.stdout.write("I3D_SCENE " + json.dumps(made) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_scene_main(sys.argv[1:]))
