"""3D Gaussian Splatting files: the INRIA .ply layout and the antimatter15 .splat layout, and the one
entry point for every splat format (:func:`read_any`, :func:`write_any`).

numpy only (no torch, no bpy) so the backend, the Blender add-on and scripts share one reader/writer.
Each format has one home: INRIA .ply and .splat here, PlayCanvas/SuperSplat's compressed .ply in
``compressed_ply.py``, Niantic's .spz in ``spz.py``. Readers take a path or the file's bytes; writers
write through ``files.atomic_write``.

INRIA layout (what gsplat, SuperSplat and the INRIA viewer read): one ``vertex`` element with float
properties ``x y z nx ny nz f_dc_0..2 f_rest_0..(3M-1) opacity scale_0..2 rot_0..3``, all stored
*pre-activation* (opacity is a logit, scales are logs, the quaternion is w-first and unnormalised).
``f_rest`` is channel-major: ``f_rest_{c*M + k}`` is SH coefficient k+1 of colour channel c.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .files import atomic_write

SH_C0 = 0.28209479177387814

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_KNOWN = {"x", "y", "z", "nx", "ny", "nz", "opacity"} | {f"f_dc_{i}" for i in range(3)} | {
    f"scale_{i}" for i in range(3)} | {f"rot_{i}" for i in range(4)}
MAX_HEADER_BYTES = 1 << 16


class PlyFormatError(ValueError):
    """The file is not a readable 3D Gaussian Splatting file; the message says what is wrong."""


@dataclass
class SplatData:
    """Gaussians as stored in files, pre-activation.

    Attributes:
        means: [N,3] float32 centres.
        sh_dc: [N,3] float32 DC spherical-harmonics coefficients.
        sh_rest: [N,M,3] float32 higher bands (M = (degree+1)²−1, may be 0).
        opacity_logits: [N] float32.
        log_scales: [N,3] float32.
        quats: [N,4] float32, w-first, not necessarily normalised.
        normals: [N,3] float32 (unused by splatting; kept for round trips).
        extra: name → [N] array of any other per-vertex property, kept in file order.
    """

    means: np.ndarray
    sh_dc: np.ndarray
    sh_rest: np.ndarray
    opacity_logits: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    normals: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {
            "means": (n, 3), "sh_dc": (n, 3), "opacity_logits": (n,), "log_scales": (n, 3), "quats": (n, 4),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.shape != shape:
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(f"SplatData.{name} must be an array of shape {shape}, got {got}")
        if self.sh_rest.ndim != 3 or self.sh_rest.shape[0] != n or self.sh_rest.shape[2] != 3:
            raise ValueError(f"SplatData.sh_rest must be [N,M,3] with N={n}, got {self.sh_rest.shape}")
        if self.normals is None:
            self.normals = np.zeros((n, 3), np.float32)
        for name, value in self.extra.items():
            if value.shape != (n,):
                raise ValueError(f"SplatData.extra[{name!r}] must be [N]={n}, got {value.shape}")

    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh_rest.shape[1] + 1))) - 1


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


def open_source(source) -> io.BufferedIOBase:
    """A binary file object for a path or for the file's bytes (``bytes``/``bytearray``/``memoryview``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    return open(source, "rb")


def source_name(source) -> str:
    """The path for messages, or ``<N bytes>`` for in-memory data."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


@dataclass(frozen=True)
class PlyElement:
    """One ``element`` of a PLY header: its name, row count and (property, type) pairs in file order."""

    name: str
    count: int
    props: tuple[tuple[str, str], ...]

    def dtype(self, order: str = "<") -> np.dtype:
        return np.dtype([(name, order + _PLY_TYPES[t]) for name, t in self.props])


def parse_ply_elements(f, first_only: bool = False) -> tuple[str, list[PlyElement]]:
    """Read a PLY header from ``f`` (left at the first body byte): the format and every element.

    List properties (faces) are refused: no splat layout uses them. With ``first_only`` the elements after
    the first are skipped unread (a mesh's faces after its vertices), so only the first is returned.
    Raises PlyFormatError."""
    magic = f.readline()
    if magic.strip() != b"ply":
        raise PlyFormatError("not a PLY file (missing 'ply' magic line)")
    fmt, elements, read, skipping = None, [], len(magic), False
    while True:
        line = f.readline()
        read += len(line)
        if not line:
            raise PlyFormatError("PLY header has no 'end_header'")
        if read > MAX_HEADER_BYTES:
            raise PlyFormatError(f"PLY header longer than {MAX_HEADER_BYTES} bytes")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) < 2 or words[1] not in ("binary_little_endian", "binary_big_endian", "ascii"):
                raise PlyFormatError(f"unsupported PLY format line: {' '.join(words)}")
            fmt = words[1]
        elif words[0] == "element":
            if first_only and elements:
                skipping = True
                continue
            if len(words) != 3 or not words[2].isdigit():
                raise PlyFormatError(f"bad element line: {' '.join(words)}")
            elements.append(PlyElement(words[1], int(words[2]), ()))
        elif words[0] == "property":
            if skipping:
                continue
            if not elements:
                raise PlyFormatError(f"property before any element: {' '.join(words)}")
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise PlyFormatError(f"unsupported property line in element {elements[-1].name!r}: {' '.join(words)}")
            last = elements[-1]
            elements[-1] = PlyElement(last.name, last.count, last.props + ((words[2], words[1]),))
        elif words[0] == "end_header":
            break
    if fmt is None or not elements:
        raise PlyFormatError("PLY header lacks a format line or an element")
    return fmt, elements


def _parse_header(f) -> tuple[str, int, list[tuple[str, str]]]:
    """The INRIA layout's header: (format, vertex count, vertex properties); later elements are ignored."""
    fmt, elements = parse_ply_elements(f, first_only=True)
    if elements[0].name != "vertex":
        raise PlyFormatError(f"expected the 'vertex' element first, found {elements[0].name!r}")
    return fmt, elements[0].count, list(elements[0].props)


def _is_compressed_ply(source) -> bool:
    with open_source(source) as f:
        try:
            _, elements = parse_ply_elements(f)
        except PlyFormatError:
            return False
    return bool(elements) and elements[0].name == "chunk"


def read_ply(path) -> SplatData:
    """Read an INRIA-layout 3DGS .ply (binary either endianness, or ascii), from a path or bytes.

    Tolerates extra SH bands (any number of ``f_rest_*``, which must be a multiple of 3), missing normals,
    and unknown properties (kept in ``extra``). A PlayCanvas/SuperSplat compressed .ply (a ``chunk``
    element first) is handed to :func:`compressed_ply.read_compressed_ply`. Raises PlyFormatError naming
    the problem.
    """
    if _is_compressed_ply(path):
        from .compressed_ply import read_compressed_ply

        return read_compressed_ply(path)
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
            dtype = np.dtype([(name, order + _PLY_TYPES[t]) for name, t in props])
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


# -- activated state frame [N,14] (docs/conventions.md) ------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


def splat_to_state(data: SplatData) -> np.ndarray:
    """Activated [N,14] float32 frame: x y z | r g b | opacity | sx sy sz | qw qx qy qz."""
    q = data.quats.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rgb = np.clip(0.5 + SH_C0 * data.sh_dc.astype(np.float64), 0.0, 1.0)
    out = np.concatenate(
        [data.means, rgb, _sigmoid(data.opacity_logits)[:, None], np.exp(data.log_scales.astype(np.float64)), q],
        axis=1,
    )
    return out.astype(np.float32)


def state_to_splat(state: np.ndarray, sh_rest: np.ndarray | None = None) -> SplatData:
    """Inverse of :func:`splat_to_state` (colours clamped to [0,1] lose what lay outside)."""
    state = np.asarray(state, dtype=np.float32)
    if state.ndim != 2 or state.shape[1] != 14:
        raise ValueError(f"state must be [N,14], got {state.shape}")
    n = state.shape[0]
    opacity = np.clip(state[:, 6].astype(np.float64), 1e-7, 1 - 1e-7)
    scales = np.maximum(state[:, 7:10].astype(np.float64), 1e-30)
    return SplatData(
        means=state[:, 0:3].copy(),
        sh_dc=((state[:, 3:6].astype(np.float64) - 0.5) / SH_C0).astype(np.float32),
        sh_rest=np.zeros((n, 0, 3), np.float32) if sh_rest is None else sh_rest.astype(np.float32),
        opacity_logits=np.log(opacity / (1 - opacity)).astype(np.float32),
        log_scales=np.log(scales).astype(np.float32),
        quats=state[:, 10:14].copy(),
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


# -- every splat format: one reader and one writer entry --------------------------------------------------
SPLAT_FORMATS = ("ply", "compressed.ply", "splat", "spz")
_EXTENSIONS = ", ".join("." + f for f in SPLAT_FORMATS)


def format_of(path, sniff: bool = True) -> str:
    """The splat format of a path (or of bytes, by their magic): one of SPLAT_FORMATS.

    Magic first (a PLY whose first element is ``chunk`` is compressed; gzip or ``NGSP`` is .spz), then the
    extension (``.splat`` has no magic). ``sniff=False`` (for outputs that do not exist yet) uses only the
    name: ``*.compressed.ply`` → compressed .ply."""
    head = b""
    if isinstance(path, (bytes, bytearray, memoryview)):
        head = bytes(path[:4])
        name = ""
    else:
        name = os.fspath(path).lower()
        if sniff and os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.read(4)
    if head.startswith(b"ply"):
        return "compressed.ply" if _is_compressed_ply(path) else "ply"
    if head[:2] == b"\x1f\x8b" or head == b"NGSP":
        return "spz"
    for fmt in ("compressed.ply", "ply", "splat", "spz"):
        if name.endswith("." + fmt):
            return fmt
    what = f"extension of {name!r}" if name else "content (no PLY/gzip/NGSP magic; pass fmt='splat' for .splat bytes)"
    raise PlyFormatError(f"unsupported splat file: cannot tell the format from its {what}; expected {_EXTENSIONS}")


def read_any(path, fmt: str | None = None) -> SplatData:
    """Read any splat file (a path or its bytes): INRIA .ply, compressed .ply, .splat or .spz.

    ``fmt`` (one of SPLAT_FORMATS) overrides detection (:func:`format_of`)."""
    fmt = fmt or format_of(path)
    if fmt in ("ply", "compressed.ply"):
        return read_ply(path)
    if fmt == "splat":
        return read_splat(path)
    if fmt == "spz":
        from .spz import read_spz

        return read_spz(path)
    raise PlyFormatError(f"unsupported splat format {fmt!r}; expected one of {SPLAT_FORMATS}")


def write_any(path: str | os.PathLike, data: SplatData, fmt: str | None = None) -> str:
    """Write ``data`` in the format named by ``fmt`` or by the path (``*.compressed.ply`` is compressed);
    returns the format written."""
    fmt = fmt or format_of(path, sniff=False)
    if fmt == "ply":
        write_ply(path, data)
    elif fmt == "compressed.ply":
        from .compressed_ply import write_compressed_ply

        write_compressed_ply(path, data)
    elif fmt == "splat":
        write_splat(path, data)
    elif fmt == "spz":
        from .spz import write_spz

        write_spz(path, data)
    else:
        raise PlyFormatError(f"unsupported splat format {fmt!r}; expected one of {SPLAT_FORMATS}")
    return fmt
