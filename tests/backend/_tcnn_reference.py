"""A line-by-line Python reading of tiny-cuda-nn's HashGrid (not a copy; the places are cited), for tests.

What it follows, in NVlabs/tiny-cuda-nn (v1.6 and the 2026 head agree on all of it):
  * GridEncodingTemplated's constructor (include/tiny-cuda-nn/encodings/grid.h): per level
    ``resolution = grid_resolution(grid_scale(l, log2(per_level_scale), base))``, ``params_in_level =
    next_multiple(resolution^3, 8)``, then ``min(params_in_level, 2^log2_hashmap_size)`` for a hash grid;
    offsets are the running sum; ``n_params = offset[L] · n_features_per_level``.
  * common_device.h: ``grid_scale = exp2f(l · log2_scale) · base − 1``, ``grid_resolution = ceil(scale) + 1``;
    ``pos_fract``: ``pos = fmaf(scale, x, 0.5)``, ``grid = floor(pos)``, ``frac = pos − grid``;
    ``grid_index``: ``x + y·res + z·res²``, replaced by ``coherent_prime_hash`` (1, 2654435761, 805459861,
    xor, uint32) when the level's table is smaller than res³, then ``% hashmap_size``.
  * kernel_grid: linear interpolation, weight = Π (corner bit ? frac : 1 − frac); features of a row are
    contiguous at ``(offset[l] + index) · F + f``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

_F32 = np.float32


def tcnn_level_constants(n_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float):
    """[(scale float32, resolution, params_in_level, offset)] per level, as the constructor and kernels."""
    log2s = np.log2(_F32(per_level_scale), dtype=_F32)
    out, offset = [], 0
    for lvl in range(n_levels):
        scale = _F32(np.exp2(_F32(lvl) * log2s, dtype=_F32) * _F32(base_resolution) - _F32(1.0))
        res = int(math.ceil(float(scale))) + 1
        params = res**3
        params = (params + 7) // 8 * 8
        params = min(params, 1 << log2_hashmap_size)
        out.append((scale, res, params, offset))
        offset += params
    return out


def tcnn_corners(x: np.ndarray, levels) -> tuple[np.ndarray, np.ndarray]:
    """x [N,3] float32 → (rows [N,L,8] with level offsets, weights [N,L,8] float32); corner bit d ↔ axis d."""
    n = x.shape[0]
    rows = np.zeros((n, len(levels), 8), dtype=np.int64)
    ws = np.zeros((n, len(levels), 8), dtype=np.float32)
    primes = (1, 2654435761, 805459861)
    for i in range(n):
        for lvl, (scale, res, size, offset) in enumerate(levels):
            grid, frac = [], []
            for d in range(3):
                pos = _F32(float(scale) * float(x[i, d]) + 0.5)  # one rounding: fmaf
                g = math.floor(float(pos))
                grid.append(g)
                frac.append(_F32(pos - _F32(g)))
            for c in range(8):
                local = [grid[d] + ((c >> d) & 1) for d in range(3)]
                w = _F32(1.0)
                for d in range(3):
                    w = _F32(w * (frac[d] if (c >> d) & 1 else _F32(1.0) - frac[d]))
                index = local[0] + local[1] * res + local[2] * res * res
                if size < res**3:  # hashmap_size < stride
                    h = 0
                    for d in range(3):
                        h ^= (local[d] * primes[d]) & 0xFFFFFFFF
                    index = h
                rows[i, lvl, c] = offset + index % size
                ws[i, lvl, c] = w
    return rows, ws


class FakeTcnnEncoding(nn.Module):
    """Stands in for ``tinycudann.Encoding`` on CPU: same constructor, a flat ``params`` Parameter of tcnn's
    length, forward = the reading above on ``params`` (differentiable). ``corrupt`` breaks it on purpose."""

    corrupt = False

    def __init__(self, n_input_dims: int, encoding_config: dict, seed: int = 1337, dtype=None) -> None:
        super().__init__()
        c = encoding_config
        assert n_input_dims == 3 and c["otype"] == "HashGrid"
        self.f = int(c["n_features_per_level"])
        self.levels = tcnn_level_constants(c["n_levels"], c["log2_hashmap_size"], c["base_resolution"], c["per_level_scale"])
        n_params = (self.levels[-1][3] + self.levels[-1][2]) * self.f
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.Parameter((torch.rand(n_params, generator=gen) * 2 - 1) * 1e-4)
        self.n_output_dims = len(self.levels) * self.f

    def forward(self, x: Tensor) -> Tensor:
        rows, ws = tcnn_corners(x.detach().cpu().numpy().astype(np.float32), self.levels)
        if self.corrupt:
            rows = np.where(rows > 0, rows - 1, rows)  # an off-by-one in the index, as a wrong layout would give
        table = self.params.reshape(-1, self.f)
        feats = table[torch.from_numpy(rows).to(x.device)]  # [N,L,8,F]
        out = (feats * torch.from_numpy(ws).to(x.device)[..., None]).sum(dim=2)
        return out.reshape(x.shape[0], -1)
