"""Interactive3D for Blender: the add-on (a Blender extension, id ``interactive3d``).

Registration is explicit: each module in ``_MODULES`` exposes a ``classes`` tuple (registered in order,
unregistered in reverse) and optionally ``register_extra()`` / ``unregister_extra()`` for properties
attached to Blender types. Importing this package needs bpy; the pure modules it uses (protocol/) do not.
"""

from __future__ import annotations

import importlib

# Order matters: property groups before the classes that point at them, operators before the UI.
_MODULE_NAMES = (
    "preferences",
    "properties",
    "splat_props",
    "operators.io",
    "operators.connection",
    "operators.stage1",
    "operators.interact",
    "operators.stage2",
    "operators.history",
    "edit_guard",
    "ui",
    "gizmos",
)


def _modules():
    return [importlib.import_module(f".{name}", __package__) for name in _MODULE_NAMES]


def register() -> None:
    import bpy

    modules = _modules()
    extras = []
    try:
        for module in modules:
            for cls in module.classes:
                bpy.utils.register_class(cls)
            if hasattr(module, "register_extra"):
                module.register_extra()
                extras.append(module)
    except Exception:
        # Leave Blender as we found it: a half-registered add-on breaks the next enable.
        _unregister(modules, extras)
        raise


def _unregister(modules, extras) -> None:
    import bpy

    for module in reversed(modules):
        if module in extras:
            module.unregister_extra()
        for cls in reversed(module.classes):
            if getattr(cls, "is_registered", False):
                bpy.utils.unregister_class(cls)


def unregister() -> None:
    modules = _modules()
    _unregister(modules, [m for m in modules if hasattr(m, "unregister_extra")])
