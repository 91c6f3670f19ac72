"""An optimiser step restricted to some Gaussians (semantic editing §3.1.4, dragging §3.1.3).

Zeroing the gradients outside a part is not enough to freeze it: AdamW's weight decay shrinks every
row, and Adam moments left from earlier Stage I steps keep moving rows with zero gradient. So the step
runs normally and then every row outside the mask — parameter and both moments — is restored from a
copy taken before the step: the rows outside stay bit-identical. (Adam's scalar step counter still
advances; it only affects the bias correction of later steps.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stage1.gaussians import Gaussians


def masked_step(
    g: Gaussians,
    optimizers: dict[str, torch.optim.Optimizer],
    mask: Tensor,  # [N] bool — rows allowed to change
    names: tuple[str, ...] | None = None,  # parameter groups to step; None = all of ``optimizers``
) -> None:
    """Step the optimisers, then restore every row outside ``mask`` exactly; grads are left as they are."""
    if mask.shape != (g.n,) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [{g.n}], got {mask.dtype} {tuple(mask.shape)}")
    names = tuple(optimizers) if names is None else names
    outside = ~mask.to(g.device)
    saved: dict[str, tuple[Tensor, dict[str, Tensor]]] = {}
    for name in names:
        p = g.params[name]
        state = optimizers[name].state.get(p, {})
        moments = {k: v.clone() for k, v in state.items() if isinstance(v, Tensor) and v.shape == p.shape}
        saved[name] = (p.detach().clone(), moments)
    for name in names:
        optimizers[name].step()
    with torch.no_grad():
        for name in names:
            p = g.params[name]
            before, moments = saved[name]
            rows = outside.reshape(-1, *([1] * (p.ndim - 1)))
            p.copy_(torch.where(rows, before, p))
            state = optimizers[name].state.get(p, {})
            for key, value in state.items():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    # A moment created by this very step started at zero.
                    old = moments.get(key, torch.zeros_like(value))
                    value.copy_(torch.where(rows, old, value))
