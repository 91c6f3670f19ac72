"""Stage II: i3d.to_nerf (distil the Gaussians into a hash-grid NeRF), i3d.refine_region (a region
sphere with part-specific hash tables), i3d.extract_mesh (marching cubes → a mesh object with vertex
colours at the splat object's transform), i3d.render_nerf (the NeRF from the viewport or the scene
camera into an image). Backend ops ``stage2.distill``, ``stage2.add_part``, ``stage2.refine``,
``stage2.extract_mesh``, ``stage2.render``; the jobs' ``mesh`` events (a live low-resolution preview
mesh) are applied by the sync step (connection.py).
"""

from __future__ import annotations

import os

import bpy
import numpy as np

from .. import connection
from .connection import is_blocking, run_request, splat_object
from .interact import _maybe_wait

REGION_PART = "region"


def _poll() -> bool:
    conn = connection.get()
    return conn.connected and not conn.job_active


class I3D_OT_to_nerf(bpy.types.Operator):
    """Distil the Gaussians into an Instant-NGP field (Stage II)"""

    bl_idname = "i3d.to_nerf"
    bl_label = "Convert to NeRF"
    bl_options = {"REGISTER"}

    steps: bpy.props.IntProperty(name="Steps", default=0, min=0, description="0: the panel's distil steps")
    resolution: bpy.props.IntProperty(name="Resolution", default=0, min=0, description="0: the backend's default")
    levels: bpy.props.IntProperty(name="Hash Levels", default=0, min=0, max=32, description="0: the backend's default (16)")
    capacity: bpy.props.IntProperty(name="Capacity (log2)", default=0, min=0, max=24,
                                    description="log2 of the hash-table entries; 0: the backend's default (19)")
    rays_per_step: bpy.props.IntProperty(name="Rays per Step", default=0, min=0, description="0: the backend's default")
    wait: bpy.props.BoolProperty(name="Wait", default=False)

    @classmethod
    def poll(cls, context):
        return _poll()

    def execute(self, context):
        p = context.scene.i3d
        args = {"steps": self.steps or p.nerf_steps, "seed": p.seed, "mesh_every": p.preview_mesh_every,
                "mesh_resolution": p.preview_mesh_resolution}
        for key, value in (("resolution", self.resolution), ("levels", self.levels),
                           ("log2_table_size", self.capacity), ("rays_per_step", self.rays_per_step)):
            if value:
                args[key] = value
        if not run_request(self, "stage2.distill", args, kind="job"):
            return {"CANCELLED"}
        return _maybe_wait(self, context, self.wait)


class I3D_OT_refine_region(bpy.types.Operator):
    """Refine a sphere of the NeRF with its own multi-level hash tables (Stage II)"""

    bl_idname = "i3d.refine_region"
    bl_label = "Refine Region"
    bl_options = {"REGISTER"}

    use_scene: bpy.props.BoolProperty(name="From Scene Settings", default=True)
    center: bpy.props.FloatVectorProperty(name="Centre", size=3, subtype="TRANSLATION", unit="LENGTH")
    radius: bpy.props.FloatProperty(name="Radius", default=0.3, min=1e-6, unit="LENGTH")
    levels: bpy.props.IntProperty(name="Levels", default=8, min=1, max=32)
    capacity: bpy.props.IntProperty(name="Capacity (log2)", default=19, min=4, max=24)
    features: bpy.props.IntProperty(name="Features", default=2, min=1, max=8)
    finest: bpy.props.IntProperty(name="Finest Resolution", default=0, min=0, max=65536,
                                  description="0: twice the base field's resolution over the region")
    steps: bpy.props.IntProperty(name="Steps", default=10000, min=1)
    name: bpy.props.StringProperty(name="Part", default=REGION_PART)
    wait: bpy.props.BoolProperty(name="Wait", default=False)

    @classmethod
    def poll(cls, context):
        return _poll()

    def execute(self, context):
        p = context.scene.i3d
        if self.use_scene:
            self.center, self.radius = p.refine_center, p.refine_radius
            self.levels, self.capacity, self.steps = p.refine_levels, p.refine_capacity, p.refine_steps
            self.features, self.finest = p.refine_features, p.refine_finest
        obj = splat_object(context)
        m = np.array(obj.matrix_world) if obj is not None else np.eye(4)
        try:
            center = connection.world_to_local_point(m, self.center)
            radius = connection.world_to_local_length(m, self.radius)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        region = {"name": self.name, "center": center.tolist(), "radius": radius, "levels": self.levels,
                  "log2_table_size": self.capacity, "features": self.features}
        if self.finest:
            region["finest_resolution"] = self.finest
        if not run_request(self, "stage2.add_part", region, kind="ignore"):
            return {"CANCELLED"}
        refine = {"parts": [self.name], "steps": self.steps, "seed": p.seed, "mesh_every": p.preview_mesh_every,
                  "mesh_resolution": p.preview_mesh_resolution}
        if not run_request(self, "stage2.refine", refine, kind="job"):
            return {"CANCELLED"}
        return _maybe_wait(self, context, self.wait)


class I3D_OT_extract_mesh(bpy.types.Operator):
    """Extract a mesh with vertex colours (and optionally a baked UV texture) from the NeRF (marching cubes)
    and import it at the splat object's transform"""

    bl_idname = "i3d.extract_mesh"
    bl_label = "Extract Mesh"
    bl_options = {"REGISTER"}

    resolution: bpy.props.IntProperty(name="Resolution", default=0, min=0, description="0: the panel's value")
    filepath: bpy.props.StringProperty(name="Also Save To", subtype="FILE_PATH", default="",
                                       description="A .glb/.obj/.ply to also save here (the backend sends the file's bytes)")
    texture: bpy.props.BoolProperty(name="Bake Texture", default=False,
                                    description="UV-unwrap the mesh and bake the colour into a texture (material "
                                                "with an image; GLB/OBJ files get it too)")
    texture_size: bpy.props.IntProperty(name="Texture Size", default=1024, min=16, max=8192)

    @classmethod
    def poll(cls, context):
        return _poll()

    def execute(self, context):
        p = context.scene.i3d
        path = bpy.path.abspath(self.filepath) if self.filepath else os.path.join(
            connection.user_dir(__package__.rsplit(".", 1)[0]), "mesh.glb")
        fmt = os.path.splitext(path)[1].lower().lstrip(".")
        # The backend may be remote and only writes inside its own data folders: it sends the file's bytes
        # back and the add-on writes them here (connection._on_mesh).
        args = {"resolution": self.resolution or p.mesh_resolution, "surface": p.mesh_surface.lower(),
                "opacity_level": p.mesh_opacity, "threshold": p.mesh_threshold, "return_file": True,
                "format": fmt if fmt in ("glb", "obj", "ply") else "glb"}
        if self.texture:
            args.update(texture=True, texture_size=self.texture_size)
        # Marching cubes at 256³ can take a while on CPU: a longer timeout for the blocking path.
        if not run_request(self, "stage2.extract_mesh", args, kind="mesh", timeout=max(60.0, connection.get().timeout_s), save_to=path):
            return {"CANCELLED"}
        if is_blocking():
            conn = connection.get()
            self.report({"INFO"}, conn.last_message)
        return {"FINISHED"}


def view_camera(context, source: str, size: int):
    """(c2w world [4,4], fov_x, width, height) of the active perspective 3D viewport (``source`` AUTO, when
    there is one) or of the scene camera; None when neither exists. The longer side gets ``size`` pixels."""
    rv3d = getattr(context, "region_data", None)
    region = getattr(context, "region", None)
    space = getattr(context, "space_data", None)
    if source == "AUTO" and rv3d is not None and region is not None and getattr(space, "type", "") == "VIEW_3D" \
            and rv3d.view_perspective != "CAMERA" and rv3d.is_perspective:
        w, h = _fit(region.width, region.height, size)
        return np.array(rv3d.view_matrix.inverted()), connection.viewport_fov_x(space.lens, w, h), w, h
    cam = context.scene.camera
    if cam is None or cam.type != "CAMERA":
        return None
    r = context.scene.render
    w, h = _fit(r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y, size)
    d = cam.data
    return np.array(cam.matrix_world), connection.camera_fov_x(d.sensor_fit, d.angle, d.angle_x, d.angle_y, w, h), w, h


def _fit(width: float, height: float, size: int) -> tuple[int, int]:
    s = size / max(width, height, 1)
    return max(1, round(width * s)), max(1, round(height * s))


class I3D_OT_render_nerf(bpy.types.Operator):
    """Render the Stage II NeRF (with its refinement parts) from the active viewport or the scene camera
    into the image "I3D NeRF Render" (also while distillation or refinement runs)"""

    bl_idname = "i3d.render_nerf"
    bl_label = "Render NeRF"
    bl_options = {"REGISTER"}

    source: bpy.props.EnumProperty(name="View", items=(("SCENE", "Scene Setting", ""), ("AUTO", "Viewport", ""),
                                                       ("CAMERA", "Camera", "")), default="SCENE")
    size: bpy.props.IntProperty(name="Size", default=0, min=0, max=2048, description="0: the panel's value")
    n_samples: bpy.props.IntProperty(name="Samples per Ray", default=64, min=4, max=1024)

    @classmethod
    def poll(cls, context):
        return connection.get().connected

    def execute(self, context):
        p = context.scene.i3d
        view = view_camera(context, p.nerf_render_source if self.source == "SCENE" else self.source, self.size or p.nerf_render_size)
        if view is None:
            self.report({"ERROR"}, "no 3D viewport and no scene camera to render from")
            return {"CANCELLED"}
        c2w, fov_x, w, h = view
        obj = splat_object(context)
        m = np.array(obj.matrix_world) if obj is not None else np.eye(4)
        c2w_local = connection.relative_matrix(m, c2w).astype(np.float32)  # the field lives in the object's frame
        args = {"fov_x": float(fov_x), "width": int(w), "height": int(h), "n_samples": self.n_samples}
        # CPU backends take seconds for a 256² render with normals: a longer timeout than plain requests
        if not run_request(self, "stage2.render", args, kind="nerf_render", buffers=[c2w_local],
                           timeout=max(60.0, connection.get().timeout_s)):
            return {"CANCELLED"}
        return {"FINISHED"}


classes = (I3D_OT_to_nerf, I3D_OT_refine_region, I3D_OT_extract_mesh, I3D_OT_render_nerf)
