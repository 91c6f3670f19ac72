"""Stage I: i3d.generate (text → 3D Gaussians with SDS guidance), i3d.pause, i3d.resume, i3d.stop.

In the UI, i3d.generate runs modal: the viewport animates with the state frames the sync step applies,
progress (step, ETA) shows in the panel and the status bar, and Esc cancels the job. In background mode
it starts the job (blocking request) and, with ``wait``, blocks until it ends (batch scripts).
Backend ops: ``gaussians.init``, ``stage1.start``, ``job.pause`` / ``job.resume`` / ``job.cancel``.
"""

from __future__ import annotations

import os

import bpy
import numpy as np

from .. import connection, preferences
from ..properties import GUIDANCE_ITEMS
from .connection import ensure_timer, is_blocking, run_chain, run_request


def job_args_from_scene(scene, settings: preferences.Settings, guidance: str) -> dict:
    """Args of ``stage1.start`` from the panel settings (prompt, steps, CFG, timestep)."""
    p = scene.i3d
    args = {"guidance": guidance, "prompt": p.prompt, "negative_prompt": p.negative_prompt, "steps": p.steps,
            "guidance_scale": p.cfg, "seed": p.seed}
    # The preference names one model; a PixArt run with the SD default left there uses the backend's default.
    if guidance == "sd" or (guidance == "pixart" and settings.model != preferences.Settings.model):
        args["model"] = settings.model
        # Blender's "Allow Online Access" also governs whether the backend may download weights.
        args["local_files_only"] = not bpy.app.online_access
    if p.t_mode == "FIXED":
        args["fixed_t"] = p.t_fixed
    else:
        args["t_min"], args["t_max"] = p.t_min, p.t_max
    return args


class I3D_OT_generate(bpy.types.Operator):
    """Generate 3D Gaussians from the prompt (Stage I); Esc cancels"""

    bl_idname = "i3d.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    guidance: bpy.props.EnumProperty(name="Guidance", items=(("SCENE", "From Panel", "The panel's guidance"),
                                                              *GUIDANCE_ITEMS), default="SCENE")
    init: bpy.props.EnumProperty(
        name="Initialise", default="AUTO",
        items=(("AUTO", "Auto", "When the session has no Gaussians: Shap-E points for the prompt if its weights are on "
                "the backend (SD/PixArt guidance), else a random sphere (the status says which); else continue"),
               ("SHAP_E", "Shap-E", "Start again from Shap-E points for the prompt (paper; downloads if allowed)"),
               ("RANDOM", "Random", "Start again from a random sphere of points"),
               ("NONE", "Continue", "Optimise the session's current Gaussians")))
    init_points: bpy.props.IntProperty(name="Points", default=4096, min=1, description="Random init size (paper: 4096)")
    init_radius: bpy.props.FloatProperty(name="Init Radius", default=0.5, min=1e-3)
    reference_path: bpy.props.StringProperty(name="Reference", subtype="FILE_PATH", default="",
                                             description="Oracle guidance: the reference .ply it denoises towards")
    resolution: bpy.props.IntProperty(name="Resolution", default=0, min=0,
                                      description="Render size; 0: the backend's default")
    batch: bpy.props.IntProperty(name="Views per Step", default=0, min=0, description="0: the backend's default")
    wait: bpy.props.BoolProperty(name="Wait", default=False, description="Batch: block until the job ends")

    _timer = None

    @classmethod
    def poll(cls, context):
        conn = connection.get()
        return conn.connected and not conn.job_active

    def _start(self, context) -> bool:
        conn = connection.get()
        settings = preferences.get(context)
        p = context.scene.i3d
        guidance = p.guidance if self.guidance == "SCENE" else self.guidance
        if guidance in ("sd", "pixart") and not p.prompt.strip():
            self.report({"ERROR"}, "Enter a prompt first")
            return False
        args = job_args_from_scene(context.scene, settings, guidance)
        if self.reference_path:
            # the backend may be remote (and reads only inside its data folders): upload the file's bytes
            ref = bpy.path.abspath(self.reference_path)
            try:
                data = np.fromfile(ref, dtype=np.uint8)
            except OSError as exc:
                self.report({"ERROR"}, f"Cannot read the reference {ref!r}: {exc}")
                return False
            if not run_request(self, "stage1.set_reference", {"filename": os.path.basename(ref)}, [data], kind="ignore"):
                return False
        if p.preset != "NONE" and p.t_mode != "FIXED":
            args.pop("t_min", None), args.pop("t_max", None)  # the preset's t schedule (annealed)
        chain = []
        if p.preset != "NONE":
            chain.append({"op": "presets.resolve", "args": {"name": p.preset}, "kind": "preset"})
        fresh = self.init in ("RANDOM", "SHAP_E") or (self.init == "AUTO" and conn.count == 0)
        if fresh:
            random_init = {"kind": "random", "n": self.init_points, "radius": self.init_radius, "seed": p.seed}
            shap_e = self.init == "SHAP_E" or (self.init == "AUTO" and guidance in ("sd", "pixart"))
            if shap_e:
                # AUTO never starts a download (Shap-E only if its weights are already on the backend)
                init = {"kind": "shap_e", "prompt": p.prompt, "n": self.init_points, "seed": p.seed,
                        "local_files_only": self.init == "AUTO" or not bpy.app.online_access}
                chain.append({"op": "gaussians.init", "args": init, "kind": "init_shap_e", "timeout": 1800.0,
                              "context": {"fallback": random_init} if self.init == "AUTO" else {}})
            else:
                chain.append({"op": "gaussians.init", "args": random_init, "kind": "chain_edit"})
        explicit = {}  # the operator's own sizes win over a preset's
        if self.resolution:
            explicit["resolution"] = self.resolution
        if self.batch:
            explicit["batch"] = self.batch
        if p.preset != "NONE":
            args.pop("steps", None)  # the preset's steps, not the panel's
        chain.append({"op": "stage1.start", "args": {**args, **explicit}, "kind": "job", "context": {"explicit": explicit}})
        return run_chain(self, chain)

    def execute(self, context):
        if not self._start(context):
            return {"CANCELLED"}
        conn = connection.get()
        if is_blocking() and self.wait:
            state = conn.wait_job(scene=context.scene)
            if conn.status == connection.DISCONNECTED:
                self.report({"ERROR"}, f"Backend lost during Stage I: {conn.last_error}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"Stage I {state} after {conn.job.step} steps")
        return {"FINISHED"}

    def invoke(self, context, event):
        if is_blocking():
            return self.execute(context)
        if not self._start(context):
            return {"CANCELLED"}
        ensure_timer()
        self._timer = context.window_manager.event_timer_add(0.25, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        conn = connection.get()
        if event.type == "ESC" and event.value == "PRESS":
            if conn.connected and conn.job_active:
                run_request(self, "job.cancel", kind="status")
            self._finish(context)
            self.report({"INFO"}, "Stage I cancelled")
            return {"CANCELLED"}
        if event.type == "TIMER":
            if conn.status == connection.DISCONNECTED:
                self._finish(context)
                self.report({"ERROR"}, f"Backend disconnected: {conn.last_error}")
                return {"CANCELLED"}
            if conn.job.state in connection.JOB_FINISHED and not conn.pending:
                self._finish(context)
                return {"FINISHED"}
        return {"PASS_THROUGH"}

    def _finish(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None


def _job_control(op_self, op: str) -> set:
    if not run_request(op_self, op, kind="status"):
        return {"CANCELLED"}
    return {"FINISHED"}


class I3D_OT_pause(bpy.types.Operator):
    """Pause the running job after its current step"""

    bl_idname = "i3d.pause"
    bl_label = "Pause"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        conn = connection.get()
        return conn.connected and conn.job.state == "running"

    def execute(self, context):
        return _job_control(self, "job.pause")


class I3D_OT_resume(bpy.types.Operator):
    """Continue the paused job"""

    bl_idname = "i3d.resume"
    bl_label = "Resume"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        conn = connection.get()
        return conn.connected and conn.job.state in ("paused", "pausing")

    def execute(self, context):
        return _job_control(self, "job.resume")


class I3D_OT_stop(bpy.types.Operator):
    """Stop the job after its current step (the Gaussians keep their state)"""

    bl_idname = "i3d.stop"
    bl_label = "Stop"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        conn = connection.get()
        return conn.connected and conn.job_active

    def execute(self, context):
        return _job_control(self, "job.cancel")


classes = (I3D_OT_generate, I3D_OT_pause, I3D_OT_resume, I3D_OT_stop)
