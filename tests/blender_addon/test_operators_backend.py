"""The add-on's operators driving a real backend process from headless bpy (background mode: operators
block on the client; the sync step is what applies replies and events). After each operator the scene
is checked with numbers: vertex counts, which positions moved and by how much (in world space, on an
object with a non-identity transform), undo restoring the exact state, a mesh object with colours."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from interactive3d import blender_addon as addon  # noqa: E402
from interactive3d.blender_addon import connection, splat  # noqa: E402

from tests.blender_addon.test_connection import BackendProcess  # noqa: E402


@pytest.fixture(scope="module")
def backend():
    b = BackendProcess().start()
    yield b
    b.cleanup()


@pytest.fixture()
def conn(backend):
    """A fresh scene with the add-on registered and connected (blocking i3d.connect) to a new session."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if hasattr(bpy.types, "I3D_OT_connect"):  # left registered by another test module: start clean
        addon.unregister()
    addon.register()
    try:
        assert bpy.ops.i3d.connect(address=backend.address) == {"FINISHED"}
        c = connection.get()
        assert c.status == connection.CONNECTED and bpy.context.scene.i3d.status == "CONNECTED"
        yield c
    finally:
        addon.unregister()


def random_state(n: int, seed: int = 0, spread: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return np.concatenate([
        rng.uniform(-spread, spread, (n, 3)), rng.uniform(0.1, 0.9, (n, 3)), rng.uniform(0.2, 0.8, (n, 1)),
        rng.uniform(0.01, 0.05, (n, 3)), q / np.linalg.norm(q, axis=1, keepdims=True)], axis=1).astype(np.float32)


def world_positions(obj) -> np.ndarray:
    m = np.array(obj.matrix_world, dtype=np.float64)
    local = splat.read_state(obj)[:, :3].astype(np.float64)
    return local @ m[:3, :3].T + m[:3, 3]


def adopted_object(n: int = 300, seed: int = 0):
    """A splat object with a non-identity transform, sent to the (empty) session with i3d.add_part."""
    state = random_state(n, seed)
    obj = splat.new_splat_object("splats", state)
    obj.location = (1.0, -2.0, 0.5)
    obj.scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    assert bpy.ops.i3d.add_part(source_object=obj.name) == {"FINISHED"}
    return obj, state


def select(obj, mask: np.ndarray) -> None:
    obj.data.vertices.foreach_set("select", mask.astype(bool))


def test_add_part_adopts_the_object_and_state_round_trips(conn):
    """An empty session adopts the active splat object: the backend then has its 300 Gaussians and the
    state written back by the sync path equals the object's: positions bit-identical, the activated
    colour/opacity/scale/rotation within 2e-6 (activated → parameters → activated in float32)."""
    obj, state = adopted_object()
    assert conn.object_name == obj.name and conn.count == 300
    back = splat.read_state(obj)
    assert back.shape == (300, 14)
    np.testing.assert_array_equal(back[:, :3], state[:, :3])
    np.testing.assert_allclose(back[:, 3:10], state[:, 3:10], atol=2e-6)
    assert np.abs(np.abs(np.sum(back[:, 10:] * state[:, 10:], axis=1)) - 1).max() < 2e-6


def test_remove_selected_then_undo_redo(conn):
    """Edit-Mode selection of 40 splats → i3d.remove_selected: 260 vertices left, exactly the unselected
    rows in order; i3d.undo: all 300 back with their positions bit-identical; i3d.redo: 260 again."""
    obj, state = adopted_object()
    mask = np.zeros(300, bool)
    mask[10:50] = True
    select(obj, mask)
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    assert len(obj.data.vertices) == 260
    np.testing.assert_array_equal(splat.read_state(obj)[:, :3], state[~mask, :3])
    assert bpy.ops.i3d.undo() == {"FINISHED"}
    assert len(obj.data.vertices) == 300
    np.testing.assert_array_equal(splat.read_state(obj)[:, :3], state[:, :3])
    assert conn.history["redo"], "the undone removal is redoable"
    assert bpy.ops.i3d.redo() == {"FINISHED"}
    assert len(obj.data.vertices) == 260


def test_remove_selected_in_edit_mode(conn):
    """The artist's path: the object in Edit Mode, 25 vertices selected with bmesh (as a selection tool
    does), i3d.remove_selected: the object (still in Edit Mode) has 275 vertices, exactly the others."""
    import bmesh

    obj, state = adopted_object()
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    bm.verts.ensure_lookup_table()
    for v in bm.verts:
        v.select_set(v.index % 12 == 0)
    bmesh.update_edit_mesh(obj.data)
    mask = np.arange(300) % 12 == 0
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    assert obj.mode == "EDIT"
    np.testing.assert_array_equal(splat.read_state(obj)[:, :3], state[~mask, :3])
    bpy.ops.object.mode_set(mode="OBJECT")
    assert len(obj.data.vertices) == 300 - mask.sum() == 275


def test_remove_with_nothing_selected_is_refused(conn):
    """No selection: the operator reports and cancels (RuntimeError from bpy.ops in background mode),
    nothing is sent: still 300 splats."""
    obj, _ = adopted_object()
    select(obj, np.zeros(300, bool))
    with pytest.raises(RuntimeError, match="Nothing selected"):
        bpy.ops.i3d.remove_selected()
    assert len(obj.data.vertices) == 300


def test_transform_selected_with_a_world_matrix(conn):
    """A world-space translation by (0, 0, 1) sent for the selected splats of an object scaled ×2 and
    moved: the selected splats' *world* positions move by exactly (0, 0, 1) (within 1e-5; the local
    translation is (0, 0, 0.5)), the others stay bit-identical, and a translation keeps every scale (≤ 1e-6)."""
    obj, state = adopted_object()
    before = world_positions(obj)
    scales = splat.read_state(obj)[:, 7:10]
    mask = np.arange(300) % 3 == 0
    select(obj, mask)
    t = np.eye(4)
    t[:3, 3] = [0.0, 0.0, 1.0]
    assert bpy.ops.i3d.transform_selected(use_matrix=True, matrix=t.T.tolist()) == {"FINISHED"}
    after = world_positions(obj)
    np.testing.assert_allclose(after[mask] - before[mask], np.tile([0.0, 0.0, 1.0], (mask.sum(), 1)), atol=1e-5)
    np.testing.assert_array_equal(splat.read_state(obj)[~mask, :3], state[~mask, :3])
    np.testing.assert_allclose(splat.read_state(obj)[:, 7:10], scales, atol=1e-6)


def test_transform_selected_through_the_temporary_empty(conn):
    """Begin makes an empty at the selection's world centroid; moving the empty by (0.5, 0, 0) and
    rotating it 90° about Z, then Confirm, moves the selected splats by that rigid motion about the
    centroid (world positions within 1e-5); the empty is removed."""
    obj, _ = adopted_object()
    mask = np.arange(300) < 30
    select(obj, mask)
    before = world_positions(obj)
    assert bpy.ops.i3d.transform_selected(action="BEGIN") == {"FINISHED"}
    empty = bpy.data.objects["I3D Transform"]
    centroid = before[mask].mean(axis=0)
    np.testing.assert_allclose(np.array(empty.location), centroid, atol=1e-5)
    empty.location = tuple(centroid + [0.5, 0.0, 0.0])
    empty.rotation_euler = (0.0, 0.0, np.pi / 2)
    bpy.context.view_layer.update()
    assert bpy.ops.i3d.transform_selected(action="CONFIRM") == {"FINISHED"}
    assert bpy.data.objects.get("I3D Transform") is None
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = (before[mask] - centroid) @ rz.T + centroid + [0.5, 0.0, 0.0]
    np.testing.assert_allclose(world_positions(obj)[mask], expected, atol=1e-5)
    np.testing.assert_allclose(world_positions(obj)[~mask], before[~mask], atol=1e-6)


def test_drag_moves_the_source_region_toward_the_target(conn):
    """i3d.drag (rigid, no guidance, 30 steps, wait) from the world point at the object's centre to 0.4
    world units above it, radius 0.5 world (0.25 local on the ×2 object): the ≥ 20 splats that were within
    the radius end up with their centroid ≥ 0.25 world units higher (measured 0.30: the drag moves them
    towards the target), splats farther than 1.2 world units stay put (< 1e-6); the job ends 'done' after
    30 steps and the state applied by the sync path has the post-drag count (densify may add rows)."""
    obj, _ = adopted_object(n=400, seed=3)
    before = world_positions(obj)
    src = np.array(obj.location, dtype=np.float64)
    dst = src + [0.0, 0.0, 0.4]
    p = bpy.context.scene.i3d
    p.drag_source, p.drag_target, p.drag_radius = src.tolist(), dst.tolist(), 0.5
    p.drag_mode, p.drag_steps = "rigid", 30
    assert bpy.ops.i3d.drag(wait=True) == {"FINISHED"}
    assert conn.job.state == "done" and conn.job.step == 30
    after = world_positions(obj)
    inside = np.linalg.norm(before - src, axis=1) <= 0.5
    far = np.linalg.norm(before - src, axis=1) > 1.2
    assert inside.sum() >= 20
    n0 = len(before)
    # Densify/prune after the drag may append rows; the first rows are the original Gaussians unless pruned.
    if len(after) >= n0:
        lift = after[:n0][inside, 2].mean() - before[inside, 2].mean()
        assert lift >= 0.25, lift
        assert np.abs(after[:n0][far] - before[far]).max() < 1e-6
    else:
        assert (np.linalg.norm(after - dst, axis=1) <= 0.3).sum() >= inside.sum() // 2


def test_generate_with_oracle_guidance_then_semantic_edit(conn, tmp_path):
    """i3d.generate on a random init of 256 points (oracle guidance toward a reference .ply, 4 steps at
    32×32, wait): the job ends 'done' at step 4 and the state the sync path applied differs from the init
    (max |Δ| > 1e-4). Then i3d.semantic_edit on 20 selected splats (2 steps, the session's oracle
    guidance): 'done', and every unselected splat keeps its position bit for bit."""
    assert {"stage1.start", "interact.edit"} <= set(conn.server_info["ops"])  # a missing op fails here, never skips
    from interactive3d.protocol import ply, splat_data

    ref = tmp_path / "ref.ply"
    ply.write_ply(str(ref), splat_data.state_to_splat(random_state(200, seed=5, spread=0.4)))
    conn.call("gaussians.init", {"kind": "random", "n": 256, "radius": 0.5, "seed": 1}, kind="edit")
    obj = bpy.data.objects[conn.object_name]
    init = splat.read_state(obj)
    assert init.shape == (256, 14)
    p = bpy.context.scene.i3d
    p.steps, p.guidance = 4, "oracle"
    assert bpy.ops.i3d.generate(init="NONE", reference_path=str(ref), resolution=32, batch=1, wait=True) == {"FINISHED"}
    assert conn.job.state == "done" and conn.job.step == 4
    after = splat.read_state(obj)
    assert len(after) >= 1
    if after.shape == init.shape:
        assert np.abs(after - init).max() > 1e-4

    n = len(after)
    mask = np.zeros(n, bool)
    mask[:20] = True
    select(obj, mask)
    assert bpy.ops.i3d.semantic_edit(prompt="a red part", steps=2, wait=True) == {"FINISHED"}
    assert conn.job.state == "done"
    edited = splat.read_state(obj)
    np.testing.assert_array_equal(edited[:n][~mask, :3], after[~mask, :3])


def _generate_then_aim_drag(conn, tmp_path, drag_steps: int) -> str:
    """Start i3d.generate (oracle, 100000 steps, not waiting) until it reported 3 steps, and aim the drag
    (rigid, the first splat 0.2 up, radius 0.3); returns the Stage I job id."""
    from interactive3d.protocol import ply, splat_data

    ref = tmp_path / "ref.ply"
    ply.write_ply(str(ref), splat_data.state_to_splat(random_state(200, seed=5, spread=0.4)))
    conn.call("gaussians.init", {"kind": "random", "n": 256, "radius": 0.5, "seed": 1}, kind="edit")
    p = bpy.context.scene.i3d
    p.steps, p.guidance = 100_000, "oracle"
    assert bpy.ops.i3d.generate(init="NONE", reference_path=str(ref), resolution=24, batch=1, wait=False) == {"FINISHED"}
    _sync_until(conn, lambda: conn.job.step >= 3)
    assert conn.job.state == "running" and conn.job.step >= 3
    src = world_positions(bpy.data.objects[conn.object_name])[0]
    p.drag_source, p.drag_target, p.drag_radius = src.tolist(), (src + [0.0, 0.0, 0.2]).tolist(), 0.3
    p.drag_mode, p.drag_steps = "rigid", drag_steps
    return conn.job.job


def _sync_until(conn, pred, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        connection.sync_step(conn, timeout_ms=50)


def _stage1_steps_on_then_stop(conn, stage1: str) -> None:
    """Stage I is the connection's job again, takes two more steps, and Stop cancels it."""
    assert conn.job.job == stage1 and conn.suspended is None
    step = conn.job.step
    _sync_until(conn, lambda: conn.job.step >= step + 2)
    assert conn.job.state == "running" and conn.job.step >= step + 2
    assert bpy.ops.i3d.stop() == {"FINISHED"}
    assert conn.wait_job(timeout=30) == "cancelled"


def test_drag_while_generating_pauses_stage1_then_it_carries_on(conn, tmp_path):
    """i3d.generate (oracle, 100000 steps, not waiting) runs; i3d.drag is enabled meanwhile (its job
    pauses Stage I on the backend) while i3d.remove_selected is not (indices shift while Stage I runs).
    The drag (rigid, 10 steps, wait) ends 'done' and the connection's job is Stage I again, which
    resumes and keeps stepping; Stop cancels it."""
    stage1 = _generate_then_aim_drag(conn, tmp_path, drag_steps=10)
    assert bpy.ops.i3d.drag.poll() and not bpy.ops.i3d.remove_selected.poll()
    assert bpy.ops.i3d.drag(wait=True) == {"FINISHED"}
    assert conn.ended is not None and conn.ended.state == "done" and conn.ended.step == 10
    _stage1_steps_on_then_stop(conn, stage1)


def test_reconnect_during_a_drag_learns_the_stage1_job_behind_it(conn, tmp_path):
    """An add-on that knows only the session id (job state forgotten, as after reopening the .blend)
    reconnects while a drag runs in front of Stage I: the re-attach reply names the drag as the job and
    Stage I as suspended; when the drag ends, Stage I is the connection's job again and keeps stepping."""
    stage1 = _generate_then_aim_drag(conn, tmp_path, drag_steps=100_000)
    assert bpy.ops.i3d.drag(wait=False) == {"FINISHED"}
    drag = conn.job.job
    assert conn.suspended is not None and conn.suspended.job == stage1

    conn.job, conn.suspended = connection.JobProgress(), None  # forget, keep the session id
    conn.connect(conn.address, blocking=True)
    assert conn.connected and conn.job.job == drag and conn.job.state == "running"
    assert conn.suspended is not None and conn.suspended.job == stage1
    assert bpy.ops.i3d.stop() == {"FINISHED"}  # stops the drag only
    assert conn.wait_job(timeout=30) == "cancelled"
    _stage1_steps_on_then_stop(conn, stage1)


@pytest.mark.slow
def test_to_nerf_refine_region_extract_mesh(conn):
    """Stage II through the operators (~18 s on 2 cores): i3d.to_nerf (20 distil steps at 32², 4 hash
    levels of 2^12, 1024 rays per step, wait) ends 'done';
    i3d.refine_region (sphere at the object's centre, 2 levels, 2^10 entries, 3 steps, wait) ends 'done';
    i3d.extract_mesh (32³) imports a mesh object with ≥ 1 face, one colour per vertex, and the splat
    object's matrix_world (≤ 1e-6)."""
    # a missing op fails here, never skips
    assert {"stage2.distill", "stage2.add_part", "stage2.refine", "stage2.extract_mesh"} <= set(conn.server_info["ops"])
    obj, _ = adopted_object(n=2000, seed=1)
    assert bpy.ops.i3d.to_nerf(steps=20, resolution=32, levels=4, capacity=12, rays_per_step=1024, wait=True) == {"FINISHED"}
    assert conn.job.state == "done"
    assert bpy.ops.i3d.refine_region(use_scene=False, center=tuple(obj.location), radius=0.6, levels=2,
                                     capacity=10, steps=3, wait=True) == {"FINISHED"}
    assert conn.job.state == "done"
    assert bpy.ops.i3d.extract_mesh(resolution=32) == {"FINISHED"}
    mesh_obj = bpy.data.objects[conn.meshes[-1]]
    assert len(mesh_obj.data.polygons) >= 1
    colors = mesh_obj.data.color_attributes.active_color
    assert colors is not None and len(colors.data) == len(mesh_obj.data.vertices)
    np.testing.assert_allclose(np.array(mesh_obj.matrix_world), np.array(obj.matrix_world), atol=1e-6)
    # with a baked texture: a UV map, the 64² image packed, feeding the material's base colour
    assert bpy.ops.i3d.extract_mesh(resolution=32, texture=True, texture_size=64) == {"FINISHED"}
    tex_obj = bpy.data.objects[conn.meshes[-1]]
    assert tex_obj.data.uv_layers.active is not None and tex_obj.data.color_attributes.active_color is not None
    node = next(n for n in tex_obj.data.materials[0].node_tree.nodes if n.type == "TEX_IMAGE")
    assert tuple(node.image.size) == (64, 64) and node.image.packed_file is not None
    np.testing.assert_allclose(np.array(tex_obj.matrix_world), np.array(obj.matrix_world), atol=1e-6)


def test_add_part_from_a_ply_lands_at_its_world_place(conn, tmp_path):
    """A .ply (its frame = world) added to a session whose object is moved and scaled ×2: the object
    grows from 300 to 350 vertices and the 50 new splats' world positions equal the file's (≤ 1e-5), their
    world-space scales too (local scales halve: ≤ 1e-6 relative to the ×2 object)."""
    from interactive3d.protocol import ply, splat_data

    obj, _ = adopted_object()
    part = random_state(50, seed=9, spread=0.3)
    path = tmp_path / "part.ply"
    ply.write_ply(str(path), splat_data.state_to_splat(part))
    assert bpy.ops.i3d.add_part(filepath=str(path), name="extra") == {"FINISHED"}
    assert len(obj.data.vertices) == 350
    np.testing.assert_allclose(world_positions(obj)[300:], part[:, :3], atol=1e-5)
    np.testing.assert_allclose(splat.read_state(obj)[300:, 7:10] * 2.0, part[:, 7:10], rtol=1e-5)


def test_shap_e_init_falls_back_to_random_and_says_so(conn):
    """Generate's Shap-E initialisation step on a backend without Shap-E weights (local files only): the
    backend answers not_found, the connection starts the random sphere instead (128 points here), the note
    says why, and the rest of the chain is not lost (an empty chain here)."""
    args = {"kind": "shap_e", "prompt": "a chair", "n": 4096, "local_files_only": True, "model": "interactive3d-tests/no-shap-e"}
    assert conn.call("gaussians.init", args, kind="init_shap_e", fallback={"kind": "random", "n": 128, "seed": 2}, chain=[]) == {}
    assert "Shap-E not available" in conn.init_note and "no-shap-e" in conn.init_note
    assert splat.read_state(bpy.data.objects[conn.object_name]).shape == (128, 14)


def test_generate_with_preview_preset_runs_the_scaled_schedule(conn, tmp_path):
    """i3d.generate with the Preview preset (oracle guidance on 256 random points, renders 24² by the operator):
    the backend resolves the preset for its CPU (600 → 60 Stage I steps, said in the note shown in the panel)
    and the job runs those 60 steps to 'done' although the panel says 7."""
    from interactive3d.protocol import ply, splat_data

    ref = tmp_path / "ref.ply"
    ply.write_ply(str(ref), splat_data.state_to_splat(random_state(200, seed=5, spread=0.4)))
    p = bpy.context.scene.i3d
    conn.call("gaussians.init", {"kind": "random", "n": 256, "radius": 0.5, "seed": 1}, kind="edit")
    p.guidance, p.preset, p.steps = "oracle", "preview", 7
    assert bpy.ops.i3d.generate(init="NONE", reference_path=str(ref), resolution=24, batch=1, wait=True) == {"FINISHED"}
    assert "scaled down" in conn.preset_note and "600" in conn.preset_note
    assert conn.job.state == "done" and conn.job.step == conn.job.total == 60
    assert conn.count >= 1 and splat.read_state(bpy.data.objects[conn.object_name]).shape[1] == 14
