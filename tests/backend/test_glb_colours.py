"""A GLB the project writes keeps its vertex colours in trimesh, read the way the README says (issue 28):
``trimesh.load(path, force="mesh", skip_materials=True).visual.vertex_colors``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from interactive3d.backend.stage2 import mesh_files

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_call_gives_the_glb_vertex_colours(tmp_path):
    """The README's exact call (taken from its text) on a GLB of a tetrahedron with four known sRGB colours (one
    translucent) gives per-vertex RGBA equal to glTF's linear COLOR_0 in bytes (round(255·linear), alpha kept):
    within half a step of 255·srgb_to_linear(c/255); and sRGB comes back within 1.5/255 after linear_to_srgb at the
    mid tones (8-bit linear loses dark precision, the README says which is which). The plain force="mesh" call
    still drops them, which is why the README names skip_materials."""
    trimesh = pytest.importorskip("trimesh")
    m = re.search(r'`(trimesh\.load\("mesh\.glb", force="mesh", skip_materials=True\)\.visual\.vertex_colors)`', README)
    assert m, "README lost the trimesh call"
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    c = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [30, 160, 240, 255], [128, 64, 32, 200]], np.uint8)
    path = tmp_path / "mesh.glb"
    path.write_bytes(mesh_files.glb_bytes(v, f, c))
    got = np.asarray(eval(m.group(1).replace('"mesh.glb"', repr(str(path))), {"trimesh": trimesh}))  # noqa: S307
    assert got.shape == (4, 4)
    want = 255.0 * mesh_files.srgb_to_linear(c[:, :3] / 255.0)
    assert np.abs(got[:, :3] - want).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(got[:, 3], c[:, 3])
    back = 255.0 * mesh_files.linear_to_srgb(got[:, :3] / 255.0)
    mid = c[:, :3] >= 64
    assert np.abs(back - c[:, :3])[mid].max() <= 1.5
    plain = trimesh.load(path, force="mesh", process=False)
    assert getattr(plain.visual, "kind", None) != "vertex"
