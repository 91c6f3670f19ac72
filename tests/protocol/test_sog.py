"""PlayCanvas SOG (protocol/sog.py): files splat-transform wrote (bundled .sog, unbundled meta.json + images, meta
versions 1 and 2) read exactly as splat-transform itself decodes them and within the format's quantisation of the
.ply they came from; files this project writes read back within that quantisation and load in splat-transform
(tests/fixtures/splats/README.md says which version made each fixture)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interactive3d.protocol import ply, sog, splat_data, splats

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "splats"
FIELDS = ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats")


def _meta(source) -> dict:
    if str(source).endswith(".json"):
        return json.loads(Path(source).read_text())
    with zipfile.ZipFile(source) as zf:
        return json.loads(zf.read("meta.json"))


def _match(src: splat_data.SplatData, got: splat_data.SplatData) -> np.ndarray:
    """got's row for each source row (splat-transform reorders along a Morton curve): nearest position,
    checked to be a permutation."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(got.means).query(src.means)
    assert np.unique(idx).size == src.n
    return idx


def _unit(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.float64)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _check_quantisation(src, got, meta, truncated: bool) -> None:
    """Each field within its step: positions within one (splat-transform truncates) or half (we round) of the
    16-bit step of the log-extent, times the slope (1+|x|) of its inverse; log scales and f_dc are the nearest
    codebook entry; opacity within 1/255; rotations within 1e-4 of 1 − |q·q'| (8-bit smallest-three)."""
    idx = _match(src, got)
    span = np.asarray(meta["means"]["maxs"]) - np.asarray(meta["means"]["mins"])
    step = span / 65535 * (1 + np.abs(src.means.astype(np.float64)))
    assert (np.abs(got.means[idx] - src.means) <= (1.01 if truncated else 0.51) * step + 1e-7).all()
    for key, section in (("log_scales", "scales"), ("sh_dc", "sh0")):
        book = np.asarray(meta[section]["codebook"], np.float32)
        nearest = np.abs(book[None, None, :] - getattr(src, key)[..., None]).min(axis=-1)
        np.testing.assert_allclose(np.abs(getattr(got, key)[idx] - getattr(src, key)), nearest, atol=1e-6)
    alpha = lambda d: 1 / (1 + np.exp(-d.opacity_logits.astype(np.float64)))  # noqa: E731
    assert np.abs(alpha(got)[idx] - alpha(src)).max() <= 1 / 255 + 1e-6
    assert (1 - np.abs((_unit(got.quats[idx]) * _unit(src.quats)).sum(axis=1))).max() < 1e-4


@pytest.mark.parametrize("name, theirs", [("source.sog", "source.sog.by-splat-transform.ply"),
                                          ("source_sog/meta.json", "source_sog.by-splat-transform.ply")])
def test_reads_splat_transform_sog_as_splat_transform_decodes_it(name, theirs):
    """splat-transform 3.10.2's .sog (bundled) and meta.json + images (unbundled), meta version 2 with an SH
    palette: every field equals splat-transform's own decoding (to float32 bit-identity: 0.0 measured) and lies
    within the format's quantisation of source.ply (measured: positions 3.2e-5, log scales 7.2e-3, f_dc 6.4e-3,
    opacity 3.9e-3); the k-means SH palette costs at most 0.15 per coefficient (measured 0.10 / 0.11)."""
    got = splats.read_any(FIX / name)
    assert splats.format_of(FIX / name) == "sog" and got.n == 300 and got.sh_degree == 1
    ref = ply.read_ply(FIX / theirs)
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(got, key), getattr(ref, key), err_msg=key)
    src = ply.read_ply(FIX / "source.ply")
    _check_quantisation(src, got, _meta(FIX / name), truncated=True)
    assert np.abs(got.sh_rest[_match(src, got)] - src.sh_rest).max() < 0.15


def test_reads_legacy_meta_version_1_as_splat_transform_does():
    """Meta version 1 (no 'version'; per-channel mins/maxs, opacity logit in sh0's alpha, scalar SH range; made
    by make_sog_v1.py, decoded by splat-transform 3.10.2): bit-identical to splat-transform's decoding, and
    within the linear 8-bit steps of source.ply."""
    got = splats.read_any(FIX / "source_v1_sog" / "meta.json")
    ref = ply.read_ply(FIX / "source_v1_sog.by-splat-transform.ply")
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(got, key), getattr(ref, key), err_msg=key)
    src, meta = ply.read_ply(FIX / "source.ply"), _meta(FIX / "source_v1_sog" / "meta.json")
    s_step = (np.asarray(meta["scales"]["maxs"]) - np.asarray(meta["scales"]["mins"])) / 255
    assert (np.abs(got.log_scales - src.log_scales) <= 0.5 * s_step + 1e-6).all()
    c_step = (np.asarray(meta["sh0"]["maxs"]) - np.asarray(meta["sh0"]["mins"])) / 255
    assert (np.abs(got.sh_dc - src.sh_dc) <= 0.5 * c_step[:3] + 1e-6).all()
    assert (np.abs(got.opacity_logits - src.opacity_logits) <= 0.5 * c_step[3] + 1e-5).all()
    assert np.abs(got.sh_rest - src.sh_rest).max() <= 0.5 * (meta["shN"]["maxs"] - meta["shN"]["mins"]) / 255 + 1e-6


def test_our_sog_reads_back_within_its_quantisation_and_as_splat_transform_reads_it():
    """ours.sog (this writer, committed) decodes in splat-transform 3.10.2 to exactly what our reader gives
    (ours.sog.by-splat-transform.ply: 0.0 difference measured), within the format's steps of source.ply
    (measured: positions 1.6e-5, log scales 8.3e-3, f_dc 7.7e-3, opacity 1.9e-3); SH keep each Gaussian's own
    set (N ≤ 65536), so only the 256-entry codebook quantises them (measured 1.6e-3). The writer is
    deterministic: two writes give the same bytes, and today's file decodes bit for bit to the committed
    file's values (its bytes depend on the WebP encoder's version: lossless, but not one bitstream)."""
    src = ply.read_ply(FIX / "source.ply")
    today = sog.sog_bytes(src)
    assert today == sog.sog_bytes(src)
    a, b = splats.read_any(today), splats.read_any(FIX / "ours.sog")
    for name in ("means", "sh_dc", "sh_rest", "opacity_logits", "log_scales", "quats"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    got = splats.read_any(FIX / "ours.sog")
    ref = ply.read_ply(FIX / "ours.sog.by-splat-transform.ply")
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(got, key), getattr(ref, key), err_msg=key)
    _check_quantisation(src, got, _meta(FIX / "ours.sog"), truncated=False)
    book = np.asarray(_meta(FIX / "ours.sog")["shN"]["codebook"], np.float32)
    nearest = np.abs(book[None, None, None, :] - src.sh_rest[..., None]).min(axis=-1)
    np.testing.assert_allclose(np.abs(got.sh_rest - src.sh_rest), nearest, atol=1e-6)


def _random(n: int, m: int, seed: int = 0) -> splat_data.SplatData:
    rng = np.random.default_rng(seed)
    f = np.float32
    return splat_data.SplatData(
        means=rng.normal(0, 2.0, (n, 3)).astype(f), sh_dc=rng.normal(0, 0.8, (n, 3)).astype(f),
        sh_rest=rng.normal(0, 0.1, (n, m, 3)).astype(f), opacity_logits=rng.normal(0, 2, n).astype(f),
        log_scales=rng.uniform(-6, -1, (n, 3)).astype(f), quats=rng.normal(size=(n, 4)).astype(f))


@pytest.mark.parametrize("m", [0, 3, 8, 15])
def test_round_trip_bundled_and_unbundled_every_sh_degree(tmp_path, m):
    """SH degree 0–3 through write_any/read_any: bundled .sog and meta.json + images give the same arrays, in
    the input's order, within the quantisation (checked as for third-party files); SH are the codebook's nearest."""
    src = _random(1000, m, seed=m)
    assert splats.write_any(tmp_path / "a.sog", src) == "sog"
    (tmp_path / "u").mkdir()
    assert splats.write_any(tmp_path / "u" / "meta.json", src) == "sog"
    a, b = splats.read_any(tmp_path / "a.sog"), splats.read_any(tmp_path / "u" / "meta.json")
    for key in FIELDS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert sorted(os.listdir(tmp_path / "u")) == sorted(["meta.json", "means_l.webp", "means_u.webp", "quats.webp",
                                                          "scales.webp", "sh0.webp"] + (["shN_centroids.webp", "shN_labels.webp"] if m else []))
    assert a.sh_rest.shape == (1000, m, 3)
    np.testing.assert_array_equal(_match(src, a), np.arange(src.n))  # the input's order is kept
    _check_quantisation(src, a, _meta(tmp_path / "a.sog"), truncated=False)
    if m:
        book = np.asarray(_meta(tmp_path / "a.sog")["shN"]["codebook"], np.float32)
        nearest = np.abs(book[None, None, None, :] - src.sh_rest[..., None]).min(axis=-1)
        np.testing.assert_allclose(np.abs(a.sh_rest - src.sh_rest), nearest, atol=1e-6)


def test_degenerate_scenes(tmp_path):
    """One Gaussian (every axis flat, codebooks of one entry): position, scales and colour exact back; a zero
    quaternion is written as identity (back within the 8-bit code's half step); zero Gaussians is refused with a
    typed error and nothing written."""
    one = splat_data.SplatData(
        means=np.array([[0.25, -1.5, 3.0]], np.float32), sh_dc=np.full((1, 3), 0.5, np.float32),
        sh_rest=np.zeros((1, 3, 3), np.float32), opacity_logits=np.zeros(1, np.float32),
        log_scales=np.full((1, 3), -3.0, np.float32), quats=np.array([[0.0, 0.0, 0.0, 0.0]], np.float32))
    splats.write_any(tmp_path / "one.sog", one)
    got = splats.read_any(tmp_path / "one.sog")
    np.testing.assert_allclose(got.means, one.means, rtol=1e-6)
    np.testing.assert_array_equal(got.log_scales, one.log_scales)
    np.testing.assert_array_equal(got.sh_dc, one.sh_dc)
    # 0 has no exact byte (255·½ = 127.5): the small components come back as half a step, (128/255·2−1)/√2
    np.testing.assert_allclose(got.quats[0, 1:], (128 / 255 * 2 - 1) / np.sqrt(2), rtol=1e-6)
    assert got.quats[0, 0] > 0.99998
    assert abs(got.opacity_logits[0] - np.log(128 / 127)) < 1e-5  # sigmoid 0.5 → byte 128
    empty = splat_data.SplatData(means=np.zeros((0, 3), np.float32), sh_dc=np.zeros((0, 3), np.float32),
                                 sh_rest=np.zeros((0, 0, 3), np.float32), opacity_logits=np.zeros(0, np.float32),
                                 log_scales=np.zeros((0, 3), np.float32), quats=np.zeros((0, 4), np.float32))
    with pytest.raises(splat_data.PlyFormatError, match="at least one"):
        splats.write_any(tmp_path / "none.sog", empty)
    assert not (tmp_path / "none.sog").exists()


def _rezip(path: Path, out: Path, edit) -> Path:
    """A copy of a bundled .sog with its members changed by ``edit(dict name → bytes)``."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    edit(members)
    with zipfile.ZipFile(out, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return out


def _set_meta(**changes):
    def edit(members):
        meta = json.loads(members["meta.json"])
        meta.update(changes)
        members["meta.json"] = json.dumps(meta).encode()
    return edit


def _big_webp(members):
    buf = io.BytesIO()
    Image.new("RGBA", (4000, 4000)).save(buf, "WEBP", lossless=True)  # 16 M texels for a 300-Gaussian scene
    members["quats.webp"] = buf.getvalue()


@pytest.mark.parametrize("case, edit, match", [
    ("not_zip", None, "not a zip"),
    ("no_meta", lambda m: m.pop("meta.json"), "no 'meta.json'"),
    ("version", _set_meta(version=3), "version 3"),
    ("count_bomb", _set_meta(count=200_000_000), "texels"),
    ("count_zero", _set_meta(count=0), "count 0"),
    ("image_bomb", _big_webp, "4000×4000"),
    ("traversal", lambda m: m.__setitem__("meta.json", m["meta.json"].replace(b'"quats.webp"', b'"../quats.webp"')), "plain file name"),
    ("corrupt_webp", lambda m: m.__setitem__("sh0.webp", b"RIFF\x00\x00\x00\x00WEBPjunk"), "cannot decode"),
    ("short_codebook", _set_meta(scales={"codebook": [], "files": ["scales.webp"]}), "0 entries"),
])
def test_bad_files_are_typed_errors(tmp_path, case, edit, match):
    """Each damage gives PlyFormatError naming it, before decoding anything a header lies about: a meta claiming
    200 M Gaussians for 300-texel images, or a 4000×4000 image in a 300-Gaussian scene, is refused from the
    image header (no pixel decoded); member names cannot leave the archive or folder."""
    if case == "not_zip":
        bad = tmp_path / "bad.sog"
        bad.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    else:
        bad = _rezip(FIX / "source.sog", tmp_path / "bad.sog", edit)
    with pytest.raises(splat_data.PlyFormatError, match=match):
        splats.read_any(bad)
    with pytest.raises(splat_data.PlyFormatError, match=match):
        splats.read_any(bad.read_bytes())


def test_zip_member_size_is_capped_before_reading(tmp_path, monkeypatch):
    """A member whose header declares more than the cap is refused without inflating it."""
    monkeypatch.setattr(sog, "MAX_IMAGE_BYTES", 500)
    with pytest.raises(splat_data.PlyFormatError, match="over the cap"):
        splats.read_any(FIX / "source.sog")


def test_unbundled_missing_image_names_it(tmp_path):
    folder = tmp_path / "scene"
    shutil.copytree(FIX / "source_sog", folder)
    (folder / "sh0.webp").unlink()
    with pytest.raises(splat_data.PlyFormatError, match="'sh0.webp' is missing"):
        splats.read_any(folder / "meta.json")


def _splat_transform() -> list[str] | None:
    """The splat-transform CLI: $I3D_SPLAT_TRANSFORM, one on PATH, or npm-installed into a cache folder when node,
    npm and the registry are reachable (3 minutes at most); None if none of these works."""
    if os.environ.get("I3D_SPLAT_TRANSFORM"):
        return [os.environ["I3D_SPLAT_TRANSFORM"]]
    if shutil.which("splat-transform"):
        return ["splat-transform"]
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "i3d-splat-transform"
    cli = cache / "node_modules" / ".bin" / "splat-transform"
    if not cli.exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache), "@playcanvas/splat-transform"],
                           capture_output=True, timeout=180, check=True)
        except (subprocess.SubprocessError, OSError):
            return None
    return [str(cli)] if cli.exists() else None


def test_splat_transform_loads_what_we_write(tmp_path):
    """Live check (runs where node and @playcanvas/splat-transform are available or installable): our bundled and
    unbundled SOG of SH degree 2, converted by splat-transform to .ply, hold exactly the arrays our reader gives."""
    cli = _splat_transform()
    if cli is None:
        pytest.skip("splat-transform is not available (no node/npm, or the npm registry is unreachable)")
    src = _random(700, 8, seed=4)
    splats.write_any(tmp_path / "ours.sog", src)
    (tmp_path / "u").mkdir()
    splats.write_any(tmp_path / "u" / "meta.json", src)
    for name in ("ours.sog", "u/meta.json"):
        out = tmp_path / (name.replace("/", "_") + ".ply")
        proc = subprocess.run([*cli, "-q", "-w", "-g", "cpu", str(tmp_path / name), str(out)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        theirs, ours = ply.read_ply(out), splats.read_any(tmp_path / name)
        for key in FIELDS:
            np.testing.assert_array_equal(getattr(theirs, key), getattr(ours, key), err_msg=key)


def test_large_scenes_cluster_their_sh_into_a_palette(monkeypatch):
    """Past 65536 Gaussians (16-bit labels) the SH sets are clustered by k-means into LARGE_PALETTE entries
    (here scaled down: a 600-Gaussian scene, palette of 32 sets): the file holds that many sets, every label
    points into them, and k-means beats a random assignment to the same palette by far (mean squared SH error
    below half of the data's variance)."""
    monkeypatch.setattr(sog, "MAX_PALETTE", 256)
    monkeypatch.setattr(sog, "LARGE_PALETTE", 32)
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 0.3, (8, 3, 3))  # 8 true SH sets, noise around them: clusters exist
    src = _random(600, 3, seed=5)
    src.sh_rest[:] = (centres[rng.integers(0, 8, 600)] + rng.normal(0, 0.01, (600, 3, 3))).astype(np.float32)
    raw = sog.sog_bytes(src)
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        meta = json.loads(zf.read("meta.json"))
        labels = np.asarray(Image.open(io.BytesIO(zf.read("shN_labels.webp"))).convert("RGBA")).reshape(-1, 4)[:600]
    assert meta["shN"]["count"] == 32
    assert (labels[:, 0].astype(int) | (labels[:, 1].astype(int) << 8)).max() < 32
    got = sog.read_sog(raw)
    err = ((got.sh_rest - src.sh_rest) ** 2).mean()
    assert err < 0.5 * src.sh_rest.var() and np.abs(got.sh_rest - src.sh_rest).max() < 0.1
