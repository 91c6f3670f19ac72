"""Mesh extraction from the Stage II field: density grid → marching cubes → vertex colours → export.

The density is sampled on a regular grid over the AABB (default 256³, in chunks so memory stays bounded),
the iso-surface at ``threshold`` is extracted with scikit-image's marching cubes, vertices are coloured by
querying the field there, connected components smaller than ``min_component_fraction`` of the largest
(floaters) are dropped, and the mesh is written as GLB/OBJ/PLY with trimesh. The arrays are returned too
(vertices [V,3] float32, faces [F,3] int32, colours [V,4] uint8 RGBA) for the add-on.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

FORMATS = ("glb", "obj", "ply")
MAX_RESOLUTION = 512  # 512³ = 134M density queries; beyond that the grid alone needs > 0.5 GB


class MeshError(ValueError):
    """Bad extraction settings or no surface at the threshold."""


@dataclass(frozen=True)
class MeshConfig:
    resolution: int = 256
    threshold: float = 10.0  # iso-level of σ (threestudio's isosurface_threshold default is 25 for exp density; 10 is milder)
    chunk: int = 1 << 18  # density queries per chunk
    min_component_fraction: float = 0.05  # components with fewer faces than this × the largest are floaters
    fill_cavities: bool = True  # empty voxels not connected to the grid's border are interior voids (occluded,
    # so unsupervised by distillation): fill them so only the outer surface is meshed
    max_resolution: int = MAX_RESOLUTION

    def __post_init__(self) -> None:
        if not (2 <= self.resolution <= self.max_resolution):
            raise MeshError(f"resolution must be in [2, {self.max_resolution}], got {self.resolution}")
        if not np.isfinite(self.threshold):
            raise MeshError(f"threshold must be finite, got {self.threshold}")
        if not (0.0 <= self.min_component_fraction < 1.0):
            raise MeshError(f"min_component_fraction must be in [0, 1), got {self.min_component_fraction}")


@dataclass
class MeshResult:
    vertices: np.ndarray  # [V,3] float32 world
    faces: np.ndarray  # [F,3] int32
    colors: np.ndarray  # [V,4] uint8 RGBA
    removed_components: int


@torch.no_grad()
def density_grid(field, resolution: int, chunk: int = 1 << 18) -> np.ndarray:
    """σ at the (resolution)³ grid points spanning [-r, r]³ (inclusive), float32 [R,R,R] indexed [x,y,z]."""
    r = field.cfg.aabb_radius if hasattr(field, "cfg") else field.aabb_radius
    dev = field.device
    t = torch.linspace(-r, r, resolution, device=dev)
    out = np.empty(resolution**3, np.float32)
    # build points slab by slab (x fixed) so the coordinate grid is never materialised at once
    per_slab = resolution * resolution
    yz = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    slabs = max(1, chunk // per_slab)
    for i in range(0, resolution, slabs):
        xs = t[i : i + slabs]
        pts = torch.cat([xs.repeat_interleave(per_slab)[:, None], yz.repeat(len(xs), 1)], dim=1)
        dens = field(pts).density if not hasattr(field, "density") else field.density(pts)
        out[i * per_slab : (i + len(xs)) * per_slab] = dens.float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def extract_mesh(field, cfg: MeshConfig = MeshConfig()) -> MeshResult:
    """Marching cubes on the field's density with vertex colours and floater removal."""
    import trimesh
    from skimage.measure import marching_cubes

    r = field.cfg.aabb_radius if hasattr(field, "cfg") else field.aabb_radius
    vol = density_grid(field, cfg.resolution, cfg.chunk)
    if not (vol.max() > cfg.threshold > vol.min()):
        raise MeshError(f"no surface at threshold {cfg.threshold}: density range [{vol.min():.4g}, {vol.max():.4g}]")
    if cfg.fill_cavities:
        from scipy.ndimage import binary_fill_holes

        solid = vol > cfg.threshold
        voids = binary_fill_holes(solid) & ~solid
        vol = np.where(voids, np.float32(2.0 * abs(cfg.threshold) + 1.0), vol)
    step = 2 * r / (cfg.resolution - 1)
    verts, faces, _, _ = marching_cubes(vol, level=cfg.threshold, spacing=(step, step, step))
    verts = verts - r
    faces = faces[:, ::-1]  # skimage winds inward for "density > level inside"; flip so normals face out
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    removed = 0
    if cfg.min_component_fraction > 0:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            biggest = max(len(p.faces) for p in parts)
            keep = [p for p in parts if len(p.faces) >= cfg.min_component_fraction * biggest]
            removed = len(parts) - len(keep)
            mesh = trimesh.util.concatenate(keep)
    v = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    with torch.no_grad():
        pts = torch.from_numpy(v).to(field.device)
        rgb = torch.cat([field(pts[i : i + cfg.chunk]).rgb for i in range(0, len(pts), cfg.chunk)]) if len(pts) else torch.zeros(0, 3)
    colors = np.empty((len(v), 4), np.uint8)
    colors[:, :3] = np.clip(rgb.float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colors[:, 3] = 255
    return MeshResult(vertices=v, faces=np.ascontiguousarray(mesh.faces, dtype=np.int32), colors=colors, removed_components=removed)


def export_mesh(mesh: MeshResult, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write the mesh with vertex colours (GLB: COLOR_0; OBJ: v x y z r g b; PLY: red/green/blue) atomically."""
    import trimesh

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise MeshError(f"format must be one of {FORMATS}, got {fmt!r}")
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=mesh.colors, process=False)
    data = tm.export(file_type=fmt)
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
