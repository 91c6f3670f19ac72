"""Blender-side edits of the splat object: its undo/redo and Edit-Mode changes (issue 14).

The splat object is a view of the backend's Gaussians, and every index-based interaction relies on vertex i
being Gaussian i. Three things in Blender break that, and each is answered by re-syncing the object from the
backend — never by an edit of other Gaussians:

- **Blender's undo and redo** (Ctrl+Z, Ctrl+Shift+Z) bring back an older mesh, with the state revision that
  was stamped on it (splat.py). If it is not the backend's current revision, or the mesh is not an intact copy
  of it, the object is re-synced. The backend's own history is walked only by *Undo (Backend)* / *Redo
  (Backend)* (i3d.undo / i3d.redo): a Ctrl+Z in the viewport cannot tell which of the two the artist meant,
  and re-syncing loses nothing (the backend still has every state in its history).
- **Edit-Mode topology changes** (delete, duplicate, extrude, merge): the vertex count differs from the
  stamped count (checked on every depsgraph update of the mesh, O(1) in Edit Mode), or the ``i3d_index``
  stamp is no longer 0…N−1 (checked when Edit Mode is left) → re-synced, with a message pointing to
  *Remove Selected* / *Add Part*.
- **Moving splats with G/R/S in Edit Mode**: reverted when Edit Mode is left, with a message pointing to
  *Transform Selected* (which moves the selection on the backend, covariances included: Σ' = AΣAᵀ). The
  decision: a vertex move carries only positions, so a backend edit made from it would leave each Gaussian's
  shape unrotated and unstretched, and a live Stage I frame would overwrite it anyway; reverting keeps the
  object an exact view of the backend, and the same tool is one click away.

The handlers only mark the connection stale (``conn.stale`` = the reason); the next sync step (the UI timer,
or the next operator in background mode) re-syncs — changing data or modes inside a depsgraph or undo handler
is unsafe. Index-taking operators check the object themselves before sending (interact._selection).
"""

from __future__ import annotations

import logging

import bpy
from bpy.app.handlers import persistent

from . import connection, splat

log = logging.getLogger(__name__)

classes = ()


def _splat_object(conn):
    obj = bpy.data.objects.get(conn.object_name or "")
    return obj if obj is not None and obj.type == "MESH" else None


def _mark(conn, reason: str) -> None:
    if not conn.stale:
        log.info("Interactive3D: %s", reason)
    conn.stale = reason


def check_after_undo(conn, which: str = "undo") -> None:
    """After Blender's undo/redo: re-sync unless the object is exactly the backend's current state."""
    obj = _splat_object(conn)
    if obj is None or conn.session is None or conn.applying:
        return
    session, revision = splat.stored_revision(obj)
    conn.object_mode = obj.mode
    if (session, revision) != (conn.session, conn.revision):
        _mark(conn, f"Blender's {which} brought back an older state of {obj.name!r}; the backend keeps its own "
                    "history: use Undo (Backend) / Redo (Backend) for it")
        return
    problem = splat.index_map_problem(obj, conn.positions)
    if problem is not None:
        _mark(conn, f"after Blender's {which}, {obj.name!r} no longer matches the backend: {problem}")


def check_after_update(conn, updated_ids) -> None:
    """After a depsgraph update: topology changes in Edit Mode (count), and on leaving Edit Mode a full check."""
    obj = _splat_object(conn)
    if obj is None or conn.session is None or conn.stale or conn.applying:
        return
    previous, conn.object_mode = conn.object_mode, obj.mode
    if obj.name not in updated_ids and obj.data.name not in updated_ids and previous == obj.mode:
        return
    stamped = obj.data.get(splat.PROP_COUNT)
    if stamped is None:
        return  # not written by a state frame yet
    n = splat.vertex_count(obj)
    if n != int(stamped):
        _mark(conn, f"{obj.name!r} has {n} splats in Blender but {int(stamped)} on the backend: splats cannot be "
                    "added or deleted with Blender's mesh tools (use Remove Selected / Add Part); re-synced")
        return
    if previous == "EDIT" and obj.mode != "EDIT":
        problem = splat.index_map_problem(obj, conn.positions)
        if problem is not None:
            _mark(conn, f"{obj.name!r} was edited in Blender ({problem}); reverted to the backend's state")


@persistent
def _on_undo(scene, *_args) -> None:
    try:
        check_after_undo(connection.get(), "undo")
    except Exception:  # noqa: BLE001 — a handler must never break Blender's undo
        log.exception("Interactive3D undo check failed")


@persistent
def _on_redo(scene, *_args) -> None:
    try:
        check_after_undo(connection.get(), "redo")
    except Exception:  # noqa: BLE001
        log.exception("Interactive3D redo check failed")


@persistent
def _on_depsgraph(scene, depsgraph) -> None:
    try:
        ids = {u.id.name for u in depsgraph.updates if u.is_updated_geometry or u.is_updated_transform}
        check_after_update(connection.get(), ids)
    except Exception:  # noqa: BLE001
        log.exception("Interactive3D depsgraph check failed")


_HANDLERS = ((bpy.app.handlers.undo_post, _on_undo), (bpy.app.handlers.redo_post, _on_redo),
             (bpy.app.handlers.depsgraph_update_post, _on_depsgraph))


def register_extra() -> None:
    for handlers, fn in _HANDLERS:
        if fn not in handlers:
            handlers.append(fn)


def unregister_extra() -> None:
    for handlers, fn in _HANDLERS:
        while fn in handlers:
            handlers.remove(fn)
