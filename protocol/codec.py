"""The wire envelope: a msgpack header frame followed by one raw frame per numpy array.

``[header, buf0, buf1, …]`` where header is a msgpack map::

    request {"v": 2, "id": str, "op": str,    "args": map,  "buffers": [{"dtype": str, "shape": [int…]}…]}
    reply   {"v": 2, "id": str, "ok": true,   "result": map, "buffers": […]}
            {"v": 2, "id": str, "ok": false,  "error": {"code": str, "message": str}}
    event   {"v": 2, "id": str, "event": str, "session": str, "job": str, "data": map, "buffers": […]}

Arrays travel as their raw little-endian bytes (C order). Sending never copies a C-contiguous
little-endian array (the frame is a view of it, sent with ``copy=False``); receiving wraps the frame with
``np.frombuffer`` (a read-only view — copy only where you need to mutate). Unknown header fields are
tolerated on both sides.

Decoding validates everything that the envelope itself can know before anything acts: frame count and
sizes against :class:`Limits`, the header is a map with a known version, every buffer has a supported
dtype and a shape whose byte size equals its frame's length. Per-op checks (args, which buffers) are in
:mod:`.catalogue`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import msgpack
import numpy as np

from .errors import BadMessage, ProtocolError, TooLarge, UnsupportedVersion

# The envelope's "v". It changes whenever the bytes on the wire change: 2 = signatures carry the domain
# prefixes of auth.REQUEST_DOMAIN / REPLY_DOMAIN (version 1 signed header ‖ buffers alone).
PROTOCOL_VERSION = 2
_OLD_VERSIONS = {1: "version 1 signed requests as HMAC-SHA256(key, header ‖ buffers); version 2 signs "
                    "HMAC-SHA256(key, 'i3d-request-v1\\0' ‖ header ‖ buffers) and replies under 'i3d-reply-v1\\0' "
                    "(docs/protocol.md, 'Envelope'); update the client"}

# Versions an *unsigned* message may carry: version 2 changed only the signature, so an unsigned version-1
# message is byte for byte what it was (a server with no key answers it in version 1; a server with a key
# refuses it, naming the change).
UNSIGNED_VERSIONS = (1, PROTOCOL_VERSION)

# Wire dtype names (numpy's names); multi-byte types are little-endian on the wire.
DTYPES: tuple[str, ...] = (
    "bool",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
    "complex64", "complex128",
)
_NP_DTYPES = {name: np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name) for name in DTYPES}
MAX_NDIM = 32  # numpy's own limit is 64; no real payload comes close


@dataclass(frozen=True)
class Limits:
    """Caps checked on every decoded message (the server's are configurable: ``i3d serve --max-bytes``).

    Attributes:
        max_frames: most frames per message, header included.
        max_header_bytes: most bytes in the header frame.
        max_frame_bytes: most bytes in one buffer frame.
        max_total_bytes: most bytes in all buffer frames together (the header has its own cap).
    """

    max_frames: int = 64
    max_header_bytes: int = 1 << 20
    max_frame_bytes: int = 1 << 30
    max_total_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_header_bytes", "max_frame_bytes", "max_total_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {v!r}")


@dataclass
class Message:
    """One decoded message: the header map and the arrays of its buffer frames.

    ``raw_header`` is the header frame's bytes as received (for signature checks); empty when the
    message was built locally.
    """

    header: dict
    buffers: list[np.ndarray] = field(default_factory=list)
    raw_header: bytes = b""

    @property
    def id(self) -> str:
        v = self.header.get("id", "")
        return v if isinstance(v, str) else ""

    @property
    def kind(self) -> str:
        """"request", "reply", "event" or "unknown"."""
        if "event" in self.header:
            return "event"
        if "ok" in self.header:
            return "reply"
        if "op" in self.header:
            return "request"
        return "unknown"

    @property
    def op(self) -> str | None:
        return self.header.get("op")

    @property
    def event(self) -> str | None:
        return self.header.get("event")

    @property
    def args(self) -> dict:
        return self.header.get("args") or {}

    @property
    def data(self) -> dict:
        """An event's payload map."""
        return self.header.get("data") or {}

    @property
    def ok(self) -> bool:
        return bool(self.header.get("ok"))

    @property
    def result(self) -> dict:
        return self.header.get("result") or {}

    @property
    def error(self) -> dict:
        return self.header.get("error") or {}


def dtype_name(dtype: np.dtype) -> str:
    """Wire name of a numpy dtype; TypeError if it cannot travel (object, strings, structured)."""
    dt = np.dtype(dtype)
    if dt.name not in _NP_DTYPES or dt.fields is not None:
        raise TypeError(f"dtype {dt!s} cannot be sent; supported: {', '.join(DTYPES)}")
    return dt.name


def _as_wire_array(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    name = dtype_name(arr.dtype)
    want = _NP_DTYPES[name]
    if arr.dtype != want:  # big-endian input: the only case besides non-contiguity that copies
        arr = arr.astype(want)
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def buffer_frames(buffers: Sequence[Any]) -> tuple[list[dict], list[memoryview]]:
    """Buffer specs for the header and zero-copy frames (byte views of the arrays) for ``buffers``."""
    specs, frames = [], []
    for i, a in enumerate(buffers):
        try:
            arr = _as_wire_array(a)
        except TypeError as exc:
            raise TypeError(f"buffers[{i}]: {exc}") from None
        specs.append({"dtype": arr.dtype.name, "shape": list(arr.shape)})
        # A flat uint8 view has the buffer protocol format zmq wants and costs no copy.
        frames.append(memoryview(arr.reshape(-1).view(np.uint8)))
    return specs, frames


def pack_header(header: dict) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def encode(header: dict, buffers: Sequence[Any] = ()) -> list:
    """Frames for ``header`` (its "v" and "buffers" are filled in) and ``buffers``.

    The returned list is ``[header_bytes, view0, view1, …]``; send it with
    ``socket.send_multipart(frames, copy=False)``. The views keep the arrays alive.
    """
    specs, frames = buffer_frames(buffers)
    h = {"v": PROTOCOL_VERSION, **header, "buffers": specs}
    return [pack_header(h), *frames]


def _frame_bytes(f: Any) -> memoryview:
    """A memoryview over a received frame (zmq.Frame, bytes, bytearray or memoryview)."""
    buf = getattr(f, "buffer", None)  # zmq.Frame
    if buf is not None:
        return buf
    return memoryview(f)


def _header_id(h: Any) -> str:
    if isinstance(h, dict) and isinstance(h.get("id"), str):
        return h["id"][:200]
    return ""


def _peek_id(view: memoryview, limits: Limits) -> str:
    """The request id of a header frame, or "" when it cannot be read (never raises)."""
    if view.nbytes > limits.max_header_bytes:
        return ""
    try:
        return _header_id(msgpack.unpackb(view.tobytes(), raw=False, strict_map_key=False))
    except Exception:  # noqa: BLE001 - garbage: no id
        return ""


def decode_header(raw: bytes | memoryview, limits: Limits, versions: Collection[int] = (PROTOCOL_VERSION,)) -> dict:
    """Unpack and check a header frame (map, version in ``versions``). Raises BadMessage / UnsupportedVersion."""
    if len(raw) > limits.max_header_bytes:
        raise TooLarge(f"header is {len(raw)} bytes, over the cap of {limits.max_header_bytes}")
    try:
        h = msgpack.unpackb(
            raw, raw=False, strict_map_key=False, use_list=True
        )
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, …) on garbage
        raise BadMessage(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(h, dict):
        raise BadMessage(f"header must be a map, got {type(h).__name__}")
    rid = _header_id(h)
    if "id" in h and not isinstance(h["id"], str):
        raise BadMessage(f"header field 'id' must be a string, got {type(h['id']).__name__}")
    v = h.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadMessage(f"header field 'v' must be an int, got {v!r}", request_id=rid)
    if v not in versions:
        why = f": {_OLD_VERSIONS[v]}" if v in _OLD_VERSIONS else ""
        # answered in the peer's own version, so that an older client can read why it is refused
        raise UnsupportedVersion(f"protocol version {v} is not supported: this side speaks version {PROTOCOL_VERSION}{why}",
                                 request_id=rid, peer_version=v if 0 < v < PROTOCOL_VERSION else None)
    return h


def _check_spec(i: int, spec: Any) -> tuple[np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict):
        raise BadMessage(f"buffers[{i}] must be a map with dtype and shape, got {type(spec).__name__}")
    name, shape = spec.get("dtype"), spec.get("shape")
    if not isinstance(name, str) or name not in _NP_DTYPES:
        raise BadMessage(f"buffers[{i}].dtype {name!r} is not supported; supported: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise BadMessage(f"buffers[{i}].shape must be a list of at most {MAX_NDIM} ints, got {shape!r}")
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise BadMessage(f"buffers[{i}].shape must hold non-negative ints, got {shape!r}")
    return _NP_DTYPES[name], tuple(shape)


def decode(frames: Sequence[Any], limits: Limits = Limits(), verify=None,
           versions: Collection[int] = (PROTOCOL_VERSION,)) -> Message:
    """Decode and validate ``frames`` (as received by ``recv_multipart``, copy=False or not).

    Args:
        frames: ``[header, buf0, …]`` (a ROUTER's identity frame already removed).
        limits: caps on frame count and sizes.
        verify: optional callable ``(raw_header, header, buffer_views) -> None`` that raises
            :class:`Unauthorized` (the :class:`.auth.Signer` check); it runs before buffers are wrapped.
        versions: the envelope versions accepted (a keyless server also takes version 1, see
            ``UNSIGNED_VERSIONS``).

    Returns:
        The :class:`Message`, buffers as read-only arrays viewing the frames.

    Raises:
        ProtocolError: BadMessage, UnsupportedVersion, TooLarge or Unauthorized; ``request_id`` is set
            when the header could be read.
    """
    if len(frames) == 0:
        raise BadMessage("empty message")
    if len(frames) > limits.max_frames:
        raise TooLarge(f"message has {len(frames)} frames, over the cap of {limits.max_frames}")
    views = [_frame_bytes(f) for f in frames]
    total = 0
    try:
        for i, v in enumerate(views[1:]):
            n = v.nbytes
            if n > limits.max_frame_bytes:
                raise TooLarge(f"frame {i + 1} is {n} bytes, over the per-frame cap of {limits.max_frame_bytes}")
            total += n
        if total > limits.max_total_bytes:
            raise TooLarge(f"message is {total} bytes, over the total cap of {limits.max_total_bytes}")
    except TooLarge as exc:
        # the reply must name the request so its sender fails fast instead of re-sending the same bytes
        exc.request_id = _peek_id(views[0], limits)
        raise
    raw = views[0].tobytes()
    h = decode_header(raw, limits, versions)
    rid = _header_id(h)
    try:
        if verify is not None:
            verify(raw, h, views[1:])
        specs = h.get("buffers", [])
        if specs is None:
            specs = []
        if not isinstance(specs, list):
            raise BadMessage(f"header field 'buffers' must be a list, got {type(specs).__name__}")
        if len(specs) != len(views) - 1:
            raise BadMessage(f"header declares {len(specs)} buffers but {len(views) - 1} frames follow it")
        arrays = []
        for i, (spec, view) in enumerate(zip(specs, views[1:])):
            dt, shape = _check_spec(i, spec)
            count = math.prod(shape)
            declared = count * dt.itemsize
            if declared > limits.max_frame_bytes:
                raise TooLarge(f"buffers[{i}] declares {declared} bytes, over the per-frame cap of {limits.max_frame_bytes}")
            if declared != view.nbytes:
                raise BadMessage(
                    f"buffers[{i}] declares {shape} {dt.name} = {declared} bytes but its frame has {view.nbytes} bytes"
                )
            arr = np.frombuffer(view, dtype=dt, count=count).reshape(shape)
            arr.flags.writeable = False  # a view of the frame: copy before mutating
            arrays.append(arr)
    except ProtocolError as exc:
        exc.request_id = exc.request_id or rid
        raise
    return Message(header=h, buffers=arrays, raw_header=raw)


def error_header(request_id: str, code: str, message: str, version: int | None = None) -> dict:
    """An error reply's header, in ``version`` (default this protocol's; an UnsupportedVersion's peer_version)."""
    return {"v": version or PROTOCOL_VERSION, "id": request_id, "ok": False, "error": {"code": code, "message": message}}
