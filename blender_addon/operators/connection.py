"""i3d.connect, i3d.disconnect, i3d.start_backend, i3d.stop_backend, i3d.show_backend_log; and the
helpers every backend-driving operator shares (:func:`run_request`, :func:`splat_object`).

In the UI a ``bpy.app.timers`` timer calls ``connection.sync_step`` while connected; in background mode
(timers never fire) operators block on the client instead.
"""

from __future__ import annotations

import logging
import os

import bpy

from .. import connection, preferences, splat

log = logging.getLogger(__name__)

TIMER_INTERVAL_S = 0.1


# -- the timer (UI only) ---------------------------------------------------------------------------------
def _timer() -> float | None:
    conn = connection.get()
    connection.sync_step(conn)
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES", "STATUSBAR"):
                area.tag_redraw()
    if conn.status == connection.DISCONNECTED and not conn.pending:
        return None  # stop until the next connect
    return TIMER_INTERVAL_S


def ensure_timer() -> None:
    if not bpy.app.background and not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=TIMER_INTERVAL_S, persistent=True)


# -- shared by the operators --------------------------------------------------------------------------
def is_blocking() -> bool:
    """Batch scripts (background mode) block on the backend; the UI never does."""
    return bool(bpy.app.background)


def splat_object(context) -> bpy.types.Object | None:
    """The session's splat object (created by the first state frame), else the active splat object."""
    conn = connection.get()
    obj = bpy.data.objects.get(conn.object_name or "")
    if obj is not None:
        return obj
    active = context.active_object
    return active if splat.is_splat_object(active) else None


def run_chain(op_self, chain: list[dict]) -> bool:
    """Start a chain of requests (connection.Connection.then_chain: each reply's handler sends the next);
    blocking in background mode. Failures are reported as in :func:`run_request`."""
    first = dict(chain[0])
    context = dict(first.get("context") or {}, chain=list(chain[1:]))
    return run_request(op_self, first["op"], first.get("args"), kind=first["kind"], timeout=first.get("timeout"), context=context)


def run_request(op_self, op: str, args: dict | None = None, buffers=(), kind: str = "edit",
                timeout: float | None = None, context: dict | None = None, **more) -> bool:
    """Send a request to the session (blocking in background mode); report failures to the user.

    Returns True when the request was sent (UI) or answered successfully (background).
    """
    conn = connection.get()
    if not conn.connected:
        op_self.report({"ERROR"}, f"Not connected to a backend ({conn.last_error or conn.status.lower()})")
        return False
    try:
        if is_blocking():
            conn.call(op, args, buffers, kind=kind, timeout=timeout, **(context or {}), **more)
        else:
            conn.send(op, args, buffers, kind=kind, timeout=timeout, **(context or {}), **more)
            ensure_timer()
    except connection.errors.RemoteError as exc:
        if exc.code == "conflict":  # connection._on_error has re-synced the object already
            op_self.report({"ERROR"}, f"The splats changed since they were selected, so {op} was refused and nothing "
                                      "changed. The splat object was re-synced from the backend: select again")
        else:
            op_self.report({"ERROR"}, f"Backend refused {op}: {exc.code}: {exc.message}")
        return False
    except connection.MissingDependencies as exc:
        op_self.report({"ERROR"}, str(exc))
        return False
    except connection.errors.RequestTimeout as exc:
        op_self.report({"ERROR"}, f"Backend unreachable: {exc}")
        return False
    except (RuntimeError, TypeError, ValueError) as exc:
        op_self.report({"ERROR"}, f"Cannot send {op}: {exc}")
        return False
    return True


# -- operators ---------------------------------------------------------------------------------------------
class I3D_OT_connect(bpy.types.Operator):
    """Connect to the Interactive3D backend (re-attaches the previous session after a restart)"""

    bl_idname = "i3d.connect"
    bl_label = "Connect"
    bl_options = {"REGISTER"}

    address: bpy.props.StringProperty(name="Address", default="",
                                      description="Backend address; empty: the one in the preferences")
    new_session: bpy.props.BoolProperty(name="New Session", default=False,
                                        description="Start a fresh session instead of re-attaching")
    timeout: bpy.props.FloatProperty(name="Timeout", default=0.0, min=0.0, unit="TIME",
                                     description="Seconds without a reply before giving up; 0: the preferences'")

    def execute(self, context):
        settings = preferences.get(context)
        conn = connection.get()
        conn.timeout_s = self.timeout or settings.timeout_s
        address = self.address or settings.address
        if self.new_session:
            conn.session = None
        try:
            key = settings.auth_key()
        except (OSError, ValueError) as exc:
            self.report({"ERROR"}, f"Cannot read the authentication key: {exc}")
            return {"CANCELLED"}
        try:
            conn.connect(address, auth_key=key, blocking=is_blocking())
        except (ValueError, connection.MissingDependencies) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except (connection.errors.RequestTimeout, connection.errors.RemoteError) as exc:
            connection.apply_to_scene(conn, context.scene)
            self.report({"ERROR"}, f"Cannot connect to {address}: {exc}")
            return {"CANCELLED"}
        connection.apply_to_scene(conn, context.scene)
        if is_blocking():
            self.report({"INFO"}, f"Connected to {address}, session {conn.session}")
        else:
            ensure_timer()
            self.report({"INFO"}, f"Connecting to {address}…")
        return {"FINISHED"}


class I3D_OT_disconnect(bpy.types.Operator):
    """Disconnect from the backend (the backend keeps the session)"""

    bl_idname = "i3d.disconnect"
    bl_label = "Disconnect"
    bl_options = {"REGISTER"}

    def execute(self, context):
        conn = connection.get()
        conn.disconnect()
        connection.apply_to_scene(conn, context.scene)
        return {"FINISHED"}


class I3D_OT_start_backend(bpy.types.Operator):
    """Start a local backend (i3d serve) with the configured Python, then connect to it"""

    bl_idname = "i3d.start_backend"
    bl_label = "Start Local Backend"
    bl_options = {"REGISTER"}

    connect: bpy.props.BoolProperty(name="Connect", default=True)

    def execute(self, context):
        settings = preferences.get(context)
        conn = connection.get()
        python = preferences.python_for_backend(settings)
        try:
            path = conn.start_backend(python, settings.address, connection.user_dir(_addon_package()),
                                      settings.serve_args())
        except (ValueError, RuntimeError, OSError) as exc:
            self.report({"ERROR"}, f"Cannot start the backend: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Backend starting (pid {conn.process.pid}); log: {path}")
        if self.connect:
            # Connecting before the server binds is fine: zmq queues the ping until it is up. Batch mode
            # blocks on it, so allow for the backend's start-up (importing torch takes seconds).
            return bpy.ops.i3d.connect(address=settings.address, timeout=0.0 if not is_blocking() else 120.0)
        return {"FINISHED"}


class I3D_OT_stop_backend(bpy.types.Operator):
    """Stop the local backend started from Blender (it checkpoints its sessions first)"""

    bl_idname = "i3d.stop_backend"
    bl_label = "Stop Local Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return connection.get().process is not None

    def execute(self, context):
        code = connection.get().stop_backend()
        self.report({"INFO"}, f"Local backend stopped (exit code {code})")
        return {"FINISHED"}


class I3D_OT_show_backend_log(bpy.types.Operator):
    """Open the local backend's log in Blender's text editor"""

    bl_idname = "i3d.show_backend_log"
    bl_label = "Show Backend Log"
    bl_options = {"REGISTER"}

    def execute(self, context):
        path = connection.get().log_path
        if not path or not os.path.isfile(path):
            self.report({"ERROR"}, "No backend log yet (start a local backend first)")
            return {"CANCELLED"}
        text = bpy.data.texts.get("i3d_backend.log") or bpy.data.texts.new("i3d_backend.log")
        with open(path, encoding="utf-8", errors="replace") as f:
            text.from_string(f.read()[-200_000:])  # the tail: logs of long runs get big
        self.report({"INFO"}, "Backend log loaded into the text 'i3d_backend.log'")
        return {"FINISHED"}


def _addon_package() -> str:
    return preferences.ADDON_PACKAGE


classes = (I3D_OT_connect, I3D_OT_disconnect, I3D_OT_start_backend, I3D_OT_stop_backend, I3D_OT_show_backend_log)


def register_extra() -> None:
    pass


def unregister_extra() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    connection.reset()
