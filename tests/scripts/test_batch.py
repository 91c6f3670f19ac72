"""``i3d batch`` on a local Ray instance on CPU (num_gpus=0) with the oracle guidance and tiny step counts.

One Ray instance for the module (2 CPUs, no dashboard, loopback). One batch of three prompts runs once
(module fixture) while a watcher thread SIGKILLs the Ray worker of one prompt in the middle of its Stage I:
a bad prompt (steps the backend refuses) is retried once and reported, the other two finish, the killed
one after Ray re-ran its task from the prompt's checkpoint. Then the same batch is run again through the
command line (and through scripts/blender_batch.py --ray): finished prompts are skipped.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interactive3d import batch
from interactive3d.generate import GenerateConfig
from interactive3d.prompts import OPTION_TYPES_BATCH, PromptJob, parse_prompt_file, stable_slug

REPO = Path(__file__).resolve().parents[2]
KILL_STEPS = 150  # Stage I of the prompt whose worker is killed: long enough to be caught mid-way
PROMPTS = f"a green lamp ; steps={KILL_STEPS}\na broken chair ; steps=2000000\na red robot\n"
# Tiny pipeline: seconds per prompt on a CPU.
SMALL = dict(
    guidance="oracle", steps=30, resolution=32, n_init=512, distill_steps=10, distill_resolution=32, distill_rays=512,
    distill_samples=32, distill_view_pool=4, distill_levels=8, distill_log2_table=14, mesh_resolution=32,
    mesh_threshold=1.0, blend=False,
)
SMALL_FLAGS = [
    "--guidance", "oracle", "--steps", "30", "--resolution", "32", "--n-init", "512", "--distill-steps", "10",
    "--distill-resolution", "32", "--distill-rays", "512", "--distill-samples", "32", "--distill-view-pool", "4",
    "--distill-levels", "8", "--distill-log2-table", "14", "--mesh-resolution", "32", "--mesh-threshold", "1.0",
    "--gpus-per-job", "0", "--retries", "0",
]


# -- without Ray -------------------------------------------------------------------------------------------
def test_plan_slugs_are_stable_and_distinct_per_seed():
    """prompt × seed: 2 prompts × 3 seeds = 6 items (a line's own seed= wins: 1 item); slugs depend on the
    prompt, options and seed only, so the same file gives the same folders on a rerun."""
    jobs, bad = parse_prompt_file("a red robot\na blue car ; seed=7 ; steps=5\n", OPTION_TYPES_BATCH)
    assert not bad
    items = batch.plan(jobs, seeds=[0, 1, 2])
    assert [(i.prompt, i.seed) for i in items] == [("a red robot", 0), ("a red robot", 1), ("a red robot", 2), ("a blue car", 7)]
    assert len({i.slug for i in items}) == 4 and items[0].slug.startswith("a_red_robot-")
    assert [i.slug for i in batch.plan(jobs, seeds=[0, 1, 2])] == [i.slug for i in items]
    assert stable_slug("a red robot", {}, 0) != stable_slug("a red robot", {"steps": 5}, 0)
    cfg = batch.item_config(GenerateConfig(prompt="", steps=100), items[3])
    assert (cfg.prompt, cfg.seed, cfg.steps) == ("a blue car", 7, 5)
    jobs, _ = parse_prompt_file("x ; model=/m ; cfg=7.5 ; negative=blurry\n", OPTION_TYPES_BATCH)
    cfg = batch.item_config(GenerateConfig(prompt=""), batch.plan([PromptJob(1, "x", jobs[0].options)])[0])
    assert (cfg.model, cfg.guidance_scale, cfg.negative_prompt) == ("/m", 7.5, "blurry")


def test_incomplete_outputs_are_not_complete(tmp_path):
    """complete.json counts only when every file it lists is there (a half-copied folder is rerun)."""
    folder = tmp_path / "p"
    folder.mkdir()
    assert batch.read_complete(folder) is None
    (folder / "complete.json").write_text(json.dumps({"files": ["splats.ply", "mesh.glb"]}))
    (folder / "splats.ply").write_bytes(b"x")
    assert batch.read_complete(folder) is None
    (folder / "mesh.glb").write_bytes(b"x")
    assert batch.read_complete(folder)["files"] == ["splats.ply", "mesh.glb"]
    (folder / "complete.json").write_text("{not json")
    assert batch.read_complete(folder) is None


def test_bad_batch_settings_are_typed_errors():
    for bad in (dict(retries=-1), dict(gpus_per_job=-1.0), dict(lost_worker_retries=1.5)):
        with pytest.raises(batch.BatchError):
            batch.BatchConfig(**bad).check()


# -- on a local Ray instance -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_address():
    os.environ[batch.LOOPBACK_ENV] = "0"  # before Ray's import: every port of the instance on 127.0.0.1
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()


def _kill_mid_stage1(folder: Path, killed: dict, deadline: float) -> None:
    """Wait until the prompt's Stage I has written a periodic checkpoint, then SIGKILL its Ray worker
    (the pid the task wrote in worker.json)."""
    started = None
    while time.monotonic() < deadline:
        try:
            progress = json.loads((folder / "resume.json").read_text())
            worker = json.loads((folder / "worker.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
            continue
        if progress.get("running") == "stage1":
            started = started or time.time()
            ckpts = list((folder / "backend_state").glob("sessions/*/checkpoint.pt"))
            if any(c.stat().st_mtime > started for c in ckpts):
                os.kill(int(worker["pid"]), signal.SIGKILL)
                killed.update(pid=int(worker["pid"]), at=time.time())
                return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def first_run(ray_address, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "out"
    prompts = out.parent / "prompts.txt"
    prompts.write_text(PROMPTS)
    items, bad = batch.load_items(str(prompts), None, 0)
    assert not bad and len(items) == 3
    killed: dict = {}
    watcher = threading.Thread(target=_kill_mid_stage1, args=(out / items[0].slug, killed, time.monotonic() + 240), daemon=True)
    watcher.start()
    log = io.StringIO()
    outcomes = batch.run_batch(items, GenerateConfig(prompt="", **SMALL), out, batch.BatchConfig(gpus_per_job=0, retries=1), stream=log)
    watcher.join(1.0)
    sys.stderr.write(log.getvalue())  # shown by pytest when a test of this module fails
    return {"out": out, "prompts": prompts, "items": items, "outcomes": outcomes, "killed": killed, "log": log.getvalue()}


@pytest.mark.slow
def test_bad_prompt_is_retried_then_reported_and_the_others_finish(first_run):
    """Two of three finish with their files (splats.ply with as many Gaussians as reported, a mesh with
    faces, report.json, complete.json); the bad one failed twice (retries=1) with the backend's
    'invalid settings: ... steps must be <= 1000000' (checked against the protocol catalogue before a backend
    starts), is reported in the log, the summary table and summary.json, and has no complete.json."""
    from interactive3d.protocol import ply

    out, outcomes = first_run["out"], first_run["outcomes"]
    assert [o.status for o in outcomes] == ["done", "failed", "done"], first_run["log"]
    bad = outcomes[1]
    assert bad.attempts == 2 and "invalid settings" in bad.error and "steps" in bad.error
    assert "failed (attempt 1/2)" in first_run["log"] and "FAILED  'a broken chair'" in first_run["log"]
    assert not (out / bad.slug / "complete.json").exists() and "invalid settings" in (out / bad.slug / "failed.json").read_text()
    for o in (outcomes[0], outcomes[2]):
        folder = out / o.slug
        assert o.gaussians > 0 and o.mesh_faces > 0 and o.mesh_bytes == (folder / "mesh.glb").stat().st_size
        assert ply.read_ply(folder / "splats.ply").n == o.gaussians
        assert json.loads((folder / "report.json").read_text())["stages"]["mesh"]["faces"] == o.mesh_faces
        assert batch.read_complete(folder)["gaussians"] == o.gaussians
    summary = json.loads((out / "summary.json").read_text())["items"]
    assert [s["status"] for s in summary] == ["done", "failed", "done"]
    table = batch.summary_table(outcomes)
    assert table.count(" done ") == 2 and "invalid settings" in table


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint(first_run):
    """SIGKILL of the Ray worker mid-Stage I: Ray re-runs the task in another worker (new pid), which
    re-opens the session and goes on from the checkpointed step (0 < step < total), and the prompt ends
    done with all of its Stage I steps."""
    killed, out, o = first_run["killed"], first_run["out"], first_run["outcomes"][0]
    assert killed, "the watcher never saw the prompt's Stage I checkpoint"
    assert o.status == "done" and o.attempts == 1  # a lost worker is Ray's retry, not a failed attempt
    assert o.resumed_step is not None and 0 < o.resumed_step < KILL_STEPS
    assert json.loads((out / o.slug / "worker.json").read_text())["pid"] != killed["pid"]
    report = json.loads((out / o.slug / "report.json").read_text())
    assert report["resumed"]["running"] == "stage1" and report["resumed"]["step"] == o.resumed_step
    assert report["stages"]["stage1"]["job"]["status"] == "done" and report["stages"]["stage1"]["steps"] == KILL_STEPS


@pytest.mark.slow
def test_rerun_skips_complete_prompts(first_run, ray_address):
    """The same command again (the CLI, joining the test's Ray instance by address): the two finished
    prompts are skipped untouched (complete.json not rewritten), the bad one runs again and fails, exit 1;
    the summary table and JSON say so."""
    out, outcomes = first_run["out"], first_run["outcomes"]
    stamps = {o.slug: (out / o.slug / "complete.json").stat().st_mtime_ns for o in outcomes if o.status == "done"}
    proc = subprocess.run(
        [sys.executable, "-m", "interactive3d.cli", "batch", "--prompts", str(first_run["prompts"]), "--out", str(out),
         "--ray", ray_address, *SMALL_FLAGS],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("skipped (complete)") == 2
    statuses = [next(w for w in line.split() if w in ("skipped", "failed", "done")) for line in proc.stdout.splitlines()[2:]]
    assert statuses == ["skipped", "failed", "skipped"], proc.stdout
    assert {s: (out / s / "complete.json").stat().st_mtime_ns for s in stamps} == stamps
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["items"]] == ["skipped", "failed", "skipped"]
    assert summary["items"][0]["gaussians"] == outcomes[0].gaussians


_CHECK = r"""
import json, sys
import bpy
out = {}
for path in sys.argv[1:]:
    bpy.ops.wm.open_mainfile(filepath=path)
    out[path] = {ob.name: {"vertices": len(ob.data.vertices) if ob.type == "MESH" else 0,
                           "polygons": len(ob.data.polygons) if ob.type == "MESH" else 0,
                           "attributes": sorted(a.name for a in ob.data.attributes) if ob.type == "MESH" else []}
                 for ob in bpy.data.objects}
print("BLENDS " + json.dumps(out))
"""


@pytest.mark.slow
def test_blender_batch_ray_writes_a_blend_per_finished_prompt(first_run, ray_address):
    """scripts/blender_batch.py --ray submits the same batch (done prompts skipped) and saves
    DIR/<slug>/<slug>.blend per finished prompt: the splat object with every Gaussian (i3d_* attributes)
    and the mesh with the reported vertex count; the failed prompt has none and the exit code is 1."""
    out, outcomes = first_run["out"], first_run["outcomes"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "blender_batch.py"), "--ray", ray_address, "--prompts", str(first_run["prompts"]),
         "--out", str(out), *SMALL_FLAGS],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())["items"]
    blends = [s["blend"] for s in summary]
    assert blends[1] == "" and [Path(b).name for b in (blends[0], blends[2])] == [f"{outcomes[0].slug}.blend", f"{outcomes[2].slug}.blend"]
    check = subprocess.run([sys.executable, "-c", _CHECK, blends[0], blends[2]], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    seen = json.loads([line for line in check.stdout.splitlines() if line.startswith("BLENDS ")][-1][len("BLENDS "):])
    for path, o in ((blends[0], outcomes[0]), (blends[2], outcomes[2])):
        objs = seen[path]
        splat = [v for v in objs.values() if "i3d_color" in v["attributes"]]
        meshes = [v for v in objs.values() if v["polygons"] > 0 and "i3d_color" not in v["attributes"]]
        assert len(splat) == 1 and splat[0]["vertices"] == o.gaussians
        assert len(meshes) == 1 and meshes[0]["polygons"] == o.mesh_faces


@pytest.mark.slow
def test_ctrl_c_cancels_and_keeps_the_checkpoint(ray_address, tmp_path):
    """SIGINT to `i3d batch` while a prompt is in its Stage I: exit code 130 within 300 s (the tasks' 30 s
    grace, a forced cancel and Ray's shutdown; a CI run on 2 loaded cores once took over 60 s), the prompt is
    'cancelled' in the table and summary.json, its backend has stopped (it got SIGTERM from the
    cancelled task and wrote its checkpoint), and resume.json still names the running Stage I, so the
    same command continues from there."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a slow cup ; steps=100000\n")
    out = tmp_path / "out"
    item = batch.load_items(str(prompts), None, 0)[0][0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "interactive3d.cli", "batch", "--prompts", str(prompts), "--out", str(out), "--ray", ray_address, *SMALL_FLAGS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test run started in the background (`bash .ci/run &`) has SIGINT ignored, which children inherit, and
        # Python then installs no KeyboardInterrupt: give the batch the terminal's default, as a Ctrl+C meets it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        progress: dict = {}
        while progress.get("running") != "stage1":
            assert time.monotonic() < deadline and proc.poll() is None, "Stage I never started"
            time.sleep(0.2)
            try:
                progress = json.loads((out / item.slug / "resume.json").read_text())
            except (OSError, ValueError):
                pass
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # say where it hung
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"no exit 300 s after SIGINT; stdout: {stdout[-1500:]}\nstderr: {stderr[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted; cancelling 1 job(s)" in stderr and " cancelled " in stdout
    assert json.loads((out / "summary.json").read_text())["items"][0]["status"] == "cancelled"
    backend = Path(f"/proc/{progress['backend']['pid']}")
    deadline = time.monotonic() + 60
    while backend.exists() and str(out) in backend.joinpath("cmdline").read_bytes().decode(errors="replace"):
        assert time.monotonic() < deadline, "the cancelled prompt's backend is still running"
        time.sleep(0.2)
    assert json.loads((out / item.slug / "resume.json").read_text())["running"] == "stage1"
    from interactive3d.backend.service import checkpoint

    ck = checkpoint.read(out / item.slug / "backend_state", progress["session"])
    assert ck.job is not None and ck.job.op == "stage1.start" and ck.job.total == 100000  # resumable
    assert batch.read_complete(out / item.slug) is None


def test_a_job_asking_for_gpus_the_cluster_lacks_is_refused(ray_address, tmp_path):
    """--gpus-per-job 1 on a cluster with no GPU would wait forever: refused up front with a BatchError."""
    items = batch.plan([PromptJob(1, "a cup")])
    with pytest.raises(batch.BatchError, match="--gpus-per-job 0"):
        batch.run_batch(items, GenerateConfig(prompt="", **SMALL), tmp_path, batch.BatchConfig(gpus_per_job=1), stream=io.StringIO())
