"""Geometry transformation of a part (paper §3.1.2, Eq. 2): E_trans = T(B(P)) + E'.

A 4×4 affine ``M = [[A, t], [0, 1]]`` (any matrix Blender produces: rotation, translation, uniform or
anisotropic stretch, shear, mirror) is applied to the Gaussians of a part about a pivot (the centre of
the part's bounding box by default):

    μ' = A (μ − c) + c + t          Σ' = A Σ Aᵀ

Σ' is re-factorised into the stored scale and rotation. When A is a (possibly mirrored) similarity
``A = ±s R`` the rotation is composed into the quaternion directly (exact, keeps each Gaussian's axis
order); otherwise Σ' is eigendecomposed in float64 and the eigenvector frame made proper (det = +1).
Higher spherical-harmonics bands are not rotated (the default Stage I degree is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussians import Gaussians

# A matrix whose |det A| is below this (relative to its scale) squashes Gaussians to zero volume.
_SINGULAR_RTOL = 1e-6


@dataclass(frozen=True)
class TransformResult:
    """What :func:`transform_part` did."""

    count: int  # number of Gaussians transformed
    pivot: Tensor  # [3] pivot used
    similarity: bool  # True: quaternion composition; False: Σ' = AΣAᵀ eigen-refactorisation


# -- quaternion / covariance helpers (w-first, docs/conventions.md) ------------------------------
def quat_to_rotmat(q: Tensor) -> Tensor:
    """[N,4] (w,x,y,z), any norm → [N,3,3] rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(r: Tensor) -> Tensor:
    """[N,3,3] proper rotations → [N,4] unit quaternions (w,x,y,z), w ≥ 0 (Shepperd's method)."""
    m = r.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    # Four candidate solutions; take the one with the largest (best conditioned) denominator.
    cand = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m00 - m11 - m22, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
            torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m00 + m11 - m22, m[:, 1, 2] + m[:, 2, 1]], -1),
            torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        dim=1,
    )  # [N,4 candidates,4]
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(dim=-1)
    q = cand[torch.arange(m.shape[0]), best]
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*r.shape[:-2], 4)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a ⊗ b of [...,4] w-first quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def covariance(scales: Tensor, quats: Tensor) -> Tensor:
    """Σ = R diag(s²) Rᵀ: scales [N,3] > 0, quats [N,4] → [N,3,3]."""
    r = quat_to_rotmat(quats)
    return (r * (scales**2)[..., None, :]) @ r.transpose(-1, -2)


def factor_covariance(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric positive-definite [N,3,3] → (scales [N,3], unit quats [N,4]) with Σ = R diag(s²) Rᵀ.

    Eigendecomposition in float64; the eigenvector frame is made a proper rotation by flipping the
    last axis where its determinant is −1 (an axis sign does not change Σ).
    """
    c = cov.double()
    c = 0.5 * (c + c.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(c)
    flip = torch.linalg.det(evecs) < 0
    evecs = torch.where(flip[:, None, None], evecs * torch.tensor([1.0, 1.0, -1.0], dtype=c.dtype), evecs)
    scales = evals.clamp_min(0.0).sqrt()
    return scales.to(cov.dtype), rotmat_to_quat(evecs).to(cov.dtype)


def _check_matrix(matrix: Tensor, name: str = "matrix") -> Tensor:
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
    m = _check_matrix(matrix)
    idx = mask.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        raise ValueError("the part is empty: nothing to transform")
    with torch.no_grad():
        mu = g.params["means"][idx].double()
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
        log_s = g.params["log_scales"][idx]
        q = g.params["quats"][idx]
        if sim is not None:
            s, r = sim
            new_q = quat_multiply(rotmat_to_quat(r[None]).to(q.dtype), q)
            new_log_s = log_s + math.log(s)
        else:
            cov = covariance(torch.exp(log_s.double()), q.double())
            new_cov = a @ cov @ a.T
            new_s, new_q = factor_covariance(new_cov)
            new_log_s = torch.log(new_s.clamp_min(1e-30))
        dtype = g.params["means"].dtype
        g.params["means"][idx] = new_mu.to(dtype)
        g.params["log_scales"][idx] = new_log_s.to(dtype)
        g.params["quats"][idx] = new_q.to(dtype)
        if optimizers is not None:
            reset_moments(g, optimizers, mask, ("means", "log_scales", "quats"))
    return TransformResult(count=int(idx.numel()), pivot=c.to(dtype), similarity=sim is not None)


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
