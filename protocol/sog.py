"""PlayCanvas's SOG ("spatially ordered Gaussians"): what SuperSplat and splat-transform write by default and
what PlayCanvas's viewers stream. A ``meta.json`` plus lossless WebP images, either bundled in one zip (``*.sog``)
or side by side in a folder (the ``meta.json`` path names the scene).

numpy + Pillow (lossless WebP). Each image holds one RGBA texel per Gaussian, row-major, in file order:

- ``means_l.webp`` / ``means_u.webp``: the low / high byte of a 16-bit code per axis (R G B = x y z) of
  ``l = sign(x)·ln(1+|x|)`` between ``means.mins`` and ``means.maxs`` (the log keeps precision near the origin).
- ``quats.webp``: the unit quaternion (w-first, made to have a positive largest component) as smallest-three:
  R G B the other three components in w x y z order, each ``255·(q·√2·½ + ½)``; A = 252 + the largest's index.
- ``scales.webp``: R G B the log scales. ``sh0.webp``: R G B the DC coefficients ``f_dc``, A = sigmoid(opacity)·255.
- optional ``shN_centroids.webp`` / ``shN_labels.webp``: a palette of SH sets (64 per row, each ``M`` texels wide,
  R G B = channels) and each Gaussian's 16-bit palette index (R low byte, G high byte).

Meta version 2 (splat-transform 0.16 and later, what it writes today) stores scales, ``f_dc`` and palette values as
indices into 256-entry codebooks (``scales.codebook``, ``sh0.codebook``, ``shN.codebook``); the legacy version 1
(no ``version`` key; older SuperSplat exports, still read by PlayCanvas and splat-transform) maps bytes linearly
between per-channel ``mins``/``maxs`` and stores the opacity logit in sh0's alpha. Both are read; version 2 is
written. Axes are the .ply's own (splat-transform's readers and writers keep them), so nothing is flipped.

Quantisation (version 2): positions to 1/65535 of the log-extent per axis (≈ 1.8e-5·(1+|x|) for a 1-unit
object), log scales and ``f_dc`` to their codebook (256 entries fitted by 1D k-means to the values), opacity to
1/255, quaternion components to ≈ 1/360. The writer keeps the input order (no Morton reordering) and stores each
Gaussian's own SH set in the palette when N ≤ 65536 (only the codebook quantises); larger scenes are clustered
into :data:`LARGE_PALETTE` sets by k-means.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import zipfile

import numpy as np

from .files import atomic_write
from .splat_data import PlyFormatError, SplatData, open_source, sigmoid, source_name

VERSION = 2
MAX_POINTS = 16383 * 16383  # the largest WebP texture PlayCanvas writes
MAX_META_BYTES = 16 << 20
MAX_IMAGE_BYTES = 1 << 30
MAX_PALETTE = 1 << 16  # 16-bit labels
LARGE_PALETTE = 4096  # k-means cost grows with it (N·K·3M per Lloyd step)
_SH_COEFFS = {1: 3, 2: 8, 3: 15}
_V1_BANDS = {192: 1, 512: 2, 960: 3}  # v1 has no 'bands': the centroid texture's width says it
_SQRT2 = math.sqrt(2.0)


def _image_module():
    try:
        from PIL import Image, features
    except ImportError:
        raise PlyFormatError("reading or writing .sog needs Pillow (pip install pillow)") from None
    if not features.check("webp"):
        raise PlyFormatError("this Pillow was built without WebP support, which .sog needs")
    return Image


# -- the container: a zip (bundled .sog) or a folder holding meta.json ----------------------------------
class _Members:
    """Named members of a SOG scene, each read with a size cap."""

    def __init__(self, source):
        self.name = source_name(source)
        self.zip = None
        self.folder = None
        if isinstance(source, (bytes, bytearray, memoryview)) or not os.fspath(source).lower().endswith(".json"):
            try:
                self.zip = zipfile.ZipFile(open_source(source))
            except zipfile.BadZipFile as exc:
                raise PlyFormatError(f"{self.name}: not a .sog (not a zip archive: {exc})") from None
            self.meta_name = "meta.json"
        else:
            self.folder = os.path.dirname(os.path.abspath(source))
            self.meta_name = os.path.basename(source)

    def read(self, name: str, cap: int) -> bytes:
        if not isinstance(name, str) or not name or posixpath.basename(name) != name or name in (".", ".."):
            raise PlyFormatError(f"{self.name}: .sog member name {name!r} must be a plain file name")
        if self.zip is not None:
            try:
                info = self.zip.getinfo(name)
            except KeyError:
                raise PlyFormatError(f"{self.name}: the .sog archive has no {name!r}") from None
            if info.file_size > cap:
                raise PlyFormatError(f"{self.name}: {name!r} declares {info.file_size} bytes, over the cap of {cap}")
            try:
                with self.zip.open(info) as f:
                    raw = f.read(cap + 1)  # never more than the cap, whatever the header claims
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
                raise PlyFormatError(f"{self.name}: cannot read {name!r} from the .sog archive: {exc}") from None
        else:
            path = os.path.join(self.folder, name)
            try:
                if os.path.getsize(path) > cap:
                    raise PlyFormatError(f"{self.name}: {name!r} is over the cap of {cap} bytes")
                with open(path, "rb") as f:
                    raw = f.read(cap + 1)
            except FileNotFoundError:
                raise PlyFormatError(f"{self.name}: {name!r} is missing beside meta.json") from None
        if len(raw) > cap:
            raise PlyFormatError(f"{self.name}: {name!r} is over the cap of {cap} bytes")
        return raw

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _image(members: _Members, name: str, min_pixels: int, max_pixels: int, width=None) -> tuple[np.ndarray, int]:
    """(RGBA texels [H*W,4] uint8, W); its size is checked from the header before any pixel is decoded (``width``: an
    int or a collection of the widths allowed)."""
    Image = _image_module()
    raw = members.read(name, MAX_IMAGE_BYTES)
    try:
        im = Image.open(io.BytesIO(raw))
        if im.format != "WEBP":
            raise PlyFormatError(f"{members.name}: {name!r} is {im.format}, not WebP")
        w, h = im.size
        widths = (width,) if isinstance(width, int) else width
        if w * h < min_pixels or w * h > max_pixels or (widths is not None and w not in widths):
            want = f"{' or '.join(map(str, widths))} wide, " if widths is not None else ""
            raise PlyFormatError(f"{members.name}: {name!r} is {w}×{h}; the meta needs {want}{min_pixels}–{max_pixels} texels")
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    except PlyFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, ValueError) on bad data
        raise PlyFormatError(f"{members.name}: cannot decode {name!r}: {type(exc).__name__}: {exc}") from None
    return rgba.reshape(-1, 4), w


# -- reading ------------------------------------------------------------------------------------------------
def _get(meta: dict, key: str, name: str, kind=dict):
    value = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(value, kind):
        raise PlyFormatError(f"{name}: meta.json lacks a valid {key!r}")
    return value


def _floats(value, length: int | None, what: str, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or (length is not None and arr.size != length) or not np.isfinite(arr).all():
        raise PlyFormatError(f"{name}: meta.json's {what} must be {length or 'a list of'} finite numbers")
    return arr


def _codebook(section: dict, what: str, name: str) -> np.ndarray:
    book = _floats(section.get("codebook"), None, f"{what}.codebook", name)
    if not 1 <= book.size <= 256:
        raise PlyFormatError(f"{name}: {what}.codebook has {book.size} entries (expected 1–256)")
    # PlayCanvas reads codebooks as float32: so do we, and an index past the end reads as that format's 0
    return np.concatenate([book.astype(np.float32), np.zeros(256 - book.size, np.float32)])


def _files(section: dict, count: int, what: str, name: str) -> list[str]:
    files = section.get("files")
    if not isinstance(files, list) or len(files) != count or not all(isinstance(f, str) for f in files):
        raise PlyFormatError(f"{name}: meta.json's {what}.files must name {count} image(s)")
    return files


def _inv_log(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.expm1(np.abs(v))


def _unpack_quats(q: np.ndarray) -> np.ndarray:
    """[N,4] uint8 smallest-three texels → [N,4] float64 w-first unit quaternions (a bad tag gives identity)."""
    n = q.shape[0]
    tag = q[:, 3].astype(np.int64)
    valid = (tag >= 252) & (tag <= 255)
    big = np.where(valid, tag - 252, 0)
    small = (q[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / _SQRT2
    out = np.zeros((n, 4), np.float64)
    for k in range(4):
        sel = big == k
        out[np.ix_(sel, [i for i in range(4) if i != k])] = small[sel]
    rows = np.arange(n)
    out[rows, big] = np.sqrt(np.maximum(0.0, 1.0 - (out**2).sum(axis=1)))
    out[~valid] = (1.0, 0.0, 0.0, 0.0)
    return out


def _positions(members: _Members, means: dict, count: int, lo_hi: tuple[int, int], name: str) -> np.ndarray:
    mins = _floats(means.get("mins"), 3, "means.mins", name)
    maxs = _floats(means.get("maxs"), 3, "means.maxs", name)
    files = _files(means, 2, "means", name)
    lo = _image(members, files[0], *lo_hi)[0][:count, :3].astype(np.float64)
    hi = _image(members, files[1], *lo_hi)[0][:count, :3].astype(np.float64)
    span = np.where(maxs - mins == 0, 1.0, maxs - mins)  # as PlayCanvas: a flat axis decodes with span 1
    return _inv_log(mins + span * (lo + 256.0 * hi) / 65535.0)


def _logit(a: np.ndarray) -> np.ndarray:
    a = np.clip(a, 1e-6, 1 - 1e-6)  # PlayCanvas's clamp: bytes 0 and 255 decode to ±13.8
    return np.log(a / (1 - a))


def read_sog(source) -> SplatData:
    """Read a .sog (a path or its bytes) or an unbundled scene (the path of its ``meta.json``), meta version 1
    or 2, into SplatData (pre-activation, file order, the .ply's axes). Raises PlyFormatError naming the problem."""
    members = _Members(source)
    name = members.name
    try:
        try:
            meta = json.loads(members.read(members.meta_name, MAX_META_BYTES))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlyFormatError(f"{name}: meta.json is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise PlyFormatError(f"{name}: meta.json must hold an object")
        version = meta.get("version", 1)
        if version not in (1, 2):
            raise PlyFormatError(f"{name}: SOG meta version {version!r} (this reader knows 1 and 2)")
        means = _get(meta, "means", name)
        if version == 2:
            count = meta.get("count")
        else:
            shape = means.get("shape")
            count = shape[0] if isinstance(shape, list) and shape else None
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_POINTS:
            raise PlyFormatError(f"{name}: SOG Gaussian count {count!r} (expected 1–{MAX_POINTS})")
        # every per-Gaussian image holds ≥ count texels and, as any writer lays them out (a near-square of
        # multiples of 4), not many more: a tiny file cannot decode to a huge image
        lo_hi = (count, 2 * count + 4096)
        means_xyz = _positions(members, means, count, lo_hi, name)
        quats = _unpack_quats(_image(members, _files(_get(meta, "quats", name), 1, "quats", name)[0], *lo_hi)[0][:count])
        scales_sec, sh0_sec = _get(meta, "scales", name), _get(meta, "sh0", name)
        sl = _image(members, _files(scales_sec, 1, "scales", name)[0], *lo_hi)[0][:count]
        c0 = _image(members, _files(sh0_sec, 1, "sh0", name)[0], *lo_hi)[0][:count]
        if version == 2:
            scale_book, dc_book = _codebook(scales_sec, "scales", name), _codebook(sh0_sec, "sh0", name)
            log_scales = scale_book[sl[:, :3]].astype(np.float64)
            sh_dc = dc_book[c0[:, :3]].astype(np.float64)
            opacity = _logit(c0[:, 3].astype(np.float64) / 255.0)
        else:
            s_lo, s_hi = _floats(scales_sec.get("mins"), 3, "scales.mins", name), _floats(scales_sec.get("maxs"), 3, "scales.maxs", name)
            c_lo, c_hi = _floats(sh0_sec.get("mins"), 4, "sh0.mins", name), _floats(sh0_sec.get("maxs"), 4, "sh0.maxs", name)
            log_scales = s_lo + (s_hi - s_lo) * sl[:, :3] / 255.0
            lerped = c_lo + (c_hi - c_lo) * c0.astype(np.float64) / 255.0
            sh_dc, opacity = lerped[:, :3], lerped[:, 3]
        sh_rest = _read_sh(members, meta.get("shN"), version, count, lo_hi, name)
    finally:
        members.close()
    return SplatData(
        means=means_xyz.astype(np.float32), sh_dc=sh_dc.astype(np.float32), sh_rest=sh_rest,
        opacity_logits=opacity.astype(np.float32), log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
    )


def _read_sh(members: _Members, shn, version: int, count: int, lo_hi: tuple[int, int], name: str) -> np.ndarray:
    """[count, M, 3] float32 higher SH bands from the palette (M = 0 without one)."""
    if shn is None:
        return np.zeros((count, 0, 3), np.float32)
    if not isinstance(shn, dict):
        raise PlyFormatError(f"{name}: meta.json's 'shN' must be an object")
    files = _files(shn, 2, "shN", name)
    labels_rgba = _image(members, files[1], *lo_hi)[0][:count]
    labels = labels_rgba[:, 0].astype(np.int64) | (labels_rgba[:, 1].astype(np.int64) << 8)
    if version == 2:
        bands = shn.get("bands")
        if bands not in _SH_COEFFS:
            raise PlyFormatError(f"{name}: shN.bands {bands!r} (expected 1–3)")
        m = _SH_COEFFS[bands]
        book = _codebook(shn, "shN", name)
        palette = shn.get("count")
        if not isinstance(palette, int) or not 0 < palette <= MAX_PALETTE:
            raise PlyFormatError(f"{name}: shN.count {palette!r} (expected 1–{MAX_PALETTE})")
        rows = -(-palette // 64)
        cen, _ = _image(members, files[0], 64 * m, 64 * m * max(rows, 1024), width=64 * m)
        values = book[cen[:, :3]]  # [texels, 3]
    else:
        lo, hi = _floats([shn.get("mins")], 1, "shN.mins", name)[0], _floats([shn.get("maxs")], 1, "shN.maxs", name)[0]
        cen, width = _image(members, files[0], 192, 960 * 1024, width=tuple(_V1_BANDS))
        m = _SH_COEFFS[_V1_BANDS[width]]
        values = (lo + (hi - lo) * cen[:, :3].astype(np.float64) / 255.0).astype(np.float32)
        palette = (cen.shape[0] // (64 * m)) * 64
    capacity = (values.shape[0] // (64 * m)) * 64
    ok = labels < min(palette, capacity)  # as PlayCanvas: an out-of-range label has no view-dependent colour
    index = (np.where(ok, labels, 0)[:, None] * m + np.arange(m)[None, :])  # texel of (label, coefficient)
    out = values[index].astype(np.float32)  # [count, M, 3]
    out[~ok] = 0.0
    return out


def is_sog_meta(path) -> bool:
    """Whether ``path`` names an unbundled SOG scene's meta.json (by name: the one .json splat file)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".json")


# -- writing ------------------------------------------------------------------------------------------------
def codebook_1d(values: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``-entry codebook for scalar ``values`` (any shape): (float32 [≤size] sorted centroids, uint8 labels
    shaped like ``values``, each value's nearest centroid).

    Exact when there are ≤ size distinct values. Otherwise the values fall into ≤ 512 bins placed half by rank,
    half by value (dense regions get fine bins, sparse tails still get some), each bin weighted by √(its count);
    dynamic programming then splits the bins into ``size`` runs of least weighted squared error, and each run's
    weighted mean is a centroid. The √ weighting keeps codes for the rare large values (a few big splats, bright
    colours) that plain k-means would merge; on tests/fixtures/splats/source.ply f_dc's largest error drops
    from 0.18 (unweighted Lloyd) to the format's own scale (see tests/protocol/test_sog.py)."""
    flat = np.asarray(values, np.float64).ravel()
    uniq = np.unique(flat.astype(np.float32)).astype(np.float64)
    if uniq.size <= size:
        book = uniq
    else:
        srt = np.sort(flat)
        n = srt.size
        h = min(512, n)
        pos = 0.5 * np.arange(n) / n + 0.5 * (srt - srt[0]) / (srt[-1] - srt[0])
        bins = np.minimum((pos * h).astype(np.int64), h - 1)
        count = np.bincount(bins, minlength=h)
        keep = count > 0
        centre = (np.bincount(bins, srt, minlength=h)[keep] / count[keep])
        w = np.sqrt(count[keep].astype(np.float64))
        b = centre.size
        k = min(size, b)
        pw, pwx, pwxx = (np.concatenate([[0.0], np.cumsum(x)]) for x in (w, w * centre, w * centre**2))
        s_idx, e_idx = np.meshgrid(np.arange(b), np.arange(b), indexing="ij")  # run [s, e]
        ws = pw[e_idx + 1] - pw[s_idx]
        wx = pwx[e_idx + 1] - pwx[s_idx]
        cost = np.where(e_idx >= s_idx, pwxx[e_idx + 1] - pwxx[s_idx] - wx**2 / np.where(ws > 0, ws, 1.0), np.inf)
        best = cost[0].copy()  # best[e]: least cost of bins 0..e in m runs
        splits = np.zeros((k, b), np.int64)
        for m in range(1, k):
            # the m-th run is [s+1, e]: best_prev[s] + cost[s+1, e], over s < e
            total = best[:-1, None] + cost[1:, :]
            splits[m, :] = np.concatenate([[0], np.argmin(total[:, 1:], axis=0)]) if b > 1 else 0
            new = np.full(b, np.inf)
            new[1:] = total[splits[m, 1:], np.arange(1, b)]
            best = new
        book = np.empty(k)
        e = b - 1
        for m in range(k - 1, -1, -1):
            s = splits[m, e] + 1 if m else 0
            book[m] = (pwx[e + 1] - pwx[s]) / (pw[e + 1] - pw[s])
            e = s - 1
        book = np.unique(book.astype(np.float32)).astype(np.float64)
    mids = (book[1:] + book[:-1]) / 2
    labels = np.clip(np.searchsorted(mids, flat), 0, book.size - 1).astype(np.uint8)
    return book.astype(np.float32), labels.reshape(np.shape(values))


def _palette(rest: np.ndarray, seed: int = 0, iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """SH sets [N,D] → (palette [K,D], labels [N]): each Gaussian's own set when N ≤ 65536, else k-means to
    LARGE_PALETTE sets (sampled start, Lloyd steps with chunked nearest-centroid search)."""
    n = rest.shape[0]
    if n <= MAX_PALETTE:
        return rest, np.arange(n, dtype=np.int64)
    k = LARGE_PALETTE
    rng = np.random.default_rng(seed)
    cent = rest[rng.choice(n, k, replace=False)].astype(np.float32)
    x = rest.astype(np.float32)
    labels = np.zeros(n, np.int64)
    for step in range(iterations + 1):
        c2 = (cent**2).sum(axis=1)
        for s in range(0, n, 16384):
            d = c2[None, :] - 2.0 * x[s:s + 16384] @ cent.T
            labels[s:s + 16384] = np.argmin(d, axis=1)
        if step == iterations:
            break
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(cent, dtype=np.float64)
        np.add.at(sums, labels, x)
        cent = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], cent).astype(np.float32)
    return cent.astype(np.float64), labels


def _texture(rows: np.ndarray, width: int, height: int) -> np.ndarray:
    """[N,4] uint8 texels → [H,W,4] image (the tail padded with zeros)."""
    img = np.zeros((width * height, 4), np.uint8)
    img[: rows.shape[0]] = rows
    return img.reshape(height, width, 4)


def _webp(img: np.ndarray) -> bytes:
    Image = _image_module()
    buf = io.BytesIO()
    # exact: keep RGB under alpha 0 (sh0's alpha is opacity); lossless: the bytes are data, not a picture
    # (for lossless WebP, quality is the effort: 100 took 30× as long as 75 for the same bytes on a 268² image)
    Image.fromarray(img, "RGBA").save(buf, "WEBP", lossless=True, exact=True, quality=75, method=4)
    return buf.getvalue()


def sog_members(data: SplatData) -> dict[str, bytes]:
    """The SOG (meta version 2) encoding of ``data``: file name → bytes (``meta.json`` and the images)."""
    n = data.n
    if n == 0:
        raise PlyFormatError("a .sog needs at least one Gaussian")
    if n > MAX_POINTS:
        raise PlyFormatError(f".sog holds at most {MAX_POINTS} Gaussians, got {n}")
    m = data.sh_rest.shape[1]
    if m not in (0, 3, 8, 15, 24):
        raise PlyFormatError(f".sog holds SH degree 0–3; got {m} coefficients per channel")
    m = min(m, 15)  # degree 4 is cut to 3 (i3d convert warns)
    width = max(4, math.ceil(math.sqrt(n) / 4) * 4)
    height = max(4, math.ceil(n / width / 4) * 4)
    alpha = np.full((n, 1), 255, np.uint8)

    lt = np.asarray(data.means, np.float64)
    lt = np.sign(lt) * np.log1p(np.abs(lt))
    mins, maxs = lt.min(axis=0), lt.max(axis=0)
    span = np.where(maxs - mins == 0, 1.0, maxs - mins)
    code = np.clip(np.round((lt - mins) / span * 65535.0), 0, 65535).astype(np.int64)
    lo = np.concatenate([(code & 0xFF).astype(np.uint8), alpha], axis=1)
    hi = np.concatenate([(code >> 8).astype(np.uint8), alpha], axis=1)

    q = np.asarray(data.quats, np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 1e-30, q / np.where(norm > 1e-30, norm, 1.0), (1.0, 0.0, 0.0, 0.0))
    big = np.argmax(np.abs(q), axis=1)
    q = np.where(q[np.arange(n), big][:, None] < 0, -q, q)
    quats = np.empty((n, 4), np.uint8)
    for k in range(4):
        sel = big == k
        small = q[np.ix_(sel, [i for i in range(4) if i != k])]
        quats[sel, :3] = np.clip(np.round(255.0 * (small * _SQRT2 * 0.5 + 0.5)), 0, 255)
        quats[sel, 3] = 252 + k

    scale_book, scale_labels = codebook_1d(np.clip(np.nan_to_num(data.log_scales, nan=-20.0), -20.0, 20.0))
    dc_book, dc_labels = codebook_1d(data.sh_dc)
    opacity = np.clip(np.round(sigmoid(data.opacity_logits).astype(np.float64) * 255.0), 0, 255).astype(np.uint8)

    images = {
        "means_l.webp": _texture(lo, width, height),
        "means_u.webp": _texture(hi, width, height),
        "quats.webp": _texture(quats, width, height),
        "scales.webp": _texture(np.concatenate([scale_labels, alpha], axis=1), width, height),
        "sh0.webp": _texture(np.concatenate([dc_labels, opacity[:, None]], axis=1), width, height),
    }
    meta = {
        "version": VERSION,
        "asset": {"generator": "interactive3d"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_book.tolist(), "files": ["sh0.webp"]},
    }
    if m:
        rest = np.asarray(data.sh_rest[:, :m, :], np.float64).transpose(0, 2, 1).reshape(n, 3 * m)  # channel-major
        palette, labels = _palette(rest)
        k = palette.shape[0]
        book, cen_labels = codebook_1d(palette)  # [K, 3m] uint8
        cen = cen_labels.reshape(k, 3, m).transpose(0, 2, 1).reshape(k * m, 3)  # texel (label, coeff) → RGB
        cen_rows = -(-k // 64)
        centroids = np.zeros((cen_rows * 64 * m, 4), np.uint8)
        centroids[: k * m, :3] = cen
        centroids[:, 3] = 255
        lab = np.stack([labels & 0xFF, labels >> 8, np.zeros(n, np.int64), np.full(n, 255)], axis=1).astype(np.uint8)
        images["shN_centroids.webp"] = centroids.reshape(cen_rows, 64 * m, 4)
        images["shN_labels.webp"] = _texture(lab, width, height)
        meta["shN"] = {"count": k, "bands": {3: 1, 8: 2, 15: 3}[m], "codebook": book.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}
    out = {name: _webp(img) for name, img in images.items()}
    out["meta.json"] = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    return out


def sog_bytes(data: SplatData) -> bytes:
    """The bundled .sog (a zip, members stored: WebP is compressed already) of ``data``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, raw in sog_members(data).items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: the same Gaussians give the same bytes
            zf.writestr(info, raw)
    return buf.getvalue()


def write_sog(path: str | os.PathLike, data: SplatData) -> None:
    """Write ``data`` as SOG (meta version 2): a bundled ``*.sog``, or, for a path ending ``.json``, the unbundled
    form (that meta file and the images beside it, the meta written last)."""
    if not is_sog_meta(path):
        atomic_write(path, [sog_bytes(data)])
        return
    members = sog_members(data)
    folder = os.path.dirname(os.path.abspath(path))
    for name, raw in members.items():
        if name != "meta.json":
            atomic_write(os.path.join(folder, name), [raw])
    atomic_write(path, [members["meta.json"]])
