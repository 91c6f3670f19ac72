"""Multiresolution hash encoding (Müller et al. 2022, InstantNGP) — the Stage II field's encoder, paper §3.2.1.

One layout for every backend: tiny-cuda-nn's ``HashGrid`` (read from its ``grid.h`` / ``common_device.h``,
the layout of v1.6 up to the 2026 head; what was and was not verified is listed in docs/hashgrid.md).
Level ``l`` (float32 arithmetic, as tcnn):

    scale_l = 2^(l · log2(per_level_scale)) · base_resolution − 1,   res_l = ceil(scale_l) + 1 vertices per axis
    pos     = x · scale_l + 0.5 (one rounding, as fmaf),   cell = floor(pos),   frac = pos − cell   (x ∈ [0,1]³)

The 0.5 offset staggers the levels; at the top of a level the +1 corner can be ``res_l`` (one past the last
vertex): dense levels then wrap around, exactly as tcnn ("wraparound indexing in dense grids"). A level's
table has ``min(next_multiple(res_l³, 8), 2^T)`` rows; it is indexed densely, ``(cx + cy·res + cz·res²)
mod rows``, while ``res_l³ ≤ 2^T``, else by the coherent-prime hash ``(cx·1 ⊕ cy·2654435761 ⊕ cz·805459861)
mod 2^T`` (uint32 wrap-around). The levels' tables are concatenated into one table ``[S, F]`` (row-major:
entry-major, feature-minor). tcnn keeps exactly this table as one flat fp32 vector ``params [S·F]``, so a
table trained by any backend loads into any other by a reshape (:func:`table_from_tcnn_params`). A point's
feature at a level is the trilinear interpolation of its cell's eight corners; levels are concatenated.

Backends:
  * ``"torch"``  — pure PyTorch, CPU and GPU, vectorised over levels and corners; the backward is an
    index-add into the table (a small autograd Function). The reference twin of the others.
  * ``"triton"`` — fused forward and backward kernels (:mod:`hashgrid_triton`). On CUDA; on CPU only under
    the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how CI runs them.
  * ``"tcnn"``   — tiny-cuda-nn's HashGrid (not on PyPI), called on this module's own table.
  * ``"auto"``   — on CUDA tcnn when importable (and the config is one tcnn supports), else triton when
    importable; on CPU torch.

A fast backend (triton, tcnn) is used on a device only after a self-test against the torch twin
(:func:`self_test`, run once per device through :data:`~..accel.fastpath.FASTPATHS`); on failure one warning
is logged and the torch twin runs on the same device. The state dict is backend-neutral: ``table [S,F]``
fp32 plus ``layout_version``, whatever the backend.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from ..accel.fastpath import FASTPATHS, canonical_device, triton_interpreted

logger = logging.getLogger(__name__)

PRIMES = (1, 2654435761, 805459861)  # tcnn's coherent_prime_hash factors for x, y, z
BACKENDS = ("auto", "torch", "triton", "tcnn")
LAYOUT_VERSION = 2  # 1: the vertex-aligned grid of before (no 0.5 offset) — its tables cannot be converted
TCNN_FEATURES = (1, 2, 4, 8)  # n_features_per_level values tcnn's HashGrid is compiled for


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
        if not (self.per_level_scale >= 1.0 and math.isfinite(self.per_level_scale)):
            raise ValueError(f"per_level_scale must be >= 1, got {self.per_level_scale}")

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def scales(self) -> np.ndarray:
        """[L] float32 ``scale_l``, computed in float32 as tcnn's ``grid_scale`` (exp2f, log2 of a float)."""
        f32 = np.float32
        log2s = np.log2(f32(self.per_level_scale), dtype=f32)
        lv = np.arange(self.n_levels, dtype=f32)
        return (np.exp2(lv * log2s, dtype=f32) * f32(self.base_resolution) - f32(1.0)).astype(f32)

    def resolutions(self) -> list[int]:
        """Vertices per axis of each level: ``ceil(scale_l) + 1`` (tcnn's ``grid_resolution``)."""
        return [int(math.ceil(float(s))) + 1 for s in self.scales()]

    def level_sizes(self) -> list[int]:
        """Rows of each level's table: the dense grid rounded up to 8 when it fits in 2^T, else 2^T."""
        t = 2**self.log2_table_size
        return [min(t, (r**3 + 7) // 8 * 8) for r in self.resolutions()]

    def level_hashed(self) -> list[bool]:
        t = 2**self.log2_table_size
        return [r**3 > t for r in self.resolutions()]

    def table_rows(self) -> int:
        return sum(self.level_sizes())


# -- the table layout shared with tiny-cuda-nn -----------------------------------------------------
def table_from_tcnn_params(params: Tensor, cfg: HashGridConfig) -> Tensor:
    """tcnn's flat ``params [S·F]`` (fp32 or fp16) → the table ``[S, F]`` fp32 (a copy).

    Both hold level-concatenated rows of F features; the level offsets (rows rounded up to 8, capped at
    2^T) are the same by construction, so this is a reshape. Raises ValueError when the length differs.
    """
    want = cfg.table_rows() * cfg.n_features
    if params.ndim != 1 or params.numel() != want:
        raise ValueError(
            f"tcnn hash-grid params of shape {tuple(params.shape)} cannot be converted to the built-in table: "
            f"this config needs {want} = {cfg.table_rows()} rows x {cfg.n_features} features"
        )
    return params.detach().float().reshape(-1, cfg.n_features).clone()


def tcnn_params_from_table(table: Tensor) -> Tensor:
    """The table ``[S, F]`` → tcnn's flat fp32 ``params [S·F]`` (a copy)."""
    return table.detach().float().reshape(-1).clone()


# -- availability and choice -----------------------------------------------------------------------
def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken build raises more than ImportError (no extension for this GPU, libcuda)
        return False
    return True


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - as above: any failure to import means the fast path is absent
        return False
    return True


def _fast_device_ok(fast: str, device: torch.device) -> bool:
    """Whether ``fast`` can run on ``device`` at all: CUDA, or triton under its interpreter on CPU."""
    if device.type == "cuda":
        return True
    return fast == "triton" and device.type == "cpu" and triton_interpreted()


def resolve_backend(backend: str, device: torch.device | str, cfg: HashGridConfig | None = None) -> str:
    """The backend a hash grid of ``cfg`` uses on ``device``: validated, and for triton/tcnn self-tested.

    An explicit backend that cannot run here (no CUDA, library missing, config tcnn does not support)
    is a ValueError. A fast backend that fails its self-test (compile error, numeric mismatch) logs one
    warning and gives "torch" — so "auto" never leaves a CUDA machine with a grid that crashes.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(canonical_device(device))  # the self-test runs on, and is recorded under, cuda:N
    n_features = cfg.n_features if cfg is not None else 2
    if backend == "torch":
        return "torch"
    if backend == "auto":
        fast = None
        if device.type == "cuda":
            if _tcnn_available() and n_features in TCNN_FEATURES:
                fast = "tcnn"
            elif _triton_available():
                fast = "triton"
        elif _fast_device_ok("triton", device) and _triton_available():
            fast = "triton"
        if fast is None:
            FASTPATHS.record("hashgrid", device, "torch", "no fast path on this device" if device.type != "cuda" else "neither tinycudann nor triton importable")
            return "torch"
    else:
        fast = backend
        if not _fast_device_ok(fast, device):
            hint = " (or TRITON_INTERPRET=1 on CPU)" if fast == "triton" else ""
            raise ValueError(f"backend {fast!r} needs a CUDA device{hint}, got {device}")
        if fast == "tcnn" and not _tcnn_available():
            raise ValueError("backend 'tcnn' requested but tinycudann is not importable")
        if fast == "tcnn" and n_features not in TCNN_FEATURES:
            raise ValueError(f"backend 'tcnn' supports n_features in {TCNN_FEATURES}, got {n_features}; use 'torch' or 'triton'")
        if fast == "triton" and not _triton_available():
            raise ValueError("backend 'triton' requested but triton is not importable")
    return FASTPATHS.choose("hashgrid", device, fast, lambda: self_test(fast, device, n_features))


def loadable_backend(saved: str, device: torch.device | str) -> str:
    """The backend to rebuild a saved grid with on ``device``: the saved one when it can run here, else
    "auto". Every backend reads the same table, so a field trained with tcnn loads where only torch or
    Triton exist (and back) without conversion."""
    if saved not in BACKENDS:
        raise ValueError(f"saved hash-grid backend must be one of {BACKENDS}, got {saved!r}")
    device = torch.device(device)
    if saved in ("auto", "torch"):
        return saved
    here = _fast_device_ok(saved, device) and (_tcnn_available() if saved == "tcnn" else _triton_available())
    if not here:
        logger.info("hash grid saved with backend %r loads on %s with backend 'auto' (same table layout)", saved, device)
    return saved if here else "auto"


# -- the torch twin ---------------------------------------------------------------------------------
class _LevelMeta:
    """Per-level constants as tensors (kept on the table's device)."""

    def __init__(self, cfg: HashGridConfig, device: torch.device) -> None:
        sizes = cfg.level_sizes()
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.total = sum(sizes)
        self.scale = torch.from_numpy(cfg.scales()).to(device)  # [L] float32
        self.res = torch.tensor(cfg.resolutions(), dtype=torch.int64, device=device)  # [L] vertices per axis
        self.sizes = torch.tensor(sizes, dtype=torch.int64, device=device)  # [L]
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)  # [L]
        self.hashed = torch.tensor(cfg.level_hashed(), dtype=torch.bool, device=device)  # [L]
        t = 2**cfg.log2_table_size
        self.mask = t - 1
        # hash primes reduced mod 2^T: only the low T bits of the products survive the mask
        self.primes_host = tuple(p % t for p in PRIMES)
        self.primes = torch.tensor(self.primes_host, dtype=torch.int32, device=device)  # [3]
        st = self.res
        # dense strides (1, res, res²); dense levels have res³ ≤ 2^26, so int32 cannot overflow
        self.strides = torch.stack([torch.ones_like(st), st, st * st], dim=-1).to(torch.int32)  # [L,3]
        self.sizes32 = self.sizes.to(torch.int32)
        self.res32 = self.res.to(torch.int32)
        self.hashed32 = self.hashed.to(torch.int32)
        self.offsets32 = self.offsets.to(torch.int32) if self.total < 2**31 else None
        hashed = cfg.level_hashed()
        self.n_direct = hashed.index(True) if True in hashed else len(hashed)
        if any(not h for h in hashed[self.n_direct :]):
            raise ValueError("direct-indexed levels must precede hashed ones (per_level_scale >= 1 guarantees it)")


def hash_indices(
    x: Tensor,  # [N,3] in [0,1], float32
    cfg: HashGridConfig,
    meta: _LevelMeta,
) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of every (point, level, corner); corner k = (k&1, k>>1&1, k>>2&1).

    Works per axis on [N,L,2] (the cell's low and high coordinate) and combines the three axes by
    broadcasting, so the 8-corner integer work is one xor/add per corner. The hash is computed in int32
    with the primes reduced mod 2^T: the low T bits of products and xors do not depend on the wrapped
    high bits, so ``& (2^T − 1)`` gives exactly tcnn's uint32 hash mod 2^T.

    Returns:
        idx: [N,L,8] int64 rows of the flat table (level offsets included).
        w: [N,L,8] trilinear weights (same dtype as x).
    """
    n = x.shape[0]
    # tcnn's pos_fract: fmaf(scale, x, 0.5), one rounding. Done in float64 (the product of two float32 is
    # exact there) and rounded once to float32, so the twin, the Triton kernels (which do the same) and tcnn
    # agree on the cell and fraction: two roundings would move frac by an ulp of pos, 2.4e-4 at the
    # official grid's finest level.
    pos = (x.double()[:, None, :] * meta.scale.double()[None, :, None] + 0.5).float()  # [N,L,3]
    cell = torch.floor(pos)
    frac = (pos - cell).to(x.dtype)  # [N,L,3]
    c0 = cell.to(torch.int32)
    c = torch.stack([c0, c0 + 1], dim=-1)  # [N,L,3,2]
    # coarse levels (a prefix) index densely: (x + y·res + z·res²) mod rows (the mod is tcnn's wrap-around
    # at the top corner); finer ones hash: xor of c_a·P_a (int32 wrap-around), low T bits.
    k = meta.n_direct
    parts = []
    if k > 0:
        dp = c[:, :k] * meta.strides[:k, :, None]  # [N,k,3,2]
        dense = dp[:, :, 0, None, None, :] + dp[:, :, 1, None, :, None] + dp[:, :, 2, :, None, None]
        parts.append(torch.remainder(dense, meta.sizes32[:k, None, None, None]))
    if k < c.shape[1]:
        hp = c[:, k:] * meta.primes[None, None, :, None]  # [N,L-k,3,2]
        parts.append((hp[:, :, 0, None, None, :] ^ hp[:, :, 1, None, :, None] ^ hp[:, :, 2, :, None, None]) & meta.mask)
    local = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [N,L,2z,2y,2x]
    # int64 for the gather/index_add (CPU index_add_ with int32 indices is ~10× slower)
    if meta.offsets32 is not None:
        idx = (local + meta.offsets32[None, :, None, None, None]).reshape(n, cfg.n_levels, 8).long()
    else:
        idx = (local.long() + meta.offsets[None, :, None, None, None]).reshape(n, cfg.n_levels, 8)
    wa = torch.stack([1.0 - frac, frac], dim=-1)  # [N,L,3,2]
    w = (wa[:, :, 0, None, None, :] * wa[:, :, 1, None, :, None] * wa[:, :, 2, :, None, None]).reshape(n, cfg.n_levels, 8)
    return idx, w


class _InterpolateTable(torch.autograd.Function):
    """out[n,l] = Σ_c w[n,l,c]·table[idx[n,l,c]]; the table gradient is one index_add (CPU's embedding
    backward is ~5× slower), the weight gradient a gather."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        n, l, c = idx.shape
        feats = table.index_select(0, idx.reshape(-1)).reshape(n, l, c, table.shape[1])  # [N,L,8,F]
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
            feats = table.index_select(0, idx.reshape(-1)).reshape(n, l, c, table.shape[1])
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


# -- the module -------------------------------------------------------------------------------------
class HashGrid(nn.Module):
    """The hash encoding as a module: ``forward(x [N,3] in [0,1]) → [N, n_levels·n_features]``.

    Inputs outside [0,1]³ are clamped (callers map their AABB to the unit cube). The only parameter is
    ``table [S, F]`` fp32 whatever the backend (tcnn is called on it), so optimisers, checkpoints and undo
    snapshots see one layout; ``load_state_dict`` also accepts the ``_tcnn.params`` of older tcnn saves and
    refuses layout-1 tables with a ValueError naming both backends.
    """

    def __init__(self, cfg: HashGridConfig = HashGridConfig(), backend: str = "auto", device: torch.device | str = "cpu", seed: int | None = None) -> None:
        super().__init__()
        self._setup(cfg, resolve_backend(backend, device, cfg), torch.device(device), seed)

    @classmethod
    def _unchecked(cls, cfg: HashGridConfig, backend: str, device: torch.device, seed: int | None) -> "HashGrid":
        """A grid on ``backend`` without resolution or self-test (the self-test itself builds these)."""
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj._setup(cfg, backend, device, seed)
        return obj

    def _setup(self, cfg: HashGridConfig, backend: str, device: torch.device, seed: int | None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.meta = _LevelMeta(cfg, device)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init = (torch.rand(self.meta.total, cfg.n_features, generator=gen) * 2 - 1) * cfg.init_scale
        self.table = nn.Parameter(init.to(device))  # [S,F] fp32, the layout of every backend
        self.register_buffer("layout_version", torch.tensor(LAYOUT_VERSION, dtype=torch.int64, device=device))
        # tcnn's module is kept out of the module tree (no parameters, no state): it is called on self.table
        object.__setattr__(self, "_tcnn", _make_tcnn(cfg, device) if backend == "tcnn" else None)

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
        if self.backend == "triton" and _fast_device_ok("triton", x.device):
            from . import hashgrid_triton

            m = self.meta
            levels = (m.scale, m.res32, m.sizes32, m.offsets, m.hashed32)
            return hashgrid_triton.encode(x.float().contiguous(), self.table, levels, (m.mask, m.primes_host[1], m.primes_host[2]))
        if self.backend == "tcnn" and _fast_device_ok("tcnn", x.device):
            return _tcnn_encode(self._tcnn, x.float(), self.table)
        return encode_torch(x.float(), self.table, self.cfg, self.meta)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key, ver_key, legacy = prefix + "table", prefix + "layout_version", prefix + "_tcnn.params"
        if legacy in state_dict:
            # saved by the tcnn backend before the layouts were one: its flat params are this table
            state_dict[key] = table_from_tcnn_params(state_dict.pop(legacy), self.cfg)
            state_dict[ver_key] = torch.tensor(LAYOUT_VERSION)
        if key in state_dict:
            ver = state_dict.get(ver_key)
            if ver is None or int(ver) != LAYOUT_VERSION:
                raise ValueError(
                    f"hash-grid state of layout {1 if ver is None else int(ver)} (saved by the built-in 'torch'/'triton' "
                    f"grid before it took tcnn's layout) cannot be converted for backend {self.backend!r} "
                    f"(layout {LAYOUT_VERSION}: tcnn's 0.5-offset grid); retrain or load it with a matching version"
                )
            got = tuple(state_dict[key].shape)
            if got != tuple(self.table.shape):
                raise ValueError(
                    f"hash-grid table of shape {got} does not fit backend {self.backend!r} with {self.cfg} "
                    f"(table {tuple(self.table.shape)})"
                )
            if state_dict[key].dtype != self.table.dtype:
                state_dict[key] = state_dict[key].to(self.table.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


# -- tiny-cuda-nn -------------------------------------------------------------------------------------
def _make_tcnn(cfg: HashGridConfig, device: torch.device) -> nn.Module:
    """tcnn's HashGrid encoding for ``cfg``, its own initial params dropped (it runs on HashGrid.table)."""
    import tinycudann as tcnn

    enc = tcnn.Encoding(
        3,
        {
            "otype": "HashGrid",
            "n_levels": cfg.n_levels,
            "n_features_per_level": cfg.n_features,
            "log2_hashmap_size": cfg.log2_table_size,
            "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale,
            "interpolation": "Linear",
        },
    )
    want = cfg.table_rows() * cfg.n_features
    if enc.params.numel() != want:
        raise ValueError(
            f"tcnn's HashGrid has {enc.params.numel()} params for {cfg}, the built-in 'torch'/'triton' table "
            f"{want}: the layouts differ, so backend 'tcnn' cannot share the built-in table"
        )
    enc.params = nn.Parameter(torch.empty(0, device=enc.params.device))  # free tcnn's unused initial table
    return enc


def _tcnn_encode(enc: nn.Module, x: Tensor, table: Tensor) -> Tensor:
    """tcnn's encoding of x [N,3] with ``params`` = the table [S,F] flattened (a view: gradients reach it)."""
    out = torch.func.functional_call(enc, {"params": table.reshape(-1)}, (x,))
    return out.float()


# -- the self-test of a fast path --------------------------------------------------------------------
SELF_TEST_CFG = HashGridConfig(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, per_level_scale=2.0)
"""4 levels of 4, 8, 16, 32 vertices per axis: two dense levels (64 and 512 rows), two hashed (4096, 32768 > 2^10)."""

SELF_TEST_TOL = {"triton": 1e-5, "tcnn": 2e-2}
"""Max |fast − twin| relative to max(1, max |twin|), for outputs and table gradients: triton computes in
fp32 (atomics reorder the gradient sums), tcnn in fp16 by default (output and gradients)."""


def self_test_points(device: torch.device, n: int = 256, seed: int = 0) -> Tensor:
    """[n + 24, 3] points: uniform ones plus the cube's corners, face centres and points on grid planes."""
    gen = torch.Generator().manual_seed(seed)
    pts = [torch.rand(n, 3, generator=gen)]
    corners = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in range(8)], dtype=torch.float32)
    pts.append(corners)  # x exactly 0 or 1 on each axis
    pts.append(torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 1.0], [0.0, 0.25, 0.75], [1.0, 0.75, 0.25]]))
    planes = torch.rand(12, 3, generator=gen)
    planes[:, 0] = (torch.arange(12) % 3 + 0.5) / 3.0  # x·3 + 0.5 ≈ integer: on level 0's grid planes
    pts.append(planes)
    return torch.cat(pts).to(device)


def compare_to_twin(fast: str, device: torch.device, cfg: HashGridConfig, x: Tensor, seed: int = 0) -> tuple[float, float]:
    """(max |Δ output|, max |Δ table grad|) of ``fast`` against the torch twin on the same random table
    (uniform in ±1) and the same random output gradient, both divided by max(1, the twin's max |value|)."""
    ref = HashGrid._unchecked(cfg, "torch", device, seed)
    other = HashGrid._unchecked(cfg, fast, device, seed)
    with torch.no_grad():
        ref.table.uniform_(-1.0, 1.0, generator=torch.Generator(device=device).manual_seed(seed))
        other.table.copy_(ref.table)
    a, b = ref(x), other(x)
    gout = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    (a * gout).sum().backward()
    (b * gout).sum().backward()
    a, b = a.detach(), b.detach()
    d_out = float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
    d_grad = float((ref.table.grad - other.table.grad).abs().max()) / max(1.0, float(ref.table.grad.abs().max()))
    return d_out, d_grad


def self_test(fast: str, device: torch.device | str, n_features: int = 2) -> str:
    """Raise unless ``fast`` matches the torch twin on ``device`` (forward and table gradient, dense and
    hashed levels, points on the cube's faces and corners and on grid planes) within :data:`SELF_TEST_TOL`.

    Checks F = 2 (every config of the project) and the caller's n_features when it differs.
    """
    device = torch.device(device)
    x = self_test_points(device)
    measured = []
    for f in sorted({2, n_features}):
        d_out, d_grad = compare_to_twin(fast, device, replace(SELF_TEST_CFG, n_features=f), x)
        if not (d_out <= SELF_TEST_TOL[fast] and d_grad <= SELF_TEST_TOL[fast]):
            raise ValueError(
                f"hash grid {fast!r} differs from the torch twin with {f} features: output {d_out:.3g}, "
                f"table gradient {d_grad:.3g} (tolerance {SELF_TEST_TOL[fast]:g})"
            )
        measured.append(f"F={f}: output {d_out:.3g}, table gradient {d_grad:.3g}")
    return f"max difference from the torch twin {'; '.join(measured)} (tolerance {SELF_TEST_TOL[fast]:g})"
