"""Triton kernels of the hash encoding (CUDA only; imported on use by :mod:`hashgrid`).

Forward: one program per block of points; it loops over levels and the 8 cell corners, computing the
same indices as :func:`hashgrid.hash_indices` (direct index for coarse levels, InstantNGP's xor hash with
uint32 wrap-around masked to 2^T for the rest) and accumulating the trilinear sum for each feature.
Backward: the same walk, adding w·grad_out into the table gradient with atomics (table rows are shared
between points). The input gradient is not computed (the field never needs ∂enc/∂x).

UNTESTED WITHOUT A GPU: ``tests/backend/test_hashgrid.py::test_gpu_backend_parity`` compares it with the
torch twin on CUDA and skips elsewhere.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 128


@triton.jit
def _corner_index(cx, cy, cz, res, size, offset, hashed, mask, p1, p2):
    stride = res + 1
    direct = cx + cy * stride + cz * stride * stride
    # uint32 wrap-around as InstantNGP; only the low T bits survive the mask
    h = (cx.to(tl.uint32) * 1) ^ (cy.to(tl.uint32) * p1) ^ (cz.to(tl.uint32) * p2)
    hidx = (h & mask).to(tl.int64)
    idx = tl.where(hashed != 0, hidx, direct.to(tl.int64))
    return idx + offset


@triton.jit
def _fwd_kernel(x_ptr, table_ptr, out_ptr, res_ptr, size_ptr, off_ptr, hashed_ptr, n, n_levels, mask, p1, p2, F: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = rows < n
    x = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    y = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    z = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    for lvl in range(n_levels):
        res = tl.load(res_ptr + lvl)
        size = tl.load(size_ptr + lvl)
        off = tl.load(off_ptr + lvl)
        hashed = tl.load(hashed_ptr + lvl)
        rf = res.to(tl.float32)
        px, py, pz = x * rf, y * rf, z * rf
        hi = (res - 1).to(tl.float32)
        fx0, fy0, fz0 = tl.minimum(tl.floor(px), hi), tl.minimum(tl.floor(py), hi), tl.minimum(tl.floor(pz), hi)
        fx, fy, fz = px - fx0, py - fy0, pz - fz0
        ix, iy, iz = fx0.to(tl.int32), fy0.to(tl.int32), fz0.to(tl.int32)
        for f in tl.static_range(F):
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for c in tl.static_range(8):
                dx: tl.constexpr = c & 1
                dy: tl.constexpr = (c >> 1) & 1
                dz: tl.constexpr = (c >> 2) & 1
                wx = fx if dx else 1.0 - fx
                wy = fy if dy else 1.0 - fy
                wz = fz if dz else 1.0 - fz
                idx = _corner_index(ix + dx, iy + dy, iz + dz, res, size, off, hashed, mask, p1, p2)
                v = tl.load(table_ptr + idx * F + f, mask=valid, other=0.0)
                acc += wx * wy * wz * v
            tl.store(out_ptr + rows * (n_levels * F) + lvl * F + f, acc, mask=valid)


@triton.jit
def _bwd_kernel(x_ptr, gout_ptr, gtable_ptr, res_ptr, size_ptr, off_ptr, hashed_ptr, n, n_levels, mask, p1, p2, F: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = rows < n
    x = tl.load(x_ptr + rows * 3 + 0, mask=valid, other=0.0)
    y = tl.load(x_ptr + rows * 3 + 1, mask=valid, other=0.0)
    z = tl.load(x_ptr + rows * 3 + 2, mask=valid, other=0.0)
    for lvl in range(n_levels):
        res = tl.load(res_ptr + lvl)
        size = tl.load(size_ptr + lvl)
        off = tl.load(off_ptr + lvl)
        hashed = tl.load(hashed_ptr + lvl)
        rf = res.to(tl.float32)
        px, py, pz = x * rf, y * rf, z * rf
        hi = (res - 1).to(tl.float32)
        fx0, fy0, fz0 = tl.minimum(tl.floor(px), hi), tl.minimum(tl.floor(py), hi), tl.minimum(tl.floor(pz), hi)
        fx, fy, fz = px - fx0, py - fy0, pz - fz0
        ix, iy, iz = fx0.to(tl.int32), fy0.to(tl.int32), fz0.to(tl.int32)
        for f in tl.static_range(F):
            g = tl.load(gout_ptr + rows * (n_levels * F) + lvl * F + f, mask=valid, other=0.0)
            for c in tl.static_range(8):
                dx: tl.constexpr = c & 1
                dy: tl.constexpr = (c >> 1) & 1
                dz: tl.constexpr = (c >> 2) & 1
                wx = fx if dx else 1.0 - fx
                wy = fy if dy else 1.0 - fy
                wz = fz if dz else 1.0 - fz
                idx = _corner_index(ix + dx, iy + dy, iz + dz, res, size, off, hashed, mask, p1, p2)
                tl.atomic_add(gtable_ptr + idx * F + f, wx * wy * wz * g, mask=valid)


def _meta_args(meta, cfg):
    return (
        meta.res.to(torch.int32).contiguous(),
        meta.sizes.to(torch.int32).contiguous(),
        meta.offsets.to(torch.int64).contiguous(),
        meta.hashed.to(torch.int32).contiguous(),
    )


class _TritonEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, cfg, meta) -> Tensor:
        n, f, l = x.shape[0], table.shape[1], cfg.n_levels
        res, size, off, hashed = _meta_args(meta, cfg)
        tbl = table.float().contiguous()
        out = torch.empty(n, l * f, device=x.device, dtype=torch.float32)
        mask = (1 << cfg.log2_table_size) - 1
        grid = (triton.cdiv(n, BLOCK),)
        _fwd_kernel[grid](x, tbl, out, res, size, off, hashed, n, l, mask, 2654435761, 805459861, F=f, BLOCK_N=BLOCK)
        ctx.save_for_backward(x)
        ctx.cfg, ctx.meta, ctx.table_shape, ctx.table_dtype = cfg, meta, table.shape, table.dtype
        return out.to(table.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        (x,) = ctx.saved_tensors
        cfg, meta = ctx.cfg, ctx.meta
        n, f, l = x.shape[0], ctx.table_shape[1], cfg.n_levels
        res, size, off, hashed = _meta_args(meta, cfg)
        gtable = torch.zeros(ctx.table_shape, device=x.device, dtype=torch.float32)
        mask = (1 << cfg.log2_table_size) - 1
        grid = (triton.cdiv(n, BLOCK),)
        _bwd_kernel[grid](x, g.float().contiguous(), gtable, res, size, off, hashed, n, l, mask, 2654435761, 805459861, F=f, BLOCK_N=BLOCK)
        return None, gtable.to(ctx.table_dtype), None, None


def encode(x: Tensor, table: Tensor, cfg, meta) -> Tensor:
    """[N,3] in [0,1] (float32, contiguous, CUDA) → [N, L·F], differentiable w.r.t. ``table``."""
    return _TritonEncode.apply(x, table, cfg, meta)
