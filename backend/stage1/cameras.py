"""Cameras: the one place where camera conventions are converted (docs/conventions.md).

Blender (and the wire) describe a camera by its ``matrix_world`` (camera → world; the camera looks down
its local −Z with +Y up, the OpenGL convention) and a horizontal field of view. The rasteriser uses
gsplat's convention: ``viewmat`` = world → camera in OpenCV camera space (x right, y down, looking down
+Z) and pixel intrinsics ``K``. The two camera frames differ by ``diag(1, −1, −1)``, so

    viewmat = inv(c2w_blender @ diag(1, −1, −1, 1)),     c2w_blender = inv(viewmat) @ diag(1, −1, −1, 1).

Pixels are square; the principal point is the image centre; ``fx = (W/2) / tan(fov_x/2)``. A Blender
camera with focal length ``lens`` (mm), ``sensor_width`` (mm) and ``sensor_fit`` horizontal (or AUTO
with W ≥ H) has ``fov_x = 2·atan(sensor_width / (2·lens))``.

Also here: threestudio-like orbit sampling (Stage I) and the adaptive zoom-in cameras of paper §3.1.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# OpenCV camera frame = Blender camera frame with y and z flipped.
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_finite(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got non-finite values")


@dataclass(frozen=True)
class Cameras:
    """A batch of B pinhole cameras in gsplat's convention.

    Attributes:
        viewmats: [B,4,4] world → camera, OpenCV camera space (x right, y down, looking down +Z).
        Ks: [B,3,3] pixel intrinsics (fx, fy, cx, cy).
        width, height: image size in pixels (shared by the batch).
    """

    viewmats: Tensor  # [B,4,4]
    Ks: Tensor  # [B,3,3]
    width: int
    height: int

    def __post_init__(self) -> None:
        _check_int("width", self.width)
        _check_int("height", self.height)
        if not isinstance(self.viewmats, Tensor) or self.viewmats.ndim != 3 or self.viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must be a [B,4,4] tensor, got {getattr(self.viewmats, 'shape', type(self.viewmats))}")
        if not isinstance(self.Ks, Tensor) or self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise ValueError(f"Ks must be [{self.viewmats.shape[0]},3,3], got {getattr(self.Ks, 'shape', type(self.Ks))}")

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device) -> "Cameras":
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    def __getitem__(self, idx) -> "Cameras":
        """Sub-batch; an integer index keeps the batch dimension (B = 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height)

    def c2w_blender(self) -> Tensor:
        """[B,4,4] Blender camera ``matrix_world`` (looks down −Z, +Y up)."""
        c2w = torch.linalg.inv(self.viewmats.double())
        flip = torch.tensor(_FLIP_YZ, dtype=torch.float64, device=c2w.device)
        return (c2w * flip[None, None, :]).to(self.viewmats.dtype)

    def centers(self) -> Tensor:
        """[B,3] camera positions in world: −Rᵀt of the rigid viewmat."""
        R = self.viewmats[:, :3, :3]
        t = self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]

    def fov_x(self) -> Tensor:
        """[B] horizontal field of view in radians."""
        return 2.0 * torch.atan(0.5 * self.width / self.Ks[:, 0, 0])


def intrinsics(fov_x: Tensor, width: int, height: int) -> Tensor:
    """[B,3,3] K of square-pixel cameras with the principal point at the image centre."""
    fx = 0.5 * width / torch.tan(0.5 * fov_x)  # [B]
    K = torch.zeros(fov_x.shape[0], 3, 3, dtype=fov_x.dtype, device=fov_x.device)
    K[:, 0, 0] = fx
    K[:, 1, 1] = fx
    K[:, 0, 2] = 0.5 * width
    K[:, 1, 2] = 0.5 * height
    K[:, 2, 2] = 1.0
    return K


def cameras_from_blender(c2w: Tensor, fov_x: float | Tensor, width: int, height: int) -> Cameras:
    """Cameras from Blender ``matrix_world`` matrices.

    Args:
        c2w: [B,4,4] or [4,4] camera → world (Blender: looks down −Z, +Y up).
        fov_x: horizontal field of view in radians, a scalar or [B], in (0, π).
        width, height: image size in pixels.
    """
    _check_int("width", width)
    _check_int("height", height)
    c2w = torch.as_tensor(c2w)
    if c2w.ndim == 2:
        c2w = c2w[None]
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be [B,4,4] or [4,4], got {tuple(c2w.shape)}")
    _check_finite("c2w", c2w)
    dtype = c2w.dtype if c2w.dtype.is_floating_point else torch.float32
    fov = torch.as_tensor(fov_x, dtype=torch.float64, device=c2w.device).reshape(-1)
    if fov.numel() == 1:
        fov = fov.expand(c2w.shape[0])
    if fov.shape[0] != c2w.shape[0]:
        raise ValueError(f"fov_x must be a scalar or [{c2w.shape[0]}], got {fov.numel()} values")
    if not (torch.isfinite(fov).all() and (fov > 0).all() and (fov < math.pi).all()):
        raise ValueError(f"fov_x must be in (0, pi) radians, got {fov.tolist()}")
    c2w64 = c2w.double()
    if abs(float(torch.linalg.det(c2w64[:, :3, :3]).abs().min())) < 1e-12:
        raise ValueError("c2w must be invertible (its 3x3 part is singular)")
    flip = torch.tensor(_FLIP_YZ, dtype=torch.float64, device=c2w.device)
    viewmats = torch.linalg.inv(c2w64 * flip[None, None, :])
    return Cameras(viewmats.to(dtype).contiguous(), intrinsics(fov, width, height).to(dtype), width, height)


def look_at(eye: Tensor, target: Tensor, up=(0.0, 0.0, 1.0)) -> Tensor:
    """[B,4,4] Blender-convention c2w of cameras at ``eye`` [B,3] looking at ``target`` [B,3] (or [3]).

    When the view direction is parallel to ``up`` the camera's x axis falls back to world +X.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device).reshape(-1, 3).expand_as(eye)
    up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).reshape(1, 3).expand_as(eye)
    _check_finite("eye", eye)
    _check_finite("target", target)
    back = eye - target  # Blender camera +Z points away from what it looks at
    dist = back.norm(dim=-1, keepdim=True)
    if (dist < 1e-9).any():
        raise ValueError("look_at: eye and target coincide")
    z = back / dist
    x = torch.linalg.cross(up_t, z)
    xn = x.norm(dim=-1, keepdim=True)
    fallback = torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(x)
    x = torch.where(xn > 1e-6, x / xn.clamp_min(1e-12), fallback)
    y = torch.linalg.cross(z, x)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = x
    c2w[:, :3, 1] = y / y.norm(dim=-1, keepdim=True)
    c2w[:, :3, 2] = z
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


@dataclass(frozen=True)
class OrbitConfig:
    """Orbit camera ranges (threestudio-like, objects of radius ~1). Angles in degrees; ``fov`` is the
    horizontal field of view."""

    elevation_range_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_range_deg: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (1.5, 2.0)
    fov_range_deg: tuple[float, float] = (40.0, 70.0)
    width: int = 64
    height: int = 64

    def __post_init__(self) -> None:
        _check_int("OrbitConfig.width", self.width)
        _check_int("OrbitConfig.height", self.height)
        for name in ("elevation_range_deg", "azimuth_range_deg", "distance_range", "fov_range_deg"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"OrbitConfig.{name} must be finite (lo, hi) with lo <= hi, got {(lo, hi)}")
        if self.distance_range[0] <= 0:
            raise ValueError(f"OrbitConfig.distance_range must be > 0, got {self.distance_range}")
        if not (0 < self.fov_range_deg[0] and self.fov_range_deg[1] < 180):
            raise ValueError(f"OrbitConfig.fov_range_deg must be inside (0, 180), got {self.fov_range_deg}")
        if not (-90 <= self.elevation_range_deg[0] and self.elevation_range_deg[1] <= 90):
            raise ValueError(f"OrbitConfig.elevation_range_deg must be inside [-90, 90], got {self.elevation_range_deg}")


@dataclass(frozen=True)
class OrbitSample:
    """Sampled cameras with the angles guidance uses for view-dependent prompts.

    Attributes:
        cameras: B cameras.
        elevation_deg, azimuth_deg: [B] angles of each camera seen from the target (azimuth 0 = +X,
            90 = +Y; elevation 0 = horizon).
        distance: [B] distance to the target.
        fov_deg: [B] horizontal field of view.
    """

    cameras: Cameras
    elevation_deg: Tensor  # [B]
    azimuth_deg: Tensor  # [B]
    distance: Tensor  # [B]
    fov_deg: Tensor  # [B]


def _orbit_eyes(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return distance[:, None] * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], dim=-1)  # [B,3]


def orbit_cameras(
    elevation_deg: Tensor,  # [B]
    azimuth_deg: Tensor,  # [B]
    distance: Tensor,  # [B]
    fov_deg: Tensor,  # [B] horizontal
    width: int,
    height: int,
    center: Tensor | None = None,  # [3] point looked at; origin when None
) -> Cameras:
    """Cameras at d·(cos e cos a, cos e sin a, sin e) around ``center``, looking at it, world up +Z."""
    el = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1)
    az = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1)
    d = torch.as_tensor(distance, dtype=torch.float32).reshape(-1)
    fov = torch.as_tensor(fov_deg, dtype=torch.float32).reshape(-1)
    b = max(el.numel(), az.numel(), d.numel(), fov.numel())
    el, az, d, fov = (t.expand(b) if t.numel() == 1 else t for t in (el, az, d, fov))
    if not (el.shape == az.shape == d.shape == fov.shape == (b,)):
        raise ValueError(f"orbit_cameras: angles, distance and fov must all be [B], got {el.shape}, {az.shape}, {d.shape}, {fov.shape}")
    if (d <= 0).any():
        raise ValueError(f"orbit_cameras: distance must be > 0, got {d.tolist()}")
    c = torch.zeros(3) if center is None else torch.as_tensor(center, dtype=torch.float32).reshape(3).cpu()
    eyes = _orbit_eyes(el, az, d) + c
    return cameras_from_blender(look_at(eyes, c), torch.deg2rad(fov), width, height)


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_orbit(batch: int, cfg: OrbitConfig, generator: torch.Generator) -> OrbitSample:
    """Random orbit cameras (uniform elevation, azimuth, distance and fov within ``cfg``'s ranges).

    Draws, in order, elevation, azimuth, distance and fov from ``generator`` (CPU), so a run is
    reproducible from the generator's state.
    """
    _check_int("batch", batch)
    el = _uniform(*cfg.elevation_range_deg, batch, generator)
    az = _uniform(*cfg.azimuth_range_deg, batch, generator)
    d = _uniform(*cfg.distance_range, batch, generator)
    fov = _uniform(*cfg.fov_range_deg, batch, generator)
    cams = orbit_cameras(el, az, d, fov, cfg.width, cfg.height)
    return OrbitSample(cams, el, az, d, fov)


def zoom_in_cameras(
    center: Tensor,  # [3]
    radius: float,
    batch: int,
    width: int,
    height: int,
    generator: torch.Generator,
    elevation_range_deg: tuple[float, float] = (-10.0, 60.0),
    margin: float = 1.2,
    distance: float | None = None,
    outward: Tensor | None = None,
    outward_span_deg: float = 90.0,
) -> OrbitSample:
    """Adaptive zoom-in cameras (paper §3.1.5): random views around a region that it fills.

    Cameras sit on a sphere around ``center`` (uniform azimuth, elevation in ``elevation_range_deg``)
    looking at it; the fov is chosen so the region's bounding sphere of radius ``radius·margin`` just
    fills the narrower image side: sin(fov/2) = radius·margin / distance. With ``distance`` None the
    cameras sit at 2.5·radius·margin (fov ≈ 47°). Draws elevation then azimuth from ``generator``.

    ``outward`` [3]: the region's centre relative to the object's (callers pass ``center`` for objects
    around the origin). When it reaches beyond the region (‖outward‖ > radius) and is not near-vertical,
    azimuths are drawn within ±``outward_span_deg`` of its azimuth: a full orbit around a region on the
    surface puts about half of the cameras inside the object, looking at the surface from behind.
    """
    _check_int("batch", batch)
    c = torch.as_tensor(center, dtype=torch.float32).reshape(-1).cpu()
    if c.shape != (3,) or not torch.isfinite(c).all():
        raise ValueError(f"center must be 3 finite values, got {c.tolist()}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be > 0, got {radius}")
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be > 0, got {margin}")
    r = float(radius) * float(margin)
    d = 2.5 * r if distance is None else float(distance)
    if not (math.isfinite(d) and d > r):
        raise ValueError(f"distance must exceed radius*margin = {r}, got {distance}")
    half = math.asin(r / d)  # half-angle subtended by the bounding sphere
    # The sphere must fit the narrower side; the horizontal fov follows from the aspect ratio.
    if width >= height:
        fov_x = 2.0 * math.atan(math.tan(half) * width / height)
    else:
        fov_x = 2.0 * half
    el = _uniform(*elevation_range_deg, batch, generator)
    az = _uniform(-180.0, 180.0, batch, generator)
    if outward is not None:
        o = torch.as_tensor(outward, dtype=torch.float32).reshape(-1).cpu()
        if o.shape != (3,) or not torch.isfinite(o).all():
            raise ValueError(f"outward must be 3 finite values, got {o.tolist()}")
        if not (math.isfinite(outward_span_deg) and 0.0 < outward_span_deg <= 180.0):
            raise ValueError(f"outward_span_deg must be in (0, 180], got {outward_span_deg}")
        horizontal = float(o[:2].norm())
        if float(o.norm()) > radius and horizontal >= 0.3 * float(o.norm()):
            # the same draws, mapped into the window: seeds keep their meaning
            az = math.degrees(math.atan2(float(o[1]), float(o[0]))) + az * (outward_span_deg / 180.0)
            az = torch.remainder(az + 180.0, 360.0) - 180.0
    dist = torch.full((batch,), d)
    fov = torch.full((batch,), math.degrees(fov_x))
    cams = orbit_cameras(el, az, dist, fov, width, height, center=c)
    return OrbitSample(cams, el, az, dist, fov)


def project_points(points: Tensor, cams: Cameras) -> tuple[Tensor, Tensor]:
    """Pinhole projection of world points.

    Args:
        points: [N,3] world positions.
        cams: B cameras.
    Returns:
        pixels [B,N,2] (x right, y down; pixel (i, j)'s centre is at (j+0.5, i+0.5)) and depth [B,N]
        (camera-space z; ≤ 0 means behind the camera, where pixels are meaningless).
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N,3], got {tuple(points.shape)}")
    vm = cams.viewmats.to(points.device, points.dtype)
    K = cams.Ks.to(points.device, points.dtype)
    pc = torch.einsum("bij,nj->bni", vm[:, :3, :3], points) + vm[:, None, :3, 3]  # [B,N,3]
    z = pc[..., 2]
    zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    uv = pc[..., :2] / zs[..., None]
    pix = uv * torch.stack([K[:, 0, 0], K[:, 1, 1]], -1)[:, None] + K[:, None, :2, 2]
    return pix, z
