"""Geometry transformation of a part (paper §3.1.2, Eq. 2): E_trans = T(B(P)) + E'.

A 4×4 affine ``M = [[A, t], [0, 1]]`` (any matrix Blender produces: rotation, translation, uniform or
anisotropic stretch, shear, mirror) is applied to the Gaussians of a part about a pivot (the centre of
the part's bounding box by default):

    μ' = A (μ − c) + c + t          Σ' = A Σ Aᵀ

Σ' is re-factorised into the stored scale and rotation. When A is a (possibly mirrored) similarity
``A = ±s R`` the rotation is composed into the quaternion directly (exact, keeps each Gaussian's axis
order); otherwise Σ' is eigendecomposed in float64 in closed form (``maths/rotations.py`` :func:`stretch_factor`)
into a proper frame.
View-dependent colour turns with the part: the spherical-harmonics bands of degree ≥ 1 are rotated by
the orthogonal factor O of A's polar decomposition (O = A/s exactly for similarities, mirrors included),
so that the colour seen along d afterwards is the colour seen along Oᵀd before (:func:`sh_rotation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..maths.rotations import quat_multiply, rotmat_to_quat, stretch_factor
from ..stage1.gaussians import Gaussians

# A matrix whose |det A| is below this (relative to its scale) squashes Gaussians to zero volume.
_SINGULAR_RTOL = 1e-6


@dataclass(frozen=True)
class TransformResult:
    """What :func:`transform_part` did."""

    count: int  # number of Gaussians transformed
    pivot: Tensor  # [3] pivot used
    similarity: bool  # True: quaternion composition; False: Σ' = AΣAᵀ eigen-refactorisation


def check_matrix(matrix: Tensor, name: str = "matrix") -> Tensor:
    if not isinstance(matrix, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [4,4], got {type(matrix).__name__}")
    if matrix.shape != (4, 4):
        raise ValueError(f"{name} must have shape [4,4], got {tuple(matrix.shape)}")
    m = matrix.double()
    if not torch.isfinite(m).all():
        raise ValueError(f"{name} must be finite, got {matrix.tolist()}")
    if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype), atol=1e-6):
        raise ValueError(f"{name} must be affine (last row 0 0 0 1), got last row {m[3].tolist()}")
    a = m[:3, :3]
    scale = a.abs().max().item()
    det = torch.linalg.det(a).item()
    if scale == 0.0 or abs(det) <= _SINGULAR_RTOL * scale**3:
        raise ValueError(f"{name} is singular (det of its 3×3 part = {det:.3g}); it would flatten Gaussians")
    return m


def similarity_factor(a: Tensor, rtol: float = 1e-6) -> tuple[float, Tensor] | None:
    """If a [3,3] float64 is ±s·R (R proper rotation) return (s, ±R as a proper rotation) else None."""
    ata = a.T @ a
    s2 = ata.diagonal().mean()
    if not torch.allclose(ata, s2 * torch.eye(3, dtype=a.dtype), atol=rtol * float(s2)):
        return None
    s = math.sqrt(float(s2))
    r = a / s
    # In 3D, a mirrored similarity is −(proper rotation): (−A) Σ (−A)ᵀ = A Σ Aᵀ, so use −R.
    if torch.linalg.det(r) < 0:
        r = -r
    return s, r


def bbox_center(means: Tensor) -> Tensor:
    """Centre of the axis-aligned bounding box of [M,3] points → [3]."""
    return 0.5 * (means.min(dim=0).values + means.max(dim=0).values)


# -- the operation -----------------------------------------------------------------------------
def transform_part(
    g: Gaussians,
    mask: Tensor,  # [N] bool — the part P
    matrix: Tensor,  # [4,4] affine, applied in the pivot's frame
    pivot: Tensor | None = None,  # [3]; None → centre of the part's bounding box B(P)
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> TransformResult:
    """Apply ``matrix`` to the part's Gaussians in place (Eq. 2).

    The Adam moments of the transformed rows (means, log_scales, quats) are reset to zero: they were
    accumulated in the old frame and would push the moved Gaussians back along old directions.

    Raises:
        ValueError: wrong shapes, non-finite values, non-affine or singular matrix, empty part.
    """
    if mask.shape != (g.n,) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [{g.n}], got {mask.dtype} {tuple(mask.shape)}")
    m = check_matrix(matrix)
    idx = mask.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        raise ValueError("the part is empty: nothing to transform")
    with torch.no_grad():
        # Whole-set transforms (merging, "select all") skip the gather/scatter copies.
        full = idx.numel() == g.n
        rows = slice(None) if full else idx
        mu = g.params["means"][rows].double()
        if pivot is None:
            c = bbox_center(mu)
        else:
            if pivot.shape != (3,) or not torch.isfinite(pivot).all():
                raise ValueError(f"pivot must be a finite [3] vector, got {pivot.tolist()}")
            c = pivot.double().to(mu.device)
        a = m[:3, :3].to(mu.device)
        t = m[:3, 3].to(mu.device)
        new_mu = (mu - c) @ a.T + c + t

        sim = similarity_factor(a)
        log_s = g.params["log_scales"][rows]
        q = g.params["quats"][rows]
        if sim is not None:
            s, r = sim
            new_q = quat_multiply(rotmat_to_quat(r[None]).to(q.dtype), q)
            new_log_s = log_s + math.log(s)
        else:
            new_s, new_q = stretch_factor(a, torch.exp(log_s.double()), q.double())
            new_log_s = torch.log(new_s.clamp_min(1e-30))
        dtype = g.params["means"].dtype
        g.params["means"][rows] = new_mu.to(dtype)
        g.params["log_scales"][rows] = new_log_s.to(dtype)
        g.params["quats"][rows] = new_q.to(dtype)
        moved = ("means", "log_scales", "quats")
        if g.sh_degree > 0:
            rot = sh_rotation(orthogonal_factor(a), g.sh_degree).to(g.params["sh"].device, g.params["sh"].dtype)
            sh = g.params["sh"][rows]
            g.params["sh"][rows] = torch.einsum("ij,njc->nic", rot, sh)
            moved += ("sh",)
        if optimizers is not None:
            reset_moments(g, optimizers, mask, moved)
    return TransformResult(count=int(idx.numel()), pivot=c.to(dtype), similarity=sim is not None)


def _fibonacci_dirs(n: int, dtype=torch.float64) -> Tensor:
    """[n,3] unit directions spread evenly over the sphere."""
    i = torch.arange(n, dtype=dtype) + 0.5
    z = 1.0 - 2.0 * i / n
    r = (1.0 - z * z).clamp_min(0.0).sqrt()
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def sh_rotation(o: Tensor, degree: int) -> Tensor:
    """[K,K] (K = (degree+1)²) block-diagonal matrix taking SH coefficients c to c' with
    Σ c'·Y(d) = Σ c·Y(oᵀd) for an orthogonal [3,3] o (rotation or mirror): each band l is fitted by least
    squares on 64 directions, where the fit is exact because band l of Y(oᵀd) lies in the span of band l."""
    from ..stage1.render import sh_basis

    o = o.double()
    d = _fibonacci_dirs(64)
    before, after = sh_basis(degree, d), sh_basis(degree, d @ o)  # Y(d), Y(oᵀd) (rows of d @ o are oᵀd)
    k = (degree + 1) ** 2
    out = torch.zeros(k, k, dtype=torch.float64)
    out[0, 0] = 1.0
    for band in range(1, degree + 1):
        sl = slice(band * band, (band + 1) * (band + 1))
        out[sl, sl] = torch.linalg.lstsq(before[:, sl], after[:, sl]).solution
    return out


def orthogonal_factor(a: Tensor) -> Tensor:
    """The orthogonal factor O of the polar decomposition A = O P (P symmetric positive): the rotation
    (or mirror) part of a stretch, shear or similarity [3,3]."""
    u, _, vh = torch.linalg.svd(a.double())
    return u @ vh


def reset_moments(
    g: Gaussians, optimizers: dict[str, torch.optim.Optimizer], mask: Tensor, names: tuple[str, ...]
) -> None:
    """Zero the Adam moments of the rows in ``mask`` [N] bool for the parameter groups ``names``."""
    for name in names:
        opt = optimizers.get(name)
        if opt is None:
            continue
        state = opt.state.get(g.params[name])
        if not state:
            continue
        for key, value in state.items():
            if key != "step" and isinstance(value, Tensor) and value.shape[:1] == (g.n,):
                value[mask] = 0.0


def transform_gaussians(g: Gaussians, matrix: Tensor) -> None:
    """Apply ``matrix`` [4,4] to every Gaussian of ``g`` in place, about the origin (merging parts)."""
    transform_part(g, torch.ones(g.n, dtype=torch.bool, device=g.device), matrix, pivot=torch.zeros(3))
