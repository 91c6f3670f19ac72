"""protocol/ply.py: the INRIA 3DGS .ply layout and .splat, checked against an independent reader."""

import os
import stat

import numpy as np
import plyfile
import pytest

from interactive3d.protocol import ply, splat_data, splats


def _random_splats(n: int = 257, m: int = 3, seed: int = 0) -> splat_data.SplatData:
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return splat_data.SplatData(
        means=f(n, 3), sh_dc=f(n, 3), sh_rest=f(n, m, 3), opacity_logits=f(n), log_scales=f(n, 3) - 3,
        quats=f(n, 4), normals=f(n, 3), extra={"label": rng.integers(0, 5, n).astype(np.float32)},
    )


def _fields(d: splat_data.SplatData):
    return [d.means, d.sh_dc, d.sh_rest, d.opacity_logits, d.log_scales, d.quats, d.normals, d.extra["label"]]


def test_round_trip_is_bit_exact(tmp_path):
    """Every array survives write → read with identical bytes (float32 stored as float32)."""
    data = _random_splats()
    path = tmp_path / "a.ply"
    ply.write_ply(path, data)
    back = ply.read_ply(path)
    for a, b in zip(_fields(data), _fields(back)):
        assert a.tobytes() == b.tobytes()
    assert back.sh_degree == 1


def test_independent_reader_sees_inria_names_and_values(tmp_path):
    """plyfile reads our file with the INRIA property names; f_rest is channel-major; rot_0 is w."""
    data = _random_splats(n=10, m=3)
    path = tmp_path / "b.ply"
    ply.write_ply(path, data)
    v = plyfile.PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert names[18:26] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    np.testing.assert_array_equal(v["rot_0"], data.quats[:, 0])  # w first
    # channel-major: f_rest_{c*M+k} = sh_rest[:, k, c]; green channel (c=1), coefficient k=2 → f_rest_5
    np.testing.assert_array_equal(v["f_rest_5"], data.sh_rest[:, 2, 1])
    np.testing.assert_array_equal(v["opacity"], data.opacity_logits)


def test_reads_files_from_other_writers(tmp_path):
    """A big-endian file with double x/y/z, no normals, degree-3 SH and extra props written by plyfile."""
    n, m = 7, 15
    rng = np.random.default_rng(1)
    props = [("x", ">f8"), ("y", ">f8"), ("z", ">f8")] + [(f"f_dc_{i}", ">f4") for i in range(3)]
    props += [(f"f_rest_{i}", ">f4") for i in range(3 * m)]
    props += [("opacity", ">f4")] + [(f"scale_{i}", ">f4") for i in range(3)] + [(f"rot_{i}", ">f4") for i in range(4)]
    props += [("custom", ">u1")]
    arr = np.zeros(n, dtype=props)
    for name, _ in props:
        arr[name] = rng.integers(0, 50, n) if name == "custom" else rng.standard_normal(n)
    path = tmp_path / "c.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], byte_order=">").write(str(path))
    d = ply.read_ply(path)
    assert d.n == n and d.sh_degree == 3 and d.sh_rest.shape == (n, 15, 3)
    np.testing.assert_array_equal(d.means[:, 0], arr["x"].astype(np.float32))
    np.testing.assert_array_equal(d.sh_rest[:, 14, 2], arr["f_rest_44"])
    np.testing.assert_array_equal(d.normals, 0.0)
    np.testing.assert_array_equal(d.extra["custom"], arr["custom"])
    ascii_path = tmp_path / "d.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=True).write(str(ascii_path))
    np.testing.assert_allclose(ply.read_ply(ascii_path).quats, d.quats, rtol=1e-6)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"hello", "magic"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nend_header\n", "missing"),
        (b"ply\nformat weird 1.0\nend_header\n", "format"),
        (b"ply\nformat binary_little_endian 1.0\nelement face 2\nend_header\n", "vertex"),
    ],
)
def test_bad_files_raise_format_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(splat_data.PlyFormatError, match=fragment):
        ply.read_ply(path)


def test_truncated_body_is_reported(tmp_path):
    path = tmp_path / "t.ply"
    ply.write_ply(path, _random_splats(n=20))
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])
    with pytest.raises(splat_data.PlyFormatError, match="truncated"):
        ply.read_ply(path)


def test_state_frame_conversion_round_trip():
    """Activated [N,14] frame ↔ SplatData: exact inverse up to float32 rounding (1e-5 relative)."""
    data = _random_splats(n=100, m=0)
    # |dc| < 1.7 keeps rgb = 0.5 + C0·dc inside [0,1], so no clamping happens
    data.sh_dc = np.random.default_rng(2).uniform(-1.7, 1.7, (100, 3)).astype(np.float32)
    state = splat_data.splat_to_state(data)
    assert state.shape == (100, 14) and state.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(state[:, 10:], axis=1), 1.0, atol=1e-6)
    back = splat_data.state_to_splat(state)
    np.testing.assert_allclose(back.opacity_logits, data.opacity_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(back.log_scales, data.log_scales, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(back.sh_dc, data.sh_dc, rtol=1e-5, atol=1e-5)


def test_splat_format_round_trip_within_quantisation(tmp_path):
    """.splat keeps positions/scales exactly and colours/rotations within their 8-bit step."""
    data = _random_splats(n=64, m=0)
    data.sh_dc = np.random.default_rng(3).uniform(-1.7, 1.7, (64, 3)).astype(np.float32)
    path = tmp_path / "a.splat"
    ply.write_splat(path, data)
    assert path.stat().st_size == 64 * 32
    back = splats.read_any(path)
    a, b = splat_data.splat_to_state(data), splat_data.splat_to_state(back)
    np.testing.assert_array_equal(a[:, 0:3], b[:, 0:3])
    np.testing.assert_allclose(a[:, 7:10], b[:, 7:10], rtol=1e-6)
    assert np.abs(a[:, 3:7] - b[:, 3:7]).max() <= 0.5 / 255 + 1e-6
    # rotation: 8-bit quantisation of each component, then renormalised; same rotation up to sign
    dots = np.abs((a[:, 10:] * b[:, 10:]).sum(1))
    assert dots.min() > 0.999


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_files_get_umask_permissions_and_leave_no_temp(tmp_path):
    """Outputs are created as open() would (0o666 & ~umask: 0o644 under umask 022), not mkstemp's 0o600,
    and the atomic write leaves no temp file beside them."""
    old = os.umask(0o022)
    try:
        ply.write_ply(tmp_path / "a.ply", _random_splats(8))
        ply.write_splat(tmp_path / "a.splat", _random_splats(8))
    finally:
        os.umask(old)
    for name in ("a.ply", "a.splat"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ply", "a.splat"]
