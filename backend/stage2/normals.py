"""Normals from the density gradient (DreamFusion), for the orientation loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .hashgrid import HashGrid
from .nerf import FieldOutput


def density_normals(field, x: Tensor, method: str = "auto", eps: float = 1e-3) -> tuple["FieldOutput", Tensor]:
    """The field at x [N,3] and its normals n = −∇σ/‖∇σ‖ [N,3] (outward on a solid; DreamFusion's
    "normals from the density gradient"). While grad mode is on, n stays differentiable w.r.t. the
    field's parameters, so a loss on it trains the density.

    ``method``: "analytic" (autograd with create_graph: needs the pure-torch hash grid, whose backward is
    itself differentiable), "finite_difference" (central differences of step ``eps``, 6 more density
    queries; threestudio's other choice), "auto": analytic unless a hash grid runs a CUDA kernel (Triton,
    tcnn), whose backward gives no gradient w.r.t. the points."""
    if method == "auto":
        fused = any(isinstance(m, HashGrid) and m.backend != "torch" for m in field.modules()) if isinstance(field, nn.Module) else False
        method = "finite_difference" if fused and x.device.type == "cuda" else "analytic"
    train = torch.is_grad_enabled()
    if method == "finite_difference":
        offs = torch.eye(3, device=x.device, dtype=x.dtype) * eps
        pts = torch.stack([x[:, None] + offs, x[:, None] - offs], dim=1).reshape(-1, 3)  # [N·2·3, 3]
        d = field(pts).density.reshape(-1, 2, 3)
        out, g = field(x), (d[:, 0] - d[:, 1]) / (2 * eps)
    elif method == "analytic":
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = field(xg)
            (g,) = torch.autograd.grad(out.density.sum(), xg, create_graph=train)
    else:
        raise ValueError(f"method must be 'auto', 'analytic' or 'finite_difference', got {method!r}")
    n = torch.nn.functional.normalize(-g, dim=-1, eps=1e-12)
    if not train:
        out, n = FieldOutput(out.density.detach(), out.rgb.detach()), n.detach()
    return out, n
