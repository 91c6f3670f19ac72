"""Splat formats other programs write: SuperSplat/PlayCanvas compressed .ply and Niantic's .spz
(protocol/compressed_ply.py, protocol/spz.py) and the one entry point for every format (splats.read_any /
splats.write_any). The fixtures were written by splat-transform 2.7.1 (tests/fixtures/splats/README.md);
every tolerance below is the format's own quantisation step, derived in the test."""

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from interactive3d.protocol import compressed_ply, ply, splat_data, splats, spz

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "splats"
SH_C0 = splat_data.SH_C0


def _source() -> splat_data.SplatData:
    return ply.read_ply(FIX / "source.ply")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _unit(q):
    q = np.asarray(q, np.float64)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _match(src: splat_data.SplatData, got: splat_data.SplatData) -> np.ndarray:
    """Index into ``got`` of each source Gaussian (files may reorder: compressed .ply is Morton-sorted)."""
    assert got.n == src.n
    _, idx = cKDTree(got.means).query(src.means)
    assert len(np.unique(idx)) == src.n  # a one-to-one match
    return idx


def _errors(src: splat_data.SplatData, got: splat_data.SplatData) -> dict:
    o = _match(src, got)
    return {
        "pos": np.abs(got.means[o] - src.means).max(axis=0),  # per axis
        "log_scale": np.abs(got.log_scales[o] - src.log_scales).max(),
        "rgb": np.abs(SH_C0 * (got.sh_dc[o] - src.sh_dc)).max(),
        "dc": np.abs(got.sh_dc[o] - src.sh_dc).max(),
        "rest": np.abs(got.sh_rest[o] - src.sh_rest).max() if src.sh_rest.size else 0.0,
        "alpha": np.abs(_sigmoid(got.opacity_logits[o]) - _sigmoid(src.opacity_logits)).max(),
        "quat": (1.0 - np.abs((_unit(got.quats[o]) * _unit(src.quats)).sum(axis=1))).max(),
    }


def _check_compressed(src: splat_data.SplatData, got: splat_data.SplatData) -> None:
    """Compressed .ply steps: 11/10/11 bits of the (≤ whole-object) extent, 8 bits of each chunk's colour
    range (≤ the whole range), 8-bit opacity, 10-bit quaternion components, SH to 1/32."""
    e = _errors(src, got)
    ext = src.means.max(axis=0) - src.means.min(axis=0)
    steps = np.array([2047, 1023, 2047])
    assert np.all(e["pos"] <= 0.5 * ext / steps + 1e-6), e["pos"]
    ls = src.log_scales.max(axis=0) - src.log_scales.min(axis=0)
    assert e["log_scale"] <= (0.5 * ls / steps).max() + 1e-6
    rgb = 0.5 + SH_C0 * src.sh_dc
    assert e["rgb"] <= 0.5 * (rgb.max() - rgb.min()) / 255 + 1e-6
    assert e["alpha"] <= 0.5 / 255 + 1e-6
    assert e["quat"] < 1e-5  # ≈ (1/1447)² scale
    assert e["rest"] <= 0.5 * 8 / 256 + 1e-6


def _check_spz(src: splat_data.SplatData, got: splat_data.SplatData) -> None:
    """.spz steps: 2^-12 positions, 1/16 log scales, 1/(0.15·255) f_dc, 1/255 opacity; degree-1 SH keeps
    5 bits of its int8 code (buckets of 8/128) plus the code's own 1/128 rounding."""
    e = _errors(src, got)
    assert np.all(e["pos"] <= 0.5 / 4096 + 1e-6), e["pos"]
    assert e["log_scale"] <= 0.5 / 16 + 1e-6
    assert e["dc"] <= 0.5 / (0.15 * 255) + 1e-5
    assert e["alpha"] <= 0.5 / 255 + 1e-6
    assert e["quat"] < 1e-5
    assert e["rest"] <= (4 + 0.5) / 128 + 1e-6


def test_reads_splat_transform_compressed_ply_within_its_quantisation():
    """SuperSplat's compressed .ply (written by splat-transform) reads back to source.ply within each
    field's step (measured: positions 9.0e-4, f_dc 9.7e-3, opacity 1.9e-3) through every entry point."""
    src = _source()
    path = FIX / "source.compressed.ply"
    assert splats.format_of(path) == "compressed.ply"
    got = splats.read_any(path)
    _check_compressed(src, got)
    assert got.sh_degree == 1
    # the format's own reader and bytes give the same arrays; the INRIA reader names the format it refuses
    for other in (compressed_ply.read_compressed_ply(path), splats.read_any(path.read_bytes())):
        assert other.means.tobytes() == got.means.tobytes() and other.sh_rest.tobytes() == got.sh_rest.tobytes()
    with pytest.raises(splat_data.PlyFormatError, match="compressed .ply"):
        ply.read_ply(path)


@pytest.mark.parametrize("name", ["source_v3.spz", "source_v4.spz"])
def test_reads_splat_transform_spz_within_its_quantisation(name):
    """Niantic's .spz v3 (gzip) and v4 (ZSTD streams), written by splat-transform 2.7.1 from source.ply (in RUB),
    read back with spz_axes='rub' in the .ply's frame (the RUB ↔ RDF flip undone) within the format's steps."""
    src = _source()
    got = splats.read_any(FIX / name, spz_axes="rub")
    _check_spz(src, got)
    assert got.sh_degree == 1


def test_spz_v3_and_v4_decode_to_the_same_numbers():
    """Two containers, one quantisation: v3 and v4 of the same Gaussians decode bit for bit alike."""
    a, b = splats.read_any(FIX / "source_v3.spz", spz_axes="rub"), splats.read_any(FIX / "source_v4.spz", spz_axes="rub")
    for f in ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes(), f



@pytest.mark.parametrize("library", spz.ZSTD_MODULES)
def test_spz_v4_reads_alike_through_every_zstd_library(monkeypatch, library):
    """zstandard (the backend's, Blender's), Python 3.14's compression.zstd or its backport: each alone gives
    the same numbers, and a stream longer or shorter than its table entry is a typed error, not a short read."""
    pytest.importorskip(library)
    monkeypatch.setattr(spz, "ZSTD_MODULES", (library,))
    ref = splats.read_any(FIX / "source_v3.spz", spz_axes="rub")
    got = splats.read_any(FIX / "source_v4.spz", spz_axes="rub")
    for f in ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats"):
        assert getattr(ref, f).tobytes() == getattr(got, f).tobytes(), f
    raw = bytearray((FIX / "source_v4.spz").read_bytes())
    toc = int.from_bytes(raw[28:32], "little")
    usize = int.from_bytes(raw[toc + 8:toc + 16], "little")
    for declared in (usize - 1, usize + 1):  # the first stream's entry one byte off either way
        bad = bytearray(raw)
        bad[toc + 8:toc + 16] = declared.to_bytes(8, "little")
        with pytest.raises(splat_data.PlyFormatError, match="spz"):
            spz.read_spz(bytes(bad))


def test_spz_v4_without_any_zstd_library_says_what_to_install(monkeypatch):
    monkeypatch.setattr(spz, "ZSTD_MODULES", ("no_such_zstd_module",))
    with pytest.raises(splat_data.PlyFormatError, match="install the 'zstandard' package"):
        spz.read_spz((FIX / "source_v4.spz").read_bytes())

def test_our_spz_is_byte_identical_to_the_reference_encoder():
    """spz.spz_bytes(source) equals the .spz v3 Niantic's library (in splat-transform 2.7.1) wrote in RUB, and, in
    the .ply's own axes (the default), the .spz v3 splat-transform 3.10.2 wrote, byte for byte."""
    assert spz.spz_bytes(_source(), axes="rub") == (FIX / "source_v3.spz").read_bytes()
    assert spz.spz_bytes(_source()) == (FIX / "source_st3.spz").read_bytes()


def test_splat_transform_reads_our_files_as_we_do():
    """splat-transform decoded our .spz and compressed .ply (its output .ply files are committed): the
    numbers equal our own reading of the same files (to float32 rounding), so other tools see what we
    wrote. Our writers still produce exactly the committed files."""
    src = _source()
    assert spz.spz_bytes(src, axes="rub") == (FIX / "ours.spz").read_bytes()  # made with 2.7.1, which flips
    assert compressed_ply.compressed_ply_bytes(src) == (FIX / "ours.compressed.ply").read_bytes()
    for ours, theirs in (("ours.spz", "ours.spz.by-splat-transform.ply"),
                         ("ours.compressed.ply", "ours.compressed.by-splat-transform.ply")):
        a, b = splats.read_any(FIX / ours, spz_axes="rub"), ply.read_ply(FIX / theirs)
        o = _match(a, b)
        np.testing.assert_allclose(b.means[o], a.means, atol=1e-6)
        np.testing.assert_allclose(b.log_scales[o], a.log_scales, atol=1e-5)
        np.testing.assert_allclose(b.sh_dc[o], a.sh_dc, atol=1e-4)
        np.testing.assert_allclose(b.sh_rest[o], a.sh_rest, atol=1e-5)
        np.testing.assert_allclose(_sigmoid(b.opacity_logits[o]), _sigmoid(a.opacity_logits), atol=1e-5)
        assert (1 - np.abs((_unit(b.quats[o]) * _unit(a.quats)).sum(axis=1))).max() < 1e-6


def _random(n: int, m: int, seed: int = 0, spread: float = 1.0) -> splat_data.SplatData:
    rng = np.random.default_rng(seed)
    return splat_data.SplatData(
        means=rng.uniform(-spread, spread, (n, 3)).astype(np.float32),
        sh_dc=rng.normal(0, 0.8, (n, 3)).astype(np.float32),
        sh_rest=rng.normal(0, 0.1, (n, m, 3)).astype(np.float32),
        opacity_logits=rng.normal(0, 2, n).astype(np.float32),
        log_scales=rng.uniform(-6, -1, (n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
    )


@pytest.mark.parametrize("m", [0, 3, 8, 15])
@pytest.mark.parametrize("n", [1, 300, 1000])
def test_round_trips_hold_each_formats_quantisation(tmp_path, n, m):
    """Our writer → our reader for every SH degree 0–3 and for 1 Gaussian (a chunk of one row, zero
    extent) up to several chunks: within the same steps as the third-party files."""
    src = _random(n, m, seed=n + m)
    splats.write_any(tmp_path / "a.compressed.ply", src)
    _check_compressed(src, splats.read_any(tmp_path / "a.compressed.ply"))
    splats.write_any(tmp_path / "a.spz", src)
    got = splats.read_any(tmp_path / "a.spz")
    e = _errors(src, got)
    assert np.all(e["pos"] <= 0.5 / 4096 + 1e-6) and e["log_scale"] <= 0.5 / 16 + 1e-6 and e["quat"] < 1e-5
    assert e["rest"] <= (8 + 0.5) / 128 + 1e-6  # bands ≥ 2 keep 4 bits: buckets of 16/128
    assert got.sh_rest.shape == src.sh_rest.shape


def test_identity_rotations_and_flat_chunks_stay_exact(tmp_path):
    """Identical positions and scales in a chunk (max = min) come back exactly (no division by a zero
    extent); identity quaternions come back exactly from .spz (sign + magnitude codes hold 0) and within
    6.9e-4 per component from compressed .ply (its 10-bit unorm has no code for 0: 512/1023 − ½ = 4.9e-4,
    over √½)."""
    n = 5
    src = splat_data.SplatData(
        means=np.tile(np.float32([0.25, -0.5, 0.125]), (n, 1)), sh_dc=np.zeros((n, 3), np.float32),
        sh_rest=np.zeros((n, 0, 3), np.float32), opacity_logits=np.zeros(n, np.float32),
        log_scales=np.full((n, 3), -3.0, np.float32), quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
    )
    for name in ("a.compressed.ply", "a.spz"):
        splats.write_any(tmp_path / name, src)
        got = splats.read_any(tmp_path / name)
        np.testing.assert_allclose(got.quats, src.quats, atol=1e-6 if name.endswith(".spz") else 7e-4)
        np.testing.assert_allclose(got.means, src.means, atol=1e-6)
        np.testing.assert_allclose(got.log_scales, src.log_scales, atol=1e-6)
        np.testing.assert_allclose(_sigmoid(got.opacity_logits), 0.5, atol=0.5 / 255)


def test_format_detection_by_magic_and_name(tmp_path):
    """Files are recognised by content first (a misnamed .spz still reads), then by name; bytes need magic
    (or fmt='splat'); unknown inputs get a PlyFormatError naming the supported formats."""
    src = _random(10, 0)
    splats.write_any(tmp_path / "x.spz", src)
    (tmp_path / "misnamed.ply").write_bytes((tmp_path / "x.spz").read_bytes())
    assert splats.format_of(tmp_path / "misnamed.ply") == "spz"
    assert splats.read_any(tmp_path / "misnamed.ply").n == 10
    assert splats.format_of("out.compressed.ply", sniff=False) == "compressed.ply"
    assert splats.format_of("out.PLY", sniff=False) == "ply"
    ply.write_splat(tmp_path / "x.splat", src)
    raw = (tmp_path / "x.splat").read_bytes()
    assert splats.read_any(raw, fmt="splat").n == 10
    with pytest.raises(splat_data.PlyFormatError, match="fmt='splat'"):
        splats.read_any(raw)
    with pytest.raises(splat_data.PlyFormatError, match=r"\.spz, \.sog"):
        splats.format_of("scene.ksplat", sniff=False)
    assert splats.format_of("scene.SOG", sniff=False) == "sog" and splats.format_of("x/meta.json", sniff=False) == "sog"


@pytest.mark.parametrize("damage", ["truncated_spz", "bad_gzip", "v4_toc", "chunk_count", "sh_columns", "big_positions"])
def test_bad_files_raise_a_typed_error(tmp_path, damage):
    """Damaged or impossible inputs raise PlyFormatError (a ValueError) with a reason, never IndexError
    or a silent partial read; out-of-range positions are refused by the .spz writer."""
    if damage == "truncated_spz":
        import gzip

        body = gzip.decompress((FIX / "source_v3.spz").read_bytes())
        data, match = gzip.compress(body[:-100]), "truncated"
    elif damage == "bad_gzip":
        data, match = (FIX / "source_v3.spz").read_bytes()[:200], "gzip"
    elif damage == "v4_toc":
        raw = bytearray((FIX / "source_v4.spz").read_bytes())
        raw[16:20] = (10**6).to_bytes(4, "little")
        data, match = bytes(raw), "table of contents"
    elif damage == "chunk_count":
        raw = (FIX / "source.compressed.ply").read_bytes()
        data, match = raw.replace(b"element chunk 2", b"element chunk 3", 1), "chunks"
    elif damage == "sh_columns":
        raw = (FIX / "source.compressed.ply").read_bytes()
        data, match = raw.replace(b"property uchar f_rest_8\n", b"", 1), "sh element"
    else:
        far = _random(3, 0, spread=5000.0)
        with pytest.raises(splat_data.PlyFormatError, match="positions must lie within"):
            spz.spz_bytes(far)
        return
    with pytest.raises(splat_data.PlyFormatError, match=match):
        splats.read_any(data)


def test_a_gzip_bomb_costs_only_its_declared_size():
    """An .spz whose header declares 1 Gaussian (20 bytes) followed by 200 MB of zeros (≈ 200 kB of gzip):
    the reader inflates only the 36 bytes the header accounts for and returns the one Gaussian."""
    import gzip
    import struct

    header = struct.pack("<IIIBBBB", spz.MAGIC, 3, 1, 0, 12, 0, 0)
    raw = gzip.compress(header + bytes(20) + bytes(200 << 20), compresslevel=1, mtime=0)
    assert len(raw) < 1 << 20
    got = splats.read_any(raw)
    assert got.n == 1 and np.all(got.means == 0)


_FLIP = np.array([1.0, -1.0, -1.0])


@pytest.mark.parametrize("name, axes", [("source_st3.spz", "ply"), ("source_v3.spz", "rub"), ("source_v4.spz", "rub")])
def test_spz_axes_both_conventions_from_both_writers(tmp_path, name, axes):
    """Which axes an .spz holds is not in its header. splat-transform 3.10.2 (source_st3.spz) stores the .ply's
    own axes: read with spz_axes='ply' (the default) it is source.ply within the format's steps; splat-transform
    2.7.1 (source_v3/v4.spz) stored RUB: it needs spz_axes='rub'. Read with the other convention, each comes
    back mirrored (y and z negated: the upside-down scene users saw), which is how the wrong choice shows. Our
    writer, in either convention, gives a file that the same choice reads back."""
    src = _source()
    right = splats.read_any(FIX / name, spz_axes=axes)
    _check_spz(src, right)
    wrong = splats.read_any(FIX / name, spz_axes="rub" if axes == "ply" else "ply")
    np.testing.assert_allclose(wrong.means, right.means * _FLIP, atol=1e-7)
    assert np.abs(wrong.means - src.means).max() > 0.5
    splats.write_any(tmp_path / "ours.spz", src, spz_axes=axes)
    assert (tmp_path / "ours.spz").read_bytes() == spz.spz_bytes(src, axes=axes)
    _check_spz(src, splats.read_any(tmp_path / "ours.spz", spz_axes=axes))
    if axes == "ply":
        assert splats.read_any(tmp_path / "ours.spz").means.tobytes() == right.means.tobytes()  # the default
    with pytest.raises(splat_data.PlyFormatError, match="axes"):
        splats.read_any(FIX / name, spz_axes="rdf")
