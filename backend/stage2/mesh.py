"""Mesh extraction from the Stage II field: density grid → surface → marching cubes → colours → export.

The density is sampled on a regular grid over the AABB (default 256³, in chunks so memory stays bounded).
Which iso-surface is the object's surface depends on ``surface``:

- ``"opacity"`` (default): where a ray from outside the box has gathered ``opacity_level`` (0.5) of
  opacity, i.e. the optical depth τ(x) = ∫σ ds from outside reaches −ln(1 − level). τ is accumulated
  along the six axis directions and the smallest is kept (the most transparent way in). This is the
  surface the volume renderer shows, wherever the field's density ramp sits, so no density threshold
  needs tuning per scene; occluded interior voids have a large τ and are solid by construction.
- ``"density"``: σ = ``threshold`` (threestudio's ``isosurface_threshold``); interior voids (occluded,
  so unsupervised by distillation) are filled when ``fill_cavities``.

Marching cubes is scikit-image's; vertices are coloured by querying the field there; connected
components smaller than ``min_component_fraction`` of the largest (floaters) are dropped. With
``texture`` the mesh is also UV-unwrapped and the field's colour baked into a texture (mesh_texture.py).
Files follow each format's conventions (mesh_files.py: glTF +Y up with linear COLOR_0 or an sRGB
baseColorTexture, OBJ as Blender's importer expects, + MTL + PNG when textured, PLY in Blender's axes).
The arrays are returned too (vertices [V,3] float32, faces [F,3] int32, colours [V,4] uint8 sRGB RGBA,
and when textured uvs [V,2] and the texture [S,S,4] uint8) for the add-on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from interactive3d.protocol.files import atomic_write

logger = logging.getLogger(__name__)

FORMATS = ("glb", "obj", "ply")
SURFACES = ("opacity", "density")
MAX_RESOLUTION = 512  # 512³ = 134M density queries; beyond that the grid alone needs > 0.5 GB
MAX_TEXTURE_SIZE = 8192  # 8192² RGBA = 256 MB


class MeshError(ValueError):
    """Bad extraction settings or no surface at the threshold."""


@dataclass(frozen=True)
class MeshConfig:
    resolution: int = 256
    surface: str = "opacity"  # "opacity": accumulated opacity from outside = opacity_level; "density": σ = threshold
    opacity_level: float = 0.5
    threshold: float = 10.0  # iso-level of σ for surface="density" (threestudio uses 25 for exp density; 10 is milder)
    chunk: int = 1 << 18  # field queries per call (density grid, vertex colours, texture bake)
    min_component_fraction: float = 0.05  # components with fewer faces than this × the largest are floaters
    fill_cavities: bool = True  # surface="density": empty voxels not connected to the grid's border are interior
    # voids (occluded, so unsupervised by distillation): fill them so only the outer surface is meshed
    max_resolution: int = MAX_RESOLUTION
    texture: bool = False  # also UV-unwrap (xatlas) and bake the field's colour into a texture
    texture_size: int = 1024  # texels per side of the square texture
    texture_padding: int = 4  # texels between charts, filled with the nearest chart colour

    def __post_init__(self) -> None:
        if not (2 <= self.resolution <= self.max_resolution):
            raise MeshError(f"resolution must be in [2, {self.max_resolution}], got {self.resolution}")
        if self.surface not in SURFACES:
            raise MeshError(f"surface must be one of {SURFACES}, got {self.surface!r}")
        if not (0.0 < self.opacity_level < 1.0):
            raise MeshError(f"opacity_level must be in (0, 1), got {self.opacity_level}")
        if not np.isfinite(self.threshold):
            raise MeshError(f"threshold must be finite, got {self.threshold}")
        if not (0.0 <= self.min_component_fraction < 1.0):
            raise MeshError(f"min_component_fraction must be in [0, 1), got {self.min_component_fraction}")
        if not (16 <= self.texture_size <= MAX_TEXTURE_SIZE):
            raise MeshError(f"texture_size must be in [16, {MAX_TEXTURE_SIZE}], got {self.texture_size}")
        if not (0 <= self.texture_padding <= 64):
            raise MeshError(f"texture_padding must be in [0, 64], got {self.texture_padding}")
        if not (isinstance(self.chunk, int) and self.chunk >= 1):
            raise MeshError(f"chunk must be a positive integer, got {self.chunk!r}")


@dataclass
class MeshResult:
    vertices: np.ndarray  # [V,3] float32 world
    faces: np.ndarray  # [F,3] int32
    colors: np.ndarray  # [V,4] uint8 RGBA, sRGB (the field's display-referred colour)
    removed_components: int
    uvs: np.ndarray | None = None  # [V,2] float32, v up (OBJ/Blender); set with texture
    texture: np.ndarray | None = None  # [S,S,4] uint8 sRGB, row 0 at the top (v = 1)


def texture_mesh(mesh: MeshResult, colour, size: int = 1024, padding: int = 4, chunk: int = 1 << 18) -> MeshResult:
    """UV-unwrap ``mesh`` and bake ``colour`` ([N,3] points → [N,3] sRGB in [0,1], called on ≤ ``chunk`` points at a
    time) into a texture.

    Vertices on chart seams are split; the vertex colours follow their vertices. Raises MeshError."""
    from .mesh_texture import TextureError, bake, unwrap

    try:
        vmap, faces, uvs, charted = unwrap(mesh.vertices, mesh.faces, size, padding)
        vertices = np.ascontiguousarray(mesh.vertices[vmap], np.float32)
        tex = bake(vertices, faces, uvs, colour, size, padding, chunk=chunk, paint=charted)
    except TextureError as exc:
        raise MeshError(str(exc)) from exc
    return MeshResult(vertices=vertices, faces=np.ascontiguousarray(faces, np.int32), colors=mesh.colors[vmap],
                      removed_components=mesh.removed_components, uvs=uvs, texture=tex)


@torch.no_grad()
def density_grid(field, resolution: int, chunk: int = 1 << 18, occupancy=None) -> np.ndarray:
    """σ at the (resolution)³ grid points spanning [-r, r]³ (inclusive), float32 [R,R,R] indexed [x,y,z].

    With ``occupancy`` (the renderer's grid, backend/stage2/occupancy.py) the field is queried only in occupied
    cells (σ = 0 elsewhere): the empty-space skipping the volume renderer does, so the mesh is the surface the
    renderer shows. (Skipped cells are never trained: their density is the blob start or noise, which a
    one-cell widening here used to put into the mesh; distillation's grid widens itself inside the Gaussians'
    support instead, occupancy.update_occupancy.)"""
    r = field.cfg.aabb_radius if hasattr(field, "cfg") else field.aabb_radius
    dev = field.device
    near = None
    if occupancy is not None:
        near = occupancy.occ.to(dev)
        cells = near.shape[0]
    t = torch.linspace(-r, r, resolution, device=dev)
    out = np.empty(resolution**3, np.float32)
    # build points slab by slab (x fixed) so the coordinate grid is never materialised at once
    per_slab = resolution * resolution
    yz = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    slabs = max(1, chunk // per_slab)

    def query(q: torch.Tensor) -> torch.Tensor:
        # at most ``chunk`` points per field call, also when one slab (resolution² points) is more than that
        parts = [field(q[j : j + chunk]).density if not hasattr(field, "density") else field.density(q[j : j + chunk])
                 for j in range(0, len(q), chunk)]
        return torch.cat([d.float() for d in parts]) if parts else torch.zeros(0, device=dev)

    for i in range(0, resolution, slabs):
        xs = t[i : i + slabs]
        pts = torch.cat([xs.repeat_interleave(per_slab)[:, None], yz.repeat(len(xs), 1)], dim=1)
        if near is None:
            dens = query(pts)
        else:
            ci = torch.floor((pts + r) / (2 * r) * cells).long().clamp(0, cells - 1)
            live = near[ci[:, 0], ci[:, 1], ci[:, 2]]
            dens = torch.zeros(len(pts), device=dev)
            if bool(live.any()):
                dens[live] = query(pts[live])
        out[i * per_slab : (i + len(xs)) * per_slab] = dens.float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def optical_depth_from_outside(density: np.ndarray, step: float) -> np.ndarray:
    """τ [R,R,R] float32: ∫σ ds from the box faces to each grid point along ±x, ±y, ±z, the smallest of
    the six (trapezoid rule, so τ at a face point is half a cell of its own density)."""
    tau = np.full(density.shape, np.inf, np.float32)
    half = np.float32(0.5 * step) * density
    for axis in range(3):
        for flip in (False, True):
            d = np.flip(density, axis) if flip else density
            c = np.cumsum(d, axis=axis, dtype=np.float32)
            c *= np.float32(step)
            if flip:
                c = np.flip(c, axis)
            c -= half
            np.minimum(tau, c, out=tau)
            del c
    return tau


def extract_mesh(field, cfg: MeshConfig = MeshConfig(), occupancy=None) -> MeshResult:
    """Marching cubes on the field's density with vertex colours and floater removal; with ``occupancy`` the
    density is queried only where the renderer does not skip (see :func:`density_grid`)."""
    import trimesh
    from skimage.measure import marching_cubes

    r = field.cfg.aabb_radius if hasattr(field, "cfg") else field.aabb_radius
    vol = density_grid(field, cfg.resolution, cfg.chunk, occupancy)
    step = 2 * r / (cfg.resolution - 1)
    if cfg.surface == "opacity":
        vol = optical_depth_from_outside(vol, step)
        level = float(-np.log1p(-cfg.opacity_level))
        if not (vol.max() > level):
            raise MeshError(f"no surface at opacity {cfg.opacity_level}: the field is transparent (largest optical depth {vol.max():.4g})")
    else:
        level = cfg.threshold
        if not (vol.max() > level > vol.min()):
            raise MeshError(f"no surface at threshold {cfg.threshold}: density range [{vol.min():.4g}, {vol.max():.4g}]")
        if cfg.fill_cavities:
            from scipy.ndimage import binary_fill_holes

            solid = vol > level
            voids = binary_fill_holes(solid) & ~solid
            vol = np.where(voids, np.float32(2.0 * abs(level) + 1.0), vol)
    verts, faces, _, _ = marching_cubes(vol, level=level, spacing=(step, step, step))
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
    result = MeshResult(vertices=v, faces=np.ascontiguousarray(mesh.faces, dtype=np.int32), colors=colors, removed_components=removed)
    if cfg.texture:

        @torch.no_grad()
        def colour(points: np.ndarray) -> np.ndarray:
            return field(torch.from_numpy(np.ascontiguousarray(points, np.float32)).to(field.device)).rgb.float().cpu().numpy()

        result = texture_mesh(result, colour, cfg.texture_size, cfg.texture_padding, cfg.chunk)
    return result


def mesh_file_bytes(mesh: MeshResult, fmt: str, stem: str = "mesh") -> dict[str, bytes]:
    """The bytes of the files a mesh is written as, by suffix (``{".glb": …}``; OBJ: ``.obj``, and ``.mtl`` +
    ``.png`` named after ``stem`` when textured), by its format's conventions (mesh_files.py): GLB +Y up, linear
    COLOR_0, or TEXCOORD_0 + an sRGB baseColorTexture when textured; OBJ Y up / −Z forward with sRGB ``v``
    colours; PLY Blender's Z-up axes, sRGB uchar colours (no texture: PLY has no standard for one)."""
    from .mesh_files import glb_bytes, obj_files, ply_bytes

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise MeshError(f"format must be one of {FORMATS}, got {fmt!r}")
    textured = mesh.texture is not None and mesh.uvs is not None
    tex = dict(uvs=mesh.uvs, texture=mesh.texture) if textured else {}
    if fmt == "glb":
        return {".glb": glb_bytes(mesh.vertices, mesh.faces, mesh.colors, name=stem or "mesh", **tex)}
    if fmt == "obj":
        return obj_files(mesh.vertices, mesh.faces, mesh.colors, stem=stem or "mesh", **tex)
    return {".ply": ply_bytes(mesh.vertices, mesh.faces, mesh.colors)}


def export_mesh(mesh: MeshResult, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write the mesh atomically (:func:`mesh_file_bytes`); returns the path. An OBJ's side files go beside it."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    data = mesh_file_bytes(mesh, fmt, path.stem or "mesh")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt != "obj":
        atomic_write(path, [data["." + fmt]])
        return path
    for suffix in (".png", ".mtl", ".obj"):  # the OBJ last: when it appears, what it names is there
        if suffix in data:
            atomic_write(path.with_suffix(suffix), [data[suffix]])
    return path
