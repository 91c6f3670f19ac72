"""The occupancy grid over the AABB that lets the renderer skip empty space (paper §3.2.2's 32³ grid).

nerfacc's rule (:func:`update_occupancy`): σ·step maximised over random points per cell, an EMA over updates,
thresholded at min(0.01, mean). Distillation updates it on its schedule; refinement keeps the grid it starts
with, since a part only changes the density inside its own cells, which are occupied cells."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .nerf import NeRFField
from .rays import RenderConfig, render_step_size


@dataclass
class OccupancyGrid:
    """A boolean grid over the AABB [-r, r]³; cell (i, j, k) covers x ∈ [-r + i·2r/R, -r + (i+1)·2r/R).

    ``density`` is nerfacc's ``occs``: the running value each update compares with the threshold (an EMA of
    the max σ·step seen in the cell), None for a grid made from a boolean mask alone.
    """

    occ: Tensor  # [R,R,R] bool, indexed [x, y, z]
    aabb_radius: float
    density: Tensor | None = None  # [R,R,R] float32, nerfacc's occs
    _estimator: object = field(default=None, repr=False, compare=False)  # nerfacc's OccGridEstimator (CUDA), built lazily

    @property
    def resolution(self) -> int:
        return int(self.occ.shape[0])

    def cell_centers(self) -> Tensor:  # [R,R,R,3]
        r, n = self.aabb_radius, self.resolution
        t = (torch.arange(n, device=self.occ.device, dtype=torch.float32) + 0.5) / n * 2 * r - r
        return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1)

    def cell_index(self, x: Tensor) -> Tensor:  # [N,3] world → [N,3] int64 (clamped)
        n = self.resolution
        i = torch.floor((x + self.aabb_radius) / (2 * self.aabb_radius) * n).long()
        return i.clamp(0, n - 1)

    def lookup(self, x: Tensor) -> Tensor:  # [N,3] world → [N] bool; outside the AABB → False
        inside = (x.abs() <= self.aabb_radius).all(dim=-1)
        i = self.cell_index(x)
        return self.occ[i[:, 0], i[:, 1], i[:, 2]] & inside


@dataclass(frozen=True)
class OccupancyConfig:
    """nerfacc's occupancy rule (``OccGridEstimator._update``): a cell's value is σ·step (the opacity of one
    marching step, step = the renderer's) maximised over ``samples_per_cell`` random points in the cell
    (one per octant when there are 8 or more),
    kept as an EMA ``max(decay·old, new)`` over updates; occupied ⇔ value > min(threshold, mean value)."""

    resolution: int = 32  # the paper's 32³
    threshold: float = 0.01  # nerfacc's occ_thre
    ema_decay: float = 0.95  # nerfacc's default
    samples_per_cell: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.resolution <= 512:
            raise ValueError(f"resolution must be in [1, 512], got {self.resolution}")
        if not (self.threshold > 0 and 0.0 <= self.ema_decay < 1.0 and self.samples_per_cell >= 1):
            raise ValueError(f"need threshold > 0, 0 <= ema_decay < 1, samples_per_cell >= 1; got {self.threshold}, {self.ema_decay}, {self.samples_per_cell}")


@torch.no_grad()
def update_occupancy(
    grid: "OccupancyGrid | None",
    field: "NeRFField | DensityFn",
    step_size: float,
    cfg: OccupancyConfig = OccupancyConfig(),
    generator: torch.Generator | None = None,
    chunk: int = 65536,
    within: Tensor | None = None,
) -> OccupancyGrid:
    """One nerfacc-style update: a new :class:`OccupancyGrid` whose ``density`` is
    max(decay·old, max_k σ(x_k)·step_size) and whose ``occ`` is density > min(threshold, mean density).
    ``grid`` None (or of another resolution) starts from zero, i.e. no history.

    ``within`` [R,R,R] bool (e.g. :func:`gaussian_support`) bounds the grid: occ is then the cells above
    min(threshold, mean density inside ``within``) widened by one cell, inside ``within`` (a surface cell whose few
    random samples missed the density stays; the bound keeps the widening, the blob start and floaters off the grid)."""
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    r = field.cfg.aabb_radius if isinstance(field, NeRFField) else field.aabb_radius
    fn = _density_fn(field)
    dev = field.device
    n = cfg.resolution
    base = OccupancyGrid(torch.zeros(n, n, n, dtype=torch.bool, device=dev), r)
    corners = base.cell_centers().reshape(-1, 3) - r / n  # the cells' low corners
    cell = 2 * r / n
    best = torch.zeros(corners.shape[0], device=dev)
    octants = torch.tensor([[(k >> a) & 1 for a in range(3)] for k in range(8)], dtype=torch.float32, device=dev)
    for k in range(cfg.samples_per_cell):
        u = torch.rand(corners.shape[0], 3, generator=generator).to(dev)
        if cfg.samples_per_cell >= 8:  # stratified: each sample in its own octant of the cell, so none is left unseen
            u = 0.5 * (octants[k % 8] + u)
        pts = corners + u * cell
        dens = torch.cat([fn(pts[i : i + chunk]).float() for i in range(0, pts.shape[0], chunk)])
        best = torch.maximum(best, dens * step_size)
    best = best.reshape(n, n, n)
    if grid is not None and grid.density is not None and grid.density.shape == best.shape:
        best = torch.maximum(grid.density.to(dev) * cfg.ema_decay, best)
    if within is None:
        occ = best > min(cfg.threshold, float(best.mean()))
    else:  # nerfacc's rule among the cells that may be occupied (the blob outside them would raise the mean)
        within = within.to(dev)
        thre = min(cfg.threshold, float(best[within].mean())) if bool(within.any()) else cfg.threshold
        occ = torch.nn.functional.max_pool3d((best > thre).float()[None, None], 3, stride=1, padding=1)[0, 0].bool() & within
    return OccupancyGrid(occ, r, best)


def occupancy_from_field(
    field: "NeRFField | DensityFn",
    resolution: int = 32,
    threshold: float = 0.01,
    samples_per_cell: int = 8,
    chunk: int = 65536,
    seed: int = 0,
    step_size: float | None = None,
    within: Tensor | None = None,
) -> OccupancyGrid:
    """A fresh occupancy grid (one :func:`update_occupancy` without history): occupied where σ·step of some
    of ``samples_per_cell`` random points exceeds ``threshold``; ``step_size`` defaults to the step of the
    official 512 samples per box diagonal (:func:`render_step_size`). ``within`` ([R,R,R] bool, e.g.
    :func:`gaussian_support`) bounds it: distillation trains the field only there, so what the field holds
    outside (its start blob) is not the object."""
    cfg = OccupancyConfig(resolution=resolution, threshold=threshold, samples_per_cell=samples_per_cell)  # checks them
    r = field.cfg.aabb_radius if isinstance(field, NeRFField) else field.aabb_radius
    step = render_step_size(r, RenderConfig().n_samples) if step_size is None else step_size
    grid = update_occupancy(None, field, step, cfg, torch.Generator().manual_seed(seed), chunk)
    if within is not None:
        grid.occ &= within.to(grid.occ.device)
    return grid


class DensityFn:
    """Protocol-like base: anything with ``cfg.aabb_radius`` or ``aabb_radius``, ``device`` and
    ``density(x [N,3]) → [N]`` (refined fields provide it)."""

    aabb_radius: float
    device: torch.device

    def density(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _density_fn(field):
    if hasattr(field, "density"):
        return field.density
    return lambda x: field(x).density



@torch.no_grad()
def gaussian_support(means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, resolution: int, aabb_radius: float,
                     max_sigmas: float = 3.33) -> Tensor:
    """The cells [R,R,R] bool over [-r, r]³ where Gaussians can render anything: each Gaussian (means [N,3], scales
    [N,3], quats [N,4] w-first, opacities [N]) marks the cells that meet the axis-aligned box of its ellipsoid at
    k standard deviations, where o·exp(−½k²) = 1/255 (the Gaussian rasteriser's cut-off, stage1/render.py), at most
    ``max_sigmas`` (its 3.33σ bound).

    The Stage II field distilled from these Gaussians needs density only here: distillation intersects its
    occupancy grid with this (the blob start and floaters outside it are never rendered nor meshed)."""
    from ..maths.rotations import quat_scale_to_covar
    from ..stage1.render import ALPHA_MIN

    n = resolution
    occ = torch.zeros(n, n, n, dtype=torch.bool, device=means.device)
    k = torch.sqrt(2.0 * torch.log((opacities.float() / ALPHA_MIN).clamp_min(1.0))).clamp_max(max_sigmas)  # [N]
    live = k > 0
    if not bool(live.any()):
        return occ
    mu, k = means[live].float(), k[live]
    half = k[:, None] * torch.diagonal(quat_scale_to_covar(quats[live].float(), scales[live].float()), dim1=-2, dim2=-1).clamp_min(0).sqrt()
    cell = 2 * aabb_radius / n
    lo = torch.floor((mu - half + aabb_radius) / cell).long()
    hi = torch.floor((mu + half + aabb_radius) / cell).long()
    inside = ((hi >= 0) & (lo < n)).all(dim=-1)  # boxes that meet the grid at all
    lo, hi = lo[inside].clamp(0, n - 1), hi[inside].clamp(0, n - 1)
    span = hi - lo + 1  # [M,3] cells per axis
    small = (span <= 4).all(dim=-1)
    for d in range(64):  # boxes up to 4 cells a side: every offset at once
        off = torch.tensor([d // 16, (d // 4) % 4, d % 4], device=lo.device)
        hit = small & (off < span).all(dim=-1)
        c = lo[hit] + off
        occ[c[:, 0], c[:, 1], c[:, 2]] = True
    for a, b in zip(lo[~small].tolist(), hi[~small].tolist()):  # the few larger Gaussians one by one
        occ[a[0] : b[0] + 1, a[1] : b[1] + 1, a[2] : b[2] + 1] = True
    return occ
