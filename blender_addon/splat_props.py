"""Display settings of a splat object (Object.i3d_display), mirrored onto its geometry-nodes modifier."""

from __future__ import annotations

import bpy

from . import geometry_nodes, splat


def _push(self, context) -> None:
    """Property update callback: copy every setting onto the object's splat modifier (if any)."""
    obj = self.id_data
    mod = obj.modifiers.get(splat.MODIFIER_NAME) if isinstance(obj, bpy.types.Object) else None
    if mod is None or mod.node_group is None:
        return
    geometry_nodes.set_inputs(
        mod, points=self.mode == "POINTS", opacity_threshold=self.opacity_threshold, density=self.density,
        scale_multiplier=self.scale_multiplier, point_radius=self.point_radius, subdivisions=self.subdivisions)


class I3D_PG_splat_display(bpy.types.PropertyGroup):
    mode: bpy.props.EnumProperty(
        name="Display", update=_push, default="SPLATS",
        items=(("SPLATS", "Ellipsoids", "One ellipsoid per Gaussian (σ-ellipsoid × scale multiplier)"),
               ("POINTS", "Points", "Light mode for 10⁵+ splats: one point per Gaussian")))
    opacity_threshold: bpy.props.FloatProperty(
        name="Opacity Threshold", min=0.0, max=1.0, default=0.0, update=_push,
        description="Hide Gaussians less opaque than this")
    density: bpy.props.FloatProperty(
        name="Density", min=0.0, max=1.0, default=1.0, subtype="FACTOR", update=_push,
        description="Fraction of Gaussians drawn (stable random subsample by index)")
    scale_multiplier: bpy.props.FloatProperty(
        name="Scale Multiplier", min=0.0, soft_max=4.0, default=1.5, update=_push,
        description="Ellipsoid semi-axes in units of the Gaussian's standard deviations")
    point_radius: bpy.props.FloatProperty(
        name="Point Radius", min=0.0, soft_max=0.1, default=0.005, update=_push, unit="LENGTH")
    subdivisions: bpy.props.IntProperty(
        name="Subdivisions", min=1, max=4, default=1, update=_push, description="Ellipsoid icosphere detail")


classes = (I3D_PG_splat_display,)


def register_extra() -> None:
    bpy.types.Object.i3d_display = bpy.props.PointerProperty(type=I3D_PG_splat_display)


def unregister_extra() -> None:
    if hasattr(bpy.types.Object, "i3d_display"):
        del bpy.types.Object.i3d_display
