"""The Gaussian set E = {(c, o, μ, Σ)} of paper §3.1, with its optimiser state.

Parameters are stored pre-activation (see docs/conventions.md). Every change of the *number* of
Gaussians — densify, prune, remove a part, merge a part — goes through :func:`keep` or :func:`append`,
which edit the parameters, their Adam moments and the per-Gaussian buffers (part masks, gradient
statistics) together, so that they can never drift apart (as gsplat's ``strategy/ops.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh")


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:
    """[..., 3] colour in [0,1] → [..., 3] DC spherical-harmonics coefficient."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: Tensor) -> Tensor:
    return dc * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


@dataclass(frozen=True)
class LearningRates:
    """Paper §4 (implementation details): AdamW lrs per parameter group."""

    means: float = 0.005
    log_scales: float = 0.003
    quats: float = 0.003
    sh: float = 0.01
    opacity_logits: float = 0.003
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-15


@dataclass
class Gaussians:
    """A set of N anisotropic 3D Gaussians.

    Attributes:
        params: name → leaf tensor with ``requires_grad``; ``means`` [N,3], ``log_scales`` [N,3],
            ``quats`` [N,4] (w,x,y,z), ``opacity_logits`` [N], ``sh`` [N,K,3].
        sh_degree: spherical-harmonics degree (K = (degree+1)²).
        buffers: name → per-Gaussian tensor [N, ...] without gradients (part masks ``part:<name>``,
            densification statistics). Kept in step with ``params`` by :func:`keep` / :func:`append`.
    """

    params: dict[str, Tensor]
    sh_degree: int = 0
    buffers: dict[str, Tensor] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_activated(
        cls,
        means: Tensor,  # [N,3]
        rgb: Tensor,  # [N,3] in [0,1]
        opacity: Tensor,  # [N] in (0,1)
        scales: Tensor,  # [N,3] > 0
        quats: Tensor | None = None,  # [N,4] w-first; identity when None
        sh_degree: int = 0,
        device: torch.device | str = "cpu",
    ) -> "Gaussians":
        n = means.shape[0]
        if quats is None:
            quats = torch.zeros(n, 4)
            quats[:, 0] = 1.0
        opacity = opacity.reshape(n).clamp(1e-6, 1 - 1e-6)
        sh = torch.zeros(n, num_sh_bases(sh_degree), 3)
        sh[:, 0] = rgb_to_sh_dc(rgb.reshape(n, 3).float())
        params = {
            "means": means.reshape(n, 3).float(),
            "log_scales": torch.log(scales.reshape(n, 3).float()),
            "quats": quats.reshape(n, 4).float(),
            "opacity_logits": torch.logit(opacity.float()),
            "sh": sh,
        }
        params = {k: v.detach().to(device).contiguous().requires_grad_(True) for k, v in params.items()}
        return cls(params=params, sh_degree=sh_degree)

    # -- activated views ----------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def scales(self) -> Tensor:
        return torch.exp(self.params["log_scales"])

    @property
    def rotations(self) -> Tensor:
        q = self.params["quats"]
        return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.params["opacity_logits"])

    @property
    def rgb(self) -> Tensor:
        """View-independent colour [N,3] from the DC band."""
        return sh_dc_to_rgb(self.params["sh"][:, 0]).clamp(0.0, 1.0)

    def state_array(self) -> np.ndarray:
        """The wire state frame [N,14] float32 (docs/conventions.md)."""
        with torch.no_grad():
            cols = [self.means, self.rgb, self.opacities[:, None], self.scales, self.rotations]
            return torch.cat(cols, dim=1).float().cpu().numpy()

    # -- copies -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray]:
        """Exact copy of parameters and buffers as numpy arrays (history, checkpoints)."""
        out = {f"param/{k}": v.detach().cpu().numpy().copy() for k, v in self.params.items()}
        out.update({f"buffer/{k}": v.detach().cpu().numpy().copy() for k, v in self.buffers.items()})
        out["sh_degree"] = np.array(self.sh_degree)
        return out

    @classmethod
    def from_snapshot(cls, snap: dict[str, np.ndarray], device: torch.device | str = "cpu") -> "Gaussians":
        params = {
            k[len("param/"):]: torch.from_numpy(np.array(v)).to(device).requires_grad_(True)
            for k, v in snap.items()
            if k.startswith("param/")
        }
        buffers = {k[len("buffer/"):]: torch.from_numpy(np.array(v)).to(device) for k, v in snap.items() if k.startswith("buffer/")}
        return cls(params=params, sh_degree=int(snap["sh_degree"]), buffers=buffers)

    def clone(self) -> "Gaussians":
        return Gaussians(
            params={k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()},
            sh_degree=self.sh_degree,
            buffers={k: v.clone() for k, v in self.buffers.items()},
        )

    # -- parts --------------------------------------------------------------------------------
    def part_mask(self, name: str) -> Tensor:
        """Bool [N] mask of a named part; KeyError if it does not exist."""
        return self.buffers[f"part:{name}"]

    def set_part(self, name: str, mask: Tensor) -> None:
        if mask.shape != (self.n,) or mask.dtype != torch.bool:
            raise ValueError(f"part mask must be bool [{self.n}], got {mask.dtype} {tuple(mask.shape)}")
        self.buffers[f"part:{name}"] = mask.to(self.device)

    def part_names(self) -> list[str]:
        return [k[len("part:"):] for k in self.buffers if k.startswith("part:")]


def make_optimizers(g: Gaussians, lr: LearningRates = LearningRates()) -> dict[str, torch.optim.Optimizer]:
    """One AdamW per parameter group (as gsplat), so rows can be edited group by group."""
    out = {}
    for name in PARAM_NAMES:
        out[name] = torch.optim.AdamW(
            [g.params[name]], lr=getattr(lr, name), betas=lr.betas, eps=lr.eps, weight_decay=lr.weight_decay
        )
    return out


def _edit_rows(g: Gaussians, optimizers: dict[str, torch.optim.Optimizer] | None, fn_param, fn_state) -> None:
    """Apply a row edit to every parameter, its optimiser moments and every buffer."""
    for name in list(g.params):
        old = g.params[name]
        new = fn_param(name, old.detach()).contiguous().requires_grad_(True)
        g.params[name] = new
        if optimizers is not None and name in optimizers:
            opt = optimizers[name]
            group = opt.param_groups[0]
            state = opt.state.pop(old, None)
            group["params"] = [new]
            if state is not None:
                for key, value in state.items():
                    if key != "step" and isinstance(value, Tensor) and value.shape == old.shape:
                        state[key] = fn_state(name, value)
                opt.state[new] = state
    for name in list(g.buffers):
        g.buffers[name] = fn_param(name, g.buffers[name])


def keep(g: Gaussians, optimizers: dict[str, torch.optim.Optimizer] | None, mask: Tensor) -> None:
    """Keep only the Gaussians where ``mask`` [N] bool is True (prune / remove part), in place."""
    if mask.shape != (g.n,) or mask.dtype != torch.bool:
        raise ValueError(f"keep mask must be bool [{g.n}], got {mask.dtype} {tuple(mask.shape)}")
    idx = mask.nonzero(as_tuple=True)[0].to(g.device)
    _edit_rows(g, optimizers, lambda _n, t: t.index_select(0, idx), lambda _n, s: s.index_select(0, idx))


def append(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer] | None,
    new_params: dict[str, Tensor],
    new_buffers: dict[str, Tensor] | None = None,
) -> None:
    """Append M Gaussians (densify / merge part), in place; their Adam moments start at zero.

    Args:
        new_params: every name of ``g.params`` → [M, ...] pre-activation values.
        new_buffers: optional buffer rows [M, ...]; buffers not given are filled with zeros/False.
    """
    missing = set(g.params) - set(new_params)
    if missing:
        raise ValueError(f"append is missing parameters {sorted(missing)}")
    m = int(new_params["means"].shape[0])
    new_buffers = dict(new_buffers or {})

    def cat_param(name: str, t: Tensor) -> Tensor:
        if name in new_params and name in g.params:
            extra = new_params[name].detach().to(t.device, t.dtype)
        else:
            extra = new_buffers.get(name)
            extra = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=t.device) if extra is None else extra.to(t.device, t.dtype)
        return torch.cat([t, extra], dim=0)

    def cat_state(_name: str, s: Tensor) -> Tensor:
        return torch.cat([s, torch.zeros((m, *s.shape[1:]), dtype=s.dtype, device=s.device)], dim=0)

    # Buffers that exist only in new_buffers are created (False/zero for the old rows).
    for name, value in new_buffers.items():
        if name not in g.buffers:
            g.buffers[name] = torch.zeros((g.n, *value.shape[1:]), dtype=value.dtype, device=g.device)
    _edit_rows(g, optimizers, cat_param, cat_state)


def random_in_sphere(n: int, radius: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """[n,3] points uniform in a ball (paper: 4096 random initial points)."""
    d = torch.randn(n, 3, generator=generator)
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    return d * r * radius


def init_random(
    n: int = 4096,
    radius: float = 0.5,
    axes: tuple[float, float, float] | None = None,
    seed: int = 0,
    sh_degree: int = 0,
    device: torch.device | str = "cpu",
) -> Gaussians:
    """Random Gaussians in a sphere (or an ellipsoid with semi-axes ``axes``) with grey colour.

    Initial scale = mean nearest-neighbour spacing of a uniform ball, opacity 0.1 (as 3DGS/gsgen).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    gen = torch.Generator().manual_seed(seed)
    pts = random_in_sphere(n, 1.0, gen)
    pts = pts * torch.tensor(axes if axes is not None else (radius, radius, radius))
    spacing = float(radius) * (4.0 / 3.0 * math.pi / n) ** (1.0 / 3.0)
    rgb = 0.5 + 0.1 * torch.rand(n, 3, generator=gen)
    return Gaussians.from_activated(
        pts, rgb, torch.full((n,), 0.1), torch.full((n, 3), 0.5 * spacing), sh_degree=sh_degree, device=device
    )


def deep_copy_optimizers(optimizers: dict[str, torch.optim.Optimizer] | None) -> dict | None:
    """Deep copies of every optimiser's state dict (undo points, exact pause/resume checkpoints); None → None."""
    if optimizers is None:
        return None
    return {k: copy.deepcopy(v.state_dict()) for k, v in optimizers.items()}
