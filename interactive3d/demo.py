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
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


log = logging.getLogger(__name__)


# -- terminal progress ---------------------------------------------------------------------------------
class ProgressBar:
    """A plain-text progress bar on stderr (no extra dependency); redraws in place on a terminal."""

    def __init__(self, label: str, total: int, stream=None, width: int = 28):
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, step: int, info: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        # Off a terminal (CI logs) draw rarely so logs stay short.
        if not force and now - self._last_draw < (0.1 if self._tty else 5.0):
            return
        self._last_draw = now
        frac = min(max(step / self.total, 0.0), 1.0)
        filled = int(round(frac * self.width))
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        line = f"{self.label:<12} [{'#' * filled}{'.' * (self.width - filled)}] {step}/{self.total} {elapsed:5.1f}s eta {eta:4.0f}s {info}"
        self.stream.write(("\r" + line + "\033[K") if self._tty else line + "\n")
        self.stream.flush()

    def close(self, info: str = "") -> None:
        self.update(self.total, info, force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


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



# -- the backend, driven through the protocol client ---------------------------------------------------
class PipelineError(RuntimeError):
    """A step of the demo/generate pipeline failed; the message says which step and why."""


# What each optional part of the package makes in the demo: (module, extra, outputs).
OPTIONAL_PARTS = (
    ("bpy", "blender", "scene.blend and contact_sheet.png"),
    ("xatlas", "texture", "mesh_textured.glb/.obj"),
)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def missing_extras() -> list[tuple[str, str, str]]:
    """The optional parts that are not installed here, as (module, extra, outputs it would make)."""
    return [part for part in OPTIONAL_PARTS if not _installed(part[0])]


def skipped_line(missing: list[tuple[str, str, str]]) -> str:
    """One line saying what the demo skips and how to get it ('' when nothing is missing)."""
    if not missing:
        return ""
    what = "; ".join(f"{outputs} (no {module} module)" for module, _, outputs in missing)
    extras = ",".join(extra for _, extra, _ in missing)
    return f"skipping {what}: pip install 'interactive3d[{extras}]'" + (" (bpy needs Python 3.11)" if any(m == "bpy" for m, _, _ in missing) else "")


def model_dir_args(models: Sequence[str | None]) -> list[str]:
    """``--model-dir FOLDER`` for each local model folder among ``models`` (hub ids and None need none): the
    backend loads local models only from its model folders (``i3d serve --model-dir``)."""
    roots: list[str] = []
    for m in models:
        folder = os.path.expanduser(m) if m else ""
        if folder and os.path.isdir(folder) and os.path.realpath(folder) not in roots:
            roots.append(os.path.realpath(folder))
    return [arg for root in roots for arg in ("--model-dir", root)]


def spawn_backend(
    address: str, state_dir: str, log_path: str, device: str = "auto", exit_with_parent: bool = False, extra_args: Sequence[str] = (),
    models: Sequence[str | None] = (),
) -> subprocess.Popen:
    """Start ``i3d serve`` as a subprocess (its log goes to ``log_path``).

    ``exit_with_parent`` (Linux): the backend gets SIGTERM when this process dies, even by SIGKILL, so it
    checkpoints its session and exits instead of living on as an orphan (a batch worker killed mid-job).
    ``models``: the models the caller will name in requests; local folders among them become ``--model-dir``.
    """
    cmd = [sys.executable, "-m", "interactive3d.cli", "serve", "--bind", address, "--state-dir", state_dir, "--device", device,
           *model_dir_args(models), *extra_args]
    preexec = _parent_death_signal() if exit_with_parent else None
    logf = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec)
    finally:
        logf.close()


def _parent_death_signal():
    """A preexec_fn that asks Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG); None elsewhere.

    prctl is looked up here, in the parent: between fork and exec the child only makes that one call
    (no import, no allocation that could wait on a lock another thread of the parent held)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


def stop_backend(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM: the server stops jobs between steps and exits 0
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


_IDEMPOTENT_OPS = frozenset({"ping", "state.get", "job.status", "history.list", "session.list"})


class Backend:
    """A session on a backend, reached through :class:`interactive3d.protocol.client.Client`.

    Thin on purpose: every call is one protocol op with its documented args (protocol/catalogue.py);
    jobs are waited on through their progress/done/error events.
    """

    def __init__(self, address: str, connect_timeout: float = 60.0, proc: subprocess.Popen | None = None):
        from interactive3d.protocol.client import Client, ConnectionLost

        self.address, self.proc = address, proc
        self.client = Client(address)
        self.session: str | None = None
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.pong = self.client.request("ping", {}, timeout=2.0, retries=0).result
                break
            except ConnectionLost as exc:  # not up yet: retried until the deadline
                if proc is not None and proc.poll() is not None:
                    raise PipelineError(f"backend exited with code {proc.returncode} before answering ping at {address}") from exc
                if time.monotonic() > deadline:
                    raise PipelineError(f"no backend answered ping at {address} within {connect_timeout:.0f} s: {exc}") from exc
                time.sleep(0.2)

    def close(self) -> None:
        self.client.close()

    def call(self, op: str, args: dict | None = None, buffers: list | None = None, timeout: float = 120.0):
        """One request → its Reply; a remote error becomes PipelineError naming the op and the code."""
        from interactive3d.protocol.client import ConnectionLost, RemoteError

        args = dict(args or {})
        if self.session is not None and "session" not in args and op not in ("ping", "session.create", "session.list"):
            args["session"] = self.session
        # Only reads are re-sent on a timeout (Lazy Pirate); an edit or a job must not run twice.
        retries = 2 if op in _IDEMPOTENT_OPS else 0
        try:
            return self.client.request(op, args, buffers or [], timeout=timeout, retries=retries)
        except RemoteError as exc:
            raise PipelineError(f"{op} failed: {exc.code}: {exc.message}") from exc
        except ConnectionLost as exc:
            raise PipelineError(f"{op}: no reply from the backend at {self.address} within {timeout:.0f} s") from exc

    def run_job(self, op: str, args: dict, label: str, total: int, metric: str | None = None, timeout: float = 3600.0) -> dict:
        """Start a job with ``op`` and wait for its ``done`` event, drawing a progress bar; returns
        {"result": done payload, "metrics": last progress metrics, "seconds": wall time}."""
        t0 = time.perf_counter()
        reply = self.call(op, args)
        return self.wait_job(reply.result.get("job"), op, label, total, metric, timeout, t0)

    def wait_job(self, job: str | None, op: str, label: str, total: int, metric: str | None = None,
                 timeout: float = 3600.0, t0: float | None = None) -> dict:
        """Wait for the ``done`` event of a running job (one just started, or one ``session.resume``
        restarted), drawing a progress bar; returns as :meth:`run_job`."""
        t0 = time.perf_counter() if t0 is None else t0
        bar = ProgressBar(label, total)
        last: dict = {}
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise PipelineError(f"{op} job {job} did not finish within {timeout:.0f} s")
            if self.proc is not None and self.proc.poll() is not None:
                raise PipelineError(f"backend exited with code {self.proc.returncode} during {op}")
            for msg in self.client.poll(timeout_ms=200):
                header = msg.header
                kind = header.get("event")
                if kind is None or (job is not None and header.get("job") not in (None, job)):
                    continue
                payload = header.get("data") or header.get("result") or {}
                if kind == "progress":
                    last = dict(payload.get("metrics", payload))
                    step = int(payload.get("step", last.get("step", 0)))
                    info = f"{metric}={last[metric]:.3f}" if metric and isinstance(last.get(metric), (int, float)) else ""
                    bar.update(step, info)
                elif kind == "done":
                    bar.close()
                    return {"result": dict(payload), "metrics": last, "seconds": time.perf_counter() - t0}
                elif kind == "error":
                    bar.close("failed")
                    raise PipelineError(f"{op} job failed: {payload.get('code', 'internal')}: {payload.get('message', payload)}")

    def state(self) -> tuple[np.ndarray, dict]:
        """The session's [N,14] state frame (a writable copy) and the reply's result map."""
        reply = self.call("state.get")
        return np.array(reply.buffers[0], dtype=np.float32), reply.result



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



def _timed(stages: dict, name: str, t0: float, **fields) -> dict:
    entry = {"seconds": round(time.perf_counter() - t0, 3), **fields}
    stages[name] = entry
    log.info("%s: %s", name, json.dumps(entry, default=float))
    return entry


def _pipeline(backend: Backend, out: Path, cfg: DemoConfig, obj, reference: np.ndarray, hat: np.ndarray, stages: dict,
              texture: bool = True) -> None:
    """Every backend step of the demo, each one protocol op (or job) and its measured numbers."""
    from interactive3d.protocol import ply

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
    _timed(stages, "init", t0, count=int(state0.shape[0]), reference_count=int(ref_state.shape[0]), psnr=heldout.psnr(state0), reply=init)

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
    _timed(
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
    _timed(stages, "drag", t0, **drag_metrics)

    t0 = time.perf_counter()
    backend.call("parts.select", {"name": "antenna", "kind": "aabb", "min": list(ANTENNA_BOX[0]), "max": list(ANTENNA_BOX[1])})
    removed = backend.call("parts.remove", {"part": "antenna"}).result
    after_remove, _ = backend.state()
    lo, hi = np.asarray(ANTENNA_BOX[0]), np.asarray(ANTENNA_BOX[1])
    inside = np.all((after_remove[:, :3] >= lo) & (after_remove[:, :3] <= hi), axis=1)
    _timed(stages, "remove_antenna", t0, reply=removed, count=int(after_remove.shape[0]), remaining_in_box=int(inside.sum()))

    t0 = time.perf_counter()
    backend.call("parts.select", {"name": "head", "kind": "aabb", "min": list(HEAD_BOX[0]), "max": list(HEAD_BOX[1])})
    head_before, res = backend.state()
    stretched = backend.call("parts.transform", {"part": "head"}, [_stretch_matrix()]).result
    head_after, _ = backend.state()
    _timed(stages, "stretch_head", t0, reply=stretched, count=int(head_after.shape[0]))

    t0 = time.perf_counter()
    place = np.eye(4, dtype=np.float32)
    place[:3, 3] = HAT_POSITION
    # Sent as a state frame (not a path) so that a remote backend needs no file from this machine.
    added = backend.call("parts.add", {"name": "hat"}, [hat, place]).result
    with_hat, _ = backend.state()
    _timed(stages, "add_hat", t0, reply=added, count=int(with_hat.shape[0]), added=int(with_hat.shape[0] - head_after.shape[0]))

    # Undo of one step: a deliberate mistake (the head removed) is undone; the state must come back exactly.
    t0 = time.perf_counter()
    backend.call("parts.remove", {"part": "head"})
    mistake, _ = backend.state()
    backend.call("history.undo", {})
    restored, _ = backend.state()
    exact = restored.shape == with_hat.shape and bool(np.array_equal(restored, with_hat))
    _timed(stages, "undo", t0, count_after_mistake=int(mistake.shape[0]), count_restored=int(restored.shape[0]), bit_identical=exact)
    edited = restored
    stages["edited"] = {
        "count": int(edited.shape[0]),
        "chamfer": chamfer_distance(edited[:, :3], edited_reference_points(obj, cfg.reference_points, cfg.seed)),
        "parts": res_parts(backend),
    }

    ply.write_ply(out / "splats.ply", ply.state_to_splat(edited))
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


def _write_mesh(path: Path, buffers: list) -> None:
    """Write a stage2.extract_mesh reply's arrays (vertices, faces, colours[, uvs, texture]) as ``path``'s
    format, with the backend's own exporter (so a remote backend's mesh gets the same conventions)."""
    from interactive3d.backend.stage2.mesh import MeshResult, export_mesh

    arrays = [np.asarray(b) for b in buffers]
    uvs, texture = (arrays[3], arrays[4]) if len(arrays) > 4 else (None, None)
    export_mesh(MeshResult(arrays[0], arrays[1], arrays[2], 0, uvs=uvs, texture=texture), path)


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
    _timed(stages, "distill", t0, steps=cfg.distill_steps, l1=distill["result"].get("loss"),
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
    _timed(stages, "refine", t0, steps=cfg.refine_steps, part=part, job=refine["result"], last_metrics=refine["metrics"])

    t0 = time.perf_counter()
    mesh_path = out / "mesh.glb"
    # The backend (maybe remote) writes only inside its own data folders: it sends the arrays back and the
    # file is written here, in each format's convention (backend/stage2/mesh_files.py).
    reply = backend.call("stage2.extract_mesh", {"resolution": cfg.mesh_resolution}, timeout=600.0)
    _write_mesh(mesh_path, reply.buffers[:3])
    verts, faces, colors = (np.array(b) for b in reply.buffers[:3])
    import trimesh

    gt = edited_reference_points(obj, cfg.reference_points, cfg.seed)
    mesh_pts = trimesh.Trimesh(verts, faces, process=False).sample(len(gt)) if len(faces) else verts
    _timed(
        stages, "mesh", t0, resolution=cfg.mesh_resolution, vertices=int(len(verts)), faces=int(len(faces)),
        chamfer=chamfer_distance(np.asarray(mesh_pts), gt),
    )
    if texture:
        # The same surface UV-unwrapped with the colour baked into a texture: GLB and OBJ + MTL + PNG.
        t0 = time.perf_counter()
        glb = out / "mesh_textured.glb"
        tex = backend.call("stage2.extract_mesh", {"resolution": cfg.mesh_resolution, "texture": True,
                                                   "texture_size": cfg.texture_size}, timeout=900.0)
        _write_mesh(glb, tex.buffers)
        _write_mesh(out / "mesh_textured.obj", tex.buffers)
        _timed(stages, "mesh_textured", t0, texture_size=cfg.texture_size, vertices=int(tex.result["vertices"]),
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


# -- Blender: scene.blend and the contact sheet (run in a subprocess: bpy and torch stay apart) ---------
SHEET_VIEWS = ((35.0, 20.0), (215.0, 20.0))  # (azimuth, elevation) in degrees of the contact sheet views


def _look_at_matrix(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Blender camera matrix_world [4,4] (looks down −Z, +Y up) from eye to target, world up +Z."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, (0.0, 0.0, 1.0))
    right = right / np.linalg.norm(right)
    up = np.cross(right, fwd)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -fwd, eye
    return m


def blender_scene(inputs: str, blend: str, sheet: str | None, resolution: int = 160, samples: int = 8) -> dict:
    """Build scene.blend (final splat object + mesh object) and render the contact sheet, in THIS process.

    ``inputs`` is an .npz with ``after`` [N,14] (final splats), optional ``before`` [M,14] (after Stage I,
    before the edits) and ``mesh_vertices`` [V,3], ``mesh_faces`` [F,3], ``mesh_colors`` [V,3|4] uint8.
    Objects are built with the add-on's own splat module (the same code the add-on uses). Renders are
    Cycles on the CPU (works headless, unlike Eevee/Workbench without a display); rows of the sheet are
    before / after / mesh, columns the views in SHEET_VIEWS. Returns what was made.
    """
    import bpy
    from mathutils import Matrix

    from interactive3d.blender_addon import splat as addon_splat

    data = np.load(inputs)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    made: dict = {"objects": []}

    after = addon_splat.new_splat_object("I3D_splats", data["after"].astype(np.float32))
    made["objects"].append(after.name)
    before = None
    if "before" in data:
        before = addon_splat.new_splat_object("I3D_splats_before", data["before"].astype(np.float32))
    mesh = None
    if "mesh_vertices" in data:
        mesh = addon_splat.mesh_object_from_arrays(
            "I3D_mesh", data["mesh_vertices"], data["mesh_faces"], data["mesh_colors"], Matrix.Identity(4)
        )
        made["objects"].append(mesh.name)

    if sheet:
        made["sheet"] = _render_sheet(bpy, scene, {"before": before, "after": after, "mesh": mesh}, sheet, resolution, samples)
    if before is not None:
        # The saved scene holds the product of the demo: the final splats and their mesh.
        bpy.data.objects.remove(before, do_unlink=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(blend))
    made["blend"] = blend
    return made


def _render_sheet(bpy, scene, rows: dict, sheet: str, resolution: int, samples: int) -> dict:
    from mathutils import Matrix
    from PIL import Image, ImageDraw

    world = bpy.data.worlds.new("I3D_world")
    scene.world = world
    world.color = (1.0, 1.0, 1.0)
    if hasattr(world, "use_nodes") and world.node_tree is None:
        world.use_nodes = True  # deprecated in 5.0 (always on); needed on 4.x
    bg = world.node_tree.nodes.get("Background")
    if bg is not None:
        bg.inputs[0].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs[1].default_value = 0.8
    sun_data = bpy.data.lights.new("I3D_sun", type="SUN")
    sun_data.energy = 3.0
    sun = bpy.data.objects.new("I3D_sun", sun_data)
    sun.matrix_world = Matrix(_look_at_matrix(np.array([1.0, -1.5, 2.5]), np.zeros(3)).tolist())
    scene.collection.objects.link(sun)
    cam_data = bpy.data.cameras.new("I3D_camera")
    cam_data.lens, cam_data.sensor_width = 50.0, 36.0
    cam = bpy.data.objects.new("I3D_camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = resolution
    scene.render.film_transparent = False
    scene.view_settings.view_transform = "Standard"  # show the splats' display colours as they are

    tiles: list[list[Image.Image]] = []
    labels = []
    with tempfile.TemporaryDirectory() as tmp:
        for row_name, obj in rows.items():
            if obj is None:
                continue
            for other in rows.values():
                if other is not None:
                    other.hide_render = other is not obj
            row = []
            for azim, elev in SHEET_VIEWS:
                a, e = np.radians(azim), np.radians(elev)
                eye = 2.2 * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)]) + np.array([0, 0, 0.05])
                cam.matrix_world = Matrix(_look_at_matrix(eye, np.array([0.0, 0.0, 0.05])).tolist())
                path = os.path.join(tmp, f"{row_name}_{int(azim)}.png")
                scene.render.filepath = path
                bpy.ops.render.render(write_still=True)
                row.append(Image.open(path).convert("RGB"))
            tiles.append(row)
            labels.append(row_name)
        for obj in rows.values():
            if obj is not None:
                obj.hide_render = False
    pad = 18
    w = resolution * len(SHEET_VIEWS)
    canvas = Image.new("RGB", (w, (resolution + pad) * len(tiles)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(tiles, labels)):
        y = r * (resolution + pad)
        draw.text((4, y + 3), label, fill=(0, 0, 0))
        for c, img in enumerate(row):
            canvas.paste(img, (c * resolution, y + pad))
    canvas.save(sheet)
    return {"path": sheet, "rows": labels, "views": [list(v) for v in SHEET_VIEWS], "renderer": "blender-cycles-cpu"}


def run_blender_scene(inputs: str, blend: str, sheet: str | None, resolution: int = 160, samples: int = 8, timeout: float = 300.0) -> dict:
    """Run :func:`blender_scene` in a fresh Python with the bpy module; returns its result."""
    cmd = [sys.executable, "-m", "interactive3d.demo", "--blender-scene", inputs, "--blend", blend, "--resolution", str(resolution), "--samples", str(samples)]
    if sheet:
        cmd += ["--sheet", sheet]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Blender scene step failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("I3D_SCENE "):
            return json.loads(line[len("I3D_SCENE "):])
    raise RuntimeError(f"Blender scene step printed no result: {proc.stdout.strip()[-2000:]}")


def _scene_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m interactive3d.demo")
    p.add_argument("--blender-scene", required=True)
    p.add_argument("--blend", required=True)
    p.add_argument("--sheet", default=None)
    p.add_argument("--resolution", type=int, default=160)
    p.add_argument("--samples", type=int, default=8)
    a = p.parse_args(argv)
    made = blender_scene(a.blender_scene, a.blend, a.sheet, a.resolution, a.samples)
    sys.stdout.write("I3D_SCENE " + json.dumps(made) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_scene_main(sys.argv[1:]))
