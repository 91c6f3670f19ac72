"""Interactive3D for Blender: the backend, the wire protocol and the Blender add-on.

Sub-packages (mapped from the repository folders): ``interactive3d.protocol`` (protocol/),
``interactive3d.backend`` (backend/), ``interactive3d.blender_addon`` (blender_addon/).
"""

__version__ = "0.1.0"
