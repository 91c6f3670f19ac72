"""Triton kernels of the hash encoding (imported on use by :mod:`hashgrid`; the layout is described there).

Forward: one program per block of ``BLOCK_N`` points; for each level it computes the cell and the three
fractional coordinates once, then for each of the 8 corners the table row (dense index with tcnn's
wrap-around, or the coherent-prime hash masked to 2^T) and the trilinear weight once, and reads the row's
F features as one [BLOCK_N, F] vector (features are the inner axis of the table). Backward: the same walk,
adding weight·grad_out into the table gradient with atomics (rows are shared between points). The input
gradient is not computed (the field never needs ∂enc/∂x).

Checked without a GPU in CI: both kernels compile to PTX and cubin for sm_80/89/90, and run under the Triton
interpreter (``TRITON_INTERPRET=1``) on CPU tensors against the torch twin (tests/backend/test_hashgrid_triton.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..accel.fastpath import triton_interpreted

BLOCK = 128  # points per program on a GPU
# Under the interpreter every op costs Python overhead per program, so fewer, larger programs run far faster.
# Triton decides interpret-or-compile when this module's kernels are decorated, i.e. at import, as here.
INTERPRETED = triton_interpreted()
INTERPRETER_BLOCK = 4096


@triton.jit
def _level_setup(x, y, z, scale):
    """Cell corner (int32) and fractional position of each axis, as tcnn's pos_fract: fmaf(scale, x, 0.5).

    The float64 product of two float32 is exact, so rounding x·scale + 0.5 once to float32 is the fma's
    result — on the GPU and in the interpreter alike (a float32 fma is not available in the interpreter,
    and an unfused float32 mul+add would move frac by an ulp of pos: 2.4e-4 at the finest level)."""
    s = scale.to(tl.float64)
    px = (x.to(tl.float64) * s + 0.5).to(tl.float32)
    py = (y.to(tl.float64) * s + 0.5).to(tl.float32)
    pz = (z.to(tl.float64) * s + 0.5).to(tl.float32)
    fx0 = tl.floor(px)
    fy0 = tl.floor(py)
    fz0 = tl.floor(pz)
    return fx0.to(tl.int32), fy0.to(tl.int32), fz0.to(tl.int32), px - fx0, py - fy0, pz - fz0


@triton.jit
def _corner(ix, iy, iz, fx, fy, fz, c: tl.constexpr, res, size, hashed, mask, p1, p2):
    """Row within the level and trilinear weight of corner ``c`` = (c&1, c>>1&1, c>>2&1)."""
    if c & 1:
        cx = ix + 1
        wx = fx
    else:
        cx = ix
        wx = 1.0 - fx
    if (c >> 1) & 1:
        cy = iy + 1
        wy = fy
    else:
        cy = iy
        wy = 1.0 - fy
    if (c >> 2) & 1:
        cz = iz + 1
        wz = fz
    else:
        cz = iz
        wz = 1.0 - fz
    # dense: (x + y·res + z·res²) mod rows — res³ ≤ 2^26 on dense levels, so int32 holds it
    dense = (cx + cy * res + cz * (res * res)) % size
    # hashed: int32 products wrap like tcnn's uint32 ones; the primes arrive reduced mod 2^T and only the
    # low T bits survive the mask
    hsh = (cx ^ (cy * p1) ^ (cz * p2)) & mask
    row = tl.where(hashed != 0, hsh, dense)
    return row, wx * wy * wz


@triton.jit
def _fwd_kernel(x_ptr, table_ptr, out_ptr, scale_ptr, res_ptr, size_ptr, off_ptr, hashed_ptr,
                n, n_levels, mask, p1, p2, F: tl.constexpr, FP: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [B]
    valid = rows < n
    feat = tl.arange(0, FP)  # [FP] features, padded to a power of two
    fmask = valid[:, None] & (feat[None, :] < F)  # [B,FP]
    x = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    y = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    z = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    out_row = rows.to(tl.int64) * (n_levels * F)
    for lvl in range(n_levels):
        scale = tl.load(scale_ptr + lvl)
        res = tl.load(res_ptr + lvl)
        size = tl.load(size_ptr + lvl)
        off = tl.load(off_ptr + lvl)
        hashed = tl.load(hashed_ptr + lvl)
        ix, iy, iz, fx, fy, fz = _level_setup(x, y, z, scale)
        acc = tl.zeros([BLOCK_N, FP], dtype=tl.float32)
        for c in tl.static_range(8):
            row, w = _corner(ix, iy, iz, fx, fy, fz, c, res, size, hashed, mask, p1, p2)
            addr = (row.to(tl.int64) + off) * F  # [B] first feature of the corner's row
            v = tl.load(table_ptr + addr[:, None] + feat[None, :], mask=fmask, other=0.0)  # [B,FP]
            acc += w[:, None] * v
        tl.store(out_ptr + out_row[:, None] + lvl * F + feat[None, :], acc, mask=fmask)


@triton.jit
def _bwd_kernel(x_ptr, gout_ptr, gtable_ptr, scale_ptr, res_ptr, size_ptr, off_ptr, hashed_ptr,
                n, n_levels, mask, p1, p2, F: tl.constexpr, FP: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = rows < n
    feat = tl.arange(0, FP)
    fmask = valid[:, None] & (feat[None, :] < F)
    x = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    y = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    z = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    out_row = rows.to(tl.int64) * (n_levels * F)
    for lvl in range(n_levels):
        scale = tl.load(scale_ptr + lvl)
        res = tl.load(res_ptr + lvl)
        size = tl.load(size_ptr + lvl)
        off = tl.load(off_ptr + lvl)
        hashed = tl.load(hashed_ptr + lvl)
        ix, iy, iz, fx, fy, fz = _level_setup(x, y, z, scale)
        g = tl.load(gout_ptr + out_row[:, None] + lvl * F + feat[None, :], mask=fmask, other=0.0)  # [B,FP]
        for c in tl.static_range(8):
            row, w = _corner(ix, iy, iz, fx, fy, fz, c, res, size, hashed, mask, p1, p2)
            addr = (row.to(tl.int64) + off) * F
            tl.atomic_add(gtable_ptr + addr[:, None] + feat[None, :], w[:, None] * g, mask=fmask)


def _block(x: Tensor) -> int:
    return INTERPRETER_BLOCK if INTERPRETED and x.device.type == "cpu" else BLOCK


def _pow2(f: int) -> int:
    return 1 << (f - 1).bit_length()


class _TritonEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, levels: tuple, scalars: tuple) -> Tensor:
        n, f, l = x.shape[0], table.shape[1], levels[0].shape[0]
        tbl = table.float().contiguous()
        out = torch.empty(n, l * f, device=x.device, dtype=torch.float32)
        if n > 0:
            b = _block(x)
            _fwd_kernel[(triton.cdiv(n, b),)](x, tbl, out, *levels, n, l, *scalars, F=f, FP=_pow2(f), BLOCK_N=b)
        ctx.save_for_backward(x)
        ctx.levels, ctx.scalars, ctx.table_shape, ctx.table_dtype = levels, scalars, table.shape, table.dtype
        return out.to(table.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        levels, scalars = ctx.levels, ctx.scalars
        n, f, l = x.shape[0], ctx.table_shape[1], levels[0].shape[0]
        gtable = torch.zeros(ctx.table_shape, device=x.device, dtype=torch.float32)
        if n > 0:
            b = _block(x)
            _bwd_kernel[(triton.cdiv(n, b),)](x, g.float().contiguous(), gtable, *levels, n, l, *scalars, F=f, FP=_pow2(f), BLOCK_N=b)
        return None, gtable.to(ctx.table_dtype), None, None


def encode(x: Tensor, table: Tensor, levels: tuple[Tensor, ...], scalars: tuple[int, int, int]) -> Tensor:
    """[N,3] in [0,1] (float32, contiguous; CUDA, or CPU under the interpreter) → [N, L·F], differentiable
    w.r.t. ``table`` ([S,F]).

    Args:
        levels: per-level tensors on x's device, each [L]: scale (float32), resolution and size (int32),
            table offset (int64), hashed flag (int32).
        scalars: the hash mask 2^T - 1 and the second and third hash primes reduced mod 2^T.
    """
    return _TritonEncode.apply(x, table, levels, scalars)
