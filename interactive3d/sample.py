"""The demo object: a small coloured robot made of trimesh primitives with named parts.

It stands in for a generated object so that the whole pipeline can run offline: its surface samples
give the reference Gaussians that the oracle guidance fits (paper §3.1 with a known target), its parts
are what the scripted interactions edit, and its meshes give ground-truth geometry for Chamfer distances.

Frame and units follow docs/conventions.md: Blender world, Z up, the object inside a sphere of radius 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

# Parts in a fixed order; the index is the part id of surface samples.
PART_NAMES = ("body", "head", "arm", "antenna")


@dataclass(frozen=True)
class SamplePart:
    name: str
    mesh: trimesh.Trimesh
    rgb: tuple[float, float, float]  # display colour in [0,1]


@dataclass(frozen=True)
class SampleObject:
    parts: tuple[SamplePart, ...]

    def part(self, name: str) -> SamplePart:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"no part named {name!r}; parts are {[p.name for p in self.parts]}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    def mesh(self) -> trimesh.Trimesh:
        """All parts in one mesh with per-vertex RGBA colours (uint8)."""
        meshes = []
        for p in self.parts:
            m = p.mesh.copy()
            rgba = np.array([*p.rgb, 1.0]) * 255.0
            m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.tile(rgba.round().astype(np.uint8), (len(m.vertices), 1)))
            meshes.append(m)
        return trimesh.util.concatenate(meshes)


@dataclass(frozen=True)
class SurfaceSamples:
    points: np.ndarray  # [N,3] float32
    rgb: np.ndarray  # [N,3] float32 in [0,1]
    normals: np.ndarray  # [N,3] float32, unit
    part_ids: np.ndarray  # [N] int32, index into SampleObject.parts

    def mask(self, part_index: int) -> np.ndarray:  # [N] bool
        return self.part_ids == part_index


def _cylinder_between(a, b, radius: float, sections: int = 24) -> trimesh.Trimesh:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return trimesh.creation.cylinder(radius=radius, segment=np.stack([a, b]), sections=sections)


def build_sample_object() -> SampleObject:
    """A robot: blue box body, yellow sphere head, red arm sticking out along +X, green antenna on top.

    The arm and the antenna are thin and clearly separated from the rest so that sphere selections
    around them pick exactly their Gaussians (the demo selects parts by their known masks anyway).
    """
    body = trimesh.creation.box(extents=(0.5, 0.36, 0.56))
    body.apply_translation((0.0, 0.0, -0.18))
    head = trimesh.creation.icosphere(subdivisions=3, radius=0.17)
    head.apply_translation((0.0, 0.0, 0.27))
    arm = _cylinder_between((0.25, 0.0, -0.08), (0.62, 0.0, -0.08), radius=0.06)
    antenna = trimesh.util.concatenate(
        [
            _cylinder_between((0.0, 0.0, 0.43), (0.0, 0.0, 0.62), radius=0.02, sections=12),
            trimesh.creation.icosphere(subdivisions=2, radius=0.05).apply_translation((0.0, 0.0, 0.65)),
        ]
    )
    return SampleObject(
        parts=(
            SamplePart("body", body, (0.15, 0.35, 0.85)),
            SamplePart("head", head, (0.95, 0.8, 0.15)),
            SamplePart("arm", arm, (0.85, 0.15, 0.15)),
            SamplePart("antenna", antenna, (0.15, 0.75, 0.25)),
        )
    )


def sample_surface(obj: SampleObject, n: int, seed: int = 0) -> SurfaceSamples:
    """``n`` points spread over all parts in proportion to area (at least 2% of ``n`` per part)."""
    if n < 10 * len(obj.parts):
        raise ValueError(f"n must be at least {10 * len(obj.parts)}, got {n}")
    areas = np.array([p.mesh.area for p in obj.parts])
    share = np.maximum(areas / areas.sum(), 0.02)
    counts = np.floor(share / share.sum() * n).astype(int)
    counts[0] += n - counts.sum()
    pts, rgb, nrm, ids = [], [], [], []
    for i, (p, c) in enumerate(zip(obj.parts, counts)):
        xyz, face = trimesh.sample.sample_surface(p.mesh, int(c), seed=seed + i)
        pts.append(xyz)
        nrm.append(p.mesh.face_normals[face])
        rgb.append(np.tile(np.asarray(p.rgb), (int(c), 1)))
        ids.append(np.full(int(c), i))
    return SurfaceSamples(
        points=np.concatenate(pts).astype(np.float32),
        rgb=np.concatenate(rgb).astype(np.float32),
        normals=np.concatenate(nrm).astype(np.float32),
        part_ids=np.concatenate(ids).astype(np.int32),
    )


def _normal_to_quat(normals: np.ndarray) -> np.ndarray:
    """[N,3] unit normals → [N,4] w-first quaternions rotating local +Z onto the normal."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(np.broadcast_to(z, normals.shape), normals)
    w = 1.0 + normals @ z
    q = np.concatenate([w[:, None], axis], axis=1)
    # Normals pointing straight down: rotate half a turn about X.
    q[w < 1e-6] = (0.0, 1.0, 0.0, 0.0)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def surface_state(samples: SurfaceSamples, total_area: float, opacity: float = 0.9) -> np.ndarray:
    """Reference Gaussians on the surface as the wire state frame [N,14] (docs/conventions.md).

    Each sample becomes a flat disc tangent to the surface (thin along the normal) whose radius is the
    mean spacing sqrt(area/N), so the discs tile the surface without holes.
    """
    n = len(samples.points)
    spacing = float(np.sqrt(total_area / n))
    scales = np.tile(np.array([spacing, spacing, 0.15 * spacing], np.float32), (n, 1))
    return np.concatenate(
        [
            samples.points,
            samples.rgb,
            np.full((n, 1), opacity, np.float32),
            scales,
            _normal_to_quat(samples.normals),
        ],
        axis=1,
    ).astype(np.float32)


def hat_mesh(center=(0.0, 0.0, 0.47)) -> trimesh.Trimesh:
    """The part the demo adds: a flat purple cone hat (made at the origin, placed by a transform)."""
    cone = trimesh.creation.cone(radius=0.14, height=0.14, sections=32)
    cone.apply_translation(np.asarray(center, float))
    return cone


HAT_RGB = (0.6, 0.2, 0.8)


def hat_state(n: int, seed: int = 0, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Gaussians of the hat as a state frame [n,14], centred at ``center`` (merged with a transform)."""
    mesh = hat_mesh(center)
    xyz, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    samples = SurfaceSamples(
        points=xyz.astype(np.float32),
        rgb=np.tile(np.asarray(HAT_RGB, np.float32), (n, 1)),
        normals=mesh.face_normals[face].astype(np.float32),
        part_ids=np.zeros(n, np.int32),
    )
    return surface_state(samples, mesh.area)
