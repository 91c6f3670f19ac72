"""Rotations, quaternions and covariances: the one home of this maths in the backend.

Conventions (docs/conventions.md): quaternions are w-first (w, x, y, z), as in the INRIA .ply
(``rot_0`` = w) and gsplat; rotation matrices act on column vectors; a Gaussian's covariance is
Σ = R diag(s²) Rᵀ with R from its quaternion and s its (activated) scales.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The batched stretch (:func:`stretch_factor`, with :func:`_eigh3_c`) works on separate contiguous [N]
# tensors per matrix entry ("components"): slicing c[:, i, j] out of an [N,3,3] tensor is a strided pass 4× slower than a contiguous one on CPU, and
# batched 3×3 products are slower still, so a whole refactorisation costs ~250 contiguous passes.
Vec = tuple[Tensor, Tensor, Tensor]


def quat_to_rotmat(q: Tensor) -> Tensor:
    """[...,4] (w,x,y,z), any norm (normalised here) → [...,3,3] rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rows = _quat_to_rotmat_c(q.unbind(-1))
    return torch.stack([e for row in rows for e in row], dim=-1).reshape(*q.shape[:-1], 3, 3)


def _quat_to_rotmat_c(q: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Vec, Vec, Vec]:
    """:func:`quat_to_rotmat` on components: unit (w, x, y, z) ([N] each) → rows of R, entry (i, j)."""
    w, x, y, z = q
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )


def rotmat_to_quat(r: Tensor) -> Tensor:
    """[N,3,3] proper rotations → [N,4] unit quaternions (w,x,y,z), w ≥ 0.

    Magnitudes from the diagonal, signs from the antisymmetric part (vectorised; the half-turn sign
    rule only runs when some rows need it). Accurate to ~1e-8 in float64, below the float32 the
    parameters are stored in.
    """
    flat = r.reshape(-1, 9).T.contiguous()
    m = tuple(tuple(flat[3 * i + j] for j in range(3)) for i in range(3))
    return torch.stack(_rotmat_to_quat_c(m), -1).reshape(*r.shape[:-2], 4)


def _rotmat_to_quat_c(m) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`rotmat_to_quat` on the nine entries m[i][j] ([N] each) → (w, x, y, z)."""
    m00, m11, m22 = m[0][0], m[1][1], m[2][2]
    w = 0.5 * (1 + m00 + m11 + m22).clamp_min(0).sqrt()
    x = 0.5 * (1 + m00 - m11 - m22).clamp_min(0).sqrt()
    y = 0.5 * (1 - m00 + m11 - m22).clamp_min(0).sqrt()
    z = 0.5 * (1 - m00 - m11 + m22).clamp_min(0).sqrt()
    # With w ≥ 0 the signs of x, y, z follow the antisymmetric part; when w ≈ 0 (half turns) they
    # follow the symmetric part relative to the largest of x, y, z instead.
    sx, sy, sz = m[2][1] - m[1][2], m[0][2] - m[2][0], m[1][0] - m[0][1]
    half_turn = w < 1e-4
    if bool(half_turn.any()):  # rare: skip the work otherwise
        big = torch.stack([x, y, z], -1).argmax(-1)
        pxy, pxz, pyz = m[0][1] + m[1][0], m[0][2] + m[2][0], m[1][2] + m[2][1]
        one = torch.ones_like(w)
        ref_x = torch.where(big == 0, one, torch.where(big == 1, pxy, pxz))
        ref_y = torch.where(big == 1, one, torch.where(big == 0, pxy, pyz))
        ref_z = torch.where(big == 2, one, torch.where(big == 0, pxz, pyz))
        # ... and the overall sign from the antisymmetric term of the largest component (w small, not 0).
        s_big = torch.where(big == 0, sx, torch.where(big == 1, sy, sz))
        ref_x, ref_y, ref_z = (torch.copysign(one, s_big) * torch.copysign(one, v) for v in (ref_x, ref_y, ref_z))
        x = torch.where(half_turn, torch.copysign(x, ref_x), torch.copysign(x, sx))
        y = torch.where(half_turn, torch.copysign(y, ref_y), torch.copysign(y, sy))
        z = torch.where(half_turn, torch.copysign(z, ref_z), torch.copysign(z, sz))
    else:
        x, y, z = torch.copysign(x, sx), torch.copysign(y, sy), torch.copysign(z, sz)
    inv = (w * w + x * x + y * y + z * z).sqrt().clamp_min(1e-12).reciprocal()
    return w * inv, x * inv, y * inv, z * inv


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


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """Σ = R diag(s²) Rᵀ. quats [...,4] w-first (normalised here), scales [...,3] → [...,3,3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _any_perpendicular(v: Tensor) -> Tensor:
    """A unit vector ⟂ each unit v [N,3] (cross with the world axis least aligned with v)."""
    axis = torch.zeros_like(v)
    axis.scatter_(1, v.abs().argmin(dim=1, keepdim=True), 1.0)
    return _unit(torch.linalg.cross(v, axis))


def _cross(a: Vec, b: Vec) -> Vec:
    return a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]


def _unit_c(v: Vec) -> Vec:
    inv = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().clamp_min(1e-300).reciprocal()
    return v[0] * inv, v[1] * inv, v[2] * inv


def _eigvec(c6: tuple[Tensor, ...], lam: Tensor) -> Vec:
    """Unit eigenvector (components) of the symmetric matrices c6 = (c00, c11, c22, c01, c02, c12)
    for a simple eigenvalue lam [N]: the largest cross product of two rows of (c − λI), which are both
    ⟂ the eigenvector."""
    c00, c11, c22, c01, c02, c12 = c6
    r0, r1, r2 = (c00 - lam, c01, c02), (c01, c11 - lam, c12), (c02, c12, c22 - lam)
    cands = [_cross(r0, r1), _cross(r0, r2), _cross(r1, r2)]
    n2 = [x * x + y * y + z * z for x, y, z in cands]
    take1 = n2[1] > n2[0]
    best = [torch.where(take1, b, a) for a, b in zip(cands[0], cands[1])]
    take2 = n2[2] > torch.where(take1, n2[1], n2[0])
    # (The pairs are (kept, candidate): swapping them took the *smallest* cross product whenever the
    # third was not the largest, e.g. a rounding-size vector along x for diag(a, b, a), so axis-aligned
    # stretches came back with permuted axes.)
    return _unit_c(tuple(torch.where(take2, c2, kept) for kept, c2 in zip(best, cands[2])))


def _eigh3_c(c6: tuple[Tensor, ...], degenerate_rtol: float = 1e-7) -> tuple[Vec, tuple[Vec, Vec, Vec]]:
    """Closed-form eigendecomposition of symmetric 3×3 matrices given by their six distinct entries
    c6 = (c00, c11, c22, c01, c02, c12) ([N] float64 each): ((λ1 ≥ λ2 ≥ λ3), (v1, v2, v3)), a proper frame
    (v2 = v3 × v1).

    Several times faster than ``torch.linalg.eigh`` on CPU for batches of 3×3 (element-wise). Eigenvalues
    by the trigonometric formula; the eigenvectors of the largest and smallest eigenvalues from cross
    products, the middle one completing a right-handed frame. Where two eigenvalues coincide (relative gap
    < ``degenerate_rtol``) any orthonormal pair spans their plane, so one is chosen explicitly.
    """
    c00, c11, c22, c01, c02, c12 = c6
    n = c00.shape[0]
    q = (c00 + c11 + c22) / 3.0
    d0, d1, d2 = c00 - q, c11 - q, c22 - q
    off = c01 * c01 + c02 * c02 + c12 * c12
    p = ((d0 * d0 + d1 * d1 + d2 * d2 + 2.0 * off) / 6.0).sqrt()
    ip = p.clamp_min(1e-300).reciprocal()
    b00, b11, b22, b01, b02, b12 = d0 * ip, d1 * ip, d2 * ip, c01 * ip, c02 * ip, c12 * ip
    det = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = torch.acos((det / 2.0).clamp(-1.0, 1.0)) / 3.0
    l1 = q + 2.0 * p * torch.cos(phi)  # largest
    l3 = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)  # smallest
    l2 = torch.minimum(torch.maximum(3.0 * q - l1 - l3, l3), l1)  # the trace identity, kept in order by rounding
    scale = torch.maximum(l1.abs(), l3.abs()).clamp_min(1e-300)
    top_simple = (l1 - l2) > degenerate_rtol * scale
    low_simple = (l2 - l3) > degenerate_rtol * scale
    v1 = _eigvec(c6, l1)
    v3 = _eigvec(c6, l3)
    # λ1 = λ2 (only λ3 simple): take v3 and any frame around it; λ2 = λ3: v1 and any frame; all equal: I.
    if not bool((top_simple & low_simple).all()):  # rare for general matrices: skip the work otherwise
        eye = torch.eye(3, dtype=c00.dtype, device=c00.device)
        v1s, v3s = torch.stack(v1, -1), torch.stack(v3, -1)
        v1s = torch.where((~top_simple & low_simple)[:, None], _any_perpendicular(v3s), v1s)
        v3s = torch.where((top_simple & ~low_simple)[:, None], _any_perpendicular(v1s), v3s)
        iso = ~top_simple & ~low_simple
        v1s = torch.where(iso[:, None], eye[0].expand(n, 3), v1s)
        v3s = torch.where(iso[:, None], eye[2].expand(n, 3), v3s)
        v1, v3 = v1s.unbind(-1), v3s.unbind(-1)
    # Remove the rounding-level overlap between v1 and v3 before completing the frame.
    dot = v3[0] * v1[0] + v3[1] * v1[1] + v3[2] * v1[2]
    v3 = _unit_c((v3[0] - dot * v1[0], v3[1] - dot * v1[1], v3[2] - dot * v1[2]))
    return (l1, l2, l3), (v1, _cross(v3, v1), v3)


STRETCH_CHUNK = 16384  # rows per pass: the ~100 live [chunk] float64 temporaries stay in cache (measured
# at 100k rows on the CPU machine: 70 ms in one pass, 57 ms in chunks of 16k, 78 ms in chunks of 4k)


def stretch_factor(a: Tensor, scales: Tensor, quats: Tensor) -> tuple[Tensor, Tensor]:
    """Scales [N,3] and unit quats [N,4] of A Σ Aᵀ for Σ = R diag(s²) Rᵀ (float64 in, float64 out); a [3,3],
    scales [N,3], quats [N,4] (any norm).

    M = A R diag(s) entry by entry, A Σ Aᵀ = M Mᵀ (six entries), eigendecomposition, eigenvector frame
    → quaternion: all on contiguous components (see the note above ``Vec``), in chunks of rows.
    """
    if scales.shape[0] > STRETCH_CHUNK:
        parts = [stretch_factor(a, scales[i : i + STRETCH_CHUNK], quats[i : i + STRETCH_CHUNK])
                 for i in range(0, scales.shape[0], STRETCH_CHUNK)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    qc = quats.T.contiguous()
    qc = qc * qc.pow(2).sum(0).sqrt().clamp_min(1e-12).reciprocal()
    r = _quat_to_rotmat_c(tuple(qc))
    s = scales.T.contiguous()
    rs = [[r[k][j] * s[j] for j in range(3)] for k in range(3)]  # R diag(s), entry (k, j)
    av = a.tolist()
    m = [[av[i][0] * rs[0][j] + av[i][1] * rs[1][j] + av[i][2] * rs[2][j] for j in range(3)] for i in range(3)]

    def dot(i: int, k: int) -> Tensor:
        return m[i][0] * m[k][0] + m[i][1] * m[k][1] + m[i][2] * m[k][2]

    (l1, l2, l3), (v1, v2, v3) = _eigh3_c((dot(0, 0), dot(1, 1), dot(2, 2), dot(0, 1), dot(0, 2), dot(1, 2)))
    new_s = torch.stack([l1, l2, l3], -1).clamp_min(0.0).sqrt()
    # the frame's columns are v1, v2, v3: entry (i, j) = v_j[i]
    frame = ((v1[0], v2[0], v3[0]), (v1[1], v2[1], v3[1]), (v1[2], v2[2], v3[2]))
    return new_s, torch.stack(_rotmat_to_quat_c(frame), -1)
