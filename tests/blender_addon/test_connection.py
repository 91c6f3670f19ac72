"""The add-on's connection: world→local conversions (pure), and the connection state machine against a
real backend subprocess (handshake through sync_step, blocking connect, an unreachable address going
DISCONNECTED without raising, the local backend spawned by the add-on with its log file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from interactive3d.blender_addon import connection
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import RequestTimeout

from tests.blender_addon.conftest import BACKEND_PYTHON

REPO = Path(__file__).resolve().parents[2]


# -- a real backend process ------------------------------------------------------------------------------
class BackendProcess:
    """A backend subprocess on an ipc:// socket in a short temp dir (ipc paths are limited to ~100 chars).

    ``module`` "tests.backend._server_helpers" serves every real op plus the test ops (test.init,
    test.fit with a per-step sleep) the server tests use; "interactive3d.cli" runs ``i3d serve``.
    """

    def __init__(self, module: str = "tests.backend._server_helpers", extra: tuple[str, ...] = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="i3d-e2-")
        self.address = f"ipc://{self.dir}/b.sock"
        self.state_dir = os.path.join(self.dir, "state")
        self.module, self.extra = module, extra
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.dir, "backend.log")

    def start(self, timeout: float = 90.0) -> "BackendProcess":
        cmd = [BACKEND_PYTHON, "-m", self.module]
        if self.module == "interactive3d.cli":
            cmd += ["serve", "--device", "cpu"]
        cmd += ["--bind", self.address, "--state-dir", self.state_dir, *self.extra]
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        wait_for_ping(self.address, timeout, self.proc)
        return self

    def kill(self) -> None:
        """kill -9: no shutdown, no final checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for_ping(address: str, timeout: float, proc: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    with Client(address) as c:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"backend exited with {proc.returncode} before answering")
            try:
                return c.request("ping", timeout=1.0, retries=0).result
            except RequestTimeout:
                if time.monotonic() > deadline:
                    raise
                c.reconnect()


def sync_until(conn, predicate, timeout: float = 30.0, scene=None) -> int:
    """Call sync_step (as the UI timer would) until predicate(conn); returns the messages applied."""
    deadline = time.monotonic() + timeout
    n = 0
    while not predicate(conn):
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout} s; status {conn.status}, job {conn.job}, error {conn.last_error}")
        n += connection.sync_step(conn, scene=scene, timeout_ms=50)
    return n


@pytest.fixture(scope="module")
def backend():
    b = BackendProcess(module="interactive3d.cli").start()
    yield b
    b.cleanup()


# -- pure conversions ------------------------------------------------------------------------------------------
def _object_matrix() -> np.ndarray:
    """A splat object's matrix_world: rotation about an oblique axis, non-uniform scale, translation."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = 0.7
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    m = np.eye(4)
    m[:3, :3] = r @ np.diag([2.0, 0.5, 1.5])
    m[:3, 3] = [0.3, -1.2, 2.0]
    return m


def test_world_local_point_round_trip_and_transform_conjugation():
    """Points: local_to_world(world_to_local(p)) == p within 1e-12 (float64). Transforms: for every local
    point q, M @ T_local @ q == T_world @ M @ q within 1e-12 — so the backend moves each splat exactly where
    the artist's world-space motion puts it. relative_matrix maps one object's local frame to another's."""
    m = _object_matrix()
    rng = np.random.default_rng(0)
    for p in rng.normal(size=(20, 3)):
        q = connection.world_to_local_point(m, p)
        np.testing.assert_allclose(connection.local_to_world_point(m, q), p, atol=1e-12)
        np.testing.assert_allclose(m @ np.append(q, 1.0), np.append(p, 1.0), atol=1e-12)
    t_world = np.eye(4)
    t_world[:3, :3] = np.diag([1.0, 1.3, 0.8])
    t_world[:3, 3] = [0.0, 0.0, 1.0]
    t_local = connection.world_to_local_transform(m, t_world)
    pts = np.concatenate([rng.normal(size=(50, 3)), np.ones((50, 1))], axis=1).T
    np.testing.assert_allclose(m @ t_local @ pts, t_world @ m @ pts, atol=1e-12)
    other = np.eye(4)
    other[:3, 3] = [5.0, 0.0, 0.0]
    rel = connection.relative_matrix(m, other)
    np.testing.assert_allclose(m @ rel, other, atol=1e-12)


def test_world_local_length_is_exact_for_uniform_scale():
    """A radius of 0.4 world units is 0.2 local units on an object scaled ×2 (exact), and round-trips."""
    m = np.diag([2.0, 2.0, 2.0, 1.0])
    m[:3, 3] = [1.0, 1.0, 1.0]
    assert connection.world_to_local_length(m, 0.4) == pytest.approx(0.2, abs=1e-15)
    m2 = _object_matrix()
    r = connection.world_to_local_length(m2, 0.37)
    assert connection.local_to_world_length(m2, r) == pytest.approx(0.37, rel=1e-12)


def test_bad_frames_are_rejected_with_the_field_named():
    """Singular matrices, wrong shapes, NaN points and negative radii raise ValueError naming the field."""
    with pytest.raises(ValueError, match="matrix_world must be a 4x4"):
        connection.world_to_local_point(np.eye(3), [0, 0, 0])
    with pytest.raises(ValueError, match="point must be 3 finite"):
        connection.world_to_local_point(np.eye(4), [0, np.nan, 0])
    with pytest.raises(ValueError, match="singular"):
        connection.world_to_local_length(np.diag([1.0, 0.0, 1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="length must be finite and >= 0"):
        connection.world_to_local_length(np.eye(4), -1.0)
    with pytest.raises(ValueError, match="transform must be finite"):
        connection.world_to_local_transform(np.eye(4), np.full((4, 4), np.inf))


# -- the state machine against a real backend -------------------------------------------------------------
def test_non_blocking_handshake_through_sync_step(backend):
    """connect() only sends: status CONNECTING; sync_step (no blocking) completes ping → session.create:
    CONNECTED with a session id and the server's op list; exactly those 2 replies were applied."""
    conn = connection.Connection(timeout_s=10.0)
    try:
        conn.connect(backend.address)
        assert conn.status == connection.CONNECTING and conn.session is None
        applied = sync_until(conn, lambda c: c.status == connection.CONNECTED)
        assert applied == 2
        assert conn.session and "session.create" in conn.server_info["ops"]
        assert conn.server_info["name"] == "interactive3d-backend"
        assert not conn.pending
    finally:
        conn.disconnect()


def test_blocking_connect_and_reattach_to_the_open_session(backend):
    """Batch mode: connect(blocking=True) returns CONNECTED with a session; a second connect (as after a
    network drop) re-attaches to the same session id (job.status answers) instead of creating one."""
    conn = connection.Connection(timeout_s=10.0)
    try:
        conn.connect(backend.address, blocking=True)
        assert conn.status == connection.CONNECTED
        sid = conn.session
        conn.connect(backend.address, blocking=True)
        assert conn.status == connection.CONNECTED and conn.session == sid
        assert sid in [s["session"] for s in conn.call("session.list", session=False)["sessions"]]
    finally:
        conn.disconnect()


def test_reconnect_keeps_the_identity_and_a_new_blender_session_takes_its_session_over(backend):
    """The backend lets only a session's owner change it. A reconnect of the same Connection (a network drop)
    keeps its routing id, so its edits go on; a new Connection (a Blender restart: a new identity) that re-attaches
    the open session takes it over (session.attach take_over), so its edits run too, while the first identity's
    are now refused with unauthorized."""
    first = connection.Connection(timeout_s=10.0)
    second = connection.Connection(timeout_s=10.0)
    try:
        first.connect(backend.address, blocking=True)
        sid, ident = first.session, first.client.routing_id
        first.connect(backend.address, blocking=True)
        assert first.session == sid and first.client.routing_id == ident == first.routing_id
        assert first.call("gaussians.init", {"kind": "random", "n": 32, "seed": 1})["count"] == 32
        second.session = sid  # as restored from the .blend file after a restart
        second.connect(backend.address)
        sync_until(second, lambda c: c.status == connection.CONNECTED and not c.pending)
        assert second.session == sid and second.client.routing_id != ident and second.last_error == ""
        assert second.call("gaussians.init", {"kind": "random", "n": 48, "seed": 2})["count"] == 48
        with pytest.raises(connection.errors.RemoteError) as err:
            first.call("gaussians.init", {"kind": "random", "n": 16, "seed": 3})
        assert err.value.code == "unauthorized"
        assert first.call("state.get", kind="ignore")["count"] == 48  # reads stay open
    finally:
        first.disconnect()
        second.disconnect()


def test_unreachable_backend_goes_disconnected_without_raising():
    """Nobody listens: within timeout_s (0.5 s) + a few polls sync_step sets DISCONNECTED with a message
    naming the address and op; sync_step never raises; a blocking connect raises RequestTimeout (which
    i3d.connect reports) and also leaves DISCONNECTED."""
    d = tempfile.mkdtemp(prefix="i3d-e2-")
    address = f"ipc://{d}/nobody.sock"
    conn = connection.Connection(timeout_s=0.5)
    try:
        conn.connect(address)
        t0 = time.monotonic()
        sync_until(conn, lambda c: c.status == connection.DISCONNECTED, timeout=5.0)
        assert time.monotonic() - t0 < 2.0
        assert address in conn.last_error and "'ping'" in conn.last_error
        assert conn.client is None and connection.sync_step(conn) == 0
        with pytest.raises(RequestTimeout):
            conn.connect(address, blocking=True)
        assert conn.status == connection.DISCONNECTED
    finally:
        conn.disconnect()
        shutil.rmtree(d, ignore_errors=True)


def test_start_backend_spawns_i3d_serve_with_a_log_and_connects():
    """start_backend runs `python -m interactive3d.cli serve --bind ADDR` with the given Python, writing
    its output to <log_dir>/backend.log; the connection then reaches CONNECTED; stop_backend ends the
    process with exit code 0 (graceful SIGTERM shutdown)."""
    d = tempfile.mkdtemp(prefix="i3d-e2-")
    address = f"ipc://{d}/local.sock"
    conn = connection.Connection(timeout_s=60.0)
    try:
        log_path = conn.start_backend(BACKEND_PYTHON, address, os.path.join(d, "logs"), ["--device", "cpu"])
        assert log_path == os.path.join(d, "logs", "backend.log")
        conn.connect(address)  # before the server binds: zmq queues the ping
        sync_until(conn, lambda c: c.status == connection.CONNECTED, timeout=90.0)
        assert conn.process.poll() is None
        assert conn.stop_backend() == 0
        with open(log_path) as f:
            text = f.read()
        assert "serve --bind " + address in text and "listening" in text
        with pytest.raises(ValueError, match="python must be an executable file"):
            conn.start_backend(os.path.join(d, "no-python"), address, d)
    finally:
        conn.disconnect()
        conn.stop_backend()
        shutil.rmtree(d, ignore_errors=True)


def test_progress_text_with_eta():
    """Progress shown in the panel/status bar: 'stage1.start 25/100 running · ETA 30s' when 25 steps took
    10 s (75 left at 0.4 s each), minutes past 60 s; nothing for an idle job."""
    job = connection.JobProgress(job="j", kind="stage1.start", state="running", started_at=100.0)
    job.update(25, 100, now=110.0)
    assert job.eta_s == pytest.approx(30.0)
    pytest.importorskip("bpy")
    from interactive3d.blender_addon.ui import format_progress

    assert format_progress(job) == "stage1.start 25/100 running · ETA 30s"
    job.update(5, 100, now=110.0)
    assert format_progress(job).endswith("ETA 3m10s")
    assert format_progress(connection.JobProgress()) == ""


def test_mesh_reply_becomes_a_coloured_mesh_at_the_splat_object_transform():
    """A stage2.mesh reply (vertices [V,3] float32, faces [F,3] int32, colours [V,3] uint8) applied by the
    sync path: a new mesh object with V=4 vertices, F=2 faces, a colour attribute whose first vertex is
    (255, 0, 0)/255 in sRGB, and exactly the splat object's matrix_world."""
    bpy = pytest.importorskip("bpy")
    from interactive3d.blender_addon import splat
    from interactive3d.protocol.codec import Message

    bpy.ops.wm.read_factory_settings(use_empty=True)
    state = np.zeros((3, 14), np.float32)
    state[:, 6], state[:, 7:10], state[:, 10] = 0.5, 0.1, 1.0
    obj = splat.new_splat_object("splats", state)
    obj.location, obj.scale = (1.0, 2.0, 3.0), (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    conn = connection.Connection()
    conn.object_name = obj.name
    conn.pending["r1"] = connection.Pending("stage2.mesh", "mesh", time.monotonic())
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    conn.handle(Message(header={"v": 2, "id": "r1", "ok": True, "result": {}}, buffers=[verts, faces, colors]))
    mesh_obj = bpy.data.objects[conn.meshes[-1]]
    assert len(mesh_obj.data.vertices) == 4 and len(mesh_obj.data.polygons) == 2
    np.testing.assert_allclose(np.array(mesh_obj.matrix_world), np.array(obj.matrix_world), atol=1e-7)
    attr = mesh_obj.data.color_attributes.active_color
    rgba = np.empty(4 * len(attr.data), np.float32)
    attr.data.foreach_get("color_srgb", rgba)
    np.testing.assert_allclose(rgba[:4], [1.0, 0.0, 0.0, 1.0], atol=1e-6)
    assert not conn.pending


class _FakeLayout:
    """Stands in for UILayout (panels never draw headless): checks every prop and operator name a panel
    uses against Blender's RNA, so a renamed property or operator fails here instead of in the UI."""

    def __init__(self, bpy, seen):
        self.bpy, self.seen = bpy, seen

    def row(self, **kw):
        return self

    column = box = row

    def label(self, **kw):
        self.seen.append(("label", kw.get("text", "")))

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self.seen.append(("prop", name))

    def progress(self, **kw):
        self.seen.append(("progress", kw.get("text", "")))

    def operator(self, idname, **kw):
        module, name = idname.split(".")
        op = getattr(getattr(self.bpy.ops, module), name)
        props = op.get_rna_type().properties
        self.seen.append(("operator", idname))

        class _Props:
            def __setattr__(self, key, value):
                assert key in props, f"{idname} has no property {key!r}"

        return _Props()


def test_panels_draw_with_existing_properties_and_operators():
    """Every panel of the N-panel tab draws against a fake layout: 5 panels, every prop/operator name
    exists in RNA (the Generate panel shows the progress label for a running job: 'stage1.start 3/10')."""
    bpy = pytest.importorskip("bpy")
    from interactive3d import blender_addon as addon
    from interactive3d.blender_addon import ui

    bpy.ops.wm.read_factory_settings(use_empty=True)
    if hasattr(bpy.types, "I3D_OT_connect"):
        addon.unregister()
    addon.register()
    try:
        conn = connection.get()
        conn.job = connection.JobProgress(job="j", kind="stage1.start", state="running", started_at=time.monotonic())
        conn.job.update(3, 10, time.monotonic() + 1.0)
        seen: list = []
        for panel in ui.classes:
            panel.draw(type("P", (), {"layout": _FakeLayout(bpy, seen)})(), bpy.context)
        assert len(ui.classes) == 5
        ops = {name for kind, name in seen if kind == "operator"}
        assert {"i3d.generate", "i3d.drag", "i3d.remove_selected", "i3d.extract_mesh", "i3d.undo"} <= ops
        assert any(kind == "label" and text.startswith("stage1.start 3/10") for kind, text in seen)
    finally:
        addon.unregister()


def test_non_blocking_reattach_and_unknown_session_fallback(backend):
    """UI path re-attach: with a known open session, connect + sync_step re-attaches it (job.status then
    state.get; same id). With a session id the backend never had (no checkpoint either), job.status and
    session.resume answer not_found and the connection falls back to a fresh session — CONNECTED with a
    new id and a message saying the old one could not be resumed; no error is left for the user."""
    conn = connection.Connection(timeout_s=10.0)
    try:
        conn.connect(backend.address, blocking=True)
        sid = conn.session
        conn.connect(backend.address)
        sync_until(conn, lambda c: c.status == connection.CONNECTED and not c.pending)
        assert conn.session == sid
        conn.session = "0123456789abcdef"
        conn.connect(backend.address)
        sync_until(conn, lambda c: c.status == connection.CONNECTED and not c.pending)
        assert conn.session not in (sid, "0123456789abcdef")
        assert "could not be resumed" in conn.last_message and conn.last_error == ""
    finally:
        conn.disconnect()


def test_local_backend_gets_a_local_model_folder_as_model_dir(tmp_path):
    """Start Local Backend passes the Model preference's folder as --model-dir (the backend loads local models only
    from its model folders); a hub id adds nothing."""
    from interactive3d.blender_addon import preferences

    (tmp_path / "sd").mkdir()
    args = preferences.Settings(model=str(tmp_path / "sd"), device="cpu").serve_args()
    assert args == ["--device", "cpu", "--model-dir", str((tmp_path / "sd").resolve())]
    assert "--model-dir" not in preferences.Settings().serve_args()
