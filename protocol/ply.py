"""3D Gaussian Splatting files: the INRIA .ply layout and the antimatter15 .splat layout.

numpy only (no torch, no bpy) so the backend, the Blender add-on and scripts share one reader/writer.
Each format has one home: INRIA .ply and .splat here, PlayCanvas/SuperSplat's compressed .ply in
``compressed_ply.py``, Niantic's .spz in ``spz.py``, PlayCanvas's .sog in ``sog.py``; ``splats.py`` picks
one by the file (:func:`splats.read_any`, :func:`splats.write_any`). Readers take a path or the file's bytes;
writers write through ``files.atomic_write``.

INRIA layout (what gsplat, SuperSplat and the INRIA viewer read): one ``vertex`` element with float
properties ``x y z nx ny nz f_dc_0..2 f_rest_0..(3M-1) opacity scale_0..2 rot_0..3``, all stored
*pre-activation* (opacity is a logit, scales are logs, the quaternion is w-first and unnormalised).
``f_rest`` is channel-major: ``f_rest_{c*M + k}`` is SH coefficient k+1 of colour channel c.
"""

from __future__ import annotations

import os

import numpy as np

from .files import atomic_write
from .splat_data import PLY_TYPES, PlyFormatError, SplatData, open_source, parse_ply_elements, splat_to_state, state_to_splat

_KNOWN = {"x", "y", "z", "nx", "ny", "nz", "opacity"} | {f"f_dc_{i}" for i in range(3)} | {
    f"scale_{i}" for i in range(3)} | {f"rot_{i}" for i in range(4)}
def _property_names(m: int) -> list[str]:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * m)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_ply(path: str | os.PathLike, data: SplatData) -> None:
    """Write ``data`` as a binary little-endian INRIA 3DGS .ply (extra properties appended as float)."""
    m = data.sh_rest.shape[1]
    names = _property_names(m) + [k for k in data.extra if k not in _KNOWN and not k.startswith("f_rest_")]
    table = np.empty(data.n, dtype=[(name, "<f4") for name in names])
    for i, axis in enumerate("xyz"):
        table[axis] = data.means[:, i]
        table["n" + axis] = data.normals[:, i]
    for c in range(3):
        table[f"f_dc_{c}"] = data.sh_dc[:, c]
        for k in range(m):
            table[f"f_rest_{c * m + k}"] = data.sh_rest[:, k, c]
    table["opacity"] = data.opacity_logits
    for i in range(3):
        table[f"scale_{i}"] = data.log_scales[:, i]
    for i in range(4):
        table[f"rot_{i}"] = data.quats[:, i]
    for name in names[len(_property_names(m)):]:
        table[name] = data.extra[name]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {data.n}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header")
    atomic_write(path, [("\n".join(header) + "\n").encode("ascii"), table.tobytes()])


def _parse_header(f) -> tuple[str, int, list[tuple[str, str]]]:
    """The INRIA layout's header: (format, vertex count, vertex properties); later elements are ignored."""
    fmt, elements = parse_ply_elements(f, first_only=True)
    if elements[0].name == "chunk":
        raise PlyFormatError("this is a compressed .ply (a 'chunk' element first): read it with "
                             "compressed_ply.read_compressed_ply or splats.read_any")
    if elements[0].name != "vertex":
        raise PlyFormatError(f"expected the 'vertex' element first, found {elements[0].name!r}")
    return fmt, elements[0].count, list(elements[0].props)


def read_ply(path) -> SplatData:
    """Read an INRIA-layout 3DGS .ply (binary either endianness, or ascii), from a path or bytes.

    Tolerates extra SH bands (any number of ``f_rest_*``, which must be a multiple of 3), missing normals,
    and unknown properties (kept in ``extra``). A PlayCanvas/SuperSplat compressed .ply (a ``chunk``
    element first) is refused with a message naming it (``splats.read_any`` reads both). Raises
    PlyFormatError naming the problem.
    """
    with open_source(path) as f:
        fmt, count, props = _parse_header(f)
        names = [p for p, _ in props]
        missing = [p for p in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                               "scale_2", "rot_0", "rot_1", "rot_2", "rot_3") if p not in names]
        if missing:
            raise PlyFormatError(f"not a 3D Gaussian Splatting file: vertex properties {missing} are missing")
        if fmt == "ascii":
            if count > os.fstat(f.fileno()).st_size:  # an ascii row takes at least one byte
                raise PlyFormatError(f"file truncated: {count} vertices cannot fit in {os.fstat(f.fileno()).st_size} bytes")
            rows = np.loadtxt(f, dtype=np.float64, max_rows=count, ndmin=2)
            if rows.shape != (count, len(props)):
                raise PlyFormatError(f"ascii body has shape {rows.shape}, header says ({count}, {len(props)})")
            table = {name: rows[:, i] for i, name in enumerate(names)}
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, order + PLY_TYPES[t]) for name, t in props])
            left = os.fstat(f.fileno()).st_size - f.tell()
            if dtype.itemsize * count > left:  # checked before reading: a header claiming 10⁹ rows allocates nothing
                raise PlyFormatError(f"file truncated: {count} vertices need {dtype.itemsize * count} bytes, found {left}")
            body = f.read(dtype.itemsize * count)
            if len(body) != dtype.itemsize * count:
                raise PlyFormatError(f"file truncated: {count} vertices need {dtype.itemsize * count} bytes, "
                                     f"found {len(body)}")
            arr = np.frombuffer(body, dtype=dtype)
            table = {name: arr[name] for name in names}

    def col(*keys: str) -> np.ndarray:
        return np.stack([np.asarray(table[k], dtype=np.float32) for k in keys], axis=1)

    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda s: int(s[len("f_rest_"):]))
    if len(rest) % 3:
        raise PlyFormatError(f"{len(rest)} f_rest_* properties is not a multiple of 3")
    m = len(rest) // 3
    sh_rest = np.zeros((count, m, 3), np.float32)
    for c in range(3):
        for k in range(m):
            sh_rest[:, k, c] = table[f"f_rest_{c * m + k}"]
    has_normals = all(k in names for k in ("nx", "ny", "nz"))
    extra = {n: np.asarray(table[n]).copy() for n in names if n not in _KNOWN and not n.startswith("f_rest_")}
    return SplatData(
        means=col("x", "y", "z"),
        sh_dc=col("f_dc_0", "f_dc_1", "f_dc_2"),
        sh_rest=sh_rest,
        opacity_logits=np.asarray(table["opacity"], dtype=np.float32).copy(),
        log_scales=col("scale_0", "scale_1", "scale_2"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        normals=col("nx", "ny", "nz") if has_normals else None,
        extra=extra,
    )


# -- antimatter15 .splat: 32 bytes per Gaussian ---------------------------------------------------------
_SPLAT_DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def write_splat(path: str | os.PathLike, data: SplatData) -> None:
    """Write the compact web-viewer .splat layout (colours/opacity/rotation quantised to 8 bits)."""
    state = splat_to_state(data)
    rec = np.empty(data.n, _SPLAT_DTYPE)
    rec["pos"] = state[:, 0:3]
    rec["scale"] = state[:, 7:10]
    rgba = np.concatenate([state[:, 3:6], state[:, 6:7]], axis=1)
    rec["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)
    rec["rot"] = np.clip(np.round(state[:, 10:14] * 128.0 + 128.0), 0, 255).astype(np.uint8)
    atomic_write(path, [rec.tobytes()])


def read_splat(path: str | os.PathLike) -> SplatData:
    """Read a .splat file (its size must be a multiple of 32 bytes)."""
    with open_source(path) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8)
    if raw.size % _SPLAT_DTYPE.itemsize:
        raise PlyFormatError(f".splat size {raw.size} is not a multiple of {_SPLAT_DTYPE.itemsize} bytes")
    rec = raw.view(_SPLAT_DTYPE)
    q = (rec["rot"].astype(np.float32) - 128.0) / 128.0
    state = np.concatenate(
        [rec["pos"], rec["rgba"][:, :3] / 255.0, rec["rgba"][:, 3:4] / 255.0, rec["scale"], q], axis=1
    ).astype(np.float32)
    return state_to_splat(state)
