"""Edits always land on the Gaussians the artist selected (issue 14), in headless Blender with a real backend
process: Blender-side deletes, Blender's Ctrl+Z, Edit-Mode moves and a backend changed behind the add-on's
back are each answered by re-syncing the object; afterwards exactly the selected Gaussians are removed, or the
op was refused and nothing changed on the backend."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import bmesh  # noqa: E402

from interactive3d import blender_addon as addon  # noqa: E402
from interactive3d.blender_addon import connection, splat  # noqa: E402
from interactive3d.protocol.client import Client, RemoteError  # noqa: E402

from tests.blender_addon.test_connection import BackendProcess  # noqa: E402
from tests.blender_addon.test_operators_backend import random_state, select  # noqa: E402

N = 300


@pytest.fixture(scope="module")
def backend():
    b = BackendProcess().start()
    yield b
    b.cleanup()


@pytest.fixture()
def conn(backend):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if hasattr(bpy.types, "I3D_OT_connect"):
        addon.unregister()
    addon.register()
    try:
        assert bpy.ops.i3d.connect(address=backend.address, new_session=True) == {"FINISHED"}
        yield connection.get()
    finally:
        addon.unregister()


def _backend_state(backend, session) -> np.ndarray:
    with Client(backend.address) as c:
        return np.array(c.request("state.get", {"session": session}).buffers[0])


def _splats(conn):
    """The session's splat object (300 Gaussians adopted from a new object), active, in Object Mode."""
    state = random_state(N, seed=3)
    src = splat.new_splat_object("src", state)
    bpy.context.view_layer.objects.active = src
    assert bpy.ops.i3d.add_part(source_object=src.name) == {"FINISHED"}
    obj = bpy.data.objects[conn.object_name]
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    assert conn.revision is not None and splat.stored_revision(obj) == (conn.session, conn.revision)
    return obj


def _edit_mode(obj, fn) -> None:
    """Run ``fn(bm)`` on the object's edit-mesh as an Edit-Mode tool does, then leave Edit Mode."""
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    bm.verts.ensure_lookup_table()
    fn(bm)
    bmesh.update_edit_mesh(obj.data)
    bpy.context.view_layer.update()
    bpy.ops.object.mode_set(mode="OBJECT")


def _same_gaussians(a: np.ndarray, b: np.ndarray) -> None:
    """The same Gaussians in the same order: positions bit-identical, the activated rest to float32 rounding
    (the backend re-activates its parameters for every frame; SIMD lanes differ with N)."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    np.testing.assert_allclose(a[:, 3:], b[:, 3:], atol=1e-6)


def _refused(op, **kw) -> str:
    """Run an operator that must refuse (bpy raises the operator's ERROR report as RuntimeError): its message."""
    with pytest.raises(RuntimeError) as exc:
        op(**kw)
    return str(exc.value)


def _settle(conn) -> None:
    """What the UI timer does between two events: a sync step (re-syncs a stale object), then the replies."""
    connection.sync_step(conn)
    conn.wait_idle()


def test_blender_delete_then_remove_selected_removes_exactly_the_selection(conn, backend):
    """Delete 5 vertices with Blender's tools, then select 10 splats and Remove Selected: the delete is noticed
    (vertex count) and the object re-synced to the backend's 300; Remove Selected of a selection made on the
    edited mesh is refused locally with nothing sent; selected again, exactly those 10 Gaussians go."""
    obj = _splats(conn)
    before = _backend_state(backend, conn.session)
    _edit_mode(obj, lambda bm: bmesh.ops.delete(bm, geom=[bm.verts[i] for i in range(0, 50, 10)], context="VERTS"))
    assert len(obj.data.vertices) == N - 5 and "295" in conn.stale
    # the artist selects 10 splats on the edited mesh before the re-sync ran and removes them
    mask = np.zeros(N - 5, bool)
    mask[100:110] = True
    select(obj, mask)
    assert "select" in _refused(bpy.ops.i3d.remove_selected)
    after = _backend_state(backend, conn.session)
    np.testing.assert_array_equal(after, before)  # nothing changed on the backend
    assert len(obj.data.vertices) == N  # re-synced
    np.testing.assert_array_equal(splat.read_state(obj)[:, :3], before[:, :3])
    # selected again on the re-synced object: exactly those Gaussians go
    mask = np.zeros(N, bool)
    mask[100:110] = True
    select(obj, mask)
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    _same_gaussians(_backend_state(backend, conn.session), before[~mask])
    np.testing.assert_array_equal(splat.read_state(obj)[:, :3], before[~mask, :3])


def test_depsgraph_handler_resyncs_a_duplicate_without_any_operator(conn, backend):
    """Duplicate 3 vertices in Edit Mode: the depsgraph handler marks the object stale and the next sync step
    (the UI timer) rewrites it from the backend: 300 vertices equal to the backend's state, stamp intact."""
    obj = _splats(conn)
    before = _backend_state(backend, conn.session)
    _edit_mode(obj, lambda bm: bmesh.ops.duplicate(bm, geom=[bm.verts[i] for i in (1, 2, 3)]))
    assert len(obj.data.vertices) == N + 3 and conn.stale
    _settle(conn)
    assert not conn.stale and len(obj.data.vertices) == N
    np.testing.assert_array_equal(splat.read_state(obj), before)
    assert splat.index_map_problem(obj, conn.positions) is None


def test_same_count_reorder_is_caught_by_the_index_stamp(conn, backend):
    """Delete one vertex and duplicate another (the count is unchanged): the i3d_index stamp shows it, Remove
    Selected is refused and the object re-synced; the backend keeps all 300 Gaussians."""
    obj = _splats(conn)
    before = _backend_state(backend, conn.session)

    def delete_and_duplicate(bm):
        bmesh.ops.duplicate(bm, geom=[bm.verts[7]])
        bm.verts.ensure_lookup_table()
        bmesh.ops.delete(bm, geom=[bm.verts[0]], context="VERTS")

    _edit_mode(obj, delete_and_duplicate)
    assert len(obj.data.vertices) == N
    assert "deleted, duplicated" in splat.index_map_problem(obj)
    select(obj, np.arange(N) < 10)
    assert "select" in _refused(bpy.ops.i3d.remove_selected)
    np.testing.assert_array_equal(_backend_state(backend, conn.session), before)
    np.testing.assert_array_equal(splat.read_state(obj), before)


def test_ctrl_z_after_an_interaction_then_remove(conn, backend):
    """Remove 40 splats (an interaction), then Blender's Ctrl+Z brings back the 300-vertex mesh stamped with the
    old revision: the undo handler marks it stale; Remove Selected of 10 on that old mesh is refused and the
    backend keeps its 260; the object is re-synced to the 260 and a new selection removes exactly those 10."""
    obj = _splats(conn)
    bpy.ops.ed.undo_push(message="before remove")
    first = np.zeros(N, bool)
    first[:40] = True
    select(obj, first)
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="after remove")
    mid = _backend_state(backend, conn.session)
    assert mid.shape[0] == N - 40 and len(obj.data.vertices) == N - 40
    bpy.ops.ed.undo()  # Ctrl+Z
    obj = bpy.data.objects[conn.object_name]
    assert len(obj.data.vertices) == N and splat.stored_revision(obj)[1] < conn.revision
    assert "older state" in conn.stale
    second = np.zeros(N, bool)
    second[200:210] = True
    select(obj, second)
    assert "select" in _refused(bpy.ops.i3d.remove_selected)
    np.testing.assert_array_equal(_backend_state(backend, conn.session), mid)
    obj = bpy.data.objects[conn.object_name]
    assert len(obj.data.vertices) == N - 40
    np.testing.assert_array_equal(splat.read_state(obj), mid)
    again = np.zeros(N - 40, bool)
    again[160:170] = True
    select(obj, again)
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    _same_gaussians(_backend_state(backend, conn.session), mid[~again])


def _change_behind(conn, backend, indices) -> None:
    """Another client removes ``indices`` from the add-on's session: only after an explicit take-over (the session
    is the add-on's: unauthorized before); then the add-on takes its session back."""
    with Client(backend.address) as c:
        with pytest.raises(RemoteError) as err:
            c.request("parts.remove", {"session": conn.session, "indices": indices})
        assert err.value.code == "unauthorized"
        assert c.request("session.attach", {"session": conn.session, "take_over": True}).result["owner"] is True
        c.request("parts.remove", {"session": conn.session, "indices": indices})
    assert conn.call("session.attach", {"take_over": True})["owner"] is True


def test_backend_changed_behind_the_addon_is_refused_with_conflict(conn, backend):
    """Another client removes 5 Gaussians from the session (refused, unauthorized, until it takes the session over;
    the add-on then takes it back, as on a re-attach); the add-on's object still looks intact, so its Remove
    Selected goes out with the old revision: the backend answers conflict and changes nothing, the add-on re-syncs
    (295 vertices) and says to select again."""
    obj = _splats(conn)
    _change_behind(conn, backend, [0, 1, 2, 3, 4])
    mid = _backend_state(backend, conn.session)
    select(obj, np.arange(N) >= 290)
    assert "select" in _refused(bpy.ops.i3d.remove_selected)
    np.testing.assert_array_equal(_backend_state(backend, conn.session), mid)
    assert len(obj.data.vertices) == N - 5 and "select again" in conn.last_error
    np.testing.assert_array_equal(splat.read_state(obj), mid)


def test_edit_mode_move_is_reverted_with_a_message(conn, backend):
    """G in Edit Mode moves 10 splats by 0.3: leaving Edit Mode, the move is noticed and reverted (positions
    bit-identical to the backend's, which never changed), with a message naming Transform Selected."""
    obj = _splats(conn)
    before = _backend_state(backend, conn.session)

    def grab(bm):
        for v in bm.verts[:10]:
            v.co.x += 0.3

    _edit_mode(obj, grab)
    assert "Transform Selected" in conn.stale
    _settle(conn)
    np.testing.assert_array_equal(splat.read_state(obj)[:, :3], before[:, :3])
    np.testing.assert_array_equal(_backend_state(backend, conn.session), before)
    assert "Transform Selected" in conn.last_message


def test_transform_selected_sends_the_revision(conn, backend):
    """Transform Selected (direct matrix) on an intact object succeeds with the stamped revision; after a
    change behind its back the same call is refused with conflict and nothing moves."""
    obj = _splats(conn)
    select(obj, np.arange(N) < 20)
    m = np.eye(4)
    m[0, 3] = 0.5
    assert bpy.ops.i3d.transform_selected(use_matrix=True, matrix=m.T.tolist()) == {"FINISHED"}
    moved = _backend_state(backend, conn.session)
    _change_behind(conn, backend, [299])
    mid = _backend_state(backend, conn.session)
    select(obj, np.arange(N) < 20)
    assert "select again" in _refused(bpy.ops.i3d.transform_selected, use_matrix=True, matrix=m.T.tolist())
    np.testing.assert_array_equal(_backend_state(backend, conn.session), mid)
    _same_gaussians(mid, moved[:-1])


def test_blender_redo_back_to_the_current_state_needs_no_resync(conn, backend):
    """Ctrl+Z after a removal marks the object stale and the sync step re-syncs it (260 splats); Ctrl+Shift+Z
    then brings back the mesh stamped with the current revision: nothing is stale, the object equals the
    backend's 260 and the next Remove Selected removes exactly the selection."""
    obj = _splats(conn)
    bpy.ops.ed.undo_push(message="before remove")
    select(obj, np.arange(N) < 40)
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    bpy.ops.ed.undo_push(message="after remove")
    mid = _backend_state(backend, conn.session)
    bpy.ops.ed.undo()
    assert conn.stale
    _settle(conn)
    assert not conn.stale and len(bpy.data.objects[conn.object_name].data.vertices) == N - 40
    bpy.ops.ed.redo()
    obj = bpy.data.objects[conn.object_name]
    assert not conn.stale and splat.stored_revision(obj) == (conn.session, conn.revision)
    np.testing.assert_array_equal(splat.read_state(obj), mid)
    again = np.zeros(N - 40, bool)
    again[5:15] = True
    select(obj, again)
    assert bpy.ops.i3d.remove_selected() == {"FINISHED"}
    _same_gaussians(_backend_state(backend, conn.session), mid[~again])
