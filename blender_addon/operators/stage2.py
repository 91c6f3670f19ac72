"""Stage II: i3d.to_nerf (distil the Gaussians into a hash-grid NeRF), i3d.refine_region (a region
sphere with part-specific hash tables), i3d.extract_mesh (marching cubes → a mesh object with vertex
colours at the splat object's transform). Backend ops ``stage2.distill``, ``stage2.add_part``,
``stage2.refine``, ``stage2.extract_mesh``.
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
        args = {"steps": self.steps or p.nerf_steps, "seed": p.seed}
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
        obj = splat_object(context)
        m = np.array(obj.matrix_world) if obj is not None else np.eye(4)
        try:
            center = connection.world_to_local_point(m, self.center)
            radius = connection.world_to_local_length(m, self.radius)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        region = {"name": self.name, "center": center.tolist(), "radius": radius, "levels": self.levels,
                  "log2_table_size": self.capacity}
        if not run_request(self, "stage2.add_part", region, kind="ignore"):
            return {"CANCELLED"}
        if not run_request(self, "stage2.refine", {"parts": [self.name], "steps": self.steps, "seed": p.seed}, kind="job"):
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


classes = (I3D_OT_to_nerf, I3D_OT_refine_region, I3D_OT_extract_mesh)
