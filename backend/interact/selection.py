"""Selecting a part P of the Gaussian set (paper §3.1.1): in 3D or from 2D masks.

Every selector returns a bool mask [N]; the caller stores it as a named part (``Gaussians.set_part``).
All are vectorised over the Gaussians (no Python loop per Gaussian).

- 3D: an index list, a sphere, an axis-aligned box, an oriented box given as a 4×4 matrix.
- 2D: masks in one or more views; a Gaussian is in P iff its projected centre falls inside the mask
  in *every* masked view (the paper uses 2 views), optionally only where it is not occluded, i.e.
  its camera depth is ≤ the rendered depth at that pixel + a tolerance.
- SAM (optional): :func:`sam_masks` turns clicked points into masks when ``segment_anything`` and a
  checkpoint are available; nothing else depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..stage1.cameras import Cameras, project_points


class SegmentorUnavailableError(RuntimeError):
    """``segment_anything`` is not installed or its checkpoint is missing."""


def _check_points(means: Tensor) -> None:
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N,3], got {tuple(means.shape)}")


def _vec3(v, name: str, device) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
    if t.shape != (3,) or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be a finite 3-vector, got {t.tolist()}")
    return t


def select_indices(n: int, indices) -> Tensor:
    """Indices (any int sequence / array / tensor) → bool [n]; ValueError if one is outside [0, n)."""
    arr = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices).reshape(-1)
    if arr.size == 0:
        raise ValueError("indices is empty")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got dtype {arr.dtype}")
    idx = torch.from_numpy(arr.astype(np.int64))
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"indices must lie in [0, {n}), got min {lo} max {hi}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask


def select_sphere(means: Tensor, center, radius: float) -> Tensor:
    """means [N,3] → bool [N]: ‖μ − c‖₂ ≤ r (also Eq. 3's active set)."""
    _check_points(means)
    c = _vec3(center, "center", means.device)
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a number, got {radius!r}") from None
    if not (np.isfinite(r) and r > 0):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    d2 = ((means.detach() - c) ** 2).sum(dim=1)
    return d2 <= r**2


def select_aabb(means: Tensor, lo, hi) -> Tensor:
    """means [N,3] → bool [N]: lo ≤ μ ≤ hi per axis (closed box)."""
    _check_points(means)
    lo_t, hi_t = _vec3(lo, "min", means.device), _vec3(hi, "max", means.device)
    if (lo_t > hi_t).any():
        raise ValueError(f"box min must be ≤ max on every axis, got min {lo_t.tolist()} max {hi_t.tolist()}")
    m = means.detach()
    return ((m >= lo_t) & (m <= hi_t)).all(dim=1)


def select_oriented_box(means: Tensor, box_matrix: Tensor) -> Tensor:
    """means [N,3] → bool [N] inside an oriented box.

    ``box_matrix`` [4,4] maps the cube [−1,1]³ to the box (Blender: the ``matrix_world`` of a default
    cube, whose vertices are at ±1). μ is inside iff ‖M⁻¹μ‖∞ ≤ 1.
    """
    _check_points(means)
    m = torch.as_tensor(box_matrix, dtype=torch.float64)
    if m.shape != (4, 4) or not torch.isfinite(m).all():
        raise ValueError(f"box matrix must be a finite [4,4], got shape {tuple(m.shape)}")
    det = float(torch.linalg.det(m[:3, :3]))
    if abs(det) < 1e-12:
        raise ValueError(f"box matrix is singular (det {det:.3g})")
    inv = torch.linalg.inv(m).to(means.device)
    local = means.detach().double() @ inv[:3, :3].T + inv[:3, 3]
    return (local.abs() <= 1.0 + 1e-9).all(dim=1)


@dataclass(frozen=True)
class MaskSelectConfig:
    """Options of :func:`select_by_masks`."""

    occlusion_aware: bool = False  # require camera depth ≤ rendered depth + tolerance in each view
    depth_tolerance: float = 0.05  # world units; rendered depth is the alpha-weighted expected depth


def select_by_masks(
    means: Tensor,  # [N,3]
    cameras: Cameras,  # B views
    masks: Tensor,  # [B,H,W] bool / uint8 (non-zero = inside), row 0 at the top
    rendered_depth: Tensor | None = None,  # [B,H,W] or [B,H,W,1]; needed when occlusion_aware
    cfg: MaskSelectConfig = MaskSelectConfig(),
) -> Tensor:
    """bool [N]: projected centre inside the mask in every view (and visible when occlusion-aware).

    A centre behind a camera or outside an image counts as outside that view's mask. Pixel (row v,
    column u) covers the projected coordinates [u, u+1) × [v, v+1) (gsplat's pixel convention).
    Rendered depth ≤ 0 (background) counts as unoccluded.
    """
    _check_points(means)
    b = len(cameras)
    if masks.ndim != 3 or masks.shape[0] != b:
        raise ValueError(f"masks must be [{b},H,W] (one per camera), got {tuple(masks.shape)}")
    h, w = int(masks.shape[1]), int(masks.shape[2])
    if (h, w) != (cameras.height, cameras.width):
        raise ValueError(f"mask size {w}x{h} differs from the cameras' {cameras.width}x{cameras.height}")
    if cfg.occlusion_aware:
        if rendered_depth is None:
            raise ValueError("occlusion_aware selection needs rendered_depth")
        rendered_depth = rendered_depth.reshape(b, h, w)
    with torch.no_grad():
        pix, depth = project_points(means.detach(), cameras)  # [B,N,2], [B,N]
        u = torch.floor(pix[..., 0])
        v = torch.floor(pix[..., 1])
        valid = (depth > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & torch.isfinite(pix).all(-1)
        ui = u.clamp(0, w - 1).long()
        vi = v.clamp(0, h - 1).long()
        flat = vi * w + ui  # [B,N]
        inside = masks.reshape(b, h * w).to(means.device).bool().gather(1, flat) & valid
        if cfg.occlusion_aware:
            d = rendered_depth.reshape(b, h * w).to(means.device).gather(1, flat)
            visible = (d <= 0) | (depth <= d + cfg.depth_tolerance)
            inside = inside & visible
        return inside.all(dim=0)


def sam_masks(
    image: np.ndarray,  # [H,W,3] float in [0,1] or uint8
    points: np.ndarray,  # [P,2] pixel (x, y) clicks on the part
    checkpoint: str | Path,
    model_type: str = "vit_h",
    device: str = "cpu",
) -> np.ndarray:
    """Segment Anything: the best mask [H,W] bool for the clicked points (all labelled foreground).

    Raises:
        SegmentorUnavailableError: ``segment_anything`` is not installed or the checkpoint is missing.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise SegmentorUnavailableError(f"SAM checkpoint not found: {str(ckpt)!r}")
    try:
        from segment_anything import (  # optional dependency
            SamPredictor,
            sam_model_registry,
        )
    except ImportError as exc:
        raise SegmentorUnavailableError(
            "SAM needs the optional package segment-anything "
            "(pip install git+https://github.com/facebookresearch/segment-anything)"
        ) from exc
    if model_type not in sam_model_registry:
        raise ValueError(f"model_type must be one of {sorted(sam_model_registry)}, got {model_type!r}")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    predictor = SamPredictor(sam_model_registry[model_type](checkpoint=str(ckpt)).to(device))
    predictor.set_image(img)
    masks, scores, _ = predictor.predict(
        point_coords=pts, point_labels=np.ones(len(pts), dtype=np.int64), multimask_output=True
    )
    return masks[int(np.argmax(scores))].astype(bool)
