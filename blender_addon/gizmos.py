"""Viewport gizmos (UI only — headless Blender registers them but never runs setup()):

- I3D_GGT_drag: source and target handles (3D move) and a radius dial at the source, bound to the
  scene's drag settings (Scene.i3d.drag_source / drag_target / drag_radius), so the i3d.drag operator
  and batch scripts read the same values.
- I3D_GGT_refine_region: a move handle for the refinement sphere's centre and a dial for its radius
  (Scene.i3d.refine_center / refine_radius).

Both appear while a splat object is active; the values are in world space (operators convert).
"""

from __future__ import annotations

import bpy
from mathutils import Matrix, Vector

from . import splat


def _scene_props(context):
    return getattr(context.scene, "i3d", None)


def _bind_point(gz, props, name: str) -> None:
    """Make a 3D move gizmo read and write the world-space vector ``props.<name>``."""

    def get():
        return tuple(getattr(props, name))

    def set_(value):
        setattr(props, name, value)

    gz.target_set_handler("offset", get=get, set=set_)


def _bind_radius(gz, props, name: str) -> None:
    def get():
        return getattr(props, name)

    def set_(value):
        setattr(props, name, max(1e-6, value))

    gz.target_set_handler("offset", get=get, set=set_)


class _SplatGizmoGroup:
    bl_space_type = "VIEW_3D"
    bl_region_type = "WINDOW"
    bl_options = {"3D", "PERSISTENT"}

    @classmethod
    def poll(cls, context):
        return splat.is_splat_object(context.active_object) and _scene_props(context) is not None


class I3D_GGT_drag(_SplatGizmoGroup, bpy.types.GizmoGroup):
    bl_idname = "I3D_GGT_drag"
    bl_label = "Interactive3D Drag"

    def setup(self, context):
        props = _scene_props(context)
        self.source = self.gizmos.new("GIZMO_GT_move_3d")
        self.source.draw_options = {"FILL", "ALIGN_VIEW"}
        self.source.color = (0.2, 0.6, 1.0)
        _bind_point(self.source, props, "drag_source")
        self.target = self.gizmos.new("GIZMO_GT_move_3d")
        self.target.draw_options = {"FILL", "ALIGN_VIEW"}
        self.target.color = (1.0, 0.4, 0.1)
        _bind_point(self.target, props, "drag_target")
        self.radius = self.gizmos.new("GIZMO_GT_arrow_3d")
        self.radius.color = (0.2, 0.6, 1.0)
        _bind_radius(self.radius, props, "drag_radius")
        for gz in (self.source, self.target, self.radius):
            gz.alpha, gz.color_highlight, gz.alpha_highlight = 0.6, (1.0, 1.0, 1.0), 0.9
            gz.scale_basis = 0.1

    def draw_prepare(self, context):
        props = _scene_props(context)
        # Move gizmos are drawn at their matrix_basis plus the offset; the offset is the world point.
        self.source.matrix_basis = Matrix.Identity(4)
        self.target.matrix_basis = Matrix.Identity(4)
        self.radius.matrix_basis = Matrix.Translation(Vector(props.drag_source)) @ Matrix.Rotation(1.5708, 4, "Y")


class I3D_GGT_refine_region(_SplatGizmoGroup, bpy.types.GizmoGroup):
    bl_idname = "I3D_GGT_refine_region"
    bl_label = "Interactive3D Refine Region"

    @classmethod
    def poll(cls, context):
        return super().poll(context) and context.scene.i3d.job_state not in ("running",)

    def setup(self, context):
        props = _scene_props(context)
        self.center = self.gizmos.new("GIZMO_GT_move_3d")
        self.center.draw_options = {"FILL", "ALIGN_VIEW"}
        self.center.color = (0.3, 1.0, 0.4)
        _bind_point(self.center, props, "refine_center")
        self.radius = self.gizmos.new("GIZMO_GT_dial_3d")
        self.radius.draw_options = {"ANGLE_VALUE"}
        self.radius.color = (0.3, 1.0, 0.4)
        _bind_radius(self.radius, props, "refine_radius")
        for gz in (self.center, self.radius):
            gz.alpha, gz.alpha_highlight = 0.5, 0.9

    def draw_prepare(self, context):
        props = _scene_props(context)
        self.center.matrix_basis = Matrix.Identity(4)
        # The dial's circle has radius scale_basis: draw it at the sphere's size, facing the view.
        self.radius.matrix_basis = Matrix.Translation(Vector(props.refine_center))
        self.radius.scale_basis = props.refine_radius
        self.radius.draw_options = {"CLIP"}


# Gizmo-group classes have no ``is_registered`` attribute, so the package's generic unregister loop
# would skip them: they are registered and unregistered here instead.
_GIZMO_GROUPS = (I3D_GGT_drag, I3D_GGT_refine_region)
classes = ()


def register_extra() -> None:
    for cls in _GIZMO_GROUPS:
        bpy.utils.register_class(cls)


def unregister_extra() -> None:
    for cls in reversed(_GIZMO_GROUPS):
        try:
            bpy.utils.unregister_class(cls)
        except RuntimeError:  # not registered (a failed register); nothing to undo
            pass
