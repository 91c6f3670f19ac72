"""Stage I ops (backend/service/ops_stage1.py) through a real server and the real ZeroMQ client."""

from __future__ import annotations

import numpy as np
import pytest

from _server_helpers import threaded_client
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import RemoteError


@pytest.fixture(scope="module")
def server():
    with threaded_client() as c:
        yield c


def _session(c: Client) -> str:
    return c.request("session.create").result["session"]


def _state(c: Client, sid: str) -> np.ndarray:
    return np.array(c.request("state.get", {"session": sid}).buffers[0])


def _code(c: Client, op: str, args: dict, buffers=()) -> str:
    with pytest.raises(RemoteError) as err:
        c.request(op, args, list(buffers))
    return err.value.code


def test_init_random_points_and_undo(server):
    """random: 4096 Gaussians by default (the paper's init), all inside radius 0.5; points: 3 coloured
    points come back as the state frame's rgb to 1e-6; history.undo restores the random set exactly."""
    c = server
    sid = _session(c)
    assert c.request("gaussians.init", {"session": sid, "kind": "random"}).result["count"] == 4096
    s0 = _state(c, sid)
    assert np.linalg.norm(s0[:, :3], axis=1).max() <= 0.5 + 1e-6
    pts = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.2, 0]], np.float32)
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    assert c.request("gaussians.init", {"session": sid, "kind": "points"}, [pts, cols]).result["count"] == 3
    s1 = _state(c, sid)
    assert np.allclose(s1[:, :3], pts) and np.allclose(s1[:, 3:6], cols / 255.0, atol=1e-6)
    c.request("history.undo", {"session": sid})
    assert np.array_equal(_state(c, sid), s0)


def test_ply_save_load_bit_exact_and_mesh(server, tmp_path):
    """save_ply then load_ply in another session gives a bit-identical state frame; a mesh init samples
    n=500 points on a box fitted to radius 1 (every point at max-norm 1/√3 to 1e-5)."""
    import trimesh

    c = server
    a, b = _session(c), _session(c)
    c.request("gaussians.init", {"session": a, "kind": "random", "n": 300, "seed": 3, "sh_degree": 1})
    path = str(tmp_path / "a.ply")
    assert c.request("gaussians.save_ply", {"session": a, "path": path}).result["count"] == 300
    r = c.request("gaussians.load_ply", {"session": b, "path": path}).result
    assert {k: v for k, v in r.items() if k != "revision"} == {"count": 300, "sh_degree": 1}
    assert np.array_equal(_state(c, a), _state(c, b))
    mesh_path = str(tmp_path / "box.obj")
    trimesh.creation.box(extents=(1, 2, 3)).export(mesh_path)
    r = c.request("gaussians.init", {"session": b, "kind": "mesh", "path": mesh_path, "n": 500, "fit_radius": 1.0}).result
    assert r["count"] == 500
    s = _state(c, b)
    assert np.linalg.norm(s[:, :3], axis=1).max() <= 1.0 + 1e-5


def test_bad_inputs_get_typed_errors_and_change_nothing(server, tmp_path):
    """Each bad request gets its error code (invalid_args / not_found) and the session's state frame is
    unchanged afterwards (bit-identical)."""
    c = server
    sid = _session(c)
    empty = _session(c)
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 64})
    before = _state(c, sid)
    nan_pts = np.array([[0, np.nan, 0]], np.float32)
    cases = [
        ("gaussians.init", {"session": sid, "kind": "points"}, [np.zeros((0, 3), np.float32)], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "points"}, [nan_pts], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "points"}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "points"}, [np.zeros((4, 3), np.float32), np.full((4, 3), 2.0, np.float32)], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "random", "n": 0}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "random", "radius": float("inf")}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "cube"}, [], "invalid_args"),
        ("gaussians.init", {"session": sid, "kind": "ply", "path": str(tmp_path / "missing.ply")}, [], "not_found"),
        ("gaussians.init", {"session": sid, "kind": "mesh", "path": str(tmp_path / "missing.obj")}, [], "not_found"),
        ("gaussians.load_ply", {"session": sid, "path": str(tmp_path / "missing.ply")}, [], "not_found"),
        ("gaussians.save_ply", {"session": empty, "path": str(tmp_path / "x.ply")}, [], "invalid_args"),
        ("gaussians.save_ply", {"session": sid, "path": str(tmp_path / "no" / "dir.ply")}, [], "not_found"),
        ("gaussians.init", {"session": "nosuchsession", "kind": "random"}, [], "not_found"),
    ]
    (tmp_path / "garbage.ply").write_bytes(b"not a ply at all")
    cases.append(("gaussians.load_ply", {"session": sid, "path": str(tmp_path / "garbage.ply")}, [], "invalid_args"))
    for op, args, bufs, code in cases:
        assert _code(c, op, args, bufs) == code, (op, args)
    assert np.array_equal(_state(c, sid), before)


def _run_job(c: Client, args: dict, timeout: float = 120.0) -> tuple[list, dict]:
    """Start stage1.start and collect its events until 'done' (or 'error')."""
    import time

    job = c.request("stage1.start", args).result["job"]
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.poll(100):
            if m.kind != "event" or m.header.get("job") != job:
                continue
            events.append(m)
            if m.header["event"] in ("done", "error"):
                return events, m.header["data"]
    raise AssertionError(f"job {job} did not finish; saw {[m.header['event'] for m in events]}")


def test_stage1_oracle_job_through_protocol(server, tmp_path):
    """A 4-step oracle job toward a .ply reference: progress events for steps 1..4 with finite loss, a
    final state frame, 'done' with status done and steps 4, and the Gaussians changed. Then the
    session's own reference (stage1.set_reference) drives a second 2-step job."""
    c = server
    ref, sid = _session(c), _session(c)
    c.request("gaussians.init", {"session": ref, "kind": "random", "n": 80, "seed": 7})
    ref_path = str(tmp_path / "ref.ply")
    c.request("gaussians.save_ply", {"session": ref, "path": ref_path})
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 80})
    before = _state(c, sid)
    args = {"session": sid, "guidance": "oracle", "reference_path": ref_path, "steps": 4, "batch": 1,
            "resolution": 24, "densify": False, "seed": 1}
    events, done = _run_job(c, args)
    progress = [m.header["data"] for m in events if m.header["event"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert all(np.isfinite(p["metrics"]["loss"]) and p["metrics"]["loss"] > 0 for p in progress)
    assert done["status"] == "done" and done["steps"] == 4
    assert any(m.header["event"] == "state" for m in events)
    assert not np.array_equal(_state(c, sid), before)
    assert c.request("stage1.set_reference", {"session": sid}).result["count"] == 80
    _, done = _run_job(c, {"session": sid, "guidance": "oracle", "steps": 2, "batch": 1, "resolution": 24})
    assert done["status"] == "done" and done["steps"] == 2


def test_stage1_bad_inputs_typed_errors(server, tmp_path):
    """Every bad stage1.start / gaussians.render request is refused with its code before any job starts."""
    c = server
    empty, sid = _session(c), _session(c)
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 32})
    base = {"session": sid, "steps": 2, "resolution": 16, "batch": 1}
    nan_cam = np.eye(4, dtype=np.float32)
    nan_cam[0, 3] = np.nan
    cases = [
        ("stage1.start", {**base, "session": empty, "guidance": "oracle"}, [], "invalid_args"),  # zero Gaussians
        ("stage1.start", {**base, "guidance": "sd", "prompt": "  "}, [], "invalid_args"),  # empty prompt
        ("stage1.start", {**base, "guidance": "sd", "prompt": "a cat", "model": str(tmp_path / "no-model")}, [], "not_found"),
        ("stage1.start", {**base, "guidance": "sd", "prompt": "a cat", "model": "not a model id"}, [], "invalid_args"),  # malformed, not missing
        ("stage1.start", {**base, "guidance": "sd", "prompt": "a cat", "local_files_only": True}, [], "not_found"),
        ("stage1.start", {**base, "guidance": "pixart", "prompt": "a cat", "local_files_only": True}, [], "not_found"),
        ("stage1.start", {**base, "guidance": "oracle"}, [], "invalid_args"),  # no reference
        ("stage1.start", {**base, "guidance": "oracle", "reference_path": str(tmp_path / "nope.ply")}, [], "not_found"),
        ("stage1.start", {**base, "guidance": "none", "fixed_t": 1.5}, [], "invalid_args"),
        ("stage1.start", {**base, "guidance": "none", "t_range": [0.9, 0.1]}, [], "invalid_args"),
        ("stage1.start", {**base, "guidance": "none", "guidance_scale": float("nan")}, [], "invalid_args"),
        ("stage1.start", {**base, "guidance": "none", "elevation_range_deg": [10.0, float("inf")]}, [], "invalid_args"),
        ("stage1.start", {**base, "guidance": "dalle"}, [], "invalid_args"),
        ("gaussians.render", {"session": sid, "fov_x": 0.8, "width": 8, "height": 8}, [nan_cam], "invalid_args"),
        ("gaussians.render", {"session": sid, "fov_x": float("nan"), "width": 8, "height": 8}, [np.eye(4, dtype=np.float32)], "invalid_args"),
        ("gaussians.render", {"session": sid, "fov_x": 0.8, "width": 8, "height": 8}, [np.zeros((4, 4), np.float32)], "invalid_args"),
        ("gaussians.render", {"session": empty, "fov_x": 0.8, "width": 8, "height": 8}, [np.eye(4, dtype=np.float32)], "invalid_args"),
    ]
    for op, args, bufs, code in cases:
        assert _code(c, op, args, bufs) == code, (op, args)
    assert c.request("job.status", {"session": sid}).result["state"] == "idle"


def test_render_op_image(server):
    """gaussians.render from a Blender camera 2 units along +Y looking at the origin: [1,16,16,3] rgb and
    [1,16,16,1] alpha, object in the centre pixel (alpha > 0.5) and background white in the corner."""
    c = server
    sid = _session(c)
    c.request("gaussians.init", {"session": sid, "kind": "points", "opacity": 0.99, "scale": 0.2},
              [np.zeros((1, 3), np.float32), np.array([[0, 0, 255]], np.uint8)])
    c2w = np.array([[-1, 0, 0, 0], [0, 0, 1, 2], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32)  # looks down −Y
    rep = c.request("gaussians.render", {"session": sid, "fov_x": 0.8, "width": 16, "height": 16}, [c2w])
    rgb, alpha = rep.buffers
    assert rgb.shape == (1, 16, 16, 3) and alpha.shape == (1, 16, 16, 1)
    assert alpha[0, 8, 8, 0] > 0.5 and rgb[0, 8, 8, 2] > rgb[0, 8, 8, 0] + 0.3
    assert np.allclose(rgb[0, 0, 0], 1.0, atol=1e-3)


def test_bad_inputs_through_backend_subprocess(tmp_path):
    """The same typed errors from a real `i3d serve` subprocess (zero Gaussians, empty prompt, unknown
    model path, non-finite camera), then a 2-step oracle job still completes on that server."""
    import subprocess
    import sys
    import time

    addr = f"ipc://{tmp_path}/b.sock"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", addr, "--device", "cpu", "--model-dir", str(tmp_path)],
                            stdout=log, stderr=subprocess.STDOUT)
    c = Client(addr)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                c.request("ping", timeout=1.0, retries=0)
                break
            except TimeoutError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
        empty, sid = _session(c), _session(c)
        c.request("gaussians.init", {"session": sid, "kind": "random", "n": 40})
        nan_cam = np.eye(4, dtype=np.float32)
        nan_cam[1, 1] = np.inf
        assert _code(c, "stage1.start", {"session": empty, "guidance": "none"}) == "invalid_args"
        assert _code(c, "stage1.start", {"session": sid, "guidance": "sd", "prompt": ""}) == "invalid_args"
        assert _code(c, "stage1.start", {"session": sid, "guidance": "sd", "prompt": "a cat",
                                         "model": str(tmp_path / "missing")}) == "not_found"
        assert _code(c, "gaussians.render", {"session": sid, "fov_x": 0.8}, [nan_cam]) == "invalid_args"
        c.request("stage1.set_reference", {"session": sid})
        _, done = _run_job(c, {"session": sid, "guidance": "oracle", "steps": 2, "batch": 1, "resolution": 16})
        assert done["status"] == "done" and done["steps"] == 2
    finally:
        c.close()
        proc.terminate()
        proc.wait(60)
        log.close()


def test_stage1_sd_job_from_local_model_folder(server, tmp_path):
    """guidance 'sd' with model = a local diffusers folder (tiny components saved with save_pretrained):
    the job loads it on its worker thread and runs 2 SDS steps to 'done' with finite, positive loss."""
    from diffusers import DDPMScheduler

    from _tiny_diffusion import tiny_sd_guidance

    sd = tiny_sd_guidance()
    for name in ("tokenizer", "text_encoder", "vae", "unet"):
        getattr(sd, name).save_pretrained(tmp_path / name)
    DDPMScheduler(beta_schedule="scaled_linear").save_pretrained(tmp_path / "scheduler")
    c = server
    sid = _session(c)
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 60})
    events, done = _run_job(c, {"session": sid, "guidance": "sd", "prompt": "a red chair", "model": str(tmp_path),
                                "local_files_only": True, "steps": 2, "batch": 1, "resolution": 32})
    assert done["status"] == "done" and done["steps"] == 2
    losses = [m.header["data"]["metrics"]["loss"] for m in events if m.header["event"] == "progress"]
    assert len(losses) == 2 and all(np.isfinite(x) and x > 0 for x in losses)


def test_pause_resume_through_protocol_matches_uninterrupted(server, tmp_path):
    """Two sessions with the same init and seed run the same 8-step oracle job with random backgrounds;
    the second is paused right after it starts and resumed later. Final state frames are bit-identical."""
    import time

    c = server
    ref = _session(c)
    c.request("gaussians.init", {"session": ref, "kind": "random", "n": 60, "seed": 9})
    ref_path = str(tmp_path / "ref.ply")
    c.request("gaussians.save_ply", {"session": ref, "path": ref_path})
    args = {"guidance": "oracle", "reference_path": ref_path, "steps": 8, "batch": 1, "resolution": 24,
            "random_background": True, "seed": 3}
    a, b = _session(c), _session(c)
    for sid in (a, b):
        c.request("gaussians.init", {"session": sid, "kind": "random", "n": 60, "seed": 1})
    _, done = _run_job(c, {"session": a, **args})
    assert done["steps"] == 8
    job = c.request("stage1.start", {"session": b, **args}).result["job"]
    c.request("job.pause", {"session": b})
    deadline = time.monotonic() + 60
    while c.request("job.status", {"session": b}).result["state"] != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    paused_at = c.request("job.status", {"session": b}).result["step"]
    time.sleep(0.3)
    assert c.request("job.status", {"session": b}).result["step"] == paused_at  # no step while paused
    c.request("job.resume", {"session": b})
    while c.request("job.status", {"session": b}).result["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert paused_at < 8 and job
    assert np.array_equal(_state(c, a), _state(c, b))


def test_splat_formats_other_tools_write_load_everywhere(server, tmp_path):
    """gaussians.init (kind 'ply'), gaussians.load_ply, stage1.set_reference and parts.add take the
    compressed .ply, .spz and .sog (bundled, and the unbundled meta.json + images) that splat-transform wrote
    (tests/fixtures/splats): each gives the 300 Gaussians whose state equals protocol.splats.read_any's
    decoding of the file (float32, to 1e-6); spz_axes='rub' reads splat-transform 2.7.1's RUB .spz the right way up."""
    import shutil
    from pathlib import Path

    from interactive3d.protocol import ply, splat_data, splats

    fix = Path(__file__).resolve().parents[1] / "fixtures" / "splats"
    c = server
    shutil.copytree(fix / "source_sog", tmp_path / "source_sog")
    for name in ("source.compressed.ply", "source_v3.spz", "source_v4.spz", "source.sog", "source_sog/meta.json"):
        # inside the server's data folder (the temp dir)
        path = str(tmp_path / name) if "/" in name else str(shutil.copy(fix / name, tmp_path / name))
        want = splat_data.splat_to_state(splats.read_any(path))
        sid = _session(c)
        assert c.request("gaussians.init", {"session": sid, "kind": "ply", "path": path}).result["count"] == 300
        np.testing.assert_allclose(_state(c, sid), want, atol=1e-6)
        assert c.request("gaussians.load_ply", {"session": sid, "path": path}).result["count"] == 300
        assert c.request("stage1.set_reference", {"session": sid, "path": path}).result["count"] == 300
        assert c.request("parts.add", {"session": sid, "name": "again", "path": path}).result["count"] == 600
        np.testing.assert_allclose(_state(c, sid)[300:], want, atol=1e-6)
    # spz_axes: splat-transform 2.7.1's .spz holds RUB; 'rub' brings it back to source.ply, by path and by frame
    src = ply.read_ply(fix / "source.ply").means
    spz_path, sid = str(tmp_path / "source_v3.spz"), _session(c)
    c.request("gaussians.init", {"session": sid, "kind": "ply", "path": spz_path, "spz_axes": "rub"})
    assert np.abs(_state(c, sid)[:, :3] - src).max() <= 0.5 / 4096 + 1e-6
    c.request("gaussians.load_ply", {"session": sid, "path": spz_path})  # the default reads it as stored: mirrored
    assert np.abs(_state(c, sid)[:, :3] - src).max() > 0.5
    frame = np.frombuffer((fix / "source_v3.spz").read_bytes(), np.uint8)
    c.request("parts.add", {"session": sid, "name": "rub", "filename": "a.spz", "spz_axes": "rub"}, [frame])
    assert np.abs(_state(c, sid)[300:, :3] - src).max() <= 0.5 / 4096 + 1e-6


@pytest.mark.parametrize("steps", [150, 10_000])
def test_stage1_start_default_schedule_scales_with_the_run(steps):
    """stage1.start without densify_schedule runs trainer.sds_schedule(steps) (issue 27): a 150-step run
    densifies at steps 50 and 100 and prunes every 5 steps to the end, a 10k-step run densifies every 667 steps
    from 667 to 6003 and prunes every 333; neither resets. "run" is run_schedule(steps) (issue 18: 14
    densify steps at 150, 146 and resets at 1k..4k at 10k), "fixed" the unscaled 100..1400 schedule with
    3DGS's threshold; densify=false turns it off. densify_grad_threshold / densify_grad_quantile override
    the chosen schedule's threshold per request; a quantile outside (0, 1] is invalid_args. Each job is
    cancelled right after it starts."""
    from dataclasses import replace

    from _server_helpers import ThreadedServer
    from interactive3d.backend.stage1.densify import DensifyConfig
    from interactive3d.backend.stage1.trainer import run_schedule, sds_schedule

    sds, run = sds_schedule(steps), run_schedule(steps)
    expected = {150: ((50, 100), ()), 10_000: (tuple(range(667, 6667, 667)), ())}[steps]
    ts = ThreadedServer()
    try:
        with Client(ts.address) as c:
            base = {"guidance": "oracle", "steps": steps, "batch": 1, "resolution": 16}
            for extra, want in (({}, sds), ({"densify_schedule": "sds"}, sds), ({"densify_schedule": "run"}, run),
                                ({"densify_schedule": "fixed"}, DensifyConfig()), ({"densify": False}, None),
                                ({"densify_grad_threshold": 0.5, "densify_grad_quantile": 0.1},
                                 replace(sds, grad_threshold=0.5, grad_quantile=0.1)),
                                ({"densify_schedule": "run", "densify_grad_quantile": 0.3}, replace(run, grad_quantile=0.3))):
                sid = _session(c)  # one per case: a cancelled job keeps its session busy until it stops
                c.request("gaussians.init", {"session": sid, "kind": "random", "n": 50})
                c.request("stage1.set_reference", {"session": sid})
                reply = c.request("stage1.start", {**base, "session": sid, **extra}).result
                c.request("job.cancel", {"session": sid})
                cfg = ts.server.sessions[sid].job.job.cfg
                assert cfg.densify == want, extra
                plan = None if want is None else want.plan(steps)
                assert reply["densify_steps"] == (0 if plan is None else len(plan.densify_steps)), extra
                if extra == {}:
                    assert (plan.densify_steps, plan.reset_steps) == expected
                if extra == {"densify_schedule": "run"}:
                    assert (len(plan.densify_steps), plan.reset_steps) == {150: (14, ()), 10_000: (146, (1000, 2000, 3000, 4000))}[steps]
                if extra == {"densify_schedule": "fixed"}:
                    assert plan.densify_steps == tuple(range(100, min(steps, 1500), 100)) and plan.reset_steps == ()
            sid = _session(c)
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 50})
            c.request("stage1.set_reference", {"session": sid})
            assert _code(c, "stage1.start", {**base, "session": sid, "densify_grad_quantile": 1.5}) == "invalid_args"
            sid = _session(c)
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 50})
            c.request("stage1.set_reference", {"session": sid})
            assert _code(c, "stage1.start", {**base, "session": sid, "densify_schedule": "paper"}) == "invalid_args"
            assert c.request("job.status", {"session": sid}).result["state"] == "idle"
    finally:
        ts.stop()
