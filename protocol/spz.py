"""Niantic's .spz: Gaussians quantised to a few bytes each and compressed (gzip in versions 1–3, one
ZSTD stream per attribute in version 4). The format's reference is github.com/nianticlabs/spz.

numpy only (plus ``zstandard`` to read version 4, which the backend installs; without it a version-4
file is refused with a message saying so). The writer writes version 3 (gzip), which every .spz reader
opens, Niantic's current one included.

Layout after decompression: a 16-byte header (magic ``NGSP`` as uint32 0x5053474e, version, N, SH
degree, fractional bits, flags, reserved), then the attributes one after another, each for all N:
positions 3 × 24-bit signed fixed point (``fractionalBits`` of fraction), alphas uint8 = sigmoid·255,
colours uint8 = f_dc·0.15·255 + 127.5, scales uint8 = (log s + 10)·16, rotations (v3+: 4 bytes, the
largest component's index in the top 2 bits and the other three as sign + 9-bit magnitude of |q|/√½,
xyzw order; v2: 3 bytes x y z of the w≥0 quaternion as (q + 1)·127.5), SH coefficients int8 as
q·128 + 128 (coefficient-major, colour innermost).

Coordinates (docs/conventions.md, 'Splat files'): the header does not say which axes a file's numbers use.
Niantic's format description puts them in RUB (x right, y up, z back; a 3DGS .ply holds RDF: y down, z
forward), and Niantic's earlier tools and splat-transform 2.x flipped y and z on the way in and out; today's
readers and writers (splat-transform 3.x, which calls this the format's default "unspecified" coordinate
system; gsply) pass the numbers through unchanged. So by default (``axes="ply"``) this module does the same: a file
holds the .ply's own axes. ``axes="rub"`` flips RUB ↔ RDF (y and z negated, quaternion x kept and y, z negated,
SH signs by parity) for the older files.

Quantisation: positions to 2^-fractionalBits (2^-12 ≈ 0.24 mm when written here), log scales to 1/16,
opacity 1/255, colour f_dc to 1/(0.15·255) ≈ 0.026, quaternions ≈ 1/1447 per component (v3), SH to 1/128
(the writer keeps 5 bits for degree 1 and 4 for higher degrees, as Niantic's default: steps 1/16, 1/8).
"""

from __future__ import annotations

import importlib
import os
import struct
import zlib

import numpy as np

from .files import atomic_write
from .splat_data import PlyFormatError, SplatData, open_source, sigmoid, source_name

MAGIC = 0x5053474E  # "NGSP" little-endian
SPZ_AXES = ("ply", "rub")  # what an .spz's numbers mean: the .ply's own axes (no flip, default), or RUB
COLOR_SCALE = 0.15
_SQRT1_2 = np.sqrt(0.5)
MAX_POINTS = 1 << 28  # refuse absurd headers before allocating
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
# RDF ↔ RUB flips (y, z negated) for the 24 SH coefficients of bands 1–4, by the parity of each basis
# function in y and z (the same table as the reference implementation's coordinate converter).
_X, _Y, _Z = 1.0, -1.0, -1.0
_SH_FLIP = np.array([_Y, _Z, _X, _X * _Y, _Y * _Z, 1, _X * _Z, 1, _Y, _X * _Y * _Z, _Y, _Z, _X, _Z, _X,
                     _X * _Y, _Y * _Z, _X * _Y, _Y * _Z, 1, _X * _Z, 1, _X * _Z, _Y], np.float64)
_P_FLIP = np.array([_X, _Y, _Z])
_Q_FLIP = np.array([1.0, _Y * _Z, _X * _Z, _X * _Y])  # w-first: w, x, y, z


def _decompress(raw: bytes, name: str) -> tuple[int, tuple[int, int, int, int], bytes]:
    """(version, body after the header) for gzip (v1–3) or NGSP (v4) files."""
    if raw[:2] == b"\x1f\x8b":
        # Inflate the header first, then no more than the header says the body holds: a small file that
        # inflates without end (a gzip bomb) costs its declared size at most.
        inflate = zlib.decompressobj(wbits=31)
        try:
            data = inflate.decompress(raw, 16)
            if len(data) < 16:
                raise PlyFormatError(f"{name}: .spz shorter than its 16-byte header")
            magic, version, n, degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", data)
            if magic != MAGIC:
                raise PlyFormatError(f"{name}: not an .spz (magic {magic:#x})")
            if version not in (1, 2, 3):
                raise PlyFormatError(f"{name}: gzip .spz version {version} (expected 1–3)")
            if n > MAX_POINTS or degree not in _SH_DIM:
                raise PlyFormatError(f"{name}: header claims {n} Gaussians of SH degree {degree} (caps: {MAX_POINTS}, 0–4)")
            per = 9 + 1 + 3 + 3 + (4 if version >= 3 else 3) + 3 * _SH_DIM[degree]
            body = inflate.decompress(inflate.unconsumed_tail, n * per)
        except zlib.error as exc:
            raise PlyFormatError(f"{name}: corrupt gzip stream in .spz: {exc}") from None
        if len(body) < n * per:
            raise PlyFormatError(f"{name}: .spz truncated: its gzip stream ends after {16 + len(body)} of the "
                                 f"{16 + n * per} bytes that {n} Gaussians need")
        return version, (n, degree, frac, flags), body
    if raw[:4] == b"NGSP":
        return _read_v4(raw, name)
    raise PlyFormatError(f"{name}: not an .spz (neither gzip nor NGSP magic)")


ZSTD_MODULES = ("zstandard", "compression.zstd", "backports.zstd")  # the first that imports reads version 4


def _zstd_inflater(name: str):
    """``inflate(data, limit) -> bytes`` over the first ZSTD library that imports: ``zstandard`` (what the backend
    installs and every Blender ships), else the standard library's ``compression.zstd`` (Python 3.14+) or its
    backport. Output is capped at ``limit`` bytes."""
    for module in ZSTD_MODULES:
        try:
            lib = importlib.import_module(module)
        except ImportError:
            continue
        if module == "zstandard":
            def inflate(data, limit, lib=lib):
                try:
                    return lib.ZstdDecompressor().decompress(data, max_output_size=limit)
                except lib.ZstdError as exc:
                    raise ValueError(str(exc)) from None
        else:
            def inflate(data, limit, lib=lib):
                d = lib.ZstdDecompressor()
                try:
                    out = d.decompress(data, max_length=limit)
                except lib.ZstdError as exc:
                    raise ValueError(str(exc)) from None
                if not d.eof:  # cut short, or more than its entry declares
                    raise ValueError("the stream does not end where its table-of-contents entry says")
                return out
        return inflate
    raise PlyFormatError(f"{name}: .spz version 4 is ZSTD-compressed; install the 'zstandard' package to read it "
                         "(Python 3.14+ reads it without; or convert it to version 3 / .ply)")


def _read_v4(raw: bytes, name: str):
    if len(raw) < 32:
        raise PlyFormatError(f"{name}: .spz v4 shorter than its 32-byte header")
    magic, version, n, degree, frac, flags, streams, toc = struct.unpack_from("<IIIBBBBI", raw)
    if version != 4:
        raise PlyFormatError(f"{name}: NGSP .spz version {version} (this reader knows 1–4)")
    inflate = _zstd_inflater(name)
    end = toc + 16 * streams
    if toc < 32 or end > len(raw):
        raise PlyFormatError(f"{name}: .spz v4 table of contents out of range")
    if n > MAX_POINTS or degree not in _SH_DIM:
        raise PlyFormatError(f"{name}: header claims {n} Gaussians of SH degree {degree} (caps: {MAX_POINTS}, 0–4)")
    need = n * (9 + 1 + 3 + 3 + 4 + 3 * _SH_DIM[degree])
    declared = sum(struct.unpack_from("<QQ", raw, toc + 16 * i)[1] for i in range(streams))
    if declared != need:  # checked before inflating anything: no stream may claim more than the header allows
        raise PlyFormatError(f"{name}: .spz v4 streams declare {declared} bytes, {n} Gaussians need {need}")
    body, off = [], end
    for i in range(streams):
        csize, usize = struct.unpack_from("<QQ", raw, toc + 16 * i)
        if off + csize > len(raw):
            raise PlyFormatError(f"{name}: .spz v4 stream {i} runs past the end of the file")
        try:
            chunk = inflate(raw[off:off + csize], usize)
        except (ValueError, EOFError) as exc:  # a bad frame (both libraries, as ValueError) or a cut one
            raise PlyFormatError(f"{name}: corrupt ZSTD stream {i} in .spz: {exc}") from None
        if len(chunk) != usize:
            raise PlyFormatError(f"{name}: .spz v4 stream {i} has {len(chunk)} bytes, its entry says {usize}")
        body.append(chunk)
        off += csize
    return 4, (n, degree, frac, flags), b"".join(body)


def _check_axes(axes: str) -> None:
    if axes not in SPZ_AXES:
        raise PlyFormatError(f".spz axes must be one of {SPZ_AXES}, got {axes!r}")


def read_spz(source, axes: str = "ply") -> SplatData:
    """Read an .spz file (path or bytes), versions 1–4, into SplatData in the .ply (RDF) convention.

    ``axes``: what the file's numbers mean (the header does not say). ``"ply"`` (default; splat-transform 3.x,
    gsply): the .ply's own axes, read as stored; ``"rub"`` (splat-transform 2.x, Niantic's earlier tools): RUB,
    flipped to the .ply's axes."""
    _check_axes(axes)
    name = source_name(source)
    with open_source(source) as f:
        raw = f.read()
    version, (n, degree, frac, flags), body = _decompress(raw, name)
    if degree not in _SH_DIM:
        raise PlyFormatError(f"{name}: SH degree {degree} (expected 0–4)")
    if n > MAX_POINTS:
        raise PlyFormatError(f"{name}: {n} Gaussians is over the cap of {MAX_POINTS}")
    if version == 1:
        raise PlyFormatError(f"{name}: .spz version 1 (float16 positions, never released) is not supported")
    m = _SH_DIM[degree]
    rot_bytes = 4 if version >= 3 else 3
    sizes = [("pos", 9), ("alpha", 1), ("color", 3), ("scale", 3), ("rot", rot_bytes), ("sh", 3 * m)]
    need = n * sum(s for _, s in sizes)
    if len(body) < need:
        raise PlyFormatError(f"{name}: .spz body has {len(body)} bytes, {n} Gaussians need {need}")
    buf = np.frombuffer(body, np.uint8)
    parts, off = {}, 0
    for key, size in sizes:
        parts[key] = buf[off:off + n * size].reshape(n, size)
        off += n * size

    p = parts["pos"].reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) / (1 << frac)
    alpha = np.clip(parts["alpha"][:, 0].astype(np.float64) / 255.0, 0.5 / 255.0, 1 - 0.5 / 255.0)
    sh_dc = (parts["color"].astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
    log_scales = parts["scale"].astype(np.float64) / 16.0 - 10.0
    r = parts["rot"]
    if version >= 3:
        comp = r[:, 0].astype(np.uint32) | (r[:, 1].astype(np.uint32) << 8) | (r[:, 2].astype(np.uint32) << 16) | (r[:, 3].astype(np.uint32) << 24)
        largest = (comp >> 30).astype(np.int64)
        xyzw = np.zeros((n, 4), np.float64)
        for i in (3, 2, 1, 0):  # the last-stored component sits in the lowest bits
            mag = (comp & 0x1FF).astype(np.float64) / 511.0 * _SQRT1_2
            neg = ((comp >> 9) & 1).astype(bool)
            val = np.where(neg, -mag, mag)
            xyzw[:, i] = np.where(largest == i, xyzw[:, i], val)
            comp = np.where(largest == i, comp, comp >> 10)
        rest = (xyzw**2).sum(axis=1) - xyzw[np.arange(n), largest] ** 2
        xyzw[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    else:
        xyz = r.astype(np.float64) / 127.5 - 1.0
        xyzw = np.concatenate([xyz, np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(axis=1)))[:, None]], axis=1)
    quats = xyzw[:, [3, 0, 1, 2]]
    sh = (parts["sh"].astype(np.float64) - 128.0) / 128.0
    sh_rest = sh.reshape(n, m, 3)
    if axes == "rub":  # stored RUB → the .ply's RDF
        means = means * _P_FLIP
        quats = quats * _Q_FLIP
        sh_rest = sh_rest * _SH_FLIP[:m, None]
    return SplatData(
        means=means.astype(np.float32), sh_dc=sh_dc.astype(np.float32), sh_rest=sh_rest.astype(np.float32),
        opacity_logits=np.log(alpha / (1 - alpha)).astype(np.float32), log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
    )


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _quantise_sh(x: np.ndarray, bits: int) -> np.ndarray:
    """int8-as-uint8 SH code with only ``bits`` significant bits (bucket centres keep 0 exact)."""
    bucket = 1 << (8 - bits)
    q = np.round(x * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def spz_bytes(data: SplatData, fractional_bits: int = 12, sh1_bits: int = 5, sh_rest_bits: int = 4,
              axes: str = "ply") -> bytes:
    """The .spz (version 3, gzip) encoding of ``data`` (taken to be in the .ply's RDF convention), stored as given
    (``axes="ply"``, default) or flipped to RUB (``"rub"``)."""
    _check_axes(axes)
    flip = axes == "rub"
    n = data.n
    m = data.sh_rest.shape[1]
    degree = {v: k for k, v in _SH_DIM.items()}.get(m)
    if degree is None:
        raise PlyFormatError(f".spz holds SH degree 0–4; got {m} coefficients per channel")
    if not (0 < fractional_bits <= 23):
        raise PlyFormatError(f"fractional_bits must be in [1, 23], got {fractional_bits}")
    means = data.means.astype(np.float64) * (_P_FLIP if flip else 1.0)
    fixed = np.round(means * (1 << fractional_bits)).astype(np.int64)
    limit = 1 << 23
    if fixed.size and (fixed.min() < -limit or fixed.max() >= limit):
        raise PlyFormatError(f".spz positions must lie within ±{limit / (1 << fractional_bits):g} at {fractional_bits} "
                             f"fractional bits; the largest is {np.abs(data.means).max():g}")
    fixed &= 0xFFFFFF
    pos = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=-1).astype(np.uint8).reshape(n, 9)
    alpha = _to_u8(sigmoid(data.opacity_logits).astype(np.float64) * 255.0)
    color = _to_u8(data.sh_dc.astype(np.float64) * (COLOR_SCALE * 255.0) + 127.5)
    scale = _to_u8((data.log_scales.astype(np.float64) + 10.0) * 16.0)
    q = data.quats.astype(np.float64) * (_Q_FLIP if flip else 1.0)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    xyzw = q[:, [1, 2, 3, 0]]
    largest = np.argmax(np.abs(xyzw), axis=1)
    negate = xyzw[np.arange(n), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        negbit = ((xyzw[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.floor(511.0 * np.abs(xyzw[:, i]) / _SQRT1_2 + 0.5).astype(np.uint32)
        comp = np.where(largest == i, comp, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | np.minimum(mag, 511))
    rot = np.stack([(comp >> np.uint32(s)) & np.uint32(0xFF) for s in (0, 8, 16, 24)], axis=1).astype(np.uint8)
    sh = (data.sh_rest.astype(np.float64) * (_SH_FLIP[:m, None] if flip else 1.0)).reshape(n, 3 * m)
    sh_q = np.concatenate([_quantise_sh(sh[:, :9], sh1_bits), _quantise_sh(sh[:, 9:], sh_rest_bits)], axis=1) if m else np.zeros((n, 0), np.uint8)
    header = struct.pack("<IIIBBBB", MAGIC, 3, n, degree, fractional_bits, 0, 0)
    body = b"".join([header, pos.tobytes(), alpha.tobytes(), color.tobytes(), scale.tobytes(), rot.tobytes(), sh_q.tobytes()])
    # zlib's own gzip container (mtime 0, OS byte 3) as Niantic's encoder writes it: the same Gaussians give the
    # same bytes on every Python (3.13's gzip.compress writes OS byte 255)
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    return z.compress(body) + z.flush()


def write_spz(path: str | os.PathLike, data: SplatData, **options) -> None:
    """Write ``data`` as .spz version 3 (atomic); ``options`` (``axes`` among them) as :func:`spz_bytes`."""
    atomic_write(path, [spz_bytes(data, **options)])
