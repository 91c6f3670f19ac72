"""Procedural shapes with thin parts and holes, as Gaussian surfels, with their exact signed distance.

Each shape is a surface with an exact (or, for unions, near the surface exact) signed distance function
(negative inside) and an area-uniform sampler of surface points with outward unit normals. ``surfels``
turns a sample into flat opaque Gaussians tangent to the surface — thin enough (0.001 along the normal)
that the Gaussians' surface is the shape's — the way Stage I Gaussians lie on an object's surface.

    torus          R 0.35, r 0.12 (one hole)
    plate          0.9 × 0.9 × 0.05 box (a thin part: 2.4 cells of a 96³ mesh)
    genus2         two tori R 0.25, r 0.08 overlapping side by side (two holes)
    torus_sphere   the torus with a sphere r 0.16 resting on its tube (issue 26's object)

Used by scripts/bench/stage2_geometry.py and tests/backend/test_geometry.py (scripts/bench/shapes.py holds
the sphere and torus of mesh_quality.py and the Chamfer distance both use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from shapes import chamfer  # scripts/bench/shapes.py: one Chamfer distance for every benchmark
from torch import Tensor

SHAPES = ("torus", "plate", "genus2", "torus_sphere")


def _torus_sdf(p: Tensor, centre: tuple[float, float, float], big: float, small: float) -> Tensor:
    q = p - p.new_tensor(centre)
    ring = torch.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2) - big
    return torch.sqrt(ring**2 + q[:, 2] ** 2) - small


def _torus_sample(n: int, g: torch.Generator, centre, big: float, small: float) -> tuple[Tensor, Tensor]:
    # the area element is ∝ (R + r cos v): rejection-sample v against it
    m = 4 * n + 64
    u = 2 * math.pi * torch.rand(m, generator=g, dtype=torch.float64)
    v = 2 * math.pi * torch.rand(m, generator=g, dtype=torch.float64)
    keep = torch.rand(m, generator=g, dtype=torch.float64) * (big + small) < big + small * torch.cos(v)
    u, v = u[keep][:n], v[keep][:n]
    nrm = torch.stack([torch.cos(v) * torch.cos(u), torch.cos(v) * torch.sin(u), torch.sin(v)], -1)
    ring = torch.stack([big * torch.cos(u), big * torch.sin(u), torch.zeros_like(u)], -1)
    return ring + small * nrm + nrm.new_tensor(centre), nrm


def _sphere_sdf(p: Tensor, centre, radius: float) -> Tensor:
    return (p - p.new_tensor(centre)).norm(dim=-1) - radius


def _sphere_sample(n: int, g: torch.Generator, centre, radius: float) -> tuple[Tensor, Tensor]:
    nrm = torch.randn(n, 3, generator=g, dtype=torch.float64)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    return nrm.new_tensor(centre) + radius * nrm, nrm


PLATE_HALF = (0.45, 0.45, 0.025)


def _box_sdf(p: Tensor, half) -> Tensor:
    q = p.abs() - p.new_tensor(half)
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)


def _box_sample(n: int, g: torch.Generator, half) -> tuple[Tensor, Tensor]:
    h = torch.tensor(half, dtype=torch.float64)
    areas = torch.stack([4 * h[1] * h[2], 4 * h[0] * h[2], 4 * h[0] * h[1]]).repeat(2)  # faces ±x, ±y, ±z
    face = torch.multinomial(areas, n, replacement=True, generator=g)
    p = (2 * torch.rand(n, 3, generator=g, dtype=torch.float64) - 1) * h
    axis, sign = face % 3, torch.where(face < 3, 1.0, -1.0).double()
    rows = torch.arange(n)
    p[rows, axis] = sign * h[axis]
    nrm = torch.zeros(n, 3, dtype=torch.float64)
    nrm[rows, axis] = sign
    return p, nrm


@dataclass(frozen=True)
class _Part:
    sdf: Callable[[Tensor], Tensor]
    sample: Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
    area: float


def _parts(shape: str) -> list[_Part]:
    torus_area = lambda big, small: 4 * math.pi**2 * big * small  # noqa: E731
    if shape == "torus":
        c, big, small = (0.0, 0.0, 0.0), 0.35, 0.12
        return [_Part(lambda p: _torus_sdf(p, c, big, small), lambda n, g: _torus_sample(n, g, c, big, small), torus_area(big, small))]
    if shape == "plate":
        h = PLATE_HALF
        return [_Part(lambda p: _box_sdf(p, h), lambda n, g: _box_sample(n, g, h), 8 * (h[0] * h[1] + h[0] * h[2] + h[1] * h[2]))]
    if shape == "genus2":
        big, small = 0.25, 0.08
        out = []
        for x in (-0.22, 0.22):
            c = (x, 0.0, 0.0)
            out.append(_Part(lambda p, c=c: _torus_sdf(p, c, big, small), lambda n, g, c=c: _torus_sample(n, g, c, big, small), torus_area(big, small)))
        return out
    if shape == "torus_sphere":
        c, big, small = (0.0, 0.0, -0.1), 0.35, 0.12
        s, rad = (0.35, 0.0, 0.16), 0.16
        return [_Part(lambda p: _torus_sdf(p, c, big, small), lambda n, g: _torus_sample(n, g, c, big, small), torus_area(big, small)),
                _Part(lambda p: _sphere_sdf(p, s, rad), lambda n, g: _sphere_sample(n, g, s, rad), 4 * math.pi * rad**2)]
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def sdf(shape: str, p: Tensor) -> Tensor:
    """Signed distance [N] (float64, negative inside) of points p [N,3] to the shape: exact for one part,
    the minimum over parts for a union (exact outside and on the surface)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.stack([part.sdf(p) for part in _parts(shape)]).amin(dim=0)


def area(shape: str) -> float:
    """Surface area of the parts (before the union removes the overlap)."""
    return sum(part.area for part in _parts(shape))


def surface(shape: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """[n,3] float64 points area-uniformly on the shape's surface and their [n,3] outward unit normals.
    A union's parts are sampled by area and a part's points inside another part are dropped."""
    parts = _parts(shape)
    g = torch.Generator().manual_seed(seed)
    pts, nrms, total = [], [], sum(p.area for p in parts)
    have = 0
    while have < n:
        for i, part in enumerate(parts):
            p, nrm = part.sample(int(math.ceil(1.3 * n * part.area / total)) + 16, g)
            for j, other in enumerate(parts):
                if j != i:
                    keep = other.sdf(p) > 0
                    p, nrm = p[keep], nrm[keep]
            pts.append(p)
            nrms.append(nrm)
            have += len(p)
    p, nrm = torch.cat(pts), torch.cat(nrms)
    order = torch.randperm(len(p), generator=g)[:n]  # an unbiased subset across the parts
    return p[order], nrm[order]


def bbox_diagonal(shape: str, n: int = 200_000) -> float:
    """The axis-aligned bounding box's diagonal, from a dense surface sample (within 1e-3 of exact)."""
    p, _ = surface(shape, n, seed=12345)
    return float((p.amax(0) - p.amin(0)).norm())


def surfels(shape: str, n: int, tangent: float = 0.008, normal: float = 0.001, opacity: float = 0.9, seed: int = 0):
    """Gaussians (backend Stage I ``Gaussians``): flat discs of scales (tangent, tangent, normal) tangent to the
    shape at n area-uniform points, opacity ``opacity``, coloured by their normal."""
    from interactive3d.backend.stage1.gaussians import Gaussians

    p, nrm = surface(shape, n, seed)
    p, nrm = p.float(), nrm.float()
    # the shortest-arc rotation of +z onto the normal (w, x, y, z); the south pole (nrm = −z) has none
    q = torch.stack([1 + nrm[:, 2], -nrm[:, 1], nrm[:, 0], torch.zeros(n)], -1)
    q[q.norm(dim=-1) < 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    q = q / q.norm(dim=-1, keepdim=True)
    rgb = torch.stack([(nrm[:, 0] + 1) / 2, (nrm[:, 1] + 1) / 2, 0.3 + 0.4 * (nrm[:, 2] > 0).float()], -1)
    scales = torch.tensor([tangent, tangent, normal]).expand(n, 3).clone()
    return Gaussians.from_activated(p, rgb, torch.full((n,), opacity), scales, q)


def mesh_errors(shape: str, vertices, cell: float, n_ref: int = 40_000) -> dict[str, float]:
    """The mesh's vertices [V,3] against the exact shape: signed distance (mean, 10th/90th percentile, and the
    mean in mesh cells of size ``cell``; > 0 is outside, i.e. inflated) and the Chamfer distance to an
    area-uniform sample of the surface as a percentage of the bounding-box diagonal."""
    v = torch.as_tensor(vertices, dtype=torch.float64)
    d = sdf(shape, v)
    ref, _ = surface(shape, n_ref, seed=1)
    ch = chamfer(v, ref)
    return {"signed_mean": float(d.mean()), "signed_p10": float(d.quantile(0.1)), "signed_p90": float(d.quantile(0.9)),
            "signed_mean_cells": float(d.mean()) / cell, "chamfer_pct": 100.0 * ch / bbox_diagonal(shape)}


def occupancy_errors(shape: str, occ: Tensor, aabb_radius: float, n_ref: int = 200_000) -> dict[str, float]:
    """An occupancy grid occ [R,R,R] bool over [-r, r]³ against the exact shape. Precision: the occupied cells
    within one cell of the surface (|sdf| at the centre ≤ (√3/2 + 1)·cell) over all occupied cells. Recall:
    the cells that a dense surface sample touches that are occupied (1.0: no surface cell is skipped)."""
    n = occ.shape[0]
    cell = 2 * aabb_radius / n
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * cell - aabb_radius
    centres = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    occ = occ.reshape(-1).cpu().bool()
    near = sdf(shape, centres).abs() <= (math.sqrt(3) / 2 + 1) * cell
    p, _ = surface(shape, n_ref, seed=2)
    idx = ((p + aabb_radius) / cell).floor().long().clamp(0, n - 1)
    touched = torch.zeros(n**3, dtype=torch.bool)
    touched[(idx[:, 0] * n + idx[:, 1]) * n + idx[:, 2]] = True
    n_occ = int(occ.sum())
    return {"precision": float((occ & near).sum()) / max(n_occ, 1), "recall": float((occ & touched).sum()) / int(touched.sum()),
            "occupied": n_occ}
