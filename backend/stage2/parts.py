"""Part-specific hash tables (paper §3.2.2, Eq. 9): the refinement parts and the field they add to.

A region Q (centre, radius) chosen by the user is intersected with the field's 32³ occupancy grid to give
O_part. Each part owns its own multi-level hash tables (default 8 levels × 2 features × 2^19 entries)
over the bounding box of O_part, and small MLPs producing a residual density and a residual colour that
are added to the frozen base field (Eq. 9):

    σ(x) = exp(σ_base_raw(x) + Σ_k 1[x ∈ O_k] · Δσ_k(h_k(x))),   c(x) = sigmoid(c_base(x) + Σ_k 1[x ∈ O_k] · Δc_k(h_k(x)))

A point outside O_part gets exactly zero features (and zero residual) from that part; parts never share
table entries (each has its own tensor). How the parts are trained is in refine.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hashgrid import HashGrid, HashGridConfig
from .nerf import FieldOutput, NeRFField, OccupancyGrid, trunc_exp


class RegionError(ValueError):
    """The region is invalid or does not touch the occupied space (O_part would be empty)."""


@dataclass(frozen=True)
class PartConfig:
    """A refinement part's capacity (paper defaults: 8 levels, feature dim 2, 2^19 entries)."""

    n_levels: int = 8
    n_features: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447
    hidden: int = 32

    def grid(self) -> HashGridConfig:
        return HashGridConfig(self.n_levels, self.n_features, self.log2_table_size, self.base_resolution, self.per_level_scale)


def region_cells(occupancy: OccupancyGrid, center: Tensor, radius: float) -> Tensor:
    """O_part = Q ∩ occupancy: occupied cells [R,R,R] bool whose centre lies in the sphere Q, plus the
    occupied cell that contains the centre (so a small Q inside one cell is not empty)."""
    if not (math.isfinite(radius) and radius > 0):
        raise RegionError(f"radius must be > 0, got {radius}")
    c = torch.as_tensor(center, dtype=torch.float32, device=occupancy.occ.device).reshape(3)
    if not torch.isfinite(c).all():
        raise RegionError(f"center must be finite, got {c.tolist()}")
    inside = (occupancy.cell_centers() - c).norm(dim=-1) <= radius
    i = occupancy.cell_index(c[None])[0]
    if (c.abs() <= occupancy.aabb_radius).all():
        inside[i[0], i[1], i[2]] = True
    cells = inside & occupancy.occ
    if not bool(cells.any()):
        raise RegionError(
            f"region (center {[round(v, 4) for v in c.tolist()]}, radius {radius}) contains no occupied cell of the "
            f"{occupancy.resolution}³ occupancy grid"
        )
    return cells


class RefinePart(nn.Module):
    """One part: its cells O_part, its own hash tables over O_part's bounding box, residual MLPs."""

    def __init__(self, name: str, cells: Tensor, occupancy: OccupancyGrid, cfg: PartConfig = PartConfig(), seed: int = 0, backend: str = "auto") -> None:
        super().__init__()
        self.name = name
        self.cfg = cfg
        dev = cells.device
        self.register_buffer("cells", cells.clone())  # [R,R,R] bool
        self.aabb_radius = occupancy.aabb_radius
        idx = cells.nonzero()  # [M,3]
        n, r = cells.shape[0], occupancy.aabb_radius
        lo = idx.min(0).values.float() / n * 2 * r - r
        hi = (idx.max(0).values.float() + 1) / n * 2 * r - r
        self.register_buffer("box_lo", lo)
        self.register_buffer("box_hi", hi)
        self.grid = HashGrid(cfg.grid(), backend=backend, device=dev, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(self.grid.out_dim, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 4)).to(dev)
        # zero last layer: a fresh part leaves the field unchanged (Δσ = Δc = 0)
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def contains(self, x: Tensor) -> Tensor:  # [N,3] world → [N] bool: x ∈ O_part
        n, r = self.cells.shape[0], self.aabb_radius
        inside = (x.abs() <= r).all(dim=-1)
        i = torch.floor((x + r) / (2 * r) * n).long().clamp(0, n - 1)
        return self.cells[i[:, 0], i[:, 1], i[:, 2]] & inside

    def features(self, x: Tensor) -> Tensor:
        """[N,3] → [N, L·F]; exactly 0 for points outside O_part (the tables are never read there)."""
        m = self.contains(x)
        out = torch.zeros(x.shape[0], self.grid.out_dim, device=x.device, dtype=self.grid.table.dtype)
        if bool(m.any()):
            u = (x[m] - self.box_lo) / (self.box_hi - self.box_lo)
            out = out.index_put((m.nonzero()[:, 0],), self.grid(u))
        return out

    def residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(Δσ_raw [N], Δc_logits [N,3]), exactly 0 outside O_part."""
        m = self.contains(x)
        d_sig = torch.zeros(x.shape[0], device=x.device)
        d_rgb = torch.zeros(x.shape[0], 3, device=x.device)
        if bool(m.any()):
            u = (x[m] - self.box_lo) / (self.box_hi - self.box_lo)
            h = self.mlp(self.grid(u))
            rows = (m.nonzero()[:, 0],)
            d_sig = d_sig.index_put(rows, h[:, 0].float())
            d_rgb = d_rgb.index_put(rows, h[:, 1:].float())
        return d_sig, d_rgb


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
        if name in self.parts:
            raise ValueError(f"part {name!r} already exists")
        part = RefinePart(name, cells, occupancy, cfg, seed=seed, backend=self.base.grid.backend if self.base.device.type == "cuda" else "torch")
        self.parts[name] = part
        return part

    def forward(self, x: Tensor) -> FieldOutput:  # [N,3]
        with torch.no_grad():  # the base is frozen (Eq. 9)
            raw, logits = self.base.query(x)
        for part in self.parts.values():
            d_sig, d_rgb = part.residual(x)
            raw = raw + d_sig
            logits = logits + d_rgb
        return FieldOutput(density=trunc_exp(raw), rgb=torch.sigmoid(logits))

    @torch.no_grad()
    def density(self, x: Tensor) -> Tensor:
        return self.forward(x).density

    @property
    def aabb_radius(self) -> float:
        return self.base.cfg.aabb_radius
