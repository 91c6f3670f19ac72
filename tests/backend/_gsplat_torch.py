"""gsplat's CUDA entry points, as ``gsplat.rendering.rasterization`` calls them, replaced by torch code so
the project's exact ``rasterization`` call runs on CPU.

What ``rasterization`` calls for our arguments (pinhole, unpacked, no SH, classic mode, not UT/eval3d),
and what stands in for each:

- ``fully_fused_projection``: gsplat's torch reference ``_quat_scale_to_covar_preci`` +
  ``_fully_fused_projection``. The reference ignores ``opacities``, which gsplat 1.5's kernel
  (ProjectionEWA3DGSFused.cu) uses to tighten the radii (cull o < 1/255, bound min(3.33, √(2 ln 255o))·σ),
  so the stand-in applies that rule on top of the reference's output.
- ``isect_tiles``, ``isect_offset_encode``: gsplat's torch references ``_isect_tiles``,
  ``_isect_offset_encode`` (unpacked, unsegmented: the only mode the references support).
- ``rasterize_to_pixels``: **no CPU-runnable torch reference**. gsplat's ``_rasterize_to_pixels`` calls
  ``rasterize_to_indices_in_range`` (CUDA only, no torch twin) and nerfacc's packed
  ``render_weight_from_alpha`` (which raises "Only support cuda inputs" on CPU). The stand-in below walks
  gsplat's own tile lists (``isect_offsets``, ``flatten_ids``) as the forward kernel does
  (RasterizeToPixels3DGSFwd.cu): every pixel of a tile visits the tile's Gaussians in depth order,
  skips σ < 0 or α < 1/255, stops before T would fall to 1e-4; autograd supplies the backward.
"""

from __future__ import annotations

import contextlib

import torch
from gsplat.cuda import _torch_impl as ref

ALPHA_MIN = 1.0 / 255.0


def fully_fused_projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, packed=False, near_plane=0.01,
                           far_plane=1e10, radius_clip=0.0, sparse_grad=False, calc_compensations=False, camera_model="pinhole", opacities=None):
    if packed or sparse_grad or calc_compensations or radius_clip != 0.0 or camera_model != "pinhole":
        raise NotImplementedError("the torch stand-in covers the project's call only (pinhole, unpacked, classic)")
    if covars is None:
        covars, _ = ref._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    radii, means2d, depths, conics, comp = ref._fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane)
    if opacities is not None:
        with torch.no_grad():
            c0, c1, c2 = conics.unbind(-1)
            det_c = c0 * c2 - c1 * c1
            var_x, var_y = c2 / det_c, c0 / det_c  # diagonal of Σ' = conic⁻¹
            o = torch.broadcast_to(opacities[..., None, :], depths.shape)
            extend = torch.minimum(torch.full_like(o, 3.33), torch.sqrt(2.0 * torch.log((o / ALPHA_MIN).clamp_min(1.0))))
            r = torch.stack([torch.ceil(extend * var_x.sqrt()), torch.ceil(extend * var_y.sqrt())], -1)
            mx, my = means2d[..., 0], means2d[..., 1]
            keep = (radii > 0).all(-1) & (o >= ALPHA_MIN) & (r > 0).any(-1)
            keep &= (mx + r[..., 0] > 0) & (mx - r[..., 0] < width) & (my + r[..., 1] > 0) & (my - r[..., 1] < height)
            radii = torch.where(keep[..., None], r, torch.zeros_like(r)).int()
    return radii, means2d, depths, conics, comp


def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False, packed=False, n_images=None,
                image_ids=None, gaussian_ids=None):
    if packed:
        raise NotImplementedError("packed mode has no torch reference")
    return ref._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort)


def isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    return ref._isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def rasterize_to_pixels(means2d, conics, colors, opacities, image_width, image_height, tile_size, isect_offsets, flatten_ids,
                        backgrounds=None, masks=None, packed=False, absgrad=False):
    """Front-to-back compositing over gsplat's tile lists (see the module docstring)."""
    if packed or masks is not None or absgrad:
        raise NotImplementedError("the torch stand-in covers the project's call only")
    image_dims = means2d.shape[:-2]
    ch = colors.shape[-1]
    th, tw = isect_offsets.shape[-2:]
    n_img = int(torch.tensor(image_dims).prod()) if image_dims else 1
    m2 = means2d.reshape(-1, 2)
    con = conics.reshape(-1, 3)
    op = opacities.reshape(-1)
    col = colors.reshape(-1, ch)
    flat_off = isect_offsets.reshape(-1).long()
    n_isects = flatten_ids.shape[0]
    with torch.no_grad():
        # tile of every intersection: its position among the tiles' [start, end) ranges
        ends = torch.cat([flat_off[1:], torch.tensor([n_isects])])
        tile_of = torch.repeat_interleave(torch.arange(flat_off.shape[0]), ends - flat_off)
        gid = flatten_ids.long()
        # every pixel of the tile, for every intersection, in (tile, depth, pixel) order
        j = torch.arange(tile_size * tile_size)
        img = (tile_of // (th * tw))[:, None]
        ty, tx = ((tile_of % (th * tw)) // tw)[:, None], ((tile_of % (th * tw)) % tw)[:, None]
        px = (tx * tile_size + j % tile_size).reshape(-1)
        py = (ty * tile_size + j // tile_size).reshape(-1)
        img = img.expand(-1, j.shape[0]).reshape(-1)
        gid = gid[:, None].expand(-1, j.shape[0]).reshape(-1)
        inside = (px < image_width) & (py < image_height)
        px, py, img, gid = px[inside], py[inside], img[inside], gid[inside]
        pix = (img * image_height + py) * image_width + px
        pix, perm = torch.sort(pix, stable=True)  # keeps each pixel's depth order
        gid, px, py = gid[perm], px[perm], py[perm]
        _, counts = torch.unique_consecutive(pix, return_counts=True)
        seg_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    dx = px.to(m2.dtype) + 0.5 - m2[gid, 0]
    dy = py.to(m2.dtype) + 0.5 - m2[gid, 1]
    c = con[gid]
    sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
    alpha = torch.clamp_max(op[gid] * torch.exp(-sigma), 0.999)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    log1m = torch.log1p(-alpha.double())
    excl = torch.cumsum(log1m, 0) - log1m
    trans = torch.exp(excl - excl[seg_start]).to(alpha.dtype)
    with torch.no_grad():
        # the kernel stops at the first Gaussian that would take T to ≤ 1e-4 (and skips the rest)
        stop = (trans * (1 - alpha) <= 1e-4).long()
        stopped_before = torch.cumsum(stop, 0) - stop
        on = (stopped_before - stopped_before[seg_start]) == 0
        on &= stop == 0
    w = torch.where(on, alpha * trans, torch.zeros_like(alpha))
    total = n_img * image_height * image_width
    out = torch.zeros(total, ch, dtype=col.dtype).index_add(0, pix, w[:, None] * col[gid])
    acc = torch.zeros(total, 1, dtype=col.dtype).index_add(0, pix, w[:, None])
    out = out.reshape(image_dims + (image_height, image_width, ch))
    acc = acc.reshape(image_dims + (image_height, image_width, 1))
    if backgrounds is not None:
        out = out + backgrounds[..., None, None, :] * (1.0 - acc)
    return out, acc


@contextlib.contextmanager
def torch_entry_points(monkeypatch, rasterize=rasterize_to_pixels):
    """Replace the CUDA entry points ``gsplat.rendering`` imported by the torch stand-ins above."""
    import gsplat.rendering as gr

    monkeypatch.setattr(gr, "fully_fused_projection", fully_fused_projection)
    monkeypatch.setattr(gr, "isect_tiles", isect_tiles)
    monkeypatch.setattr(gr, "isect_offset_encode", isect_offset_encode)
    monkeypatch.setattr(gr, "rasterize_to_pixels", rasterize)
    yield
