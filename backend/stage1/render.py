"""Differentiable Gaussian splatting (3D Gaussian Splatting, Kerbl et al. 2023; paper §3.1).

One public entry, :func:`render`. On CUDA tensors it calls gsplat's ``rasterization`` once gsplat passed its
self-test on the device (:func:`choose_backend`, backend/accel/fastpath.py: no nvcc for gsplat's JIT, a
compile error or a numeric mismatch means the twin on the same device); elsewhere it runs the pure-torch
twin below with the same maths as gsplat's kernels:

1. 3D covariance Σ = R S Sᵀ Rᵀ from w-first quaternions and scales; world → camera (OpenCV).
2. EWA projection Σ' = J W Σ Wᵀ Jᵀ with the perspective Jacobian J (its x/z, y/z clamped to 1.3× the
   frustum as gsplat does), plus the 0.3 px² low-pass on the 2D covariance; conic = Σ'⁻¹.
3. Culling: near plane (z > 0.01), far plane, non-positive determinant, bounding box outside the image.
   Per-axis radius ⌈3.33·σ⌉ px (gsplat's bound; at 3.33σ a fully opaque Gaussian falls under 1/255).
4. Per (Gaussian, pixel) pair within the radius: α = min(0.999, o·exp(−½ dᵀ Σ'⁻¹ d)), pairs with
   α < 1/255 skipped; front-to-back compositing in depth order with transmittance T_i = Π_{j<i}(1−α_j),
   stopping where T would fall to 1e-4 (gsplat); colour Σ c_i α_i T_i + T_final·background;
   expected depth Σ z_i α_i T_i / Σ α_i T_i.

The torch rasteriser is vectorised over all (view, Gaussian, pixel) pairs: pairs are listed scanline by
scanline inside each Gaussian's α ≥ 1/255 ellipse (capped at 3.33σ), sorted by pixel with a stable
sort of the depth-ordered list, and the
transmittance is a segmented cumulative sum of log(1−α) (float64, so long pixel segments stay exact).
There is no Python loop over Gaussians, pixels or views.

Colour comes from spherical harmonics up to degree 3 (the real SH basis of 3DGS/gsplat) evaluated with
the view direction (Gaussian centre − camera centre), then 0.5 is added and the result clamped to [0,1]
(docs/conventions.md). The same per-view colours are handed to gsplat, so both paths agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..accel.fastpath import FASTPATHS, FastPaths
from ..maths.rotations import quat_scale_to_covar
from .cameras import Cameras
from .gaussians import Gaussians

EPS2D = 0.3  # low-pass filter added to the 2D covariance (px²), hard-coded in gsplat's kernels
ALPHA_MAX = 0.999  # gsplat's clamp (the INRIA code uses 0.99)
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4  # compositing stops before transmittance falls to this
RADIUS_SIGMAS = 3.33

# Real spherical-harmonics constants (Sloan 2013; the 3DGS / gsplat basis).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


@dataclass
class RenderOutput:
    """Result of :func:`render` for B views of N Gaussians.

    Attributes:
        rgb: [B,H,W,3] colour in [0,1] over the background.
        alpha: [B,H,W,1] accumulated opacity.
        depth: [B,H,W,1] expected camera-space depth (Σ w z / Σ w; 0 where nothing was hit).
        means2d: [B,N,2] projected centres in pixels; ``retain_grad``'ed when it requires grad, so
            after ``backward()`` its ``.grad`` holds the view-space positional gradient densify reads.
        radii: [B,N] int pixel radius (max over the two axes), 0 = culled / not visible.
    """

    rgb: Tensor  # [B,H,W,3]
    alpha: Tensor  # [B,H,W,1]
    depth: Tensor  # [B,H,W,1]
    means2d: Tensor  # [B,N,2]
    radii: Tensor  # [B,N]


@dataclass
class Projection:
    """Per-view projected Gaussians (the output of gsplat's ``fully_fused_projection``, unpacked).

    Attributes:
        means2d: [B,N,2] pixel centres. conics: [B,N,3] upper triangle (a, b, c) of Σ'⁻¹.
        covars2d: [B,N,2,2] 2D covariance including the low-pass. depths: [B,N] camera z.
        radii: [B,N,2] int per-axis pixel radius, 0 where culled.
    """

    means2d: Tensor
    conics: Tensor
    covars2d: Tensor
    depths: Tensor
    radii: Tensor


# -- maths shared by both paths ------------------------------------------------------------------
def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis up to ``degree`` (0..3) at unit directions [...,3] → [...,(degree+1)²]."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh degree must be 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def view_colors(g: Gaussians, cams: Cameras) -> Tensor:
    """[B,N,3] colour in [0,1] of every Gaussian seen from every camera (SH with view directions)."""
    sh = g.params["sh"]  # [N,K,3]
    b = len(cams)
    if g.sh_degree == 0:
        rgb = (SH_C0 * sh[:, 0] + 0.5).clamp(0.0, 1.0)
        return rgb[None].expand(b, -1, -1)
    centers = cams.centers().to(sh.device, sh.dtype)  # [B,3]
    dirs = g.means[None] - centers[:, None]  # [B,N,3]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = (g.sh_degree + 1) ** 2
    basis = sh_basis(g.sh_degree, dirs)  # [B,N,K]
    return (torch.einsum("bnk,nkc->bnc", basis, sh[:, :k]) + 0.5).clamp(0.0, 1.0)


def project(
    means: Tensor,  # [N,3]
    covars: Tensor,  # [N,3,3]
    viewmats: Tensor,  # [B,4,4]
    Ks: Tensor,  # [B,3,3]
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    opacities: Tensor | None = None,  # [N]
) -> Projection:
    """EWA projection of 3D Gaussians (gsplat's ``fully_fused_projection``, pinhole, unpacked).

    With ``opacities`` the radii are opacity-aware as in gsplat ≥ 1.5's CUDA kernel
    (ProjectionEWA3DGSFused.cu): a Gaussian with o < 1/255 is culled and the bound is
    min(3.33, √(2 ln(255·o)))·σ, the distance at which it falls under 1/255. Without them the radii are
    ⌈3.33σ⌉ (gsplat's torch reference, which ignores opacities)."""
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    mc = torch.einsum("bij,nj->bni", R, means) + t[:, None]  # [B,N,3]
    cc = torch.einsum("bij,njk,blk->bnil", R, covars, R)  # [B,N,3,3]
    tx, ty, tz = mc.unbind(-1)
    in_depth = (tz > near_plane) & (tz < far_plane)
    # Culled Gaussians get z = 1 so nothing downstream divides by ~0 (their gradients stay finite).
    tz = torch.where(in_depth, tz, torch.ones_like(tz))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    # gsplat clamps the Jacobian's evaluation point to 1.3× the frustum (stable for off-screen centres)
    ux = (tx / tz).clamp(-(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    uy = (ty / tz).clamp(-(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * ux / tz, zero, fy / tz, -fy * uy / tz], dim=-1).reshape(tz.shape + (2, 3))
    cov2d = J @ cc @ J.transpose(-1, -2)  # [B,N,2,2]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)  # [B,N,2]
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_raw = a * c - b * b
    det = det_raw.clamp_min(1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    with torch.no_grad():
        extend = torch.full_like(tz, RADIUS_SIGMAS)
        if opacities is not None:
            o = opacities.detach().to(tz.dtype)[None].expand_as(tz)
            # float32 like the kernel, so the ceil lands on the same integer
            extend = torch.minimum(extend, torch.sqrt(2.0 * torch.log((o / ALPHA_MIN).clamp_min(1.0))))
            extend = torch.where(o < ALPHA_MIN, torch.zeros_like(extend), extend)
        radius = torch.ceil(extend[..., None] * torch.stack([a, c], -1).clamp_min(0).sqrt())  # [B,N,2]
        # non-finite parameters must not reach the integer pixel ranges of the rasteriser
        finite = torch.isfinite(means2d).all(-1) & torch.isfinite(conics).all(-1) & torch.isfinite(radius).all(-1)
        valid = (det_raw > 0) & in_depth & finite & (extend > 0)
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (mx + radius[..., 0] > 0) & (mx - radius[..., 0] < width) & (my + radius[..., 1] > 0) & (my - radius[..., 1] < height)
        radii = torch.where((valid & inside)[..., None], radius, torch.zeros_like(radius)).int()
    return Projection(means2d, conics, cov2d, mc[..., 2], radii)


# -- the torch rasteriser -------------------------------------------------------------------------
def _pairs(proj: Projection, opacities: Tensor, width: int, height: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """List the (Gaussian, pixel) pairs that can pass the α ≥ 1/255 test, front to back per view.

    o·exp(−½ dᵀC d) ≥ 1/255 ⟺ dᵀC d ≤ q = 2·ln(255·o): the pixels of an ellipse, capped at gsplat's
    3.33σ. They are listed scanline by scanline (each row's x-interval solved in closed form), so
    nothing is generated and then thrown away.
    Returns flat Gaussian ids into B·N, pixel x, pixel y and flat pixel ids into B·H·W (int64, [M]).
    """
    depths, radii = proj.depths, proj.radii
    b, n = depths.shape
    dev = depths.device
    visible = radii.amax(-1) > 0  # [B,N]
    order = torch.argsort(torch.where(visible, depths, torch.full_like(depths, float("inf"))), dim=1, stable=True)
    flat = (torch.arange(b, device=dev)[:, None] * n + order)[visible.gather(1, order)]  # [V] by (view, depth)
    m2 = proj.means2d.reshape(-1, 2).index_select(0, flat)
    con = proj.conics.reshape(-1, 3).index_select(0, flat).double()  # (a, b, c) of C = Σ'⁻¹
    o = opacities.double()[None].expand(b, n).reshape(-1).index_select(0, flat)
    # q slightly inflated so rounding never drops a pair; the exact test is applied on the pairs
    q = (2.0 * torch.log((o / ALPHA_MIN).clamp_min(1.0))).clamp_max(RADIUS_SIGMAS**2) * (1 + 1e-6) + 1e-9
    ca, cb, cc = con.unbind(-1)
    det = (ca * cc - cb * cb).clamp_min(1e-30)
    ry = torch.sqrt(q * ca / det)  # half height of the ellipse (= k·σ_y)
    my = m2[:, 1].double()
    y0 = torch.ceil(my - ry - 0.5).clamp(0, height - 1).long()
    y1 = torch.floor(my + ry - 0.5).clamp(0, height - 1).long()
    nrows = (y1 - y0 + 1).clamp_min(0)
    nr = int(nrows.sum())
    row_g = torch.repeat_interleave(torch.arange(flat.shape[0], device=dev), nrows, output_size=nr)
    row_y = y0.index_select(0, row_g) + torch.arange(nr, device=dev) - (torch.cumsum(nrows, 0) - nrows).index_select(0, row_g)
    dy = row_y.double() + 0.5 - my.index_select(0, row_g)
    ra, rb = ca.index_select(0, row_g), cb.index_select(0, row_g)
    disc = ra * q.index_select(0, row_g) - det.index_select(0, row_g) * dy * dy
    half = torch.sqrt(disc.clamp_min(0.0)) / ra
    cx = m2[:, 0].double().index_select(0, row_g) - rb * dy / ra
    x0 = torch.ceil(cx - half - 0.5).clamp(0, width - 1).long()
    x1 = torch.floor(cx + half - 0.5).clamp(0, width - 1).long()
    wx = torch.where(disc >= 0, (x1 - x0 + 1).clamp_min(0), torch.zeros_like(x0))
    total = int(wx.sum())
    rep = torch.repeat_interleave(torch.arange(nr, device=dev), wx, output_size=total)
    px = x0.index_select(0, rep) + torch.arange(total, device=dev) - (torch.cumsum(wx, 0) - wx).index_select(0, rep)
    py = row_y.index_select(0, rep)
    gid = flat.index_select(0, row_g).index_select(0, rep)
    pix = (gid // n) * (height * width) + py * width + px
    return gid, px, py, pix


def _pair_alpha(pf: tuple[Tensor, ...], px: Tensor, py: Tensor) -> Tensor:
    """α of each pair from the gathered per-Gaussian columns pf = (mx, my, a/2, b, c/2, log o, …),
    each [M]: α = min(0.999, exp(log o − σ)), σ = ½(a dx² + c dy²) + b dx dy (fewest big-tensor ops)."""
    mx, my, ha, cb, hc, logo = pf[:6]
    dx = px - mx
    dy = py - my
    sigma = dx * (ha * dx + cb * dy) + hc * dy * dy
    return torch.exp(logo - sigma).clamp_max(ALPHA_MAX)


def rasterize_torch(
    proj: Projection,
    opacities: Tensor,  # [N]
    colors: Tensor,  # [B,N,3]
    background: Tensor,  # [B,3]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back alpha compositing of projected Gaussians → rgb [B,H,W,3], alpha, depth [B,H,W,1]."""
    b, n = proj.depths.shape
    hw = height * width
    dev, dtype = colors.device, colors.dtype
    # one gather per pair (and one scatter in backward) for every per-Gaussian quantity
    feats = torch.cat(
        [
            proj.means2d.reshape(b * n, 2),
            proj.conics.reshape(b * n, 3) * proj.conics.new_tensor([0.5, 1.0, 0.5]),
            torch.log(opacities.clamp_min(1e-30))[None, :, None].expand(b, n, 1).reshape(b * n, 1),
            colors.reshape(b * n, 3),
            proj.depths.reshape(b * n, 1),
        ],
        dim=1,
    )  # [B·N, 10]
    with torch.no_grad():
        gid, px, py, pix = _pairs(proj, opacities.detach(), width, height)
        # stable sort by pixel keeps the per-view depth order inside every pixel's segment
        pix, perm = torch.sort(pix, stable=True)
        gid = gid.index_select(0, perm)
        pxf = px.index_select(0, perm).to(dtype) + 0.5  # pixel centres
        pyf = py.index_select(0, perm).to(dtype) + 0.5
        _, seg_counts = torch.unique_consecutive(pix, return_counts=True)
        seg_start = torch.repeat_interleave(torch.cumsum(seg_counts, 0) - seg_counts, seg_counts)
    # unbind (not column slices) so backward assembles one [M,10] gradient instead of ten
    pf = feats.index_select(0, gid).unbind(1)  # 10 × [M]
    alpha = _pair_alpha(pf, pxf, pyf)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))  # the exact 1/255 test
    log1m = torch.log1p(-alpha.double())
    excl = torch.cumsum(log1m, 0) - log1m  # Σ_{j<i} log(1−α_j) over the whole list
    trans = torch.exp(excl - excl.index_select(0, seg_start)).to(dtype)  # within the pixel's segment
    with torch.no_grad():
        on = trans * (1.0 - alpha) > T_MIN  # gsplat stops before T would drop to 1e-4
    w = torch.where(on, alpha * trans, torch.zeros_like(alpha))  # [M]
    vals = torch.stack([pf[6] * w, pf[7] * w, pf[8] * w, pf[9] * w, w], dim=1)  # rgb, z, 1 weighted
    acc = torch.zeros(b * hw, 5, dtype=dtype, device=dev).index_add(0, pix, vals)
    acc = acc.reshape(b, height, width, 5)
    alpha_img = acc[..., 4:5]
    rgb = acc[..., :3] + (1.0 - alpha_img) * background[:, None, None, :]
    depth = acc[..., 3:4] / alpha_img.clamp_min(1e-10)
    return rgb, alpha_img, depth


# -- public entry ---------------------------------------------------------------------------------
def _background(background: Tensor | None, b: int, device, dtype) -> Tensor:
    if background is None:
        return torch.zeros(b, 3, device=device, dtype=dtype)
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.shape == (3,):
        return bg[None].expand(b, 3)
    if bg.shape == (b, 3):
        return bg
    raise ValueError(f"background must be [3] or [{b},3], got {tuple(bg.shape)}")


def render(
    g: Gaussians,
    cams: Cameras,
    background: Tensor | None = None,  # [3] or [B,3], black when None
    backend: str = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """Render B views of the Gaussians.

    Args:
        g: the Gaussians (parameters on one device).
        cams: B cameras (moved to the Gaussians' device).
        background: colour behind the object, [3] or [B,3] in [0,1].
        backend: "auto" (gsplat on CUDA once it passed its self-test there, see :func:`choose_backend`;
            the torch twin otherwise), "torch" or "gsplat" (forced, CUDA only).
    """
    if backend not in ("auto", "torch", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    if g.n == 0:
        raise ValueError("render: the Gaussian set is empty (n = 0)")
    if not (0 < near_plane < far_plane):
        raise ValueError(f"need 0 < near_plane < far_plane, got {near_plane}, {far_plane}")
    dev, dtype = g.device, g.means.dtype
    if backend == "gsplat" and dev.type != "cuda":
        raise ValueError(f"backend 'gsplat' needs CUDA tensors, the Gaussians are on {dev}")
    cams = cams.to(dev)
    viewmats, Ks = cams.viewmats.to(dtype), cams.Ks.to(dtype)
    if not (torch.isfinite(viewmats).all() and torch.isfinite(Ks).all()):
        raise ValueError("render: camera matrices must be finite")
    b, w, h = len(cams), cams.width, cams.height
    bg = _background(background, b, dev, dtype)
    colors = view_colors(g, cams)  # [B,N,3]
    if backend == "auto":
        backend = choose_backend(dev)
    if backend == "gsplat":
        return _render_gsplat(g, viewmats, Ks, w, h, colors, bg, near_plane, far_plane)
    return _render_torch(g, viewmats, Ks, w, h, colors, bg, near_plane, far_plane)


def _render_torch(g, viewmats, Ks, w, h, colors, bg, near_plane, far_plane) -> RenderOutput:
    covars = quat_scale_to_covar(g.params["quats"], g.scales)
    proj = project(g.means, covars, viewmats, Ks, w, h, EPS2D, near_plane, far_plane, opacities=g.opacities)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    rgb, alpha, depth = rasterize_torch(proj, g.opacities, colors, bg, w, h)
    return RenderOutput(rgb, alpha, depth, proj.means2d, proj.radii.amax(-1))


def _render_gsplat(g, viewmats, Ks, w, h, colors, bg, near_plane, far_plane) -> RenderOutput:
    """gsplat's ``rasterization`` with the arguments that make it compute what :func:`_render_torch` does.

    Conventions (gsplat ≥ 1.5): quaternions w-first (gsplat normalises them), activated scales and
    opacities [N], per-view post-activation colours [B,N,3] with ``sh_degree=None``, OpenCV world→camera
    ``viewmats`` [B,4,4], ``backgrounds`` [B,3]; ``render_mode="RGB+ED"`` appends the expected depth
    Σ w z / Σ w (already divided by alpha, like the twin's); ``radii`` come per axis [B,N,2] and are reduced
    to [B,N] by their max. Runs wherever gsplat's ``fully_fused_projection``, ``isect_tiles``,
    ``isect_offset_encode`` and ``rasterize_to_pixels`` run (CUDA; a test runs it on CPU with torch
    stand-ins for them).
    """
    from gsplat.rendering import rasterization  # imported lazily: CPU use needs no kernels

    rc, ra, meta = rasterization(
        g.means,
        g.rotations,
        g.scales,
        g.opacities,
        colors,  # [B,N,3] per-view colours (SH already evaluated, same clamp as the torch path)
        viewmats,
        Ks,
        w,
        h,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=EPS2D,
        sh_degree=None,
        packed=False,
        absgrad=False,
        rasterize_mode="classic",
        backgrounds=bg,
        render_mode="RGB+ED",
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.ndim == 3:  # gsplat ≥ 1.5 gives per-axis radii [B,N,2]
        radii = radii.amax(-1)
    return RenderOutput(rc[..., :3], ra, rc[..., 3:4], means2d, radii.int())


# -- the fast path's self-test ----------------------------------------------------------------------
SELF_TEST_TOL = 2e-3  # max abs on rgb/alpha (gsplat's fast-math exp vs torch); depth 1e-2 relative


def self_test(device: torch.device | str) -> str:
    """Render a tiny scene with gsplat and with the torch twin on ``device``; raise on any difference.

    Fails with gsplat's own error where its kernels cannot load (no nvcc for the JIT, a compile error) and
    with a ValueError on a numeric mismatch: rgb/alpha beyond :data:`SELF_TEST_TOL`, a different visible
    set, or a non-finite view-space gradient after backward (the backward kernels are exercised too).
    """
    from .cameras import orbit_cameras

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    n = 24
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * 0.5
    quats = torch.randn(n, 4, generator=gen)
    params = {
        "means": means,
        "quats": quats,
        "log_scales": torch.log(0.04 + 0.08 * torch.rand(n, 3, generator=gen)),
        "opacity_logits": torch.logit(0.2 + 0.7 * torch.rand(n, generator=gen)),
        "sh": ((torch.rand(n, 1, 3, generator=gen) - 0.5) / SH_C0),
    }
    cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.0]), torch.tensor([50.0]), 32, 32).to(dev)
    outs = []
    for fn in (_render_gsplat, _render_torch):
        g = Gaussians({k: v.detach().clone().to(dev).requires_grad_(True) for k, v in params.items()}, sh_degree=0)
        colors = view_colors(g, cams)
        bg = torch.full((1, 3), 0.5, device=dev)
        out = fn(g, cams.viewmats.float(), cams.Ks.float(), 32, 32, colors, bg, 0.01, 1e10)
        (out.rgb.sum() + out.alpha.sum()).backward()
        if out.means2d.grad is None or not bool(torch.isfinite(out.means2d.grad).all()):
            raise ValueError(f"{fn.__name__}: no finite view-space gradient after backward")
        outs.append(out)
    a, b = outs
    err = max(float((a.rgb - b.rgb).detach().abs().max()), float((a.alpha - b.alpha).detach().abs().max()))
    if not err <= SELF_TEST_TOL:
        raise ValueError(f"gsplat and the torch twin differ by {err:.3g} (> {SELF_TEST_TOL}) on the self-test scene")
    if not torch.equal(a.radii > 0, b.radii > 0):
        raise ValueError("gsplat and the torch twin disagree on which Gaussians are visible")
    return f"max |rgb, alpha difference| {err:.3g} against the torch twin (tolerance {SELF_TEST_TOL:g})"


def choose_backend(device: torch.device | str, fastpaths: FastPaths = FASTPATHS, test: Callable[[], None] | None = None) -> str:
    """"gsplat" or "torch" for rendering on ``device``: gsplat only on CUDA, only once :func:`self_test`
    passed there (recorded in ``fastpaths`` under "render"); the torch twin on the same device otherwise."""
    dev = torch.device(device)
    if dev.type != "cuda":
        fastpaths.record("render", dev, "torch", "no CUDA device: gsplat's kernels need one")
        return "torch"
    return fastpaths.choose("render", dev, "gsplat", test or (lambda: self_test(dev)))
