"""PlayCanvas/SuperSplat compressed .ply: Gaussians quantised in chunks of 256 (what SuperSplat saves
and splat-transform writes as ``*.compressed.ply``).

numpy only. Layout (a binary little-endian PLY with two or three elements):

- ``chunk`` (⌈N/256⌉ rows, float): ``min_x min_y min_z max_x max_y max_z``, ``min_scale_{x,y,z}
  max_scale_{x,y,z}`` (log scales) and optionally ``min_r min_g min_b max_r max_g max_b`` (colour
  = 0.5 + C0·f_dc; without them colours span [0, 1]).
- ``vertex`` (N rows, uint): ``packed_position`` and ``packed_scale`` 11-10-11 bits (x high) of the
  value's place between its chunk's min and max; ``packed_rotation`` 2-10-10-10: the index of the
  largest component of the unit w-first quaternion (made positive), then the other three in order as
  10-bit unorm of q·√2/2 + 0.5; ``packed_color`` 8-8-8-8: r g b (chunk-normalised) and sigmoid(opacity).
- ``sh`` (optional, N rows, uchar): ``f_rest_k`` (INRIA channel-major order) as trunc((v/8 + 0.5)·256).

Quantisation (per chunk): positions to 1/2047 (x, z) or 1/1023 (y) of the chunk's extent, log scales
likewise, colours to 1/255 of the chunk's range, opacity to 1/255, quaternion components to ≈ 1/1447,
SH to 1/32. The writer orders the Gaussians along a Morton (Z-order) curve, as splat-transform does, so
a chunk covers a small region; the file's order is therefore not the input's.
"""

from __future__ import annotations

import os

import numpy as np

from .files import atomic_write
from .splat_data import SH_C0, PlyFormatError, SplatData, open_source, parse_ply_elements, sigmoid, source_name

CHUNK = 256
_CHUNK_BOUNDS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
                 "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z")
_CHUNK_COLOURS = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
_VERTEX = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
_SQRT1_2 = np.float64(np.sqrt(0.5))
# sigmoid(opacity) of 0 or 1 (bytes 0 and 255) has no finite logit: clamp half a step inside
_OPACITY_EPS = 0.5 / 255.0


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((v >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)


def _pack_unorm(t: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def read_compressed_ply(source) -> SplatData:
    """Read a compressed .ply (path or bytes) into SplatData (pre-activation, file order)."""
    name = source_name(source)
    with open_source(source) as f:
        fmt, elements = parse_ply_elements(f)
        if fmt != "binary_little_endian":
            raise PlyFormatError(f"{name}: a compressed .ply must be binary_little_endian, got {fmt}")
        by_name = {e.name: e for e in elements}
        if [e.name for e in elements][:2] != ["chunk", "vertex"] or set(by_name) - {"chunk", "vertex", "sh"}:
            raise PlyFormatError(f"{name}: a compressed .ply has elements chunk, vertex[, sh]; got {[e.name for e in elements]}")
        chunk_el, vert_el = by_name["chunk"], by_name["vertex"]
        chunk_props = [p for p, _ in chunk_el.props]
        if chunk_props not in (list(_CHUNK_BOUNDS), list(_CHUNK_BOUNDS + _CHUNK_COLOURS)) or any(t not in ("float", "float32") for _, t in chunk_el.props):
            raise PlyFormatError(f"{name}: unexpected chunk properties {chunk_props}")
        if [p for p, _ in vert_el.props] != list(_VERTEX) or any(t not in ("uint", "uint32") for _, t in vert_el.props):
            raise PlyFormatError(f"{name}: unexpected compressed vertex properties {[p for p, _ in vert_el.props]}")
        n = vert_el.count
        if chunk_el.count != -(-n // CHUNK):
            raise PlyFormatError(f"{name}: {n} Gaussians need {-(-n // CHUNK)} chunks, the header says {chunk_el.count}")
        sh_el = by_name.get("sh")
        if sh_el is not None:
            if sh_el.count != n or len(sh_el.props) not in (9, 24, 45) or any(t not in ("uchar", "uint8") for _, t in sh_el.props):
                raise PlyFormatError(f"{name}: the sh element must hold {n} rows of 9, 24 or 45 uchar f_rest_*")
        tables = {}
        for el in elements:
            dt = el.dtype("<")
            body = f.read(dt.itemsize * el.count)
            if len(body) != dt.itemsize * el.count:
                raise PlyFormatError(f"{name}: file truncated in element {el.name!r}")
            tables[el.name] = np.frombuffer(body, dtype=dt)

    ch, v = tables["chunk"], tables["vertex"]
    ci = np.arange(n) // CHUNK

    def lerp(lo: str, hi: str, t: np.ndarray) -> np.ndarray:
        a, b = ch[lo].astype(np.float64)[ci], ch[hi].astype(np.float64)[ci]
        return a * (1 - t) + b * t

    pos, rot = v["packed_position"].astype(np.uint32), v["packed_rotation"].astype(np.uint32)
    scl, col = v["packed_scale"].astype(np.uint32), v["packed_color"].astype(np.uint32)
    means = np.stack([lerp("min_x", "max_x", _unorm(pos, 21, 11)), lerp("min_y", "max_y", _unorm(pos, 11, 10)),
                      lerp("min_z", "max_z", _unorm(pos, 0, 11))], axis=1)
    log_scales = np.stack([lerp("min_scale_x", "max_scale_x", _unorm(scl, 21, 11)),
                           lerp("min_scale_y", "max_scale_y", _unorm(scl, 11, 10)),
                           lerp("min_scale_z", "max_scale_z", _unorm(scl, 0, 11))], axis=1)
    # rotation: largest index in the top 2 bits, the other three (in order) below it
    others = np.stack([(_unorm(rot, s, 10) - 0.5) / _SQRT1_2 for s in (20, 10, 0)], axis=1)
    largest = (rot >> np.uint32(30)).astype(np.int64)
    quats = np.empty((n, 4), np.float64)
    big = np.sqrt(np.maximum(0.0, 1.0 - (others**2).sum(axis=1)))
    for k in range(4):
        sel = largest == k
        rest = [i for i in range(4) if i != k]
        quats[sel, k] = big[sel]
        quats[np.ix_(sel, rest)] = others[sel]
    rgb = np.stack([_unorm(col, s, 8) for s in (24, 16, 8)], axis=1)
    if "min_r" in ch.dtype.names:
        rgb = np.stack([lerp(f"min_{c}", f"max_{c}", rgb[:, i]) for i, c in enumerate("rgb")], axis=1)
    alpha = np.clip(_unorm(col, 0, 8), _OPACITY_EPS, 1 - _OPACITY_EPS)
    m = 0
    sh_rest = np.zeros((n, 0, 3), np.float32)
    if sh_el is not None:
        m = len(sh_el.props) // 3
        sh_rest = np.zeros((n, m, 3), np.float32)
        raw = tables["sh"]
        for c in range(3):
            for k in range(m):
                b = raw[f"f_rest_{c * m + k}"].astype(np.float64)
                t = np.where(b == 0, 0.0, np.where(b == 255, 1.0, (b + 0.5) / 256.0))
                sh_rest[:, k, c] = (t - 0.5) * 8.0
    return SplatData(
        means=means.astype(np.float32),
        sh_dc=((rgb - 0.5) / SH_C0).astype(np.float32),
        sh_rest=sh_rest,
        opacity_logits=np.log(alpha / (1 - alpha)).astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
    )


def morton_order(points: np.ndarray) -> np.ndarray:
    """Indices [N] sorting ``points`` [N,3] along a 3D Morton curve (10 bits per axis over their box)."""
    p = np.asarray(points, np.float64)
    if len(p) == 0:
        return np.zeros(0, np.int64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    q = np.clip(((p - lo) / np.maximum(hi - lo, 1e-30) * 1023).astype(np.uint64), 0, 1023)
    code = np.zeros(len(p), np.uint64)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + (2 - axis))
    return np.argsort(code, kind="stable")


def _normalise(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    t = np.where(span < 1e-5, 0.0, (x - lo) / np.where(span < 1e-5, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def compressed_ply_bytes(data: SplatData) -> bytes:
    """The compressed .ply encoding of ``data`` (Morton order; SH bands kept up to degree 3)."""
    n = data.n
    if n == 0:
        raise PlyFormatError("a compressed .ply needs at least one Gaussian")
    order = morton_order(data.means)
    means = data.means[order].astype(np.float64)
    log_s = np.clip(data.log_scales[order].astype(np.float64), -20.0, 20.0)  # as splat-transform: no infinities
    rgb = 0.5 + SH_C0 * data.sh_dc[order].astype(np.float64)
    q = data.quats[order].astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    alpha = sigmoid(data.opacity_logits[order]).astype(np.float64)
    chunks = -(-n // CHUNK)
    pad = chunks * CHUNK - n  # the last chunk's bounds come from its real rows only

    def per_chunk(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xp = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]).reshape(chunks, CHUNK, -1)
        return xp.min(axis=1), xp.max(axis=1)

    (p_lo, p_hi), (s_lo, s_hi), (c_lo, c_hi) = per_chunk(means), per_chunk(log_s), per_chunk(rgb)
    # the file stores float32 bounds: normalise against exactly those
    p_lo, p_hi, s_lo, s_hi, c_lo, c_hi = (a.astype(np.float32).astype(np.float64) for a in (p_lo, p_hi, s_lo, s_hi, c_lo, c_hi))
    ci = np.arange(n) // CHUNK

    def pack111011(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        t = _normalise(x, lo[ci], hi[ci])
        return (_pack_unorm(t[:, 0], 11) << np.uint32(21)) | (_pack_unorm(t[:, 1], 10) << np.uint32(11)) | _pack_unorm(t[:, 2], 11)

    largest = np.argmax(np.abs(q), axis=1)
    q = np.where(q[np.arange(n), largest][:, None] < 0, -q, q)
    rot = largest.astype(np.uint32)
    for k in range(4):
        comp = _pack_unorm(q[:, k] * _SQRT1_2 + 0.5, 10)
        rot = np.where(largest == k, rot, (rot << np.uint32(10)) | comp)
    tc = _normalise(rgb, c_lo[ci], c_hi[ci])
    color = ((_pack_unorm(tc[:, 0], 8) << np.uint32(24)) | (_pack_unorm(tc[:, 1], 8) << np.uint32(16))
             | (_pack_unorm(tc[:, 2], 8) << np.uint32(8)) | _pack_unorm(alpha, 8))
    vert = np.empty(n, np.dtype([(k, "<u4") for k in _VERTEX]))
    vert["packed_position"] = pack111011(means, p_lo, p_hi)
    vert["packed_rotation"] = rot
    vert["packed_scale"] = pack111011(log_s, s_lo, s_hi)
    vert["packed_color"] = color
    ch = np.empty(chunks, np.dtype([(k, "<f4") for k in _CHUNK_BOUNDS + _CHUNK_COLOURS]))
    for i, a in enumerate("xyz"):
        ch[f"min_{a}"], ch[f"max_{a}"] = p_lo[:, i], p_hi[:, i]
        ch[f"min_scale_{a}"], ch[f"max_scale_{a}"] = s_lo[:, i], s_hi[:, i]
    for i, c in enumerate("rgb"):
        ch[f"min_{c}"], ch[f"max_{c}"] = c_lo[:, i], c_hi[:, i]
    m = min(data.sh_rest.shape[1], 15)  # the layout holds 9, 24 or 45 coefficients (degree ≤ 3)
    if m not in (0, 3, 8, 15):
        raise PlyFormatError(f"compressed .ply holds SH degree 1–3; got {data.sh_rest.shape[1]} coefficients per channel")
    header = ["ply", "format binary_little_endian 1.0", "comment written by interactive3d",
              f"element chunk {chunks}", *(f"property float {k}" for k in _CHUNK_BOUNDS + _CHUNK_COLOURS),
              f"element vertex {n}", *(f"property uint {k}" for k in _VERTEX)]
    parts = [ch.tobytes(), vert.tobytes()]
    if m:
        header += [f"element sh {n}", *(f"property uchar f_rest_{i}" for i in range(3 * m))]
        rest = data.sh_rest[order][:, :m, :].astype(np.float64)  # [N,m,3] → channel-major columns
        cols = rest.transpose(0, 2, 1).reshape(n, 3 * m)
        parts.append(np.clip(np.trunc((cols / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8).tobytes())
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + b"".join(parts)


def write_compressed_ply(path: str | os.PathLike, data: SplatData) -> None:
    """Write ``data`` as a compressed .ply (atomic)."""
    atomic_write(path, [compressed_ply_bytes(data)])
