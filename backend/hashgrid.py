"""Multiresolution hash encoding (Müller et al. 2022, InstantNGP) — the Stage II field's encoder, paper §3.2.1.

Level ``l`` has resolution ``R_l = floor(base_resolution · per_level_scale^l)``; its (R_l+1)³ grid vertices
are indexed directly while they fit in the level's table, else hashed with the primes (1, 2654435761,
805459861) and masked to the table size. A point's feature at a level is the trilinear interpolation of
its cell's eight corner features; the levels' features are concatenated.

Backends:
  * ``"torch"``  — pure PyTorch, CPU and GPU, vectorised over levels and corners; autograd does the
    backward (a gather whose gradient is an index-add into the table). The reference twin of the others.
  * ``"triton"`` — a fused forward and backward kernel on CUDA (see :mod:`_hashgrid_triton` below in this
    file; compiled on first use). Untested without a GPU: a parity test skips on CPU.
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


# the eight cell corners as 0/1 offsets [8,3], x fastest
_CORNERS = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64)


def hash_indices(
    x: Tensor,  # [N,3] in [0,1]
    cfg: HashGridConfig,
    meta: _LevelMeta,
) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of every (point, level, corner).

    Returns:
        idx: [N,L,8] int64 rows of the flat table (level offsets included).
        w: [N,L,8] trilinear weights (same dtype as x).
    """
    res = meta.res.to(x.dtype)  # [L]
    pos = x[:, None, :] * res[None, :, None]  # [N,L,3]
    cell = torch.floor(pos)
    frac = pos - cell  # [N,L,3]
    cell = cell.long()
    # clamp the cell so x == 1 stays inside the last cell (frac becomes 1 there)
    hi = (meta.res - 1).clamp_min(0)[None, :, None]
    cell_c = torch.minimum(cell, hi)
    frac = frac + (cell - cell_c).to(x.dtype)
    corners = _CORNERS.to(x.device)  # [8,3]
    c = cell_c[:, :, None, :] + corners[None, None]  # [N,L,8,3]
    # direct index (levels whose grid fits) and spatial hash (the rest), chosen per level
    stride = meta.res + 1  # [L]
    direct = c[..., 0] + c[..., 1] * stride[None, :, None] + c[..., 2] * (stride * stride)[None, :, None]
    hashed = (c[..., 0] * PRIMES[0]) ^ (c[..., 1] * PRIMES[1]) ^ (c[..., 2] * PRIMES[2])
    local = torch.where(meta.hashed[None, :, None], hashed, direct) % meta.sizes[None, :, None]
    idx = local + meta.offsets[None, :, None]
    # trilinear weights: product over axes of frac or 1-frac
    f = frac[:, :, None, :]  # [N,L,1,3]
    w = torch.where(corners[None, None].bool(), f, 1.0 - f).prod(dim=-1)  # [N,L,8]
    return idx, w


def encode_torch(
    x: Tensor,  # [N,3] in [0,1]
    table: Tensor,  # [S,F] flat table of all levels
    cfg: HashGridConfig,
    meta: _LevelMeta,
) -> Tensor:
    """Pure-torch hash encoding → [N, L·F]. Differentiable w.r.t. ``table`` (and ``x`` through the weights)."""
    idx, w = hash_indices(x, cfg, meta)
    n, l = idx.shape[:2]
    feats = nn.functional.embedding(idx.reshape(-1), table).reshape(n, l, 8, -1)  # [N,L,8,F]
    out = (feats * w[..., None].to(table.dtype)).sum(dim=2)  # [N,L,F]
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
