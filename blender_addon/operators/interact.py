"""Stage I interactions with Blender's own tools: i3d.remove_selected, i3d.transform_selected, i3d.drag,
i3d.semantic_edit, i3d.add_part (backend ops ``parts.*`` and ``interact.*``, protocol/catalogue.py).

The selection is the splat object's Edit-Mode vertex selection (vertex i = Gaussian i). That holds only
while the mesh is the backend's last state, so before sending indices the object is checked
(splat.index_map_problem: vertex count, the i3d_index stamp, positions) and the indices go with the state
revision stamped on the mesh; the backend refuses a stale one (``conflict``). Either way the object is
re-synced from the backend and the artist asked to select again: an edit never lands on other Gaussians
(issue 14). Every world-space input is converted to the splat object's local frame by
connection.world_to_local_* before sending.
"""

from __future__ import annotations

import os

import numpy as np

import bpy

from .. import connection, splat
from .._deps import splats
from .connection import ensure_timer, is_blocking, run_request, splat_object

# The backend part that holds the Blender selection while a transform is in progress.
SELECTION_PART = "blender_selection"
TRANSFORM_EMPTY = "I3D Transform"


def _job_poll(context, preempts: bool = False) -> bool:
    """Interactions need no job in flight, or a paused Stage I job; drag and semantic edit (their jobs
    pause Stage I for their duration, see Connection.can_interact) also a running one."""
    return connection.get().can_interact(preempts)


def _selection(op_self, context):
    """(splat object, selected indices int64 [K], args with the state revision) or None after reporting why."""
    obj = splat_object(context)
    if obj is None:
        op_self.report({"ERROR"}, "No splat object: generate or add one first")
        return None
    conn = connection.get()
    problem = splat.index_map_problem(obj, conn.positions)
    session, revision = splat.stored_revision(obj)
    if problem is None and conn.session and session and session != conn.session:
        problem = "it shows another backend session"
    if problem is not None:
        conn.resync(f"{obj.name!r}: {problem}")
        if is_blocking():
            conn.wait_idle()
        op_self.report({"ERROR"}, f"{obj.name!r} no longer matches the backend: {problem}. "
                                  "It was re-synced from the backend: select the splats again")
        return None
    idx = splat.selected_indices(obj)
    if idx.size == 0:
        op_self.report({"ERROR"}, f"Nothing selected on {obj.name!r}: select splats in Edit Mode first")
        return None
    return obj, idx, ({} if revision is None else {"revision": revision})


class I3D_OT_remove_selected(bpy.types.Operator):
    """Remove the splats selected in Edit Mode (on the backend; undo with i3d.undo)"""

    bl_idname = "i3d.remove_selected"
    bl_label = "Remove Selected Splats"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return _job_poll(context)

    def execute(self, context):
        sel = _selection(self, context)
        if sel is None:
            return {"CANCELLED"}
        obj, idx, rev = sel
        if not run_request(self, "parts.remove", rev, [idx.astype(np.int64)], kind="edit"):
            return {"CANCELLED"}
        self.report({"INFO"}, f"Removing {idx.size} splats from {obj.name!r}")
        return {"FINISHED"}


def _centroid_world(obj, idx: np.ndarray) -> np.ndarray:
    co = splat.read_state(obj)[idx, :3].astype(np.float64)
    return connection.local_to_world_point(np.array(obj.matrix_world), co.mean(axis=0))


class I3D_OT_transform_selected(bpy.types.Operator):
    """Move, rotate and scale the selected splats: the selection becomes a temporary empty that you
    transform with G/R/S or the gizmo; run again (Confirm) to send the transform to the backend"""

    bl_idname = "i3d.transform_selected"
    bl_label = "Transform Selected Splats"
    bl_options = {"REGISTER"}

    action: bpy.props.EnumProperty(
        name="Action", default="AUTO",
        items=(("AUTO", "Auto", "Begin, or confirm when a transform is in progress"),
               ("BEGIN", "Begin", "Make the selection a temporary empty to transform"),
               ("CONFIRM", "Confirm", "Send the empty's transform to the backend"),
               ("CANCEL", "Cancel", "Drop the temporary empty")))
    use_matrix: bpy.props.BoolProperty(
        name="Use Matrix", default=False,
        description="Scripts: send 'matrix' (world space) for the current selection, no empty")
    matrix: bpy.props.FloatVectorProperty(
        name="Matrix", size=(4, 4), subtype="MATRIX",
        default=((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)),
        description="World-space 4×4 applied to the selected splats' world positions")

    @classmethod
    def poll(cls, context):
        return _job_poll(context)

    def execute(self, context):
        empty = bpy.data.objects.get(TRANSFORM_EMPTY)
        action = self.action
        if action == "AUTO":
            action = "DIRECT" if self.use_matrix else ("CONFIRM" if empty is not None else "BEGIN")
        if action == "CANCEL":
            if empty is not None:
                bpy.data.objects.remove(empty)
            return {"FINISHED"}
        if action == "CONFIRM":
            return self._confirm(context, empty)
        sel = _selection(self, context)
        if sel is None:
            return {"CANCELLED"}
        obj, idx, rev = sel
        if not run_request(self, "parts.select", {"name": SELECTION_PART, "kind": "indices", **rev},
                           [idx.astype(np.int64)], kind="ignore"):
            return {"CANCELLED"}
        if action == "DIRECT":
            return self._send(context, obj, np.array(self.matrix, dtype=np.float64), rev)
        return self._begin(context, obj, idx, rev)

    def _begin(self, context, obj, idx, rev):
        if obj.mode == "EDIT":
            bpy.ops.object.mode_set(mode="OBJECT")
        old = bpy.data.objects.get(TRANSFORM_EMPTY)
        if old is not None:
            bpy.data.objects.remove(old)
        empty = bpy.data.objects.new(TRANSFORM_EMPTY, None)
        empty.empty_display_type = "ARROWS"
        empty.location = _centroid_world(obj, idx).tolist()
        empty["i3d_object"] = obj.name
        if rev:  # the transform is of the selection taken at this revision: confirm sends it along
            empty["i3d_revision"] = int(rev["revision"])
        # The starting matrix, so that confirm sends (now · start⁻¹): the motion the artist made.
        empty["i3d_start"] = [float(v) for v in np.array(empty.matrix_basis).ravel()]  # IDProperties need Python floats
        context.scene.collection.objects.link(empty)
        for other in context.selected_objects:
            other.select_set(False)
        empty.select_set(True)
        context.view_layer.objects.active = empty
        self.report({"INFO"}, f"{idx.size} splats selected: move, rotate, scale the empty, then Confirm")
        return {"FINISHED"}

    def _confirm(self, context, empty):
        if empty is None:
            self.report({"ERROR"}, "No transform in progress: Begin first")
            return {"CANCELLED"}
        obj = bpy.data.objects.get(empty.get("i3d_object", ""))
        if obj is None:
            self.report({"ERROR"}, "The splat object of this transform is gone")
            bpy.data.objects.remove(empty)
            return {"CANCELLED"}
        start = np.array(empty["i3d_start"], dtype=np.float64).reshape(4, 4)
        motion = np.array(empty.matrix_world, dtype=np.float64) @ np.linalg.inv(start)
        rev = {"revision": int(empty["i3d_revision"])} if "i3d_revision" in empty else {}
        bpy.data.objects.remove(empty)
        return self._send(context, obj, motion, rev)

    def _send(self, context, obj, world_matrix: np.ndarray, rev: dict):
        try:
            local = connection.world_to_local_transform(np.array(obj.matrix_world), world_matrix)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not run_request(self, "parts.transform", {"part": SELECTION_PART, "pivot": [0.0, 0.0, 0.0], **rev},
                           [local.astype(np.float32)], kind="edit"):
            return {"CANCELLED"}
        return {"FINISHED"}


class I3D_OT_drag(bpy.types.Operator):
    """Drag the splats within a radius of a source point towards a target point (Interactive3D Eq. 3-6)"""

    bl_idname = "i3d.drag"
    bl_label = "Drag"
    bl_options = {"REGISTER"}

    use_scene: bpy.props.BoolProperty(
        name="From Scene Settings", default=True,
        description="Take the drag settings from the panel (Scene) instead of this operator's properties")
    source: bpy.props.FloatVectorProperty(name="Source", size=3, subtype="TRANSLATION", unit="LENGTH")
    target: bpy.props.FloatVectorProperty(name="Target", size=3, subtype="TRANSLATION", unit="LENGTH")
    radius: bpy.props.FloatProperty(name="Radius", default=0.1, min=1e-6, unit="LENGTH")
    mode: bpy.props.EnumProperty(name="Mode", default="deformable",
                                 items=(("deformable", "Deformable", ""), ("rigid", "Rigid", "")))
    alpha: bpy.props.FloatProperty(name="α", default=0.0, min=0.0,
                                   description="Step towards the target per step (world units); 0: automatic")
    motion_weight: bpy.props.FloatProperty(name="Motion Weight", default=1.0, min=0.0)
    rigid_weight: bpy.props.FloatProperty(name="Rigid Weight", default=30.0, min=0.0)
    steps: bpy.props.IntProperty(name="Steps", default=100, min=1)
    guidance: bpy.props.BoolProperty(name="Guidance", default=False,
                                     description="Add SDS with the session's guidance and the prompt")
    wait: bpy.props.BoolProperty(name="Wait", default=False, description="Batch: block until the drag ends")

    @classmethod
    def poll(cls, context):
        return _job_poll(context, preempts=True)

    def invoke(self, context, event):
        return self.execute(context)

    def execute(self, context):
        p = context.scene.i3d
        if self.use_scene:
            self.source, self.target, self.radius = p.drag_source, p.drag_target, p.drag_radius
            self.mode, self.alpha = p.drag_mode, p.drag_alpha
            self.motion_weight, self.rigid_weight, self.steps = p.drag_motion_weight, p.drag_rigid_weight, p.drag_steps
        obj = splat_object(context)
        if obj is None:
            self.report({"ERROR"}, "No splat object to drag")
            return {"CANCELLED"}
        m = np.array(obj.matrix_world)
        try:
            src = connection.world_to_local_point(m, self.source)
            dst = connection.world_to_local_point(m, self.target)
            radius = connection.world_to_local_length(m, self.radius)
            alpha = connection.world_to_local_length(m, self.alpha)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        args = {"source": src.tolist(), "target": dst.tolist(), "radius": radius, "mode": self.mode,
                "motion_weight": self.motion_weight, "rigid_weight": self.rigid_weight, "steps": self.steps,
                "step_size": alpha if alpha > 0 else None, "guidance": self.guidance}
        if self.guidance:
            args.update(_sds_args(p))
        if not run_request(self, "interact.drag", args, kind="job"):
            return {"CANCELLED"}
        return _maybe_wait(self, context, self.wait)


def _sds_args(p) -> dict:
    """Interactive SDS settings from the panel: prompt and timestep (range or fixed)."""
    args = {"prompt": p.prompt, "negative_prompt": p.negative_prompt, "t_min": p.t_min, "t_max": p.t_max}
    if p.t_mode == "FIXED":
        args["fixed_t"] = p.t_fixed
    zoom = connection.get().preset_ops.get("interact.edit", {}).get("resolution") if p.preset != "NONE" else None
    if zoom:
        args["resolution"] = zoom  # the preset's zoom-in renders (paper: 256²), as the backend resolved them
    return args


def _maybe_wait(op_self, context, wait: bool):
    conn = connection.get()
    if is_blocking() and wait:
        started = conn.job.job
        state = conn.wait_job(scene=context.scene)
        if conn.status == connection.DISCONNECTED:
            op_self.report({"ERROR"}, f"Backend lost during the job: {conn.last_error}")
            return {"CANCELLED"}
        job = conn.ended if conn.ended is not None and conn.ended.job == started else conn.job
        op_self.report({"INFO"}, f"Job {state} at step {job.step}")
    else:
        ensure_timer()
    return {"FINISHED"}


class I3D_OT_semantic_edit(bpy.types.Operator):
    """Re-generate the selected splats with a new prompt (SDS restricted to the selection)"""

    bl_idname = "i3d.semantic_edit"
    bl_label = "Semantic Edit"
    bl_options = {"REGISTER"}

    prompt: bpy.props.StringProperty(name="Prompt", default="", description="Empty: the panel's edit prompt")
    steps: bpy.props.IntProperty(name="Steps", default=200, min=1)
    wait: bpy.props.BoolProperty(name="Wait", default=False)

    @classmethod
    def poll(cls, context):
        return _job_poll(context, preempts=True)

    def execute(self, context):
        p = context.scene.i3d
        prompt = self.prompt or p.edit_prompt
        if not prompt.strip():
            self.report({"ERROR"}, "Semantic edit needs a prompt")
            return {"CANCELLED"}
        sel = _selection(self, context)
        if sel is None:
            return {"CANCELLED"}
        _, idx, rev = sel
        if not run_request(self, "parts.select", {"name": SELECTION_PART, "kind": "indices", **rev},
                           [idx.astype(np.int64)], kind="ignore"):
            return {"CANCELLED"}
        args = dict(_sds_args(p), prompt=prompt, part=SELECTION_PART, steps=self.steps)
        if not run_request(self, "interact.edit", args, kind="job"):
            return {"CANCELLED"}
        return _maybe_wait(self, context, self.wait)


class I3D_OT_add_part(bpy.types.Operator):
    """Add splats to the session: another splat object (at its place in the scene) or a splat file (.ply, compressed .ply, .splat, .spz)"""

    bl_idname = "i3d.add_part"
    bl_label = "Add Part"
    bl_options = {"REGISTER"}

    source_object: bpy.props.StringProperty(name="Object", default="",
                                            description="Splat object to add (empty: the active object)")
    filepath: bpy.props.StringProperty(name="File", subtype="FILE_PATH", default="",
                                       description="A splat file (.ply, compressed .ply, .splat, .spz) instead of an object")
    name: bpy.props.StringProperty(name="Part Name", default="")

    @classmethod
    def poll(cls, context):
        return _job_poll(context)

    def execute(self, context):
        conn = connection.get()
        target = bpy.data.objects.get(conn.object_name or "")
        args = {"name": self.name} if self.name else {}
        if self.filepath:
            # Send the file's bytes (the backend may run on another machine): it reads them as gaussians.load_ply
            # does, keeping the SH bands a state frame would drop. Checked here first, so a bad file says so at once.
            path = bpy.path.abspath(self.filepath)
            try:
                splats.read_any(path)
                with open(path, "rb") as f:
                    content = f.read()
            except (OSError, ValueError) as exc:
                self.report({"ERROR"}, f"Cannot read {path!r}: {exc}")
                return {"CANCELLED"}
            buffers = [np.frombuffer(content, np.uint8)]
            args["filename"] = os.path.basename(path)
            src_matrix = np.eye(4)
            src = None
        else:
            src = bpy.data.objects.get(self.source_object) if self.source_object else context.active_object
            if not splat.is_splat_object(src):
                self.report({"ERROR"}, f"{getattr(src, 'name', self.source_object)!r} is not a splat object")
                return {"CANCELLED"}
            src_matrix = np.array(src.matrix_world, dtype=np.float64)
            buffers = [splat.read_state(src)]
        adopt = target is None and src is not None
        if adopt:
            # An empty session adopts this object: its local frame becomes the backend's frame.
            matrix = np.eye(4)
        else:
            target_matrix = np.array(target.matrix_world) if target is not None else np.eye(4)
            matrix = connection.relative_matrix(target_matrix, src_matrix)
        buffers = buffers + [matrix.astype(np.float32)]
        previous = conn.object_name
        if adopt:
            conn.object_name = src.name  # before sending: a blocking call applies the new state at once
        if not run_request(self, "parts.add", args, buffers, kind="edit"):
            conn.object_name = previous
            return {"CANCELLED"}
        return {"FINISHED"}


classes = (I3D_OT_remove_selected, I3D_OT_transform_selected, I3D_OT_drag, I3D_OT_semantic_edit, I3D_OT_add_part)
