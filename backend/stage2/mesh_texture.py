"""A UV-textured mesh: unwrap with xatlas, bake the field's colour into a texture, pad the charts.

- **Unwrap**: the mesh is cut into pieces of faces whose normals share a dominant axis direction (±x, ±y,
  ±z; connected components of each), and the pieces go to one xatlas atlas (charts, then packing at the
  texture's size with ``padding`` texels between charts). Pre-cut pieces keep xatlas's chart search short
  on closed marching-cubes surfaces; xatlas 0.0.11 also crashed (SIGSEGV) on a whole closed 82k-face sphere
  that it unwraps fine in pieces. xatlas runs in a child process so that a crash in it is a MeshError for
  the request, never the end of the backend. Vertices on chart seams are split (``vmap`` says which
  original vertex each new one copies).
- **Bake**: every texel whose centre falls in a chart triangle gets the colour the field has at the
  corresponding surface point (barycentric interpolation of the triangle's corners, clamped to the
  triangle for edge texels); texels within ``padding`` of a chart take their nearest chart texel's colour,
  so bilinear filtering and mip-maps do not pull in the background at chart borders.

Texture conventions: [S,S,4] uint8 sRGB (the field's colours are display-referred, docs/conventions.md),
row 0 at the top; UVs are v-up (OBJ/Blender): texel (row i, column j) has its centre at
u = (j + ½)/S, v = 1 − (i + ½)/S.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


class TextureError(ValueError):
    """The mesh could not be unwrapped or baked; the message says why."""


def _pieces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[F] piece label: connected components of faces that share a dominant normal direction."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    v = vertices.astype(np.float64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    axis = np.argmax(np.abs(n), axis=1)
    label = axis * 2 + (n[np.arange(len(n)), axis] < 0)
    # faces sharing an edge: sort each face's edges, match equal (a, b) pairs
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    owner = np.tile(np.arange(len(faces)), 3)
    key = edges[:, 0].astype(np.int64) * (int(edges.max()) + 1) + edges[:, 1]
    order = np.argsort(key, kind="stable")
    k, o = key[order], owner[order]
    same = k[1:] == k[:-1]
    a, b = o[:-1][same], o[1:][same]
    keep = label[a] == label[b]
    g = sp.coo_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])), shape=(len(faces), len(faces)))
    _, comp = connected_components(g, directed=False)
    return comp


def _unwrap_here(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas in this process: (vmap [V'] int64, faces [F,3] int32 into the new vertices, uvs [V',2] v-up)."""
    import xatlas

    comp = _pieces(vertices, faces)
    atlas = xatlas.Atlas()
    pieces = []
    for c in range(int(comp.max()) + 1 if len(comp) else 0):
        fi = np.nonzero(comp == c)[0]
        used, local = np.unique(faces[fi], return_inverse=True)
        atlas.add_mesh(np.ascontiguousarray(vertices[used], np.float32), np.ascontiguousarray(local.reshape(-1, 3), np.uint32))
        pieces.append((fi, used))
    chart = xatlas.ChartOptions()
    chart.max_iterations = 1  # the default (1) spelled out: more iterations cost minutes on 100k faces
    pack = xatlas.PackOptions()
    pack.resolution = size
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(chart, pack)
    if atlas.atlas_count != 1:
        raise TextureError(f"the charts did not fit one {size}² texture (xatlas made {atlas.atlas_count} atlases)")
    vmaps, new_faces, uvs, offset = [], np.empty((len(faces), 3), np.int32), [], 0
    for i, (fi, used) in enumerate(pieces):
        vm, idx, uv = atlas[i]
        vmaps.append(used[vm])
        new_faces[fi] = idx.astype(np.int64) + offset
        uvs.append(uv)
        offset += len(vm)
    uv = np.concatenate(uvs).astype(np.float64) if uvs else np.zeros((0, 2))
    uv[:, 1] = 1.0 - uv[:, 1]  # xatlas's v grows with the atlas row: flip to v-up
    return np.concatenate(vmaps).astype(np.int64), new_faces, uv.astype(np.float32)


def _child(argv: list[str]) -> None:
    data = np.load(argv[0])
    vm, f, uv = _unwrap_here(data["vertices"], data["faces"], int(data["size"]), int(data["padding"]))
    np.savez(argv[1], vmap=vm, faces=f, uvs=uv)


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int = 1024, padding: int = 4,
           timeout: float = 900.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap [V,3] / [F,3] with xatlas (in a child process). Returns (vmap [V'], faces [F,3], uvs [V',2],
    charted [F] bool: False for the slivers xatlas left out, which :func:`bake` must not paint).

    Raises TextureError if xatlas is missing, crashes, times out or the charts overflow the texture."""
    try:
        import xatlas  # noqa: F401  (fail here, clearly, rather than in the child)
    except ImportError:
        raise TextureError("UV unwrapping needs the 'xatlas' package: pip install 'interactive3d[texture]'") from None
    faces = np.asarray(faces, np.int64)
    if len(faces) == 0:
        raise TextureError("the mesh has no faces to unwrap")
    with tempfile.TemporaryDirectory(prefix="i3d-unwrap-") as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, vertices=np.asarray(vertices, np.float32), faces=faces, size=size, padding=padding)
        code = f"import sys; from {__name__} import _child; _child(sys.argv[1:])"
        try:
            proc = subprocess.run([sys.executable, "-c", code, src, dst], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TextureError(f"UV unwrapping took over {timeout:g} s ({len(faces)} faces); extract at a lower resolution") from None
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise TextureError(f"UV unwrapping failed ({len(faces)} faces): {tail[0]}")
        out = np.load(dst)
        vmap, new_faces, uvs = out["vmap"], out["faces"], out["uvs"]
    uvs, charted = _adopt_ignored_uvs(vmap, new_faces, uvs, size)
    return vmap, new_faces, uvs, charted


def _adopt_ignored_uvs(vmap: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """xatlas leaves faces it deems degenerate (sub-micrometre marching-cubes slivers) out of its charts,
    their vertices at UV (0, 0); a sliver that shares corners with charted faces then spans the atlas from
    the corner to its chart. Returns (uvs, charted [F]): corners found only on such faces take the UV of a
    charted copy of the same original vertex, or else of another placed corner of their sliver (the sliver
    is far below a texel, so they sample the surface they touch), and the slivers are marked for
    :func:`bake` to skip."""
    uv = uvs.astype(np.float64) * size
    t = uv[faces]
    area = 0.5 * np.abs((t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 2, 0] - t[:, 0, 0]) * (t[:, 1, 1] - t[:, 0, 1]))
    charted_faces = area > 1e-9
    charted = np.zeros(len(uvs), bool)
    charted[faces[charted_faces].ravel()] = True
    lost = ~charted
    if not lost.any():
        return uvs, charted_faces
    best = np.full((int(vmap.max()) + 1, 2), np.nan, np.float32)
    best[vmap[charted]] = uvs[charted]
    adopt = lost & ~np.isnan(best[vmap, 0])
    out = uvs.copy()
    out[adopt] = best[vmap[adopt]]
    # corners that exist only on slivers: the UV of a placed corner of the same sliver
    placed = charted | adopt
    f = faces[~charted_faces]
    has = placed[f]
    ok = has.any(axis=1)
    anchor = out[f[ok, np.argmax(has[ok], axis=1)]]
    for k in range(3):
        v = f[ok, k]
        free = ~placed[v]
        out[v[free]] = anchor[free]
    return out, charted_faces


def bake(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, colour: Callable[[np.ndarray], np.ndarray],
         size: int = 1024, padding: int = 4, chunk: int = 1 << 18, paint: np.ndarray | None = None) -> np.ndarray:
    """The field's colour baked into a [size,size,4] uint8 sRGB texture (alpha 255 on and near charts).

    Args:
        vertices: [V,3] positions; faces: [F,3]; uvs: [V,2] v-up in [0,1].
        colour: [N,3] float32 points → [N,3] sRGB in [0,1] (e.g. the NeRF's rgb), called in chunks.
        padding: texels around each chart filled with its nearest chart texel.
        paint: [F] bool, the faces to rasterise (default all; :func:`unwrap`'s ``charted``).
    """
    from PIL import Image, ImageDraw
    from scipy.ndimage import distance_transform_edt

    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    uv = np.asarray(uvs, np.float64)
    # triangle ids rasterised in texel-centre coordinates (texel j's centre at x = j): id + 1, 0 = empty
    xy = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=1)
    ids = Image.new("I", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    tri = xy[f]
    for t in (range(len(f)) if paint is None else np.nonzero(paint)[0]):
        draw.polygon([tuple(p) for p in tri[t]], fill=int(t) + 1, outline=int(t) + 1)
    tid = np.asarray(ids, np.int64) - 1
    rows, cols = np.nonzero(tid >= 0)
    t = tid[rows, cols]
    # barycentric coordinates of each texel centre in its triangle (clamped onto the triangle)
    p = np.stack([cols, rows], axis=1).astype(np.float64)
    a, b, c = tri[t, 0], tri[t, 1], tri[t, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.clip(np.stack([1.0 - l1 - l2, l1, l2], axis=1), 0.0, None)
    bary /= np.maximum(bary.sum(axis=1, keepdims=True), 1e-12)
    pts = (bary[:, :, None] * v[f[t]]).sum(axis=1).astype(np.float32)
    rgb = np.concatenate([np.asarray(colour(pts[i:i + chunk]), np.float64).reshape(-1, 3) for i in range(0, len(pts), chunk)]) if len(pts) else np.zeros((0, 3))
    tex = np.zeros((size, size, 4), np.uint8)
    tex[rows, cols, :3] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    tex[rows, cols, 3] = 255
    if padding > 0 and len(rows):
        empty = tid < 0
        dist, (ni, nj) = distance_transform_edt(empty, return_indices=True)
        fill = empty & (dist <= padding)
        tex[fill] = tex[ni[fill], nj[fill]]
    return tex


def sample(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear lookup of [S,S,C] ``texture`` at [N,2] v-up UVs (clamped at the border) → [N,C] float64."""
    s_h, s_w = texture.shape[:2]
    x = np.clip(uvs[:, 0] * s_w - 0.5, 0, s_w - 1)
    y = np.clip((1.0 - uvs[:, 1]) * s_h - 0.5, 0, s_h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, s_w - 1), np.minimum(y0 + 1, s_h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float64)
    return (t[y0, x0] * (1 - fx) * (1 - fy) + t[y0, x1] * fx * (1 - fy) + t[y1, x0] * (1 - fx) * fy + t[y1, x1] * fx * fy)
