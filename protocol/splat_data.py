"""What every splat format shares: :class:`SplatData` (Gaussians as files store them), :class:`PlyFormatError`,
the activated [N,14] state frame, reading a source (a path or the file's bytes) and parsing PLY headers.

numpy only (no torch, no bpy). The format modules (``ply.py``, ``compressed_ply.py``, ``spz.py``, ``sog.py``)
import from here and from nothing else in protocol/ but ``files.py``; ``splats.py`` sits above them all
(:func:`splats.read_any`, :func:`splats.write_any`).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

SH_C0 = 0.28209479177387814

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
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
        return np.dtype([(name, order + PLY_TYPES[t]) for name, t in self.props])


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
            if len(words) != 3 or words[1] not in PLY_TYPES:
                raise PlyFormatError(f"unsupported property line in element {elements[-1].name!r}: {' '.join(words)}")
            last = elements[-1]
            elements[-1] = PlyElement(last.name, last.count, last.props + ((words[2], words[1]),))
        elif words[0] == "end_header":
            break
    if fmt is None or not elements:
        raise PlyFormatError("PLY header lacks a format line or an element")
    return fmt, elements


def first_ply_element(source) -> str | None:
    """The name of the first element of a PLY source (``chunk`` for a compressed .ply), or None if it is not
    a readable PLY."""
    with open_source(source) as f:
        try:
            _, elements = parse_ply_elements(f)
        except PlyFormatError:
            return None
    return elements[0].name


# -- activated state frame [N,14] (docs/conventions.md) ------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float64, returned as float32 (tanh form: no overflow for large |x|)."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


def splat_to_state(data: SplatData) -> np.ndarray:
    """Activated [N,14] float32 frame: x y z | r g b | opacity | sx sy sz | qw qx qy qz."""
    q = data.quats.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    rgb = np.clip(0.5 + SH_C0 * data.sh_dc.astype(np.float64), 0.0, 1.0)
    out = np.concatenate(
        [data.means, rgb, sigmoid(data.opacity_logits)[:, None], np.exp(data.log_scales.astype(np.float64)), q],
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
