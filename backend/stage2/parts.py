"""Part-specific hash tables (paper §3.2.2, Eq. 9): the refinement parts and the field they add to.

A region Q (centre, radius) chosen by the user is intersected with the field's 32³ occupancy grid to give
O_part. Each part owns its own multi-level hash tables over the bounding box of O_part, **in coordinates
local to that box**, with its own resolution range: level l has base·s^l cells across the box, up to
``finest_resolution`` — by default twice as fine as the base field's finest level over the same box, so a
part adds resolution, not only capacity (the authors' code: per-part grids up to 4096 cells). Small MLPs
read the part's features together with the frozen base field's features and raw density and produce a
residual density and a residual colour, added *before* the activations (Eq. 9):

    σ(x) = trunc_exp(σ_base_raw(x) + Σ_k 1[x ∈ O_k] · Δσ_k(h_k(x), f_base(x), σ_base_raw(x)))
    c(x) = sigmoid(c_base(x) + Σ_k 1[x ∈ O_k] · Δc_k(…))

A point outside O_part gets exactly zero features (and zero residual) from that part; parts never share
table entries (each has its own tensor). The base field is read with detached parameters, so gradients
reach the points (normals for the orientation loss) but never the base. How the parts are trained is in
refine.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hashgrid import HashGrid, HashGridConfig
from .nerf import FieldOutput, NeRFConfig, NeRFField, trunc_exp
from .occupancy import OccupancyGrid


class RegionError(ValueError):
    """The region is invalid or does not touch the occupied space (O_part would be empty)."""


DEFAULT_REFINE_FACTOR = 2.0  # default finest level: this many times finer than the base's over the part's box
MAX_FINEST_RESOLUTION = 1 << 16


@dataclass(frozen=True)
class PartConfig:
    """A refinement part's capacity and resolution (paper defaults: 8 levels, feature dim 2, 2^19 entries).

    Attributes:
        n_levels, n_features, log2_table_size: the part's tables (paper §3.2.2: 8, 2, 19).
        base_resolution: cells across the part's box at the coarsest level.
        finest_resolution: cells across the part's box at the finest level; None: resolved when the part
            is made (:meth:`resolve`) to ``DEFAULT_REFINE_FACTOR`` × the base field's finest level over the box.
        per_level_scale: growth per level; None: (finest / base)^(1/(L−1)). Set explicitly only by parts
            saved before finest_resolution existed.
        hidden: width of the residual MLP.
        reads_base: the residual MLP reads the base field's features and raw density too (the authors'
            code); False only for parts saved before it did (old checkpoints).
    """

    n_levels: int = 8
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    finest_resolution: int | None = None
    per_level_scale: float | None = None
    hidden: int = 32
    reads_base: bool = True

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.n_features < 1 or self.hidden < 1:
            raise ValueError(f"n_levels, n_features and hidden must be >= 1, got {self.n_levels}, {self.n_features}, {self.hidden}")
        if self.base_resolution < 1:
            raise ValueError(f"base_resolution must be >= 1, got {self.base_resolution}")
        if self.finest_resolution is not None and not (self.base_resolution <= self.finest_resolution <= MAX_FINEST_RESOLUTION):
            raise ValueError(
                f"finest_resolution must be in [base_resolution={self.base_resolution}, {MAX_FINEST_RESOLUTION}], got {self.finest_resolution}"
            )
        if self.per_level_scale is not None and not (1.0 <= self.per_level_scale <= 16.0):
            raise ValueError(f"per_level_scale must be in [1, 16], got {self.per_level_scale}")

    def resolve(self, base: NeRFConfig, box_extent: float) -> "PartConfig":
        """The config with ``finest_resolution`` and ``per_level_scale`` filled in for a part whose box is
        ``box_extent`` wide (its longest side, world units) on the base field ``base`` (a NeRFConfig)."""
        finest = self.finest_resolution
        if finest is None and self.per_level_scale is None:
            base_finest = base.grid.resolutions()[-1] * box_extent / (2 * base.aabb_radius)
            finest = min(MAX_FINEST_RESOLUTION, max(self.base_resolution, math.ceil(DEFAULT_REFINE_FACTOR * base_finest)))
        scale = self.per_level_scale
        if scale is None:
            # tcnn's layout has ceil(base·s^l − 1) + 1 vertices per axis: the 1e-6 shortfall keeps float32
            # rounding from adding a vertex, so the finest level has exactly ``finest`` (checked 17..4096, L 2..16)
            scale = 1.0 if self.n_levels == 1 else max(1.0, (finest / self.base_resolution) ** (1.0 / (self.n_levels - 1)) * (1 - 1e-6))
        elif finest is None:
            finest = int(math.floor(self.base_resolution * scale ** (self.n_levels - 1)))
        return dataclasses.replace(self, finest_resolution=int(finest), per_level_scale=float(scale))

    def grid(self) -> HashGridConfig:
        if self.per_level_scale is None:
            raise ValueError("PartConfig.grid() needs a resolved config (PartConfig.resolve)")
        return HashGridConfig(self.n_levels, self.n_features, self.log2_table_size, self.base_resolution, self.per_level_scale)


def region_cells(occupancy: OccupancyGrid, center: Tensor, radius: float) -> Tensor:
    """O_part = Q ∩ occupancy: occupied cells [R,R,R] bool that meet the sphere Q (closest point of the cell
    within ``radius`` of ``center``). The cells cover all of Q's occupied space: a cell counted by its centre
    alone would leave the rim of Q, up to half a cell deep, where the part cannot refine."""
    if not (math.isfinite(radius) and radius > 0):
        raise RegionError(f"radius must be > 0, got {radius}")
    c = torch.as_tensor(center, dtype=torch.float32, device=occupancy.occ.device).reshape(3)
    if not torch.isfinite(c).all():
        raise RegionError(f"center must be finite, got {c.tolist()}")
    half = occupancy.aabb_radius / occupancy.resolution
    gap = ((occupancy.cell_centers() - c).abs() - half).clamp_min(0.0)  # per-axis distance to the cell box
    inside = gap.norm(dim=-1) <= radius
    cells = inside & occupancy.occ
    if not bool(cells.any()):
        raise RegionError(
            f"region (center {[round(v, 4) for v in c.tolist()]}, radius {radius}) contains no occupied cell of the "
            f"{occupancy.resolution}³ occupancy grid"
        )
    return cells


def cells_box(cells: Tensor, aabb_radius: float) -> tuple[Tensor, Tensor]:
    """World bounding box (lo [3], hi [3]) of the True cells of an [R,R,R] grid over [-r, r]³."""
    idx = cells.nonzero()  # [M,3]
    n, r = cells.shape[0], aabb_radius
    lo = idx.min(0).values.float() / n * 2 * r - r
    hi = (idx.max(0).values.float() + 1) / n * 2 * r - r
    return lo, hi


class RefinePart(nn.Module):
    """One part: its cells O_part, its own hash tables over O_part's box (local coordinates), residual MLPs.

    Args:
        cfg: a resolved :class:`PartConfig` (``RefinedField.add_part`` resolves it).
        base_dim: features the residual MLP reads from the base field (its encoding + 1 raw density), 0
            when ``cfg.reads_base`` is False.
    """

    def __init__(self, name: str, cells: Tensor, occupancy: OccupancyGrid, cfg: PartConfig, base_dim: int = 0, seed: int = 0, backend: str = "auto") -> None:
        super().__init__()
        self.name = name
        self.cfg = cfg
        dev = cells.device
        self.register_buffer("cells", cells.clone())  # [R,R,R] bool
        self.aabb_radius = occupancy.aabb_radius
        lo, hi = cells_box(cells, occupancy.aabb_radius)
        self.register_buffer("box_lo", lo)
        self.register_buffer("box_hi", hi)
        self.grid = HashGrid(cfg.grid(), backend=backend, device=dev, seed=seed)
        self.base_dim = base_dim if cfg.reads_base else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(self.grid.out_dim + self.base_dim, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 4)).to(dev)
        # zero last layer: a fresh part leaves the field unchanged (Δσ = Δc = 0)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def contains(self, x: Tensor) -> Tensor:  # [N,3] world → [N] bool: x ∈ O_part
        n, r = self.cells.shape[0], self.aabb_radius
        inside = (x.abs() <= r).all(dim=-1)
        i = torch.floor((x + r) / (2 * r) * n).long().clamp(0, n - 1)
        return self.cells[i[:, 0], i[:, 1], i[:, 2]] & inside

    def local(self, x: Tensor) -> Tensor:
        """World [N,3] → the part's box as the unit cube [N,3] (its tables' coordinates)."""
        return (x - self.box_lo) / (self.box_hi - self.box_lo)

    def residual(self, x: Tensor, base_features: Tensor | None = None, base_raw: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Δσ_raw [N], Δc_logits [N,3]), exactly 0 outside O_part.

        Args:
            x: [N,3] world points.
            base_features: [N, D] the base field's encoding at x (needed when the part reads the base).
            base_raw: [N] the base field's raw density at x (same).
        """
        m = self.contains(x)
        d_sig = torch.zeros(x.shape[0], device=x.device)
        d_rgb = torch.zeros(x.shape[0], 3, device=x.device)
        if bool(m.any()):
            h = self.grid(self.local(x[m]))
            if self.base_dim:
                if base_features is None or base_raw is None:
                    raise ValueError(f"part {self.name!r} reads the base field: pass base_features and base_raw")
                h = torch.cat([h, base_features[m].to(h.dtype), base_raw[m, None].to(h.dtype)], dim=-1)
            h = self.mlp(h)
            rows = (m.nonzero()[:, 0],)
            d_sig = d_sig.index_put(rows, h[:, 0].float())
            d_rgb = d_rgb.index_put(rows, h[:, 1:].float())
        return d_sig, d_rgb


class _BaseQuery(nn.Module):
    """``base.query(x, with_features=True)`` as a module call (torch.func.functional_call calls forward)."""

    def __init__(self, base: NeRFField) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.base.query(x, with_features=True)


class RefinedField(nn.Module):
    """The frozen base field plus the residuals of its parts (Eq. 9); renders like a NeRFField."""

    def __init__(self, base: NeRFField) -> None:
        super().__init__()
        self.base = base
        self.parts = nn.ModuleDict()

    @property
    def cfg(self):
        return self.base.cfg

    @property
    def background(self) -> Tensor:
        return self.base.background

    @property
    def device(self) -> torch.device:
        return self.base.device

    def add_part(self, name: str, cells: Tensor, occupancy: OccupancyGrid, cfg: PartConfig = PartConfig(), seed: int = 0) -> RefinePart:
        """Make a part on ``cells`` (O_part); ``cfg`` is resolved against the base field here (the part's
        ``cfg`` is the resolved one: store that to rebuild it exactly)."""
        if name in self.parts:
            raise ValueError(f"part {name!r} already exists")
        if not bool(cells.any()):
            raise RegionError(f"part {name!r}: O_part is empty")
        lo, hi = cells_box(cells, occupancy.aabb_radius)
        cfg = cfg.resolve(self.base.cfg, float((hi - lo).max()))
        backend = self.base.grid.backend if self.base.device.type == "cuda" else "torch"
        part = RefinePart(name, cells, occupancy, cfg, base_dim=self.base.grid.out_dim + 1, seed=seed, backend=backend)
        self.parts[name] = part
        return part

    def _base_query(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The base's (raw, logits, features) with its parameters detached: the base never gets a
        gradient (Eq. 9 freezes it), the points still do (density-gradient normals)."""
        if not torch.is_grad_enabled():
            return self.base.query(x, with_features=True)
        frozen = {"base." + k: v.detach() for k, v in self.base.named_parameters()}
        return torch.func.functional_call(_BaseQuery(self.base), frozen, (x,))


    def forward(self, x: Tensor) -> FieldOutput:  # [N,3]
        raw, logits, feats = self._base_query(x)
        for part in self.parts.values():
            d_sig, d_rgb = part.residual(x, feats, raw)
            raw = raw + d_sig
            logits = logits + d_rgb
        return FieldOutput(density=trunc_exp(raw), rgb=torch.sigmoid(logits))

    @torch.no_grad()
    def density(self, x: Tensor) -> Tensor:
        return self.forward(x).density

    @property
    def aabb_radius(self) -> float:
        return self.base.cfg.aabb_radius
