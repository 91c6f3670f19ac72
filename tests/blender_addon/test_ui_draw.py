"""The add-on's panels, preferences, menu entries, status-bar text and gizmo groups use only UI API this Blender has.

Headless Blender never draws, so a Blender release that renames a UILayout function or keyword, an icon or a
property would break the sidebar unnoticed. Each draw function runs here against a recording stand-in for
UILayout (the one thing background mode cannot make), and every call is checked against this Blender's own
RNA: the UILayout function and its keywords, the icon (UILayout's icon enum), the property on its data, the
operator and the operator properties set on it. test_blender_versions.py runs this on every tested bpy.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import interactive3d.blender_addon as addon  # noqa: E402
from interactive3d.blender_addon import connection, preferences, splat, ui  # noqa: E402
from interactive3d.blender_addon.operators import io  # noqa: E402

LAYOUT = bpy.types.UILayout.bl_rna
ICONS = set(LAYOUT.functions["label"].parameters["icon"].enum_items.keys())


class Recorder:
    """Stands in for a UILayout: records (function, args, keywords) and attribute sets; sub-layouts record
    into the same list; ``operator()`` returns a recorder of the operator properties set on it."""

    def __init__(self, calls: list, owner: str = "layout") -> None:
        object.__setattr__(self, "_calls", calls)
        object.__setattr__(self, "_owner", owner)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self._calls.append(("call", name, args, kwargs))
            if name in ("operator", "operator_menu_enum"):
                return Recorder(self._calls, owner=args[0])
            return Recorder(self._calls)

        return call

    def __setattr__(self, name, value):
        self._calls.append(("set", self._owner, name, value))


def check(calls: list) -> list[str]:
    """Every recorded use that this Blender's RNA does not have."""
    problems = []
    for kind, *rest in calls:
        if kind == "set":
            owner, name, _ = rest
            if owner == "layout":
                if name not in LAYOUT.properties:
                    problems.append(f"UILayout has no property {name!r}")
            elif _operator(owner) is not None and name not in _operator(owner).get_rna_type().properties:
                problems.append(f"operator {owner} has no property {name!r}")
            continue
        name, args, kwargs = rest
        func = LAYOUT.functions.get(name)
        if func is None:
            problems.append(f"UILayout has no function {name!r}")
            continue
        params = set(func.parameters.keys())
        problems += [f"UILayout.{name}() has no keyword {k!r}" for k in kwargs if k not in params]
        icon = kwargs.get("icon")
        if icon is not None and icon not in ICONS:
            problems.append(f"no icon {icon!r}")
        if name in ("prop", "prop_enum", "prop_menu_enum", "props_enum") and args:
            data, prop = args[0], args[1]
            if not prop.startswith("[") and prop not in data.bl_rna.properties:
                problems.append(f"{type(data).__name__} has no property {prop!r}")
        if name in ("operator", "operator_menu_enum") and _operator(args[0]) is None:
            problems.append(f"no operator {args[0]!r}")
    return problems


def _operator(idname: str):
    module, _, name = idname.partition(".")
    op = getattr(getattr(bpy.ops, module), name)
    try:
        op.get_rna_type()
    except KeyError:
        return None
    return op


def draw_all(context) -> list:
    calls: list = []
    stub = Recorder(calls)
    holder = type("Holder", (), {"layout": stub})()
    panels = [c for c in vars(ui).values() if isinstance(c, type) and issubclass(c, bpy.types.Panel)]
    assert len(panels) >= 4
    for panel in panels:
        panel.draw(holder, context)
    ui.draw_status_bar(holder, context)
    io._menu_import(holder, context)
    io._menu_export(holder, context)
    # (an AddonPreferences instance exists only for an installed add-on: its draw gets the registered class's
    # RNA, which is what `prop(self, ...)` is checked against)
    prefs = type("Prefs", (), {"layout": stub, "bl_rna": preferences.I3D_AP_preferences.bl_rna})()
    preferences.I3D_AP_preferences.draw(prefs, context)
    return calls


@pytest.fixture()
def registered():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if not hasattr(bpy.types, "I3D_OT_import_ply"):
        addon.register()
    yield


def test_every_draw_uses_ui_api_this_blender_has(registered):
    """Idle, then with a splat object active, a running job with an ETA, undo history and a backend log: every
    panel, the preferences, the File menu entries and the status bar draw with no UILayout function, keyword,
    icon, property or operator this Blender lacks (and the running job's progress bar is drawn)."""
    idle = draw_all(bpy.context)
    assert not check(idle), check(idle)
    state = np.zeros((5, 14), np.float32)
    state[:, 10] = 1.0
    obj = splat.new_splat_object("s", state)
    bpy.context.view_layer.objects.active = obj
    conn = connection.get()
    saved = conn.job, conn.history, conn.log_path
    conn.job = connection.JobProgress(job="j1", kind="stage1.start", state="running", step=40, total=100, eta_s=75.0)
    conn.history = {"undo": ["remove 3 splats"], "redo": ["transform"]}
    conn.log_path = "/tmp/backend.log"
    try:
        busy = draw_all(bpy.context)
    finally:
        conn.job, conn.history, conn.log_path = saved
    assert not check(busy), check(busy)
    drawn = {c[1] for c in busy if c[0] == "call"}
    assert {"prop", "operator", "label", "row", "box", "progress"} <= drawn, drawn


def test_the_checker_sees_what_a_blender_lacks():
    """The checker itself: an unknown function, keyword, icon, property and operator are each reported."""
    calls: list = []
    layout = Recorder(calls)
    layout.no_such_function()
    layout.label(text="x", icon="NO_SUCH_ICON")
    layout.row(no_such_keyword=True)
    layout.prop(bpy.context.scene, "no_such_property")
    layout.operator("i3d.no_such_operator")
    layout.no_such_attribute = 1
    problems = check(calls)
    assert len(problems) == 6, problems


class GizmoRecorder:
    """Stands in for a Gizmo (headless Blender never runs a gizmo group's setup): records attribute sets and
    method calls."""

    def __init__(self, log: list) -> None:
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._log.append(("call", name))

    def __setattr__(self, name, value):
        self._log.append(("set", name))


def test_gizmo_groups_use_gizmo_api_this_blender_has(registered):
    """Each gizmo group's setup() and draw_prepare() run against recording gizmos: every attribute they set is a
    Gizmo property of this Blender and every method they call a Gizmo method (``draw_options`` belongs to the
    gizmo type, whose RNA exists only with a window, so it is not checked)."""
    from interactive3d.blender_addon import gizmos

    state = np.zeros((5, 14), np.float32)
    state[:, 10] = 1.0
    bpy.context.view_layer.objects.active = splat.new_splat_object("s", state)
    gizmo = bpy.types.Gizmo.bl_rna
    for group in gizmos._GIZMO_GROUPS:
        log: list = []
        made: list = []

        def new(idname, log=log, made=made):
            made.append(idname)
            return GizmoRecorder(log)

        holder = type("Holder", (), {"gizmos": type("Gizmos", (), {"new": staticmethod(new)})()})()
        assert group.poll(bpy.context)
        group.setup(holder, bpy.context)
        group.draw_prepare(holder, bpy.context)
        assert made and all(m.startswith("GIZMO_GT_") for m in made), made
        bad = [(kind, name) for kind, name in log
               if (kind == "set" and name not in gizmo.properties and name != "draw_options")
               or (kind == "call" and not hasattr(bpy.types.Gizmo, name))]
        assert not bad, (group.__name__, bad)
        assert ("call", "target_set_handler") in log and ("set", "matrix_basis") in log
