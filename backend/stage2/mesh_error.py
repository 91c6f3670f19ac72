"""How far an extracted mesh lies from the Gaussians' own surface (issue 26): its signed error, so that an
inflated or shrunken mesh shows in ``stage2.extract_mesh``'s reply and the demo's report.

The reference surface is estimated from the Gaussians alone. For a mesh vertex v with its outward unit normal n
(the area-weighted normal of its faces; the mesh is wound outward), each of its ``k`` nearest opaque Gaussian
centres μ_j (opacity ≥ ``min_opacity``) gives the signed height of v above that Gaussian's outer side along n:

    h_j = (v − μ_j)·n − √(nᵀ Σ_j n)

(the second term is the Gaussian's standard deviation along n: ≈ 0 for a flat surfel lying on the surface,
σ for a round blob, whose rendered 50 % silhouette lies about 1.1σ out). The vertex's error is the median of
the h_j: > 0 outside the Gaussians' surface (inflated), < 0 inside. Near a flat surface of centres it is the
point-to-plane distance; on a curved one it is off by about l²/(2ρ) (l the distance to the k-th centre, ρ the
radius of curvature), e.g. 4e-4 for l = 0.01 on a tube of radius 0.12.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SurfaceError:
    """Signed distance of the mesh's vertices to the Gaussians' surface (world units; > 0 = outside)."""

    mean: float
    p10: float
    p50: float
    p90: float
    mean_abs: float
    vertices: int  # vertices measured
    reference: str = "gaussians"

    def as_dict(self) -> dict:
        return asdict(self)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V,3] unit area-weighted vertex normals of an outward-wound mesh (zero for an unused vertex)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # |fn| = 2·area
    n = np.zeros_like(v)
    for i in range(3):
        np.add.at(n, f[:, i], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)


@torch.no_grad()
def surface_error(vertices: np.ndarray, faces: np.ndarray, gaussians, k: int = 8, min_opacity: float = 0.3,
                  max_vertices: int = 200_000, seed: int = 0) -> SurfaceError | None:
    """The mesh (vertices [V,3], faces [F,3], outward) against ``gaussians`` (stage1 ``Gaussians``); see the
    module's docstring. None when there is nothing to compare (no faces, no Gaussian with opacity ≥
    ``min_opacity``). Meshes with more than ``max_vertices`` vertices are measured on a random subset."""
    from scipy.spatial import cKDTree

    from ..maths.rotations import quat_scale_to_covar

    if gaussians is None or len(faces) == 0:
        return None
    keep = gaussians.opacities.detach() >= min_opacity
    if not bool(keep.any()):
        return None
    mu = gaussians.means.detach()[keep].double().cpu()
    cov = quat_scale_to_covar(gaussians.rotations.detach()[keep].double(), gaussians.scales.detach()[keep].double()).cpu()
    nrm = vertex_normals(vertices, faces)
    used = np.linalg.norm(nrm, axis=1) > 0
    idx = np.flatnonzero(used)
    if len(idx) > max_vertices:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_vertices, replace=False))
    v, n = np.asarray(vertices, np.float64)[idx], nrm[idx]
    kk = min(k, len(mu))
    _, nb = cKDTree(mu.numpy()).query(v, k=kk)
    nb = torch.from_numpy(np.asarray(nb).reshape(len(v), kk))
    vt, nt = torch.from_numpy(v), torch.from_numpy(n)
    height = ((vt[:, None] - mu[nb]) * nt[:, None]).sum(-1)  # [V,k]
    spread = torch.einsum("vi,vkij,vj->vk", nt, cov[nb], nt).clamp_min(0).sqrt()
    d = (height - spread).median(dim=1).values
    q = torch.quantile(d, torch.tensor([0.1, 0.5, 0.9], dtype=d.dtype))
    return SurfaceError(mean=float(d.mean()), p10=float(q[0]), p50=float(q[1]), p90=float(q[2]), mean_abs=float(d.abs().mean()), vertices=len(d))
