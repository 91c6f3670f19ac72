"""The Stage II InstantNGP field (paper §3.2.1).

Points in the scene AABB → hash grid (:mod:`hashgrid`) → density MLP (raw density + geometry features;
density = trunc_exp(raw + blob bias), the threestudio "blob" that starts a sphere at the origin) → colour MLP
(view-independent, sigmoid). The background is a constant colour. Rendering: :mod:`render`; the occupancy grid
that skips empty space: :mod:`occupancy`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .hashgrid import HashGrid, HashGridConfig


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped (torch-ngp / threestudio), so large raw densities don't explode."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


@dataclass(frozen=True)
class NeRFConfig:
    """Field hyper-parameters (official Interactive3D / threestudio implicit-volume defaults)."""

    grid: HashGridConfig = field(default_factory=HashGridConfig)
    aabb_radius: float = 1.0  # the scene box is [-r, r]³ (objects live in a sphere of radius ≈ 1)
    hidden: int = 64
    geo_feat_dim: int = 15
    density_blob_scale: float = 10.0  # density bias at init: scale·(1 − |x|/std)
    density_blob_std: float = 0.5
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not (self.aabb_radius > 0 and math.isfinite(self.aabb_radius)):
            raise ValueError(f"aabb_radius must be > 0, got {self.aabb_radius}")
        if self.hidden < 1 or self.geo_feat_dim < 0:
            raise ValueError(f"hidden must be >= 1 and geo_feat_dim >= 0, got {self.hidden}, {self.geo_feat_dim}")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_out))


@dataclass
class FieldOutput:
    density: Tensor  # [N] σ ≥ 0
    rgb: Tensor  # [N,3] in [0,1]


class NeRFField(nn.Module):
    """Hash grid + density MLP (with blob density bias) + colour MLP.

    Residual fields (:mod:`refine`) add to the raw density and to the colour logits, so ``forward`` exposes
    both through ``raw`` outputs: ``query(x)`` returns (raw_density_pre_bias, rgb_logits).
    """

    def __init__(self, cfg: NeRFConfig = NeRFConfig(), backend: str = "auto", device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = HashGrid(cfg.grid, backend=backend, device=device, seed=seed)
        with torch.random.fork_rng(devices=[]):  # reproducible MLP init without touching the global RNG
            torch.manual_seed(seed)
            self.density_mlp = _mlp(cfg.grid.out_dim, cfg.hidden, 1 + cfg.geo_feat_dim).to(device)
            self.color_mlp = _mlp(cfg.geo_feat_dim if cfg.geo_feat_dim > 0 else cfg.grid.out_dim, cfg.hidden, 3).to(device)
        self.register_buffer("background", torch.tensor(cfg.background, dtype=torch.float32, device=device))

    @property
    def device(self) -> torch.device:
        return self.grid.table.device

    def normalize(self, x: Tensor) -> Tensor:
        """World [N,3] → unit cube [N,3] of the AABB."""
        r = self.cfg.aabb_radius
        return (x + r) / (2 * r)

    def density_bias(self, x: Tensor) -> Tensor:  # [N,3] world → [N]
        c = self.cfg
        return c.density_blob_scale * (1.0 - x.norm(dim=-1) / c.density_blob_std)

    def query(self, x: Tensor, with_features: bool = False) -> tuple[Tensor, ...]:
        """Raw outputs at world points x [N,3]: (density logit incl. bias [N], colour logits [N,3]), and with
        ``with_features`` the hash encoding [N, L·F] too (refinement parts read it, paper §3.2.2)."""
        feats = self.grid(self.normalize(x))
        h = self.density_mlp(feats)
        raw = h[:, 0] + self.density_bias(x)
        geo = h[:, 1:] if self.cfg.geo_feat_dim > 0 else feats
        if with_features:
            return raw, self.color_mlp(geo), feats
        return raw, self.color_mlp(geo)

    def forward(self, x: Tensor) -> FieldOutput:  # [N,3] world points
        raw, logits = self.query(x)
        return FieldOutput(density=trunc_exp(raw), rgb=torch.sigmoid(logits))

