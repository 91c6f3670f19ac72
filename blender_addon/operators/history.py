"""i3d.undo / i3d.redo: the backend's exact history (parameters, optimiser moments, parts, Stage II state).

Blender's own Ctrl+Z does not reach the backend (the splat object is only a view of the backend's
truth); these operators do, and the sync step then rewrites the object from the restored state.
"""

from __future__ import annotations

import bpy

from .. import connection
from .connection import run_request


def _poll() -> bool:
    conn = connection.get()
    return conn.connected and not conn.job_active


class I3D_OT_undo(bpy.types.Operator):
    """Undo the last backend edit (interaction, job or init)"""

    bl_idname = "i3d.undo"
    bl_label = "Undo (Backend)"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return _poll()

    def execute(self, context):
        return {"FINISHED"} if run_request(self, "history.undo", kind="edit") else {"CANCELLED"}


class I3D_OT_redo(bpy.types.Operator):
    """Redo the last undone backend edit"""

    bl_idname = "i3d.redo"
    bl_label = "Redo (Backend)"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return _poll()

    def execute(self, context):
        return {"FINISHED"} if run_request(self, "history.redo", kind="edit") else {"CANCELLED"}


classes = (I3D_OT_undo, I3D_OT_redo)
