"""Geometry transformation of a part (paper §3.1.2, Eq. 2): E_trans = T(B(P)) + E'.

A 4×4 affine ``M = [[A, t], [0, 1]]`` (any matrix Blender produces: rotation, translation, uniform or
anisotropic stretch, shear, mirror) is applied to the Gaussians of a part about a pivot (the centre of
the part's bounding box by default):

    μ' = A (μ − c) + c + t          Σ' = A Σ Aᵀ

Σ' is re-factorised into the stored scale and rotation. When A is a (possibly mirrored) similarity
``A = ±s R`` the rotation is composed into the quaternion directly (exact, keeps each Gaussian's axis
order); otherwise Σ' is eigendecomposed in float64 in closed form (:func:`eigh3`) into a proper frame.
View-dependent colour turns with the part: the spherical-harmonics bands of degree ≥ 1 are rotated by
the orthogonal factor O of A's polar decomposition (O = A/s exactly for similarities, mirrors included),
so that the colour seen along d afterwards is the colour seen along Oᵀd before (:func:`sh_rotation`).
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


def covariance(scales: Tensor, quats: Tensor) -> Tensor:
    """Σ = R diag(s²) Rᵀ: scales [N,3] > 0, quats [N,4] → [N,3,3]."""
    r = quat_to_rotmat(quats)
    return (r * (scales**2)[..., None, :]) @ r.transpose(-1, -2)


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _any_perpendicular(v: Tensor) -> Tensor:
    """A unit vector ⟂ each unit v [N,3] (cross with the world axis least aligned with v)."""
    axis = torch.zeros_like(v)
    axis.scatter_(1, v.abs().argmin(dim=1, keepdim=True), 1.0)
    return _unit(torch.linalg.cross(v, axis))


# The stretch path works on separate contiguous [N] tensors per matrix entry ("components"): slicing
# c[:, i, j] out of an [N,3,3] tensor is a strided pass 4× slower than a contiguous one on CPU, and
# batched 3×3 products are slower still, so a whole refactorisation costs ~250 contiguous passes.
Vec = tuple[Tensor, Tensor, Tensor]


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
    return _unit_c(tuple(torch.where(take2, b, a) for a, b in zip(cands[2], best)))


def eigh3(cov: Tensor, degenerate_rtol: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Closed-form eigendecomposition of symmetric [N,3,3] (float64): (evals [N,3], proper evecs [N,3,3]).

    Several times faster than ``torch.linalg.eigh`` on CPU for batches of 3×3 (element-wise on the six
    distinct entries). Eigenvalues by the trigonometric formula; the eigenvectors of the largest and
    smallest eigenvalues from cross products, the middle one completing a right-handed frame. Where two
    eigenvalues coincide (relative gap < ``degenerate_rtol``) any orthonormal pair spans their plane,
    so one is chosen explicitly.
    """
    c = 0.5 * (cov + cov.transpose(-1, -2))
    flat = c.reshape(-1, 9).T.contiguous()  # one transposing copy → nine contiguous rows
    evals, (v1, v2, v3) = _eigh3_c((flat[0], flat[4], flat[8], flat[1], flat[2], flat[5]), degenerate_rtol)
    cols = [torch.stack(v, -1) for v in (v1, v2, v3)]
    return torch.stack(evals, -1), torch.stack(cols, -1)


def _eigh3_c(c6: tuple[Tensor, ...], degenerate_rtol: float = 1e-7) -> tuple[Vec, tuple[Vec, Vec, Vec]]:
    """:func:`eigh3` on components: ((λ1 ≥ λ2 ≥ λ3), (v1, v2, v3)) with v2 = v3 × v1."""
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
    l2 = 3.0 * q - l1 - l3
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


def _stretch_factor(a: Tensor, scales: Tensor, quats: Tensor) -> tuple[Tensor, Tensor]:
    """Scales [N,3] and unit quats [N,4] of A Σ Aᵀ for Σ = R diag(s²) Rᵀ (float64 in, float64 out).

    M = A R diag(s) entry by entry, A Σ Aᵀ = M Mᵀ (six entries), eigendecomposition, eigenvector frame
    → quaternion: all on contiguous components (see the note above ``Vec``), in chunks of rows.
    """
    if scales.shape[0] > STRETCH_CHUNK:
        parts = [_stretch_factor(a, scales[i : i + STRETCH_CHUNK], quats[i : i + STRETCH_CHUNK])
                 for i in range(0, scales.shape[0], STRETCH_CHUNK)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    qc = quats.T.contiguous()
    qc = qc * qc.pow(2).sum(0).sqrt().clamp_min(1e-12).reciprocal()
    w, x, y, z = qc
    r = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
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
            new_s, new_q = _stretch_factor(a, torch.exp(log_s.double()), q.double())
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
    from .render import sh_basis

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
