"""Where the add-on finds the ``protocol`` package.

In the built extension zip, protocol/ is vendored as ``blender_addon/_vendor/protocol`` (Blender has no
``interactive3d`` distribution installed); in development and tests it is ``interactive3d.protocol``.
Every add-on module imports protocol through here, never directly.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec(f"{__package__}._vendor") is not None:
    from ._vendor import protocol  # noqa: F401  (the extension zip)
    from ._vendor.protocol import splat_data, splats  # noqa: F401
    VENDORED = True
else:
    from interactive3d import protocol  # noqa: F401  (development: the installed project)
    from interactive3d.protocol import splat_data, splats  # noqa: F401
    VENDORED = False
