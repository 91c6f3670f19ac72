"""Live Stage II previews for the add-on: a low-resolution mesh of the (refined) field every K steps.

Marching cubes at a small grid (default 48³) on the field the job trains; the job runner sends the arrays
as a ``mesh`` event (protocol/catalogue.py EVENT_KINDS) and the add-on replaces its preview object's mesh
in place. Early in a distillation the field may have no surface yet: that step simply has no preview.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .mesh import MeshConfig, MeshError, extract_mesh

logger = logging.getLogger(__name__)


@dataclass
class PreviewMesh:
    step: int
    vertices: np.ndarray  # [V,3] float32, object frame
    faces: np.ndarray  # [F,3] int32
    colors: np.ndarray  # [V,4] uint8


class MeshPreviewer:
    """Holds the newest preview mesh of a job until the runner takes it (``take``)."""

    def __init__(self, every: int, resolution: int = 48) -> None:
        if every < 0:
            raise ValueError(f"mesh_every must be >= 0, got {every}")
        if not 8 <= resolution <= 256:
            raise ValueError(f"preview mesh resolution must be in [8, 256], got {resolution}")
        self.every, self.resolution = every, resolution
        self._new: PreviewMesh | None = None

    def due(self, i: int, total: int) -> bool:
        """Whether step i (0-based) ends with a preview: every K steps and at the last one."""
        return self.every > 0 and ((i + 1) % self.every == 0 or i + 1 == total)

    @torch.no_grad()
    def update(self, field, step: int) -> PreviewMesh | None:
        try:
            m = extract_mesh(field, MeshConfig(resolution=self.resolution))
        except MeshError as exc:  # no surface yet (a fresh or transparent field): no preview this time
            logger.debug("no preview mesh at step %d: %s", step, exc)
            return None
        self._new = PreviewMesh(step, m.vertices, m.faces, m.colors)
        return self._new

    def take(self) -> PreviewMesh | None:
        new, self._new = self._new, None
        return new
