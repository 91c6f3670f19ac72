"""Add-on preferences: backend address, authentication key file, the local backend, model and defaults.

When the package is not enabled as an add-on/extension (development, tests that call register()
directly) Blender has no preferences for it: :func:`get` then returns :class:`Settings` defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import bpy

# The add-on's root package: "interactive3d" as an extension ("bl_ext.<repo>.interactive3d"), or
# "interactive3d.blender_addon" in development.
ADDON_PACKAGE = __package__


@dataclass(frozen=True)
class Settings:
    """The preference values as plain data (defaults = a fresh install)."""

    address: str = "tcp://127.0.0.1:5555"
    auth_key_file: str = ""
    python: str = ""
    state_dir: str = ""
    device: str = "auto"
    model: str = "stabilityai/stable-diffusion-2-1-base"
    default_steps: int = 1000
    timeout_s: float = 10.0

    def auth_key(self) -> bytes | None:
        """The shared HMAC key read from ``auth_key_file`` (None when unset). Raises OSError/ValueError."""
        if not self.auth_key_file:
            return None
        path = bpy.path.abspath(self.auth_key_file)
        with open(path, "rb") as f:
            key = f.read().strip()
        if not key:
            raise ValueError(f"auth_key_file {path!r} is empty")
        return key

    def serve_args(self) -> list[str]:
        """Extra ``i3d serve`` arguments for a local backend."""
        args = ["--device", self.device]
        if self.state_dir:
            args += ["--state-dir", bpy.path.abspath(self.state_dir)]
        if self.auth_key_file:
            args += ["--auth-key-file", bpy.path.abspath(self.auth_key_file)]
        return args + model_dir_args(self.model)


def model_dir_args(model: str) -> list[str]:
    """``--model-dir FOLDER`` when ``model`` is a local folder (a hub id needs none): the backend loads local
    models only from its model folders (issue 15)."""
    folder = os.path.expanduser(model) if model else ""
    return ["--model-dir", os.path.realpath(folder)] if folder and os.path.isdir(folder) else []


class I3D_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    address: bpy.props.StringProperty(
        name="Backend Address", default=Settings.address,
        description="tcp://host:port or ipc:///path of the Interactive3D backend (a remote GPU box needs a key)")
    auth_key_file: bpy.props.StringProperty(
        name="Authentication Key File", subtype="FILE_PATH", default="",
        description="File holding the shared HMAC key of the backend (required for non-loopback backends)")
    python: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Python interpreter with the interactive3d package installed (runs the local backend)")
    state_dir: bpy.props.StringProperty(
        name="State Directory", subtype="DIR_PATH", default="",
        description="Where the local backend writes checkpoints (empty: the backend's default)")
    device: bpy.props.EnumProperty(
        name="Device", default=Settings.device,
        items=(("auto", "Auto", "CUDA when available, else CPU"), ("cuda", "CUDA", "NVIDIA GPU"),
               ("cpu", "CPU", "Slow; for tests and previews")))
    model: bpy.props.StringProperty(
        name="Model", default=Settings.model,
        description="Diffusion model id (from the backend's Hugging Face cache) or a local path")
    default_steps: bpy.props.IntProperty(name="Default Steps", default=Settings.default_steps, min=1, max=100000)
    timeout_s: bpy.props.FloatProperty(
        name="Timeout", default=Settings.timeout_s, min=0.5, max=600.0, unit="TIME",
        description="Seconds without a reply before the backend is considered unreachable")

    def draw(self, context):
        from . import connection

        layout = self.layout
        col = layout.column()
        col.prop(self, "address")
        col.prop(self, "auth_key_file")
        col.prop(self, "timeout_s")
        box = layout.box()
        box.label(text="Local backend")
        box.prop(self, "python")
        box.prop(self, "state_dir")
        box.prop(self, "device")
        row = box.row()
        row.operator("i3d.start_backend")
        row.operator("i3d.stop_backend")
        log_path = connection.get().log_path
        if log_path:
            box.label(text=f"Log: {log_path}")
            box.operator("i3d.show_backend_log")
        layout.prop(self, "model")
        layout.prop(self, "default_steps")


def get(context=None) -> Settings:
    """The current preferences as :class:`Settings` (defaults when the add-on has no preferences)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    prefs = getattr(addon, "preferences", None) if addon is not None else None
    if prefs is None:
        return Settings()
    return Settings(address=prefs.address, auth_key_file=prefs.auth_key_file, python=prefs.python,
                    state_dir=prefs.state_dir, device=prefs.device, model=prefs.model,
                    default_steps=prefs.default_steps, timeout_s=prefs.timeout_s)


def python_for_backend(settings: Settings) -> str:
    """The configured backend Python, or this interpreter in development."""
    if settings.python:
        return bpy.path.abspath(settings.python)
    from . import connection

    return connection.default_python()


classes = (I3D_AP_preferences,)
