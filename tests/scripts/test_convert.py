"""``i3d convert IN OUT`` between every splat format, through the same reader/writer as everything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interactive3d import cli
from interactive3d.protocol import ply, splats

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "splats"
EXT = {"ply": ".ply", "compressed.ply": ".compressed.ply", "splat": ".splat", "spz": ".spz", "sog": ".sog"}


@pytest.mark.parametrize("src_fmt", splats.SPLAT_FORMATS)
def test_convert_between_every_pair_equals_the_library(tmp_path, src_fmt, capsys):
    """For each of the 5 × 5 pairs: exit 0, OUT holds exactly the bytes write_any(read_any(IN)) gives, and
    its Gaussians are the source's to within the lossiest format on the way (.splat: 8-bit colour and
    rotation; positions never move more than the compressed .ply's 1/1023 of the 1.6-unit box)."""
    src = ply.read_ply(FIX / "source.ply")
    first = tmp_path / ("in" + EXT[src_fmt])
    splats.write_any(first, src)
    for dst_fmt in splats.SPLAT_FORMATS:
        out = tmp_path / ("out_" + dst_fmt.replace(".", "_") + EXT[dst_fmt])
        assert cli.main(["convert", str(first), str(out)]) == 0
        ref = tmp_path / ("ref" + EXT[dst_fmt])
        splats.write_any(ref, splats.read_any(first))
        assert out.read_bytes() == ref.read_bytes()
        got = splats.read_any(out)
        assert got.n == src.n and splats.format_of(out) == dst_fmt
        if dst_fmt != "compressed.ply" and src_fmt != "compressed.ply":  # the only reordering format
            assert np.abs(got.means - src.means).max() <= 1.6 / 1023
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert f"({src_fmt})" in line and f"({dst_fmt}): 300 Gaussians" in line


def test_convert_to_overrides_the_name_and_force_guards_outputs(tmp_path, capsys):
    """--to spz writes .spz whatever the name; an existing OUT needs --force; .splat warns that SH go."""
    out = tmp_path / "x.bin"
    assert cli.main(["convert", str(FIX / "source_v4.spz"), str(out), "--to", "spz"]) == 0
    assert splats.format_of(out) == "spz"
    assert cli.main(["convert", str(FIX / "source_v4.spz"), str(out), "--to", "spz"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["convert", str(FIX / "source.ply"), str(tmp_path / "y.splat")]) == 0
    assert "SH degree 1 → 0" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "unknown_ext", "garbage"])
def test_convert_bad_input_is_one_line_exit_2(tmp_path, case):
    """Bad input: exit status 2 and one line on stderr naming the problem, no traceback (a subprocess,
    as a user runs it); nothing is written."""
    out = tmp_path / "out.spz"
    if case == "missing":
        argv, want = [str(tmp_path / "nope.ply"), str(out)], "no such file"
    elif case == "unknown_ext":
        argv, want = [str(FIX / "source.ply"), str(tmp_path / "out.ksplat")], "expected .ply"
    else:
        bad = tmp_path / "bad.spz"
        bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 4)
        argv, want = [str(bad), str(out)], "gzip"
    proc = subprocess.run([sys.executable, "-m", "interactive3d.cli", "convert", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and want in proc.stderr
    assert not out.exists() and not (tmp_path / "out.ksplat").exists()


def test_convert_spz_axes_and_sog_both_forms(tmp_path, capsys):
    """--spz-axes picks the convention: splat-transform 3.10.2's .spz converts right side up by default, 2.7.1's
    needs --spz-axes rub (without it, y and z come out mirrored); a SOG converts from its bundled and its
    unbundled (meta.json) form to the same .ply, and to an unbundled SOG (meta.json + images)."""
    src = ply.read_ply(FIX / "source.ply")
    for name, axes in (("source_st3.spz", []), ("source_v3.spz", ["--spz-axes", "rub"])):
        out = tmp_path / f"{name}.ply"
        assert cli.main(["convert", str(FIX / name), str(out), *axes]) == 0
        assert np.abs(ply.read_ply(out).means - src.means).max() <= 0.5 / 4096 + 1e-6
    mirrored = tmp_path / "mirrored.ply"
    assert cli.main(["convert", str(FIX / "source_v3.spz"), str(mirrored)]) == 0
    assert np.abs(ply.read_ply(mirrored).means - src.means).max() > 0.5
    a, b = tmp_path / "a.ply", tmp_path / "b.ply"
    assert cli.main(["convert", str(FIX / "source.sog"), str(a)]) == 0
    assert cli.main(["convert", str(FIX / "source_sog" / "meta.json"), str(b)]) == 0
    assert "(sog) → " in capsys.readouterr().out
    assert ply.read_ply(b).means.tobytes() == ply.read_ply(FIX / "source_sog.by-splat-transform.ply").means.tobytes()
    (tmp_path / "unbundled").mkdir()
    assert cli.main(["convert", str(a), str(tmp_path / "unbundled" / "meta.json")]) == 0
    assert (tmp_path / "unbundled" / "sh0.webp").is_file()
    assert splats.read_any(tmp_path / "unbundled" / "meta.json").n == 300
