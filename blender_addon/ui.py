"""The N-panel tab "Interactive3D" (View3D sidebar) and the job progress in the status bar."""

from __future__ import annotations

import textwrap

import bpy

from . import connection

CATEGORY = "Interactive3D"


def format_progress(job: connection.JobProgress) -> str:
    """"Stage I 120/1000 · ETA 2m05s" style progress text ('' when there is no job)."""
    if job.state == "idle" or not job.total:
        return ""
    text = f"{job.kind or 'job'} {job.step}/{job.total} {job.state}"
    if job.eta_s is not None and job.state == "running":
        minutes, seconds = divmod(int(round(job.eta_s)), 60)
        text += f" · ETA {minutes}m{seconds:02d}s" if minutes else f" · ETA {seconds}s"
    return text


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY


class I3D_PT_connection(_Panel, bpy.types.Panel):
    bl_label = "Backend"
    bl_idname = "I3D_PT_connection"

    def draw(self, context):
        conn = connection.get()
        layout = self.layout
        problem = connection.dependency_problem()
        if problem:  # the bundled pyzmq/msgpack wheels do not load here: say so instead of failing silently
            box = layout.box()
            box.label(text="Cannot reach a backend from this Blender:", icon="ERROR")
            for line in textwrap.wrap(problem, 60):
                box.label(text=line)
        icon = {"CONNECTED": "LINKED", "CONNECTING": "TIME"}.get(conn.status, "UNLINKED")
        layout.label(text=f"{conn.status.title()}  {conn.address}", icon=icon)
        if conn.session:
            layout.label(text=f"Session {conn.session} · {conn.count} splats")
        if conn.last_error:
            layout.label(text=conn.last_error[:120], icon="ERROR")
        row = layout.row(align=True)
        if conn.status == connection.DISCONNECTED:
            row.operator("i3d.connect", text="Reconnect" if conn.session else "Connect")
        else:
            row.operator("i3d.disconnect")
        row = layout.row(align=True)
        row.operator("i3d.start_backend", icon="PLAY")
        row.operator("i3d.stop_backend", icon="X", text="")
        if conn.log_path:
            layout.operator("i3d.show_backend_log", icon="TEXT")


class I3D_PT_generate(_Panel, bpy.types.Panel):
    bl_label = "Generate (Stage I)"
    bl_idname = "I3D_PT_generate"

    def draw(self, context):
        p = context.scene.i3d
        conn = connection.get()
        layout = self.layout
        layout.prop(p, "prompt")
        layout.prop(p, "negative_prompt")
        col = layout.column(align=True)
        col.prop(p, "guidance")
        col.prop(p, "preset")
        col.prop(p, "steps")
        col.prop(p, "cfg")
        col.prop(p, "seed")
        row = layout.row(align=True)
        row.prop(p, "t_mode", expand=True)
        if p.t_mode == "FIXED":
            layout.prop(p, "t_fixed")
        else:
            row = layout.row(align=True)
            row.prop(p, "t_min")
            row.prop(p, "t_max")
        row = layout.row(align=True)
        row.operator("i3d.generate", icon="PLAY")
        if conn.job.state == "running":
            row.operator("i3d.pause", icon="PAUSE", text="")
        else:
            row.operator("i3d.resume", icon="PLAY", text="")
        row.operator("i3d.stop", icon="CANCEL", text="")
        for note in (conn.preset_note, conn.init_note):  # what the preset and the initialisation became
            if note:
                layout.label(text=note, icon="INFO")
        text = format_progress(conn.job)
        if text:
            layout.label(text=text, icon="SORTTIME")
            if conn.job.total and hasattr(layout, "progress"):  # UILayout.progress exists from 4.0
                layout.progress(factor=conn.job.step / conn.job.total, text=f"{conn.job.step}/{conn.job.total}")


class I3D_PT_interact(_Panel, bpy.types.Panel):
    bl_label = "Interact"
    bl_idname = "I3D_PT_interact"

    def draw(self, context):
        p = context.scene.i3d
        layout = self.layout
        layout.label(text="Select splats in Edit Mode, then:")
        col = layout.column(align=True)
        col.operator("i3d.remove_selected", icon="TRASH")
        row = col.row(align=True)
        row.operator("i3d.transform_selected", icon="OBJECT_ORIGIN")
        row.operator("i3d.transform_selected", text="", icon="X").action = "CANCEL"
        layout.prop(p, "edit_prompt")
        layout.operator("i3d.semantic_edit", icon="BRUSH_DATA")
        box = layout.box()
        box.label(text="Drag")
        box.prop(p, "drag_source")
        box.prop(p, "drag_target")
        box.prop(p, "drag_radius")
        box.row().prop(p, "drag_mode", expand=True)
        col = box.column(align=True)
        col.prop(p, "drag_alpha")
        col.prop(p, "drag_motion_weight")
        col.prop(p, "drag_rigid_weight")
        col.prop(p, "drag_steps")
        box.operator("i3d.drag", icon="CON_TRACKTO")
        layout.operator("i3d.add_part", icon="ADD")


class I3D_PT_stage2(_Panel, bpy.types.Panel):
    bl_label = "Refine (Stage II)"
    bl_idname = "I3D_PT_stage2"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        p = context.scene.i3d
        layout = self.layout
        layout.prop(p, "nerf_steps")
        layout.operator("i3d.to_nerf", icon="VOLUME_DATA")
        box = layout.box()
        box.label(text="Region")
        box.prop(p, "refine_center")
        box.prop(p, "refine_radius")
        col = box.column(align=True)
        col.prop(p, "refine_levels")
        col.prop(p, "refine_capacity")
        col.prop(p, "refine_features")
        col.prop(p, "refine_finest")
        col.prop(p, "refine_steps")
        box.operator("i3d.refine_region", icon="SPHERE")
        row = layout.row(align=True)
        row.prop(p, "preview_mesh_every")
        row.prop(p, "preview_mesh_resolution", text="")
        row = layout.row(align=True)
        row.prop(p, "nerf_render_source", text="")
        row.prop(p, "nerf_render_size", text="")
        row.operator("i3d.render_nerf", icon="RENDER_STILL")
        layout.prop(p, "mesh_resolution")
        row = layout.row(align=True)
        row.prop(p, "mesh_surface", text="")
        row.prop(p, "mesh_opacity" if p.mesh_surface == "OPACITY" else "mesh_threshold", text="")
        layout.operator("i3d.extract_mesh", icon="MESH_DATA")


class I3D_PT_history(_Panel, bpy.types.Panel):
    bl_label = "History"
    bl_idname = "I3D_PT_history"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        conn = connection.get()
        layout = self.layout
        row = layout.row(align=True)
        row.operator("i3d.undo", icon="LOOP_BACK")
        row.operator("i3d.redo", icon="LOOP_FORWARDS")
        for label in reversed(conn.history.get("undo", [])[-10:]):
            layout.label(text=str(label), icon="DOT")
        for label in conn.history.get("redo", [])[:5]:
            layout.label(text=f"(redo) {label}")


def draw_status_bar(self, context):
    """Job progress in the status bar while a job runs."""
    text = format_progress(connection.get().job)
    if text:
        self.layout.label(text=f"Interactive3D: {text}", icon="SORTTIME")


classes = (I3D_PT_connection, I3D_PT_generate, I3D_PT_interact, I3D_PT_stage2, I3D_PT_history)


def register_extra() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw_status_bar)


def unregister_extra() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_status_bar)
