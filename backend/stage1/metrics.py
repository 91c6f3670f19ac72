"""Stage I quality measures against a reference object: held-out PSNR and the floater share.

The floater share is the part of the rendered opacity that falls outside the reference object's silhouette:
Σ α·[pixel outside] / Σ α over the held-out views. A faint haze of Gaussians around the object (what an SDS
run leaves when it densifies into empty space and never prunes) raises it; a render that stays on the object
scores 0. The silhouette is the reference's alpha ≥ ``SILHOUETTE_ALPHA`` grown by ``margin_px`` pixels, so a
render that matches the reference up to antialiasing of its edge is not counted as floaters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .gaussians import Gaussians
from .render import render

SILHOUETTE_ALPHA = 0.05


def silhouette(ref_alpha: Tensor, margin_px: int = 1, threshold: float = SILHOUETTE_ALPHA) -> Tensor:
    """Boolean silhouette masks [B,H,W] of reference alphas [B,H,W,1]: alpha ≥ threshold, grown by margin_px."""
    if ref_alpha.ndim != 4 or ref_alpha.shape[-1] != 1:
        raise ValueError(f"ref_alpha must be [B,H,W,1], got {tuple(ref_alpha.shape)}")
    if not isinstance(margin_px, int) or margin_px < 0:
        raise ValueError(f"margin_px must be an integer >= 0, got {margin_px!r}")
    mask = (ref_alpha[..., 0] >= threshold).float()[:, None]  # [B,1,H,W]
    if margin_px:
        mask = F.max_pool2d(mask, 2 * margin_px + 1, stride=1, padding=margin_px)
    return mask[:, 0] > 0.5


def floater_share(alpha: Tensor, ref_alpha: Tensor, margin_px: int = 1) -> float:
    """Share of the rendered opacity outside the reference's silhouette, in [0,1] (0 when nothing renders).

    Args:
        alpha: [B,H,W,1] rendered alpha of the trained Gaussians.
        ref_alpha: [B,H,W,1] the reference's alpha from the same cameras.
    """
    if alpha.shape != ref_alpha.shape:
        raise ValueError(f"alpha {tuple(alpha.shape)} and ref_alpha {tuple(ref_alpha.shape)} differ")
    a = alpha[..., 0].double()
    total = float(a.sum())
    if total <= 0.0:
        return 0.0
    return float(a[~silhouette(ref_alpha, margin_px)].sum()) / total


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR (dB) of images in [0,1] (any equal shapes); 120 dB for identical images."""
    if x.shape != y.shape:
        raise ValueError(f"images {tuple(x.shape)} and {tuple(y.shape)} differ")
    mse = float(((x.double() - y.double()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@dataclass(frozen=True)
class ReferenceScore:
    """Held-out PSNR (dB) and floater share (fraction) of Gaussians against a reference object."""

    psnr: float
    floater_share: float


@torch.no_grad()
def score_against_reference(g: Gaussians, reference: Gaussians, cameras, background: Tensor | None = None,
                            margin_px: int = 1) -> ReferenceScore:
    """Render ``g`` and ``reference`` from the same held-out ``cameras`` (background white unless given)."""
    bg = torch.ones(3, device=g.device) if background is None else background
    out = render(g, cameras, bg)
    ref = render(reference, cameras, bg.to(reference.device))
    return ReferenceScore(psnr(out.rgb, ref.rgb.to(out.rgb.device)),
                          floater_share(out.alpha, ref.alpha.to(out.alpha.device), margin_px))
