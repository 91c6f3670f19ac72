"""Scene settings of the Interactive3D tools (``Scene.i3d``): prompt and guidance, drag, refinement,
mesh extraction, and the job status mirrored by the sync step (read-only in the panels).

Points and radii here are in *world* space; operators convert them to the splat object's local frame
(connection.world_to_local_*) before they go to the backend.
"""

from __future__ import annotations

import bpy

GUIDANCE_ITEMS = (
    ("sd", "Stable Diffusion", "SDS with the configured Stable Diffusion model"),
    ("pixart", "PixArt-α", "SDS with a PixArt-α model"),
    ("oracle", "Oracle", "Closed-form denoiser towards a reference (tests, demos)"),
    ("none", "None", "No guidance (interaction losses only)"),
)


class I3D_PG_scene(bpy.types.PropertyGroup):
    # -- Stage I -----------------------------------------------------------------------------------------
    prompt: bpy.props.StringProperty(name="Prompt", default="", description="What to generate")
    negative_prompt: bpy.props.StringProperty(name="Negative Prompt", default="")
    steps: bpy.props.IntProperty(name="Steps", default=1000, min=1, max=100000)
    cfg: bpy.props.FloatProperty(name="Guidance Scale", default=100.0, min=0.0, soft_max=200.0,
                                 description="Classifier-free guidance scale (100 as in threestudio/gsgen)")
    t_mode: bpy.props.EnumProperty(
        name="Timestep", default="RANGE",
        items=(("RANGE", "Range", "t sampled uniformly in [t min, t max]"), ("FIXED", "Fixed", "One fixed t")))
    t_min: bpy.props.FloatProperty(name="t Min", default=0.02, min=0.0, max=1.0)
    t_max: bpy.props.FloatProperty(name="t Max", default=0.98, min=0.0, max=1.0)
    t_fixed: bpy.props.FloatProperty(name="t", default=0.3, min=0.0, max=1.0,
                                     description="e.g. 0.98 early, 0.3 to fine-tune details")
    guidance: bpy.props.EnumProperty(name="Guidance", items=GUIDANCE_ITEMS, default="sd")
    preset: bpy.props.EnumProperty(
        name="Preset", default="NONE",
        description="Run schedule resolved by the backend for its device (scaled down, and said so, on a CPU)",
        items=(("NONE", "Custom", "The steps and timestep set here"),
               ("paper", "Paper", "10k Stage I + 10k Stage II steps at 256², zoom-in 256², t annealing"),
               ("fast", "Fast", "A third of the paper's steps, 128² zoom-in"),
               ("preview", "Preview", "600 + 600 steps, 128² Stage I renders")))
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0)
    # -- interactions ------------------------------------------------------------------------------------
    edit_prompt: bpy.props.StringProperty(name="Edit Prompt", default="", description="Prompt for the selected part")
    drag_source: bpy.props.FloatVectorProperty(name="Source", size=3, subtype="TRANSLATION", unit="LENGTH")
    drag_target: bpy.props.FloatVectorProperty(name="Target", size=3, subtype="TRANSLATION", unit="LENGTH",
                                               default=(0.0, 0.0, 0.2))
    drag_radius: bpy.props.FloatProperty(name="Radius", default=0.1, min=1e-6, soft_max=2.0, unit="LENGTH")
    drag_mode: bpy.props.EnumProperty(
        name="Mode", default="deformable",
        items=(("deformable", "Deformable", "Re-select points around the moving source each step"),
               ("rigid", "Rigid", "Keep the selected points and their distances (L_rigid)")))
    drag_alpha: bpy.props.FloatProperty(name="α", default=0.01, min=0.0, soft_max=0.2,
                                        description="Step of the dragged points towards the target per step")
    drag_motion_weight: bpy.props.FloatProperty(name="Motion Weight", default=1.0, min=0.0)
    drag_rigid_weight: bpy.props.FloatProperty(name="Rigid Weight", default=30.0, min=0.0)
    drag_steps: bpy.props.IntProperty(name="Drag Steps", default=100, min=1, max=100000)
    # -- Stage II ----------------------------------------------------------------------------------------
    nerf_steps: bpy.props.IntProperty(name="Distill Steps", default=10000, min=1, max=1000000)
    refine_center: bpy.props.FloatVectorProperty(name="Centre", size=3, subtype="TRANSLATION", unit="LENGTH")
    refine_radius: bpy.props.FloatProperty(name="Radius", default=0.3, min=1e-6, soft_max=2.0, unit="LENGTH")
    refine_levels: bpy.props.IntProperty(name="Levels", default=8, min=1, max=32)
    refine_capacity: bpy.props.IntProperty(name="Capacity (log2)", default=19, min=4, max=24,
                                           description="log2 of the entries per refinement hash table")
    refine_steps: bpy.props.IntProperty(name="Refine Steps", default=10000, min=1, max=1000000)
    refine_features: bpy.props.IntProperty(name="Features", default=2, min=1, max=8,
                                           description="Features per level of the part's tables")
    refine_finest: bpy.props.IntProperty(name="Finest Resolution", default=0, min=0, max=65536,
                                         description="Cells across the region at the part's finest level; "
                                                     "0: twice the base field's there")
    preview_mesh_every: bpy.props.IntProperty(name="Preview Mesh Every", default=50, min=0, max=100000,
                                              description="Steps between live preview meshes while Stage II "
                                                          "runs (0: none)")
    preview_mesh_resolution: bpy.props.IntProperty(name="Preview Resolution", default=48, min=8, max=256)
    nerf_render_source: bpy.props.EnumProperty(
        name="View",
        items=(("AUTO", "Viewport", "The active 3D viewport, else the scene camera"),
               ("CAMERA", "Camera", "The scene camera")),
        default="AUTO",
    )
    nerf_render_size: bpy.props.IntProperty(name="Render Size", default=256, min=8, max=2048,
                                            description="Longer side of the NeRF render in pixels")
    mesh_resolution: bpy.props.IntProperty(name="Resolution", default=256, min=8, max=1024)
    mesh_surface: bpy.props.EnumProperty(
        name="Surface",
        items=(("OPACITY", "Opacity", "Where a ray from outside has gathered the given opacity (what renders)"),
               ("DENSITY", "Density", "The density iso-level (marching cubes threshold)")),
        default="OPACITY",
    )
    mesh_opacity: bpy.props.FloatProperty(name="Opacity", default=0.5, min=0.001, max=0.999,
                                          description="Accumulated opacity at the surface (Opacity surface)")
    mesh_threshold: bpy.props.FloatProperty(name="Density Threshold", default=10.0, min=0.0,
                                            description="Density iso-level (Density surface)")
    # -- status (written by the sync step) ----------------------------------------------------------------
    status: bpy.props.StringProperty(name="Status", default="DISCONNECTED")
    session: bpy.props.StringProperty(name="Session", default="")
    job_state: bpy.props.StringProperty(name="Job", default="idle")
    step: bpy.props.IntProperty(name="Step", default=0)
    total: bpy.props.IntProperty(name="Total", default=0)
    eta: bpy.props.FloatProperty(name="ETA", default=-1.0, unit="TIME")
    message: bpy.props.StringProperty(name="Message", default="")


classes = (I3D_PG_scene,)


def register_extra() -> None:
    bpy.types.Scene.i3d = bpy.props.PointerProperty(type=I3D_PG_scene)


def unregister_extra() -> None:
    if hasattr(bpy.types.Scene, "i3d"):
        del bpy.types.Scene.i3d
