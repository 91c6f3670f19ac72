"""i3d.import_ply / i3d.export_ply: 3D Gaussian Splatting files (INRIA .ply, SuperSplat's compressed .ply,
antimatter15 .splat, Niantic .spz, PlayCanvas .sog or an unbundled SOG's meta.json).

The file formats live in protocol/ (numpy only; splats.py picks one); these operators only move arrays in and out of
Blender (splat.py). Coordinates: a file holds Gaussians in one frame; import makes an object whose
matrix_world is identity, so local = world = the file's frame. Export writes the object's *local*
coordinates (what the file held on import) unless "Apply Object Transform" is on, which transforms
positions, rotations and scales by matrix_world (Σ' = AΣAᵀ, exact for any scale or shear).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

import bpy
import numpy as np
from bpy_extras.io_utils import ExportHelper, ImportHelper

from .. import splat
from .._deps import splats

_SPLAT_EXTENSIONS = tuple("." + f for f in splats.SPLAT_FORMATS) + (".json",)  # .json: an unbundled SOG
_FILTER = "*.ply;*.splat;*.spz;*.sog;meta.json"
_SPZ_AXES = (("ply", "As stored (.ply axes)", "The numbers as stored, in the .ply's axes: files from "
              "splat-transform 3.x / SuperSplat today, gsply, and this add-on"),
             ("rub", "RUB (flip Y, Z)", "Niantic's RUB axes, flipped to the .ply's: files from splat-transform 2.x "
              "and older Niantic exports (use this if an .spz comes in upside down)"))


# What a format needs beyond numpy, and where Blender gets it: Pillow is a wheel the extension bundles
# (scripts/build_extension.py), zstandard comes with Blender's own Python (the extension does not bundle it).
_LIBRARIES = {".sog": ("PIL.Image", "Pillow", "bundled"), ".json": ("PIL.Image", "Pillow", "bundled"),
              ".spz": ("zstandard", "zstandard", "blender")}


def _bundled_for(name: str) -> str:
    """Where this build bundles the wheels of ``name`` ("Pillow"): the manifest's platforms, if it lists any of
    its wheels (a build without wheels lists none), for messages."""
    import tomllib

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "blender_manifest.toml")
    try:
        with open(path, "rb") as f:
            manifest = tomllib.load(f)
    except (OSError, ValueError):
        return "no platform known (no readable blender_manifest.toml)"
    if not any(os.path.basename(w).lower().startswith(name.lower() + "-") for w in manifest.get("wheels", [])):
        return f"no platform in this build (it has no {name} wheel)"
    return ", ".join(manifest.get("platforms", []))


def missing_library_message(filepath: str) -> str | None:
    """Why a file named ``filepath`` cannot be read or written in this Blender: the library its format needs
    does not import (a platform or Python the extension has no wheel for), in plain words with what to do;
    None when it imports (or the format needs none)."""
    ext = os.path.splitext(filepath)[1].lower()
    if ext not in _LIBRARIES:
        return None
    module, name, source = _LIBRARIES[ext]
    try:
        importlib.import_module(module)
        return None
    except ImportError as exc:
        reason = str(exc)
    where = f"Blender's Python {platform.python_version()} on {sys.platform} {platform.machine()}"
    if source == "bundled":
        return (f"{ext} files need the {name} library, which does not load in {where} ({reason}). The extension "
                f"bundles {name} for {_bundled_for(name)}: reinstall the extension built for this platform, or "
                f"use .ply, .compressed.ply or .spz instead")
    return (f"this {ext} file needs the {name} library, which Blender ships with its Python but which does not "
            f"load in {where} ({reason}). Convert it to .spz version 3 or .ply (e.g. `i3d convert`) and import "
            f"that")


def _explained(filepath: str, exc: Exception) -> Exception:
    """``exc`` with the plain-words reason when a library the format needs is missing (the readers' own
    message says `pip install`, which is no advice inside Blender)."""
    entry = _LIBRARIES.get(os.path.splitext(filepath)[1].lower())
    if entry is None or entry[1].lower() not in str(exc).lower():  # another fault of the file
        return exc
    message = missing_library_message(filepath)
    return splats.PlyFormatError(message) if message else exc


def import_splat_file(context, filepath: str, display: str = "AUTO", spz_axes: str = "ply") -> bpy.types.Object:
    """Read a splat file (any format splats.read_any knows; ``spz_axes`` as there) and build a splat object in the
    active collection; returns it (raises on error)."""
    try:
        data = splats.read_any(filepath, spz_axes=spz_axes)
    except splats.PlyFormatError as exc:
        raise _explained(filepath, exc) from exc
    base = os.path.basename(filepath)
    if base.lower().endswith(".json"):  # an unbundled SOG: the scene is its folder
        base = os.path.basename(os.path.dirname(os.path.abspath(filepath)))
    name = base[: -len(".compressed.ply")] if base.lower().endswith(".compressed.ply") else os.path.splitext(base)[0]
    name = name or "splats"
    mesh = bpy.data.meshes.new(name)
    obj = bpy.data.objects.new(name, mesh)
    splat.store_splat_data(obj, data)
    collection = context.collection if context.collection is not None else context.scene.collection
    collection.objects.link(obj)
    light = data.n >= splat.LIGHT_MODE_THRESHOLD if display == "AUTO" else display == "POINTS"
    splat.attach_display(obj, light=light)
    return obj


def export_splat_file(obj: bpy.types.Object, filepath: str, apply_transform: bool = False,
                      spz_axes: str = "ply") -> list[str]:
    """Write the splat object to .ply/.compressed.ply/.splat/.spz/.sog/meta.json (by the name; ``spz_axes`` as
    splats.write_any); returns warnings for the user (empty if none)."""
    data = splat.splat_data(obj)
    warnings = []
    if apply_transform:
        matrix = np.array(obj.matrix_world, dtype=np.float64)
        linear = matrix[:3, :3]
        data = splat.transform_splat_data(data, matrix)
        if data.sh_rest.size and np.any(data.sh_rest) and not np.allclose(linear, np.eye(3)):
            warnings.append("higher spherical-harmonics bands were not rotated with the object "
                            "(view-dependent colour keeps its old orientation)")
    try:
        splats.write_any(filepath, data, spz_axes=spz_axes)
    except splats.PlyFormatError as exc:
        raise _explained(filepath, exc) from exc
    return warnings


class I3D_OT_import_ply(bpy.types.Operator, ImportHelper):
    """Import a 3D Gaussian Splatting file (.ply, compressed .ply, .splat, .spz, .sog or a SOG's meta.json) as a splat object"""

    bl_idname = "i3d.import_ply"
    bl_label = "Import Gaussian Splats"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default=_FILTER, options={"HIDDEN"})
    spz_axes: bpy.props.EnumProperty(name=".spz Axes", items=_SPZ_AXES, default="ply",
                                     description="Which axes an .spz file holds (its header does not say)")
    display: bpy.props.EnumProperty(
        name="Display",
        items=(("AUTO", "Auto", f"Points from {splat.LIGHT_MODE_THRESHOLD} splats up, ellipsoids below"),
               ("SPLATS", "Ellipsoids", "One ellipsoid per Gaussian"),
               ("POINTS", "Points", "Light mode: one point per Gaussian")),
        default="AUTO")

    def execute(self, context):
        try:
            obj = import_splat_file(context, self.filepath, self.display, self.spz_axes)
        except (OSError, ValueError) as exc:  # PlyFormatError is a ValueError
            self.report({"ERROR"}, f"Cannot import {self.filepath!r}: {exc}")
            return {"CANCELLED"}
        for other in context.selected_objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        self.report({"INFO"}, f"Imported {len(obj.data.vertices)} splats as {obj.name!r}")
        return {"FINISHED"}


class I3D_OT_export_ply(bpy.types.Operator, ExportHelper):
    """Export the active splat object as a 3D Gaussian Splatting file (.ply, .compressed.ply, .splat, .spz, .sog or a SOG's meta.json)"""

    bl_idname = "i3d.export_ply"
    bl_label = "Export Gaussian Splats"
    bl_options = {"REGISTER"}

    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default=_FILTER, options={"HIDDEN"})
    spz_axes: bpy.props.EnumProperty(name=".spz Axes", items=_SPZ_AXES, default="ply",
                                     description="Which axes to write an .spz in")
    apply_transform: bpy.props.BoolProperty(
        name="Apply Object Transform", default=False,
        description="Write world coordinates: transform positions, rotations and scales by the object's "
                    "matrix. Off: write the object's local coordinates (as imported)")

    @classmethod
    def poll(cls, context):
        return splat.is_splat_object(context.active_object)

    def check(self, context):
        # ExportHelper would force ".ply" onto "x.spz" ("x.spz.ply"): keep any splat extension the
        # writer knows and add ".ply" only to a name without one.
        if os.path.basename(self.filepath) and not self.filepath.lower().endswith(_SPLAT_EXTENSIONS):
            self.filepath = bpy.path.ensure_ext(self.filepath, self.filename_ext)
            return True
        return False

    def execute(self, context):
        obj = context.active_object
        if not splat.is_splat_object(obj):
            self.report({"ERROR"}, "The active object is not a splat object")
            return {"CANCELLED"}
        try:
            warnings = export_splat_file(obj, self.filepath, self.apply_transform, self.spz_axes)
        except (OSError, ValueError) as exc:
            self.report({"ERROR"}, f"Cannot export to {self.filepath!r}: {exc}")
            return {"CANCELLED"}
        for warning in warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"Exported {len(obj.data.vertices)} splats to {self.filepath!r}")
        return {"FINISHED"}


classes = (I3D_OT_import_ply, I3D_OT_export_ply)


def _menu_import(self, context) -> None:
    self.layout.operator(I3D_OT_import_ply.bl_idname, text="Gaussian Splats (.ply, .splat, .spz, .sog)")


def _menu_export(self, context) -> None:
    self.layout.operator(I3D_OT_export_ply.bl_idname, text="Gaussian Splats (.ply, .splat, .spz, .sog)")


def register_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.types.TOPBAR_MT_file_export.append(_menu_export)


def unregister_extra() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    bpy.types.TOPBAR_MT_file_export.remove(_menu_export)
