"""Multiresolution hash encoding (Müller et al. 2022, InstantNGP) — the Stage II field's encoder, paper §3.2.1.

Level ``l`` has resolution ``R_l = floor(base_resolution · per_level_scale^l)``; its (R_l+1)³ grid vertices
are indexed directly while they fit in the level's table, else hashed with the primes (1, 2654435761,
805459861) and masked to the table size. A point's feature at a level is the trilinear interpolation of
its cell's eight corner features; the levels' features are concatenated.

Backends:
  * ``"torch"``  — pure PyTorch, CPU and GPU, vectorised over levels and corners; the backward is an
    index-add into the table (a small autograd Function). The reference twin of the others.
  * ``"triton"`` — a fused forward and backward kernel on CUDA (:mod:`hashgrid_triton`,
    compiled on first use). Untested without a GPU: a parity test skips on CPU.
  * ``"tcnn"``   — tiny-cuda-nn's HashGrid when importable (not on PyPI).
  * ``"auto"``   — tcnn if importable on CUDA, else triton on CUDA when triton imports, else torch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

PRIMES = (1, 2654435761, 805459861)
BACKENDS = ("auto", "torch", "triton", "tcnn")


@dataclass(frozen=True)
class HashGridConfig:
    """Hash-grid hyper-parameters; defaults are the official Interactive3D/threestudio distillation config."""

    n_levels: int = 16
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447
    init_scale: float = 1e-4  # features start uniform in ±init_scale (as tcnn)

    def __post_init__(self) -> None:
        if self.n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {self.n_levels}")
        if self.n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if not 4 <= self.log2_table_size <= 26:
            raise ValueError(f"log2_table_size must be in [4, 26], got {self.log2_table_size}")
        if self.base_resolution < 1:
            raise ValueError(f"base_resolution must be >= 1, got {self.base_resolution}")
        if self.per_level_scale < 1.0:
            raise ValueError(f"per_level_scale must be >= 1, got {self.per_level_scale}")

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def resolutions(self) -> list[int]:
        return [int(math.floor(self.base_resolution * self.per_level_scale**l)) for l in range(self.n_levels)]

    def level_sizes(self) -> list[int]:
        """Entries of each level's table: the dense grid when it fits in 2^T (rounded up to 8), else 2^T."""
        t = 2**self.log2_table_size
        return [min(t, ((r + 1) ** 3 + 7) // 8 * 8) for r in self.resolutions()]

    def level_hashed(self) -> list[bool]:
        t = 2**self.log2_table_size
        return [(r + 1) ** 3 > t for r in self.resolutions()]


def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if backend in ("triton", "tcnn") and device.type != "cuda":
            raise ValueError(f"backend {backend!r} needs a CUDA device, got {device}")
        if backend == "tcnn" and not _tcnn_available():
            raise ValueError("backend 'tcnn' requested but tinycudann is not importable")
        if backend == "triton" and not _triton_available():
            raise ValueError("backend 'triton' requested but triton is not importable")
        return backend
    if device.type == "cuda":
        if _tcnn_available():
            return "tcnn"
        if _triton_available():
            return "triton"
    return "torch"


class _LevelMeta:
    """Per-level integer constants as tensors (kept on the table's device)."""

    def __init__(self, cfg: HashGridConfig, device: torch.device) -> None:
        sizes = cfg.level_sizes()
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.total = sum(sizes)
        self.res = torch.tensor(cfg.resolutions(), dtype=torch.int64, device=device)  # [L]
        self.sizes = torch.tensor(sizes, dtype=torch.int64, device=device)  # [L]
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)  # [L]
        self.hashed = torch.tensor(cfg.level_hashed(), dtype=torch.bool, device=device)  # [L]
        # int32 helpers of the fast index path
        t = 2**cfg.log2_table_size
        self.res_f = self.res.float()
        self.res_hi = (self.res - 1).clamp_min(0).float()
        self.mask = t - 1
        self.primes = torch.tensor([p % t for p in PRIMES], dtype=torch.int32, device=device)  # [3]
        st = self.res + 1
        self.strides = torch.stack([torch.ones_like(st), st, st * st], dim=-1).to(torch.int32)  # [L,3]
        self.offsets32 = self.offsets.to(torch.int32)
        hashed = cfg.level_hashed()
        self.n_direct = hashed.index(True) if True in hashed else len(hashed)
        if any(not h for h in hashed[self.n_direct :]):
            raise ValueError("direct-indexed levels must precede hashed ones (per_level_scale >= 1 guarantees it)")


def hash_indices(
    x: Tensor,  # [N,3] in [0,1]
    cfg: HashGridConfig,
    meta: _LevelMeta,
) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of every (point, level, corner); corner k = (k&1, k>>1&1, k>>2&1).

    Works per axis on [N,L,2] (the cell's low and high coordinate) and combines the three axes by
    broadcasting, so the 8-corner integer work is one xor/add per corner. The hash is computed in int32
    with the primes reduced mod 2^T: the low T bits of products and xors do not depend on the wrapped
    high bits, so ``& (2^T − 1)`` gives exactly InstantNGP's uint32 hash mod 2^T.

    Returns:
        idx: [N,L,8] int64 rows of the flat table (level offsets included).
        w: [N,L,8] trilinear weights (same dtype as x).
    """
    n = x.shape[0]
    res_f = meta.res_f.to(x.dtype)  # [L]
    pos = x[:, None, :] * res_f[None, :, None]  # [N,L,3]
    cell = torch.minimum(torch.floor(pos), meta.res_hi.to(x.dtype)[None, :, None])  # x == 1 stays in the last cell
    frac = pos - cell  # [N,L,3], 1 at x == 1
    c0 = cell.to(torch.int32)
    c = torch.stack([c0, c0 + 1], dim=-1)  # [N,L,3,2]
    # coarse levels (a prefix) index directly: x + y·(R+1) + z·(R+1)²; finer ones hash: xor of c_a·P_a
    # (int32 wrap-around) and the low T bits. Each group only computes its own formula.
    k = meta.n_direct
    parts = []
    if k > 0:
        dp = c[:, :k] * meta.strides[:k, :, None]  # [N,k,3,2]
        parts.append(dp[:, :, 0, None, None, :] + dp[:, :, 1, None, :, None] + dp[:, :, 2, :, None, None])
    if k < c.shape[1]:
        hp = c[:, k:] * meta.primes[None, None, :, None]  # [N,L-k,3,2]
        parts.append((hp[:, :, 0, None, None, :] ^ hp[:, :, 1, None, :, None] ^ hp[:, :, 2, :, None, None]) & meta.mask)
    local = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [N,L,2z,2y,2x]
    # int64 for the gather/index_add (CPU index_add_ with int32 indices is ~10× slower)
    idx = (local + meta.offsets32[None, :, None, None, None]).reshape(n, -1, 8).long()
    wa = torch.stack([1.0 - frac, frac], dim=-1)  # [N,L,3,2]
    w = (wa[:, :, 0, None, None, :] * wa[:, :, 1, None, :, None] * wa[:, :, 2, :, None, None]).reshape(n, -1, 8)
    return idx, w


class _InterpolateTable(torch.autograd.Function):
    """out[n,l] = Σ_c w[n,l,c]·table[idx[n,l,c]]; the table gradient is one index_add (CPU's embedding
    backward is ~5× slower), the weight gradient a gather."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        n, l, c = idx.shape
        feats = table.index_select(0, idx.reshape(-1)).reshape(n, l, c, -1)  # [N,L,8,F]
        ctx.save_for_backward(table, idx, w)
        return (feats * w[..., None]).sum(dim=2)  # [N,L,F]

    @staticmethod
    def backward(ctx, g: Tensor):
        table, idx, w = ctx.saved_tensors
        g_table = g_w = None
        if ctx.needs_input_grad[0]:
            vals = (g[:, :, None, :] * w[..., None]).reshape(-1, table.shape[1])
            g_table = torch.zeros_like(table).index_add_(0, idx.reshape(-1), vals)
        if ctx.needs_input_grad[2]:
            n, l, c = idx.shape
            feats = table.index_select(0, idx.reshape(-1)).reshape(n, l, c, -1)
            g_w = (feats * g[:, :, None, :]).sum(dim=-1)
        return g_table, None, g_w


def encode_torch(
    x: Tensor,  # [N,3] in [0,1]
    table: Tensor,  # [S,F] flat table of all levels
    cfg: HashGridConfig,
    meta: _LevelMeta,
) -> Tensor:
    """Pure-torch hash encoding → [N, L·F]. Differentiable w.r.t. ``table`` (and ``x`` through the weights)."""
    idx, w = hash_indices(x, cfg, meta)
    n, l = idx.shape[:2]
    out = _InterpolateTable.apply(table, idx, w.to(table.dtype))  # [N,L,F]
    return out.reshape(n, l * table.shape[1])


class HashGrid(nn.Module):
    """The hash encoding as a module: ``forward(x [N,3] in [0,1]) → [N, n_levels·n_features]``.

    Inputs outside [0,1]³ are clamped (callers map their AABB to the unit cube).
    """

    def __init__(self, cfg: HashGridConfig = HashGridConfig(), backend: str = "auto", device: torch.device | str = "cpu", seed: int | None = None) -> None:
        super().__init__()
        device = torch.device(device)
        self.cfg = cfg
        self.backend = resolve_backend(backend, device)
        self.meta = _LevelMeta(cfg, device)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init = (torch.rand(self.meta.total, cfg.n_features, generator=gen) * 2 - 1) * cfg.init_scale
        self.table = nn.Parameter(init.to(device))  # [S,F]
        self._tcnn = None
        if self.backend == "tcnn":
            self._tcnn = _make_tcnn(cfg, device)

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.meta = _LevelMeta(self.cfg, self.table.device)
        return out

    def forward(self, x: Tensor) -> Tensor:  # [N,3] → [N,L·F]
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"x must be [N,3], got {tuple(x.shape)}")
        x = x.clamp(0.0, 1.0)
        if self.backend == "torch" or x.device.type != "cuda":
            return encode_torch(x.to(self.table.dtype), self.table, self.cfg, self.meta)
        if self.backend == "triton":
            from . import hashgrid_triton
            return hashgrid_triton.encode(x.float().contiguous(), self.table, self.cfg, self.meta)
        return self._tcnn(x.float()).float()


def _make_tcnn(cfg: HashGridConfig, device: torch.device) -> nn.Module:  # pragma: no cover - needs tcnn
    import tinycudann as tcnn

    return tcnn.Encoding(
        3,
        {
            "otype": "HashGrid",
            "n_levels": cfg.n_levels,
            "n_features_per_level": cfg.n_features,
            "log2_hashmap_size": cfg.log2_table_size,
            "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale,
        },
    ).to(device)
