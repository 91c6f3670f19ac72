"""Every splat file format through one entry: :func:`format_of`, :func:`read_any`, :func:`write_any`.

The format modules below it (``ply.py``: INRIA .ply and .splat; ``compressed_ply.py``; ``spz.py``; ``sog.py``)
know nothing of each other; this module picks one by the file's magic or name. numpy only.
"""

from __future__ import annotations

import os

from .compressed_ply import read_compressed_ply, write_compressed_ply
from .ply import read_ply, read_splat, write_ply, write_splat
from .sog import read_sog, write_sog
from .splat_data import PlyFormatError, SplatData, first_ply_element
from .spz import SPZ_AXES, read_spz, write_spz

SPLAT_FORMATS = ("ply", "compressed.ply", "splat", "spz", "sog")
_EXTENSIONS = ", ".join("." + f for f in SPLAT_FORMATS)


def format_of(path, sniff: bool = True) -> str:
    """The splat format of a path (or of bytes, by their magic): one of SPLAT_FORMATS.

    Magic first (a PLY whose first element is ``chunk`` is compressed; gzip or ``NGSP`` is .spz; a zip is
    .sog), then the name (``.splat`` has no magic; a ``.json`` is an unbundled .sog's meta file). ``sniff=False`` (for outputs that do not exist yet) uses only the name: ``*.compressed.ply`` →
    compressed .ply, ``meta.json`` → unbundled .sog."""
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
        return "compressed.ply" if first_ply_element(path) == "chunk" else "ply"
    if head[:2] == b"\x1f\x8b" or head == b"NGSP":
        return "spz"
    if head == b"PK\x03\x04":
        return "sog"
    if name.endswith(".json"):  # the unbundled .sog is named by its meta.json
        return "sog"
    for fmt in ("compressed.ply", "ply", "splat", "spz", "sog"):
        if name.endswith("." + fmt):
            return fmt
    what = f"extension of {name!r}" if name else "content (no PLY/gzip/NGSP/zip magic; pass fmt='splat' for .splat bytes)"
    raise PlyFormatError(f"unsupported splat file: cannot tell the format from its {what}; expected {_EXTENSIONS}")


def read_any(path, fmt: str | None = None, spz_axes: str = "ply") -> SplatData:
    """Read any splat file (a path or its bytes): INRIA .ply, compressed .ply, .splat, .spz or .sog.

    ``fmt`` (one of SPLAT_FORMATS) overrides detection (:func:`format_of`). ``spz_axes`` says which axes an
    .spz holds (one of ``spz.SPZ_AXES``; docs/conventions.md, 'Splat files'); other formats ignore it."""
    fmt = fmt or format_of(path)
    if spz_axes not in SPZ_AXES:
        raise PlyFormatError(f"spz_axes must be one of {SPZ_AXES}, got {spz_axes!r}")
    if fmt == "ply":
        return read_ply(path)
    if fmt == "compressed.ply":
        return read_compressed_ply(path)
    if fmt == "splat":
        return read_splat(path)
    if fmt == "spz":
        return read_spz(path, axes=spz_axes)
    if fmt == "sog":
        return read_sog(path)
    raise PlyFormatError(f"unsupported splat format {fmt!r}; expected one of {SPLAT_FORMATS}")


def write_any(path: str | os.PathLike, data: SplatData, fmt: str | None = None, spz_axes: str = "ply") -> str:
    """Write ``data`` in the format named by ``fmt`` or by the path (``*.compressed.ply`` is compressed,
    ``*.sog`` bundled and ``meta.json`` unbundled .sog); returns the format written. ``spz_axes`` as
    :func:`read_any`."""
    fmt = fmt or format_of(path, sniff=False)
    if spz_axes not in SPZ_AXES:
        raise PlyFormatError(f"spz_axes must be one of {SPZ_AXES}, got {spz_axes!r}")
    if fmt == "ply":
        write_ply(path, data)
    elif fmt == "compressed.ply":
        write_compressed_ply(path, data)
    elif fmt == "splat":
        write_splat(path, data)
    elif fmt == "spz":
        write_spz(path, data, axes=spz_axes)
    elif fmt == "sog":
        write_sog(path, data)
    else:
        raise PlyFormatError(f"unsupported splat format {fmt!r}; expected one of {SPLAT_FORMATS}")
    return fmt
