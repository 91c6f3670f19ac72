"""The envelope codec: exact round trips of every dtype/shape, zero-copy on both sides, and a typed
error for every malformed envelope."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from interactive3d.protocol.codec import DTYPES, Limits, decode, encode
from interactive3d.protocol.errors import ProtocolError

SHAPES = [(), (0,), (7,), (3, 0, 2), (2, 3, 4), (1, 1, 1, 1, 5)]


def _sample(dtype: str, shape: tuple, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return rng.standard_normal(shape).astype(dt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype_and_shape(dtype):
    """Bit-identical arrays (dtype, shape, bytes) for each of the 14 dtypes × 6 shapes incl. empty and 0-d."""
    arrays = [_sample(dtype, s, i) for i, s in enumerate(SHAPES)]
    msg = decode(encode({"id": "x", "op": "o", "args": {}}, arrays))
    assert len(msg.buffers) == len(arrays)
    for a, b in zip(arrays, msg.buffers):
        assert b.dtype == a.dtype and b.shape == a.shape
        assert a.tobytes() == b.tobytes()


def test_state_frame_zero_copy_both_ways():
    """A 100k×14 float32 frame: the sent frame is a view of the array (no copy) and the decoded array is
    a read-only view of the received frame."""
    a = np.random.default_rng(0).standard_normal((100_000, 14)).astype(np.float32)
    frames = encode({"id": "s", "event": "state"}, [a])
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), a)
    msg = decode(frames)
    b = msg.buffers[0]
    assert np.shares_memory(b, a) and not b.flags.writeable
    assert np.array_equal(a, b)


def test_non_contiguous_and_big_endian_are_converted():
    a = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    b = decode(encode({"id": "x"}, [a])).buffers[0]
    assert b.dtype == np.dtype("<f8") and np.array_equal(a, b)


def test_unsendable_dtype_is_type_error():
    with pytest.raises(TypeError, match="buffers\\[0\\]"):
        encode({"id": "x"}, [np.array(["a"])])
    with pytest.raises(TypeError):
        encode({"id": "x"}, [np.array([object()])])


def _hdr(**kw) -> bytes:
    h = {"v": 2, "id": "r1", "op": "ping", "args": {}, "buffers": []}
    h.update(kw)
    return msgpack.packb(h, use_bin_type=True)


@pytest.mark.parametrize(
    "frames, code",
    [
        ([], "bad_message"),
        ([b"\xc1\xff garbage"], "bad_message"),
        ([msgpack.packb([1, 2, 3])], "bad_message"),  # non-map header
        ([msgpack.packb({"id": "r1"})], "bad_message"),  # missing v
        ([_hdr(v=1)], "unsupported_version"),
        ([_hdr(v="1")], "bad_message"),
        ([_hdr(id=5)], "bad_message"),
        ([_hdr(buffers=[{"dtype": "float32", "shape": [3]}]), b"\0" * 8], "bad_message"),  # 12 declared, 8 sent
        ([_hdr(buffers=[{"dtype": "float32", "shape": [2]}])], "bad_message"),  # missing frame
        ([_hdr(), b"\0" * 4], "bad_message"),  # extra frame
        ([_hdr(buffers=[{"dtype": "object", "shape": [1]}]), b"\0" * 8], "bad_message"),  # unsupported dtype
        ([_hdr(buffers=[{"dtype": "float32", "shape": [-1]}]), b""], "bad_message"),
        ([_hdr(buffers=[{"dtype": "float32", "shape": "3"}]), b"\0" * 12], "bad_message"),
        ([_hdr(buffers={"dtype": "float32"})], "bad_message"),
        ([_hdr(buffers=[7]), b""], "bad_message"),
        ([_hdr()] + [b""] * 64, "too_large"),  # 65 frames > 64
    ],
)
def test_malformed_envelopes_get_typed_errors(frames, code):
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    assert e.value.code == code


def test_request_id_is_recovered_when_header_is_readable():
    with pytest.raises(ProtocolError) as e:
        decode([_hdr(v=9)])
    assert e.value.request_id == "r1"
    with pytest.raises(ProtocolError) as e:
        decode([_hdr(buffers=[{"dtype": "int8", "shape": [3]}]), b"\0\0"])
    assert e.value.request_id == "r1" and e.value.code == "bad_message"


def test_size_caps():
    """Per-frame, total and header caps answer too_large before any unpacking of buffers."""
    lim = Limits(max_frames=4, max_header_bytes=200, max_frame_bytes=100, max_total_bytes=150)
    ok = [_hdr(buffers=[{"dtype": "uint8", "shape": [100]}]), b"\0" * 100]
    assert decode(ok, lim).buffers[0].shape == (100,)
    for frames in (
        [_hdr(buffers=[{"dtype": "uint8", "shape": [101]}]), b"\0" * 101],  # per frame
        [_hdr(buffers=[{"dtype": "uint8", "shape": [80]}] * 2), b"\0" * 80, b"\0" * 80],  # total
        [_hdr(pad="x" * 300)],  # header
        [_hdr(buffers=[{"dtype": "uint8", "shape": [1 << 40]}]), b"\0"],  # declared far over the cap
    ):
        with pytest.raises(ProtocolError) as e:
            decode(frames, lim)
        assert e.value.code == "too_large"


def test_unknown_header_fields_are_tolerated():
    msg = decode([_hdr(future={"x": 1}, other=[1, 2])])
    assert msg.op == "ping" and msg.header["future"] == {"x": 1}


def test_limits_validate():
    with pytest.raises(ValueError, match="max_frames"):
        Limits(max_frames=0)
