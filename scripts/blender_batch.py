"""Batch text → 3D inside Blender, through the add-on's own operators.

    blender -b -P scripts/blender_batch.py -- --prompts FILE --out DIR [--connect ADDR] [--model M] [--demo]
    python scripts/blender_batch.py --prompts FILE --out DIR [...]          (the bpy module)

Each prompt gets its own scene: the add-on's operators connect to the backend (a local one this script
spawns, or ``--connect ADDR``), run Stage I (``i3d.generate``), distil (``i3d.to_nerf``) and extract the
mesh (``i3d.extract_mesh``); the scene is saved as DIR/NN_slug.blend and the mesh as DIR/NN_slug.glb.
A failing prompt is reported and the batch goes on; a summary table is printed at the end and written
to DIR/summary.json. ``--demo`` runs the offline demo object with the oracle guidance instead of prompts.

Prompt file: one prompt per line; blank lines and lines starting with ``#`` are ignored; options may
follow the prompt after ``;`` as ``key=value`` (steps, seed, cfg, negative), e.g.
``a red robot ; steps=500 ; negative=blurry``. A malformed line is reported with its number and skipped.

On a Ray cluster (``pip install 'interactive3d[cluster]'`` where this runs and on the workers):

    python scripts/blender_batch.py --ray ADDRESS --prompts FILE --out DIR [any `i3d batch` flag]

submits the same batch as ``i3d batch`` (one task per prompt, each on its own GPU; finished prompts are
skipped on a rerun) and, as each prompt finishes, imports its splats and mesh into DIR/<slug>/<slug>.blend
on this machine. Blender's own Python needs Ray for this (or use the bpy module of the venv).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:  # installed (the venv, or Blender's Python after `pip install interactive3d`)
    from interactive3d.prompts import BadLine, PromptJob, parse_prompt_file, slug
except ImportError:  # Blender's Python with the checkout: interactive3d/ is a plain package folder
    sys.path.insert(0, str(REPO))
    from interactive3d.prompts import BadLine, PromptJob, parse_prompt_file, slug


def script_args(argv: list[str]) -> list[str]:
    """The script's own arguments: after ``--`` under ``blender -b -P``, else everything after argv[0]."""
    return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blender_batch.py", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="prompt file (one prompt per line)")
    src.add_argument("--demo", action="store_true", help="the offline demo object with oracle guidance")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--connect", default=None, help="backend address (default: spawn a local backend)")
    p.add_argument("--auth-key-file", default=None,
                   help="the shared key of a --connect backend started with a key (default $I3D_AUTH_KEY_FILE)")
    p.add_argument("--backend-python", default=None, help="Python with the backend installed (local backend; default: this one)")
    p.add_argument("--model", default=None, help="diffusion model id or local folder (default: the backend's)")
    p.add_argument("--steps", type=int, default=None, help="Stage I steps (default per mode)")
    p.add_argument("--resolution", type=int, default=None, help="Stage I render size")
    p.add_argument("--distill-steps", type=int, default=None)
    p.add_argument("--mesh-resolution", type=int, default=None)
    p.add_argument("--mesh-threshold", type=float, default=None,
                   help="mesh the density iso-level instead of the 50%% opacity surface (the add-on's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CPU-sized steps and field (the default with --demo)")
    return p


# -- environment: the add-on, the backend ------------------------------------------------------------------
def ensure_repo_importable() -> None:
    """Make ``interactive3d.*`` importable from this checkout when it is not installed (Blender's own
    Python): the folders are mapped as pyproject.toml maps them (protocol/, backend/, blender_addon/)."""
    try:
        importlib.import_module("interactive3d.blender_addon")
        return
    except ImportError:
        pass
    mapping = {
        "interactive3d": REPO / "interactive3d",
        "interactive3d.protocol": REPO / "protocol",
        "interactive3d.blender_addon": REPO / "blender_addon",
        "interactive3d.blender_addon.operators": REPO / "blender_addon" / "operators",
    }
    for name, folder in mapping.items():
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def ensure_addon() -> str:
    """Register the add-on's operators unless they already are: the installed extension when present,
    else the checkout's blender_addon/. Returns where it came from."""
    import bpy

    if hasattr(bpy.types, "I3D_OT_connect"):
        return "already registered"
    import addon_utils

    for mod in addon_utils.modules(refresh=False):
        if mod.__name__.endswith(".interactive3d") or mod.__name__ == "interactive3d":
            addon_utils.enable(mod.__name__, default_set=False)
            if hasattr(bpy.types, "I3D_OT_connect"):
                return f"extension {mod.__name__}"
    ensure_repo_importable()
    addon = importlib.import_module("interactive3d.blender_addon")
    addon.register()
    return f"checkout {REPO / 'blender_addon'}"


def backend_python(requested: str | None) -> str:
    """A Python that can run the backend (torch etc.): --backend-python, $I3D_PYTHON, or this one."""
    python = requested or os.environ.get("I3D_PYTHON") or sys.executable
    probe = subprocess.run([python, "-c", "import interactive3d.backend.service.server"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise SystemExit(
            f"blender_batch: {python} cannot run the backend ({probe.stderr.strip().splitlines()[-1:]}); pass "
            "--backend-python /path/to/venv/bin/python (a Python with `pip install interactive3d`) or --connect ADDR"
        )
    return python


def serve_command(python: str, address: str, out: Path, model: str | None = None) -> list[str]:
    """``i3d serve`` for the batch's own backend; a local --model folder becomes its --model-dir (the backend loads
    local models only from its model folders)."""
    from interactive3d.blender_addon.preferences import model_dir_args

    return [python, "-m", "interactive3d.cli", "serve", "--bind", address, "--state-dir", str(out / "backend_state"),
            *model_dir_args(model or "")]


def spawn_backend(python: str, address: str, out: Path, model: str | None = None) -> subprocess.Popen:
    logf = open(out / "backend.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            serve_command(python, address, out, model),
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    finally:
        logf.close()


def write_demo_reference(python: str, path: Path, n: int = 6000) -> None:
    """The demo object's reference Gaussians as a 3DGS .ply (made by the backend's Python: trimesh)."""
    code = (
        "import sys; from interactive3d import sample; from interactive3d.protocol import ply, splat_data\n"
        "o = sample.build_sample_object(); s = sample.sample_surface(o, int(sys.argv[2]))\n"
        "st = sample.surface_state(s, sum(p.mesh.area for p in o.parts))\n"
        "ply.write_ply(sys.argv[1], splat_data.state_to_splat(st))\n"
    )
    subprocess.run([python, "-c", code, str(path), str(n)], check=True, capture_output=True, timeout=120)


# -- one job -----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    name: str
    prompt: str
    ok: bool
    seconds: float = 0.0
    gaussians: int = 0
    mesh_vertices: int = 0
    blend: str = ""
    mesh: str = ""
    error: str = ""


def _clear_scene(bpy) -> None:
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)
    for mesh in list(bpy.data.meshes):
        if mesh.users == 0:
            bpy.data.meshes.remove(mesh)


def _op(result: set, what: str, conn) -> None:
    if "FINISHED" not in result:
        raise RuntimeError(f"{what} failed: {conn.last_error or conn.job.message or result}")


def run_job(job: PromptJob, name: str, out: Path, address: str, local: bool, defaults: dict, reference: Path | None) -> Outcome:
    """One prompt (or the demo object) through the add-on's operators; raises nothing."""
    import bpy
    from interactive3d.blender_addon import connection

    t0 = time.perf_counter()
    outcome = Outcome(name=name, prompt=job.prompt, ok=False)
    conn = connection.get()
    try:
        _clear_scene(bpy)
        conn.object_name = None
        conn.meshes.clear()
        p = bpy.context.scene.i3d
        p.prompt = job.prompt
        p.negative_prompt = job.options.get("negative", "")
        p.steps = int(job.options.get("steps", defaults["steps"]))
        p.cfg = float(job.options.get("cfg", defaults["cfg"]))
        p.seed = int(job.options.get("seed", defaults["seed"]))
        p.guidance = "oracle" if reference is not None else "sd"
        p.nerf_steps = defaults["distill_steps"]
        p.mesh_resolution = defaults["mesh_resolution"]
        if defaults.get("mesh_threshold") is not None:
            p.mesh_surface, p.mesh_threshold = "DENSITY", defaults["mesh_threshold"]
        _op(bpy.ops.i3d.connect(address=address, new_session=True), "i3d.connect", conn)
        gen = {"wait": True, "init": "RANDOM"}
        if reference is not None:
            gen["reference_path"] = str(reference)
        if defaults.get("resolution"):
            gen["resolution"] = defaults["resolution"]
        _op(bpy.ops.i3d.generate(**gen), "i3d.generate (Stage I)", conn)
        if conn.job.state != "done":
            raise RuntimeError(f"Stage I ended {conn.job.state}: {conn.job.message or conn.last_error}")
        conn.wait_idle(timeout=120.0)
        outcome.gaussians = conn.count
        nerf = {"wait": True, "steps": defaults["distill_steps"]}
        if defaults["quick"]:
            # CPU-sized field and rays (the backend's defaults are the paper's, for a GPU).
            nerf.update(resolution=48, levels=12, capacity=16, rays_per_step=1024)
        _op(bpy.ops.i3d.to_nerf(**nerf), "i3d.to_nerf (distillation)", conn)
        if conn.job.state != "done":
            raise RuntimeError(f"distillation ended {conn.job.state}: {conn.job.message or conn.last_error}")
        mesh_path = out / f"{name}.glb"
        mesh_args = {"resolution": defaults["mesh_resolution"]}
        if local:
            mesh_args["filepath"] = str(mesh_path)  # the backend writes it (same machine)
        _op(bpy.ops.i3d.extract_mesh(**mesh_args), "i3d.extract_mesh", conn)
        if not conn.meshes:
            raise RuntimeError(f"no mesh came back: {conn.last_error}")
        mesh_obj = bpy.data.objects[conn.meshes[-1]]
        outcome.mesh_vertices = len(mesh_obj.data.vertices)
        if not local:
            _export_glb(bpy, mesh_obj, mesh_path)
        outcome.mesh = str(mesh_path)
        blend = out / f"{name}.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
        outcome.blend = str(blend)
        outcome.ok = True
    except Exception as exc:  # noqa: BLE001 - one failing prompt must not end the batch; it is reported
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if conn.connected and conn.session:
            try:
                conn.call("session.close", {}, kind="ignore")
            except Exception as exc:  # noqa: BLE001 - closing is best effort; the backend drops it on exit
                outcome.error = outcome.error or ""
                print(f"blender_batch: could not close session: {exc}", file=sys.stderr)
        conn.disconnect()
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _export_glb(bpy, obj, path: Path) -> None:
    """The mesh object alone as a .glb with its vertex colours (remote backend: no file on this machine)."""
    for other in bpy.context.scene.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True)


def summary_table(outcomes: list[Outcome], bad: list[BadLine]) -> str:
    rows = [("#", "prompt", "status", "seconds", "gaussians", "mesh verts", "blend / error")]
    for o in outcomes:
        rows.append((o.name, o.prompt[:40], "ok" if o.ok else "FAILED", f"{o.seconds:.1f}", str(o.gaussians),
                     str(o.mesh_vertices), Path(o.blend).name if o.ok else o.error[:80]))
    for b in bad:
        rows.append((f"line {b.line}", b.text.strip()[:40], "SKIPPED", "-", "-", "-", b.reason[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if "--ray" in script_args(argv):
        return ray_main(script_args(argv))
    args = build_parser().parse_args(script_args(argv))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.demo:
        jobs, bad = [PromptJob(0, "the demo robot (oracle guidance)")], []
    else:
        try:
            text = Path(args.prompts).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"blender_batch: cannot read --prompts {args.prompts}: {exc}", file=sys.stderr)
            return 2
        jobs, bad = parse_prompt_file(text)
    for b in bad:
        print(f"blender_batch: skipping line {b.line} of {args.prompts}: {b.reason}: {b.text.strip()[:80]!r}", file=sys.stderr)

    import bpy  # noqa: F401 - the bpy module or Blender's own

    source = ensure_addon()
    print(f"blender_batch: add-on from {source}", file=sys.stderr)
    from interactive3d.blender_addon import connection

    quick = args.demo or args.quick
    defaults = {
        "steps": args.steps or (150 if quick else 2000),
        "cfg": 100.0,
        "seed": args.seed,
        "distill_steps": args.distill_steps or (150 if quick else 2000),
        "mesh_resolution": args.mesh_resolution or (96 if quick else 160),
        "resolution": args.resolution,
        "model": args.model,
        "quick": quick,
        "mesh_threshold": args.mesh_threshold,
    }
    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="i3d-batch-")
    try:
        address, local = args.connect, args.connect is None
        python = None
        if local or args.demo:
            python = backend_python(args.backend_python)
        if local:
            address = f"ipc://{tmp.name}/backend.sock"
            proc = spawn_backend(python, address, out, args.model)
        from interactive3d.protocol.auth import ENV_KEY_FILE, load_key

        key_file = None if local else (args.auth_key_file or os.environ.get(ENV_KEY_FILE) or None)
        try:
            key = load_key(key_file, env={}) if key_file else None
        except ValueError as exc:
            print(f"blender_batch: --auth-key-file: {exc}", file=sys.stderr)
            return 2
        if args.model or key_file:
            _set_preferences(model=args.model, auth_key_file=os.path.abspath(key_file) if key_file else None)
        conn = connection.get()
        conn.timeout_s = 60.0  # a CPU backend answers slowly while it imports torch and loads models
        reference = None
        if args.demo:
            reference = out / "reference.ply"
            write_demo_reference(python, reference)
        _wait_for_backend(address, proc, key)
        outcomes = []
        for i, job in enumerate(jobs, start=1):
            name = "demo" if args.demo else slug(i, job.prompt)
            print(f"blender_batch: [{i}/{len(jobs)}] {job.prompt!r}", file=sys.stderr)
            o = run_job(job, name, out, address, local, defaults, reference)
            if not o.ok:
                print(f"blender_batch: {name} failed: {o.error}", file=sys.stderr)
            outcomes.append(o)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp.cleanup()
    table = summary_table(outcomes, bad)
    print(table)
    (out / "summary.json").write_text(json.dumps(
        {"jobs": [o.__dict__ for o in outcomes], "skipped": [b.__dict__ for b in bad]}, indent=2))
    return 0 if all(o.ok for o in outcomes) and outcomes else 1


# -- --ray: the batch on a Ray cluster, the scenes here ----------------------------------------------------
def ray_main(argv: list[str]) -> int:
    """``--ray ADDRESS``: run the batch with ``i3d batch``'s machinery, then one .blend per finished prompt."""
    from interactive3d import batch

    p = argparse.ArgumentParser(prog="blender_batch.py --ray", description="the batch on a Ray cluster; a .blend per prompt here")
    batch.add_batch_arguments(p)
    args = p.parse_args(argv)
    try:
        base, bcfg, seeds = batch.config_from_args(args)
        items, bad = batch.load_items(args.prompts, seeds, args.seed)
    except batch.BatchError as exc:
        print(f"blender_batch: {exc}", file=sys.stderr)
        return 2
    for b in bad:
        print(f"blender_batch: skipping line {b.line} of {args.prompts}: {b.reason}: {b.text.strip()[:80]!r}", file=sys.stderr)
    try:
        outcomes = batch.run_batch(items, base, args.out, bcfg, ray_address=args.ray)
    except batch.BatchError as exc:
        print(f"blender_batch: {exc}", file=sys.stderr)
        return 2
    blends = {}
    for o in outcomes:
        if o.status in ("done", "skipped"):
            try:
                blends[o.slug] = str(scene_from_outputs(Path(o.dir), o.slug))
            except Exception as exc:  # noqa: BLE001 - one unreadable output must not stop the others; reported
                o.status, o.error = "failed", f"import into Blender: {type(exc).__name__}: {exc}"
    print(batch.summary_table(outcomes, bad))
    summary = Path(args.out) / "summary.json"
    data = json.loads(summary.read_text())
    for entry in data["items"]:
        entry["blend"] = blends.get(entry["slug"], "")
    data["bad_lines"] = [b.__dict__ for b in bad]
    summary.write_text(json.dumps(data, indent=2))
    if any(o.status == "cancelled" for o in outcomes):
        return 130
    return 0 if outcomes and all(o.slug in blends for o in outcomes) else 1


def scene_from_outputs(folder: Path, name: str) -> Path:
    """A fresh scene with the prompt's splat object (the add-on's .ply import) and its mesh (Blender's
    glTF importer, which puts it where the add-on would), saved as ``folder/<name>.blend``."""
    import bpy

    ensure_addon()
    from interactive3d.blender_addon.operators.io import import_splat_file

    _clear_scene(bpy)
    splats = import_splat_file(bpy.context, str(folder / "splats.ply"))
    splats.name = f"{name}_splats"
    before = set(bpy.data.objects)
    result = bpy.ops.import_scene.gltf(filepath=str(folder / "mesh.glb"))
    if "FINISHED" not in result:
        raise RuntimeError(f"glTF import of {folder / 'mesh.glb'} failed: {result}")
    for obj in set(bpy.data.objects) - before:
        if obj.type == "MESH":
            obj.name = f"{name}_mesh"
    blend = folder / f"{name}.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
    return blend


def _set_preferences(**values) -> None:
    """Set the add-on's preferences (``model``: what i3d.generate sends; ``auth_key_file``: what i3d.connect signs
    with); None leaves one as it is. Registered from the checkout the add-on has no preferences entry yet: one is
    added, as enabling it in Blender would."""
    import bpy
    from interactive3d.blender_addon import preferences

    addons = bpy.context.preferences.addons
    entry = addons.get(preferences.ADDON_PACKAGE)
    if entry is None:
        entry = addons.new()
        entry.module = preferences.ADDON_PACKAGE
    for name, value in values.items():
        if value is not None:
            setattr(entry.preferences, name, value)


def _wait_for_backend(address: str, proc: subprocess.Popen | None, key: bytes | None = None, timeout: float = 90.0) -> None:
    """Ping until the backend answers (it may still be importing torch); exit with the reason when it does not."""
    from interactive3d.protocol.client import Client, ConnectionLost, RemoteError, RequestTimeout

    deadline = time.monotonic() + timeout
    with Client(address, auth_key=key) as client:
        while True:
            try:
                client.request("ping", timeout=2.0, retries=0)
                return
            except (ConnectionLost, RequestTimeout, RemoteError) as exc:
                # not up yet; a key the backend does not take; or a ping signed (and queued) before it started
                if isinstance(exc, RemoteError) and exc.code != "unauthorized":
                    raise SystemExit(f"blender_batch: the backend at {address} refused ping: {exc}") from None
                if proc is not None and proc.poll() is not None:
                    raise SystemExit(f"blender_batch: the backend exited with code {proc.returncode}; see backend.log") from None
                if time.monotonic() > deadline:
                    raise SystemExit(f"blender_batch: no backend answered at {address} within {timeout:.0f} s ({exc})") from None

if __name__ == "__main__":
    code = main(sys.argv)
    if "bpy" in sys.modules and getattr(sys.modules["bpy"].app, "background", False) and "--" in sys.argv:
        sys.stdout.flush()
    sys.exit(code)
