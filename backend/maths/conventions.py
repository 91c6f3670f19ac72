"""Axis and colour-space conversions between the backend's frame and files (docs/conventions.md,
"Files for other programs"), in one place for the writers (stage2/mesh_files.py) and the readers
(stage1/init.py). numpy only.

- Axes: the backend's world is Blender's, Z up. glTF is Y up (+Z forward); Blender's glTF importer and its
  OBJ importer (by default) map a file's (x, y, z) to Blender's (x, −z, y). Both maps are rotations
  (±90° about x), so normals convert the same way as positions.
- Colour: the field's and the splats' colours are display-referred sRGB in [0, 1]; glTF's COLOR_0 is
  linear. The sRGB transfer function is IEC 61966-2-1's.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Elementwise sRGB → linear on values in [0, 1] (float64)."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Elementwise linear → sRGB, clamped to [0, 1] first (float64)."""
    c = np.clip(np.asarray(c, np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def blender_to_y_up(v: np.ndarray) -> np.ndarray:
    """[N,3] Blender Z-up → glTF / OBJ Y-up: (x, y, z) → (x, z, −y)."""
    v = np.asarray(v)
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)


def y_up_to_blender(v: np.ndarray) -> np.ndarray:
    """[N,3] glTF / OBJ Y-up → Blender Z-up: (x, y, z) → (x, −z, y); the inverse of blender_to_y_up."""
    v = np.asarray(v)
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)
