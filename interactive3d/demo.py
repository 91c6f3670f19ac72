"""``i3d demo``: the whole pipeline on the offline sample object, driven through the protocol client.

What it proves: a backend (a subprocess on an ``ipc://`` address) takes a session from a random sphere
of Gaussians (paper §3.1, 4096 random points) through Stage I with the oracle guidance toward the sample
object's reference Gaussians, the scripted interactions of §3.1.1–3.1.4 (rigid drag, removal, stretch,
added part, undo), and Stage II (§3.2: distillation into the hash-grid NeRF, a refined region, the mesh).
Everything crosses the wire as the product's add-on would send it; the demo only measures (PSNR,
Chamfer distance, drag metrics) and writes the results: splats.ply, mesh.glb (vertex colours),
mesh_textured.glb and mesh_textured.obj/.mtl/.png (a baked UV texture), scene.blend, contact_sheet.png and
report.json in ``--out``.

Optional parts are checked before anything runs (:func:`missing_extras`): without the bpy module
(``interactive3d[blender]``) there is no scene.blend or contact sheet, without xatlas
(``interactive3d[texture]``) no textured mesh; the demo writes everything else and says so in one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from interactive3d.pipeline import Backend, PipelineError, installed, spawn_backend, stop_backend, timed, write_mesh
from interactive3d.scene import run_blender_scene

log = logging.getLogger(__name__)


# What each optional part of the package makes in the demo: (module, extra, outputs).
OPTIONAL_PARTS = (
    ("bpy", "blender", "scene.blend and contact_sheet.png"),
    ("xatlas", "texture", "mesh_textured.glb/.obj"),
)


def missing_extras() -> list[tuple[str, str, str]]:
    """The optional parts that are not installed here, as (module, extra, outputs it would make)."""
    return [part for part in OPTIONAL_PARTS if not installed(part[0])]


def skipped_line(missing: list[tuple[str, str, str]]) -> str:
    """One line saying what the demo skips and how to get it ('' when nothing is missing)."""
    if not missing:
        return ""
    what = "; ".join(f"{outputs} (no {module} module)" for module, _, outputs in missing)
    extras = ",".join(extra for _, extra, _ in missing)
    return f"skipping {what}: pip install 'interactive3d[{extras}]'" + (" (bpy needs Python 3.11)" if any(m == "bpy" for m, _, _ in missing) else "")


# -- metrics (numpy; computed on the demo side from what came back over the wire) ----------------------
def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Chamfer distance between point sets a [N,3] and b [M,3]: mean NN distance both ways / 2."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return float("inf")
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    return float(0.5 * (da.mean() + db.mean()))


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR in dB of images in [0,1] (any matching shapes)."""
    mse = float(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def rigid_drag_metrics(before: np.ndarray, after: np.ndarray, offset: np.ndarray) -> dict[str, float]:
    """How rigidly a part followed a drag: positions before [K,3] and after [K,3] of the same rows.

    translation_error: ‖(centroid after − centroid before) − offset‖; rigidity_error: mean over points of
    |‖p_i − c‖ − ‖p_i* − c*‖| (the paper's L_rigid, about the centroid); both in scene units.
    """
    c0, c1 = before.mean(0), after.mean(0)
    moved = c1 - c0
    d0 = np.linalg.norm(before - c0, axis=1)
    d1 = np.linalg.norm(after - c1, axis=1)
    return {
        "translation_error": float(np.linalg.norm(moved - offset)),
        "moved": float(np.linalg.norm(moved)),
        "target_offset": float(np.linalg.norm(offset)),
        "rigidity_error": float(np.abs(d1 - d0).mean()),
    }



# -- the demo ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoConfig:
    """Sizes and step counts of one demo run (``quick`` must stay under 3 minutes on a 2-core CPU)."""

    quick: bool = True
    seed: int = 0
    n_init: int = 2048  # the paper uses 4096 random points; the quick run halves it for the CPU budget
    init_radius: float = 0.6
    reference_points: int = 4000  # surface samples → reference Gaussians for the oracle
    stage1_steps: int = 150
    stage1_resolution: int = 48
    stage1_batch: int = 1
    drag_steps: int = 30
    distill_steps: int = 150
    distill_resolution: int = 48
    distill_rays: int = 1024
    distill_samples: int = 72  # marching steps per box diagonal (step 2√3/72 ≈ 0.048, the spacing 48 per chord gave)
    distill_view_pool: int = 16  # render this many Gaussian views once and draw rays from them
    distill_levels: int = 12
    distill_log2_table: int = 16
    refine_steps: int = 30
    mesh_resolution: int = 96
    texture_size: int = 1024
    eval_views: int = 4
    eval_resolution: int = 64
    sheet_resolution: int = 160
    sheet_samples: int = 8

    @classmethod
    def preset(cls, quick: bool) -> "DemoConfig":
        if quick:
            return cls(quick=True)
        # Densification grows the set fast with the oracle (600 steps at batch 2 reached ~110k Gaussians
        # on the CPU, which then dominates distillation); the full run stays at a few hundred steps.
        return cls(
            quick=False, n_init=4096, reference_points=8000, stage1_steps=300, stage1_resolution=64, stage1_batch=1,
            drag_steps=50, distill_steps=500, distill_resolution=64, distill_rays=2048, distill_samples=72,
            distill_view_pool=24, distill_levels=12, distill_log2_table=17, refine_steps=60, mesh_resolution=128,
            sheet_resolution=256, sheet_samples=16,
        )


# The scripted interactions, in the object's frame (sample.py): where the parts are and what is done.
ARM_SOURCE = (0.55, 0.0, -0.08)  # forearm centre
ARM_RADIUS = 0.15
ARM_OFFSET = (0.0, 0.15, 0.25)  # rigid drag: raise the arm forward and up
ANTENNA_BOX = ((-0.12, -0.12, 0.455), (0.12, 0.12, 0.8))
HEAD_BOX = ((-0.22, -0.22, 0.11), (0.22, 0.22, 0.455))
HEAD_STRETCH = (1.35, 1.35, 0.8)  # anisotropic: wider and flatter, about the part's bbox centre
HAT_POSITION = (0.0, 0.0, 0.40)


def _stretch_matrix() -> np.ndarray:
    return np.diag([*HEAD_STRETCH, 1.0]).astype(np.float32)


def edited_reference_points(obj, n: int, seed: int) -> np.ndarray:
    """Ground truth after the scripted edits, as surface points [M,3]: the sample's surface with the
    forearm moved by ARM_OFFSET, the antenna gone, the head stretched and the hat added."""
    from interactive3d import sample

    s = sample.sample_surface(obj, n, seed=seed + 1)
    pts = s.points.astype(np.float64).copy()
    arm = np.linalg.norm(pts - np.asarray(ARM_SOURCE), axis=1) <= ARM_RADIUS
    pts[arm] += np.asarray(ARM_OFFSET)
    keep = ~s.mask(obj.names.index("antenna"))
    head = s.mask(obj.names.index("head"))
    centre = 0.5 * (pts[head].min(0) + pts[head].max(0))
    pts[head] = (pts[head] - centre) * np.asarray(HEAD_STRETCH) + centre
    hat = sample.hat_mesh(HAT_POSITION)
    hat_pts = hat.sample(max(n // 20, 200), return_index=False)
    return np.concatenate([pts[keep], hat_pts]).astype(np.float32)


class HeldoutViews:
    """Held-out orbit cameras (a generator seed the optimisation never uses) and the reference's
    renders from them, rendered once; :meth:`psnr` scores a state frame against them (white background)."""

    def __init__(self, reference: np.ndarray, views: int, resolution: int, seed: int = 1234):
        import torch

        from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit

        gen = torch.Generator().manual_seed(seed)
        self.cameras = sample_orbit(views, OrbitConfig(width=resolution, height=resolution), gen).cameras
        self.target = self.render(reference)

    @staticmethod
    def gaussians(state: np.ndarray):
        import torch

        from interactive3d.backend.stage1.gaussians import Gaussians

        t = torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32))
        return Gaussians.from_activated(t[:, 0:3], t[:, 3:6], t[:, 6], t[:, 7:10], t[:, 10:14])

    def render(self, state: np.ndarray) -> np.ndarray:  # [B,H,W,3]
        import torch

        from interactive3d.backend.stage1.render import render

        with torch.no_grad():
            return render(self.gaussians(state), self.cameras, torch.ones(3)).rgb.numpy()

    def psnr(self, state: np.ndarray) -> float:
        return psnr(self.render(state), self.target)

    def floater_share(self, state: np.ndarray, reference: np.ndarray) -> float:
        """Share of the state's rendered alpha outside the reference's silhouette (backend/stage1/metrics.py)."""
        from interactive3d.backend.stage1.metrics import score_against_reference

        return score_against_reference(self.gaussians(state), self.gaussians(reference), self.cameras).floater_share


def run_demo(out_dir: str | os.PathLike, cfg: DemoConfig, connect: str | None = None) -> dict:
    """Run the whole demo; returns the report (also written to ``out_dir``/report.json)."""
    from interactive3d import sample

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    missing = missing_extras()  # up front: a missing part costs its outputs, never the run
    report: dict = {"config": asdict(cfg), "stages": {}, "skipped": skipped_line(missing)}
    stages = report["stages"]
    have = {module for module, _, _ in OPTIONAL_PARTS} - {module for module, _, _ in missing}

    # The sample object and its reference Gaussians (files the backend reads by path).
    obj = sample.build_sample_object()
    surf = sample.sample_surface(obj, cfg.reference_points, seed=cfg.seed)
    area = float(sum(p.mesh.area for p in obj.parts))
    reference = sample.surface_state(surf, area)
    hat = sample.hat_state(max(cfg.reference_points // 20, 200), seed=cfg.seed)

    with tempfile.TemporaryDirectory(prefix="i3d-demo-") as tmp:
        proc = None
        address = connect
        if address is None:
            address = f"ipc://{tmp}/backend.sock"
            proc = spawn_backend(address, str(out / "backend_state"), str(out / "backend.log"))
        backend = Backend(address, proc=proc)
        try:
            _pipeline(backend, out, cfg, obj, reference, hat, stages, texture="xatlas" in have)
            if connect is not None:
                backend.call("session.close", {})  # a shared backend keeps no demo session behind
        finally:
            backend.close()
            if proc is not None:
                stop_backend(proc)

    # Outputs that need Blender (a separate process with the bpy module).
    t0 = time.perf_counter()
    inputs = out / "scene_inputs.npz"
    try:
        if "bpy" in have:
            made = run_blender_scene(str(inputs), str(out / "scene.blend"), str(out / "contact_sheet.png"), cfg.sheet_resolution, cfg.sheet_samples)
            stages["blender"] = {"seconds": time.perf_counter() - t0, **made}
        else:
            stages["blender"] = {"skipped": "no bpy module: pip install 'interactive3d[blender]'"}
    finally:
        inputs.unlink(missing_ok=True)
    report["total_seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report



def _pipeline(backend: Backend, out: Path, cfg: DemoConfig, obj, reference: np.ndarray, hat: np.ndarray, stages: dict,
              texture: bool = True) -> None:
    """Every backend step of the demo, each one protocol op (or job) and its measured numbers."""
    from interactive3d.protocol import ply, splat_data

    # Session; the oracle's reference goes over the wire (points + colours), so a remote backend works too.
    t0 = time.perf_counter()
    backend.session = backend.call("session.create", {"name": "demo"}).result["session"]
    backend.call("gaussians.init", {"kind": "points", "opacity": 0.9}, [reference[:, 0:3].copy(), reference[:, 3:6].copy()])
    ref_state, _ = backend.state()  # what the oracle denoises toward, exactly as the backend holds it
    backend.call("stage1.set_reference", {})
    heldout = HeldoutViews(ref_state, cfg.eval_views, cfg.eval_resolution)
    # The paper's start: random points in a sphere.
    init = backend.call("gaussians.init", {"kind": "random", "n": cfg.n_init, "radius": cfg.init_radius, "seed": cfg.seed}).result
    state0, _ = backend.state()
    timed(stages, "init", t0, count=int(state0.shape[0]), reference_count=int(ref_state.shape[0]), psnr=heldout.psnr(state0), reply=init)

    # Stage I with the oracle guidance (closed-form denoiser toward the reference) through the SDS path, on
    # stage1.start's default densification schedule (docs/benchmarks.md, issue 27).
    t0 = time.perf_counter()
    job = backend.run_job(
        "stage1.start",
        {"guidance": "oracle", "prompt": "a toy robot", "steps": cfg.stage1_steps, "resolution": cfg.stage1_resolution,
         "batch": cfg.stage1_batch, "seed": cfg.seed},
        "stage I", cfg.stage1_steps, metric="loss",
    )
    before, _ = backend.state()
    timed(
        stages, "stage1", t0, steps=cfg.stage1_steps, count=int(before.shape[0]), psnr=heldout.psnr(before),
        floater_share=heldout.floater_share(before, ref_state),
        chamfer=chamfer_distance(before[:, :3], ref_state[:, :3]), job=job["result"], last_metrics=job["metrics"],
    )

    # Interactions (paper §3.1.1–3.1.4), each an undoable history entry on the backend.
    t0 = time.perf_counter()
    src, off = np.asarray(ARM_SOURCE), np.asarray(ARM_OFFSET)
    in_p = np.linalg.norm(before[:, :3] - src, axis=1) <= ARM_RADIUS
    drag = backend.run_job(
        "interact.drag",
        {"source": list(ARM_SOURCE), "target": (src + off).tolist(), "radius": ARM_RADIUS, "mode": "rigid", "steps": cfg.drag_steps},
        "drag arm", cfg.drag_steps,
    )
    dragged, _ = backend.state()
    res = drag["result"]
    drag_metrics = {"moved_set": int(in_p.sum()), "added": int(res.get("added", 0)), "pruned": int(res.get("pruned", 0)),
                    "count_after": int(dragged.shape[0]), "source_final": res.get("source")}
    if int(res.get("pruned", 0)) == 0 and dragged.shape[0] >= before.shape[0]:
        # Densification only appends rows, so rows 0..N-1 are the same Gaussians: exact per-point metrics.
        drag_metrics.update(rigid_drag_metrics(before[in_p, :3], dragged[: before.shape[0]][in_p, :3], off))
    else:
        near_t = np.linalg.norm(dragged[:, :3] - (src + off), axis=1) <= ARM_RADIUS
        drag_metrics["translation_error"] = float(np.linalg.norm(dragged[near_t, :3].mean(0) - before[in_p, :3].mean(0) - off))
    drag_metrics["left_behind"] = int((np.linalg.norm(dragged[:, :3] - src, axis=1) <= 0.5 * ARM_RADIUS).sum())
    timed(stages, "drag", t0, **drag_metrics)

    t0 = time.perf_counter()
    backend.call("parts.select", {"name": "antenna", "kind": "aabb", "min": list(ANTENNA_BOX[0]), "max": list(ANTENNA_BOX[1])})
    removed = backend.call("parts.remove", {"part": "antenna"}).result
    after_remove, _ = backend.state()
    lo, hi = np.asarray(ANTENNA_BOX[0]), np.asarray(ANTENNA_BOX[1])
    inside = np.all((after_remove[:, :3] >= lo) & (after_remove[:, :3] <= hi), axis=1)
    timed(stages, "remove_antenna", t0, reply=removed, count=int(after_remove.shape[0]), remaining_in_box=int(inside.sum()))

    t0 = time.perf_counter()
    backend.call("parts.select", {"name": "head", "kind": "aabb", "min": list(HEAD_BOX[0]), "max": list(HEAD_BOX[1])})
    head_before, res = backend.state()
    stretched = backend.call("parts.transform", {"part": "head"}, [_stretch_matrix()]).result
    head_after, _ = backend.state()
    timed(stages, "stretch_head", t0, reply=stretched, count=int(head_after.shape[0]))

    t0 = time.perf_counter()
    place = np.eye(4, dtype=np.float32)
    place[:3, 3] = HAT_POSITION
    # Sent as a state frame (not a path) so that a remote backend needs no file from this machine.
    added = backend.call("parts.add", {"name": "hat"}, [hat, place]).result
    with_hat, _ = backend.state()
    timed(stages, "add_hat", t0, reply=added, count=int(with_hat.shape[0]), added=int(with_hat.shape[0] - head_after.shape[0]))

    # Undo of one step: a deliberate mistake (the head removed) is undone; the state must come back exactly.
    t0 = time.perf_counter()
    backend.call("parts.remove", {"part": "head"})
    mistake, _ = backend.state()
    backend.call("history.undo", {})
    restored, _ = backend.state()
    exact = restored.shape == with_hat.shape and bool(np.array_equal(restored, with_hat))
    timed(stages, "undo", t0, count_after_mistake=int(mistake.shape[0]), count_restored=int(restored.shape[0]), bit_identical=exact)
    edited = restored
    stages["edited"] = {
        "count": int(edited.shape[0]),
        "chamfer": chamfer_distance(edited[:, :3], edited_reference_points(obj, cfg.reference_points, cfg.seed)),
        "parts": res_parts(backend),
    }

    ply.write_ply(out / "splats.ply", splat_data.state_to_splat(edited))
    scene = {"after": edited, "before": before}
    missing = sorted(STAGE2_OPS - set(backend.pong.get("ops", [])))
    if missing:
        # A backend without Stage II (older or partial build): say so in the report, write what exists.
        stages["stage2"] = {"skipped": f"the backend has no {', '.join(missing)}"}
        log.warning("Stage II skipped: the backend has no %s", ", ".join(missing))
    else:
        scene.update(_stage2(backend, out, cfg, obj, edited, stages, texture=texture))
    np.savez(out / "scene_inputs.npz", **scene)


def res_parts(backend: Backend) -> dict:
    return dict(backend.call("state.get").result.get("part_counts", {}))


STAGE2_OPS = frozenset({"stage2.distill", "stage2.add_part", "stage2.refine", "stage2.extract_mesh", "stage2.preview"})


def preview_psnr(preview: np.ndarray, state: np.ndarray) -> float:
    """Distillation PSNR at the distillation preview's camera: the NeRF's preview [S,S,3] against our own
    render of the Gaussians there. The preview camera is backend/stage2/distill.py's fixed front view with its
    default ranges: elevation 15°, azimuth 0°, distance 1.75 (mean of 1.5–2.0), fov 55° (mean of 40–70°).
    One 32-pixel view: conservative (the Gaussians' low-pass filter at that size differs from the
    field's point samples); the job's training L1 is reported next to it."""
    import torch

    from interactive3d.backend.stage1.cameras import orbit_cameras
    from interactive3d.backend.stage1.gaussians import Gaussians
    from interactive3d.backend.stage1.render import render

    s = int(preview.shape[0])
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    cams = orbit_cameras(one(15.0), one(0.0), one(1.75), one(55.0), s, s)
    t = torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32))
    g = Gaussians.from_activated(t[:, 0:3], t[:, 3:6], t[:, 6], t[:, 7:10], t[:, 10:14])
    with torch.no_grad():
        target = render(g, cams, torch.ones(3)).rgb[0].numpy()
    return psnr(preview, target)


def _stage2(backend: Backend, out: Path, cfg: DemoConfig, obj, edited: np.ndarray, stages: dict, texture: bool = True) -> dict:
    """Distil into the hash-grid NeRF, refine the hat's region, extract the mesh (paper §3.2)."""
    t0 = time.perf_counter()
    distill = backend.run_job(
        "stage2.distill",
        {"steps": cfg.distill_steps, "resolution": cfg.distill_resolution, "rays_per_step": cfg.distill_rays,
         "n_samples": cfg.distill_samples, "view_pool": cfg.distill_view_pool, "levels": cfg.distill_levels, "log2_table_size": cfg.distill_log2_table, "seed": cfg.seed},
        "distill", cfg.distill_steps, metric="loss",
    )
    preview = backend.call("stage2.preview")
    timed(stages, "distill", t0, steps=cfg.distill_steps, l1=distill["result"].get("loss"),
           psnr=preview_psnr(np.asarray(preview.buffers[0]), edited), job=distill["result"])

    t0 = time.perf_counter()
    region = {"center": list(HAT_POSITION), "radius": 0.2}
    part = backend.call("stage2.add_part", {"name": "hat", **region, "levels": 8, "log2_table_size": cfg.distill_log2_table}).result
    refine = backend.run_job(
        "stage2.refine",
        {"parts": ["hat"], "steps": cfg.refine_steps, "resolution": cfg.distill_resolution, "rays_per_step": cfg.distill_rays,
         "n_samples": cfg.distill_samples, "seed": cfg.seed},
        "refine hat", cfg.refine_steps, metric="loss",
    )
    timed(stages, "refine", t0, steps=cfg.refine_steps, part=part, job=refine["result"], last_metrics=refine["metrics"])

    t0 = time.perf_counter()
    mesh_path = out / "mesh.glb"
    # The backend (maybe remote) writes only inside its own data folders: it sends the arrays back and the
    # file is written here, in each format's convention (backend/stage2/mesh_files.py).
    reply = backend.call("stage2.extract_mesh", {"resolution": cfg.mesh_resolution}, timeout=600.0)
    write_mesh(mesh_path, reply.buffers[:3])
    verts, faces, colors = (np.array(b) for b in reply.buffers[:3])
    import trimesh

    gt = edited_reference_points(obj, cfg.reference_points, cfg.seed)
    mesh_pts = trimesh.Trimesh(verts, faces, process=False).sample(len(gt)) if len(faces) else verts
    timed(
        stages, "mesh", t0, resolution=cfg.mesh_resolution, vertices=int(len(verts)), faces=int(len(faces)),
        chamfer=chamfer_distance(np.asarray(mesh_pts), gt),
        signed_error=reply.result.get("signed_error"),  # to the Gaussians' surface, > 0 = inflated (stage2/mesh_error.py)
    )
    if texture:
        # The same surface UV-unwrapped with the colour baked into a texture: GLB and OBJ + MTL + PNG.
        t0 = time.perf_counter()
        glb = out / "mesh_textured.glb"
        tex = backend.call("stage2.extract_mesh", {"resolution": cfg.mesh_resolution, "texture": True,
                                                   "texture_size": cfg.texture_size}, timeout=900.0)
        write_mesh(glb, tex.buffers)
        write_mesh(out / "mesh_textured.obj", tex.buffers)
        timed(stages, "mesh_textured", t0, texture_size=cfg.texture_size, vertices=int(tex.result["vertices"]),
               faces=int(tex.result["faces"]), files=["mesh_textured.glb", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png"])
    else:
        stages["mesh_textured"] = {"skipped": "no xatlas module: pip install 'interactive3d[texture]'"}
    return {"mesh_vertices": verts, "mesh_faces": faces, "mesh_colors": colors}



# -- command line --------------------------------------------------------------------------------------
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline main job: the whole pipeline on a sample object (no network, no pretrained weights)",
        description="Stage I with oracle guidance, scripted interactions and Stage II on a sample robot, through "
        "a backend subprocess; writes splats.ply, mesh.glb, mesh_textured.glb/.obj, scene.blend, contact_sheet.png and "
        "report.json. Without the bpy module (interactive3d[blender]) or xatlas (interactive3d[texture]) it writes the rest.",
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="small sizes and step counts (< 3 min on a 2-core CPU)")
    p.add_argument("--connect", default=None, help="use a running backend at this address instead of spawning one")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    cfg = replace(DemoConfig.preset(args.quick), seed=args.seed)
    skipped = skipped_line(missing_extras())
    if skipped:
        sys.stderr.write(f"i3d demo: {skipped}\n")
    try:
        report = run_demo(args.out, cfg, connect=args.connect)
    except PipelineError as exc:
        sys.stderr.write(f"i3d demo: {exc}\n")
        return 1
    st = report["stages"]
    summary = [
        f"Stage I    PSNR {st['init']['psnr']:.2f} → {st['stage1']['psnr']:.2f} dB, floaters {100 * st['stage1']['floater_share']:.2f} %"
        f"  ({st['stage1']['seconds']:.1f} s, {st['stage1']['count']} Gaussians)",
        f"drag       translation error {st['drag']['translation_error']:.4f}, rigidity error {st['drag'].get('rigidity_error', float('nan')):.4f}",
        f"undo       bit-identical: {st['undo']['bit_identical']}",
        f"edited     Chamfer to the edited object {st['edited']['chamfer']:.4f}",
    ]
    if "distill" in st:
        summary += [
            f"distill    PSNR {st['distill']['psnr']:.2f} dB at the preview view, L1 {st['distill']['l1']:.4f}  ({st['distill']['seconds']:.1f} s)",
            f"mesh       Chamfer {st['mesh']['chamfer']:.4f}  ({st['mesh']['vertices']} vertices)",
        ]
    else:
        summary.append(f"Stage II   skipped: {st['stage2']['skipped']}")
    if "seconds" in st.get("mesh_textured", {}):
        summary.append(f"textured   {st['mesh_textured']['texture_size']}² texture  ({st['mesh_textured']['seconds']:.1f} s)")
    if report.get("skipped"):
        summary.append(f"skipped    {report['skipped'].removeprefix('skipping ')}")
    summary.append(f"total      {report['total_seconds']:.1f} s → {Path(args.out).resolve()}")
    sys.stderr.write("\n".join(summary) + "\n")
    return 0


