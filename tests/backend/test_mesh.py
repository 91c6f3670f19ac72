"""Mesh extraction (backend/mesh.py): marching cubes of the field's density, colours, floaters, export."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from interactive3d.backend.hashgrid import HashGridConfig
from interactive3d.backend.mesh import MeshConfig, MeshError, MeshResult, export_mesh, extract_mesh
from interactive3d.backend.nerf import FieldOutput, NeRFConfig, NeRFField

TINY = NeRFConfig(grid=HashGridConfig(n_levels=2, n_features=2, log2_table_size=10, base_resolution=4), hidden=8)


def _sphere_field():
    """σ = exp(10(1 − |x|/0.5)) exactly (MLP output zeroed): the σ = 1 iso-surface is the sphere r = 0.5."""
    f = NeRFField(TINY, backend="torch")
    with torch.no_grad():
        f.density_mlp[2].weight.zero_()
        f.density_mlp[2].bias.zero_()
    return f


class _WithFloater(torch.nn.Module):
    """The sphere plus a tiny dense ball at (0.8, 0.8, 0.8) (a floater) and a colour gradient in x."""

    def __init__(self, base):
        super().__init__()
        self.base, self.cfg, self.device = base, base.cfg, base.device

    def forward(self, x):
        d = self.base(x).density + 100.0 * ((x - 0.8).norm(dim=-1) < 0.05).float()
        rgb = torch.stack([(x[:, 0] + 1) / 2, torch.full_like(x[:, 0], 0.25), torch.full_like(x[:, 0], 0.75)], dim=-1)
        return FieldOutput(d, rgb)


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    ta, tb = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    d = torch.cdist(ta, tb)
    return float(0.5 * (d.min(1).values.mean() + d.min(0).values.mean()))


def test_sphere_chamfer_colours_and_floater_removed(tmp_path):
    """64³ marching cubes of the analytic sphere r=0.5: Chamfer to 4000 exact surface points < 2% of the
    diameter (it is ~0.3%); outward normals (positive volume ≈ 4/3·π·0.5³ within 3%); the floater is
    dropped (1 component removed); vertex colours follow the field (red = (x+1)/2·255 to ±1)."""
    m = extract_mesh(_WithFloater(_sphere_field()), MeshConfig(resolution=64, threshold=1.0))
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32 and m.colors.dtype == np.uint8
    assert m.colors.shape == (len(m.vertices), 4)
    assert m.removed_components == 1
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(4000, 3, generator=g)
    gt = (0.5 * gt / gt.norm(dim=-1, keepdim=True)).numpy()
    ch = _chamfer(m.vertices, gt)
    assert ch < 0.02 * 1.0, ch
    import trimesh

    tm = trimesh.Trimesh(m.vertices, m.faces, process=False)
    assert abs(tm.volume - 4 / 3 * np.pi * 0.125) / (4 / 3 * np.pi * 0.125) < 0.03, tm.volume
    want_r = np.clip((m.vertices[:, 0] + 1) / 2 * 255 + 0.5, 0, 255).astype(int)
    assert np.abs(m.colors[:, 0].astype(int) - want_r).max() <= 1


class _Hollow(torch.nn.Module):
    """The sphere r=0.5 with an empty interior ball r=0.2 (an occluded void, as distillation leaves)."""

    def __init__(self, base):
        super().__init__()
        self.base, self.cfg, self.device = base, base.cfg, base.device

    def forward(self, x):
        out = self.base(x)
        return FieldOutput(torch.where(x.norm(dim=-1) < 0.2, torch.zeros_like(out.density), out.density), out.rgb)


def test_interior_voids_filled():
    """A hollow sphere meshes as the outer surface only when fill_cavities is on (default): same face
    count as the solid sphere, all vertices at r ≈ 0.5 (> 0.45); with it off the inner r=0.2 surface
    appears (more faces, vertices at r < 0.25)."""
    solid = extract_mesh(_sphere_field(), MeshConfig(resolution=48, threshold=1.0))
    filled = extract_mesh(_Hollow(_sphere_field()), MeshConfig(resolution=48, threshold=1.0))
    raw = extract_mesh(_Hollow(_sphere_field()), MeshConfig(resolution=48, threshold=1.0, fill_cavities=False))
    assert len(filled.faces) == len(solid.faces)
    assert np.linalg.norm(filled.vertices, axis=1).min() > 0.45
    assert len(raw.faces) > len(solid.faces) and np.linalg.norm(raw.vertices, axis=1).min() < 0.25


def test_export_formats_load_in_trimesh(tmp_path):
    """GLB/OBJ/PLY written atomically reload in trimesh with the same vertex count and colours."""
    import trimesh

    m = extract_mesh(_WithFloater(_sphere_field()), MeshConfig(resolution=24, threshold=1.0))
    for fmt in ("glb", "obj", "ply"):
        p = export_mesh(m, tmp_path / f"m.{fmt}")
        loaded = trimesh.load(p, force="mesh", process=False)
        assert len(loaded.faces) == len(m.faces), fmt
        cols = np.asarray(loaded.visual.vertex_colors)[:, :3]
        assert cols.shape[0] == len(loaded.vertices) and cols[:, 1].mean() == pytest.approx(m.colors[:, 1].mean(), abs=1.5), fmt
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.glb", "m.obj", "m.ply"]  # no temp files left


_BPY_IMPORT = r"""
import json, sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=sys.argv[1])
obj = [o for o in bpy.context.scene.objects if o.type == "MESH"][0]
me = obj.data
attrs = {a.name: (a.domain, a.data_type) for a in me.attributes}
ca = me.color_attributes[0]
vals = [0.0] * (len(ca.data) * 4)
ca.data.foreach_get("color", vals)
print(json.dumps({"verts": len(me.vertices), "faces": len(me.polygons), "color": ca.name, "mean_g": sum(vals[1::4]) / len(ca.data)}))
"""


def test_glb_imports_in_bpy_with_vertex_colours(tmp_path):
    """bpy.ops.import_scene.gltf reads the GLB: same face count, a colour attribute whose mean green is
    the field's 0.25 (linear 0.0508 after sRGB decoding, or 0.25 if kept as sRGB) to 0.01."""
    pytest.importorskip("bpy")
    m = extract_mesh(_sphere_field(), MeshConfig(resolution=20, threshold=1.0))
    m.colors[:, :3] = (64, 64, 191)
    p = export_mesh(m, tmp_path / "s.glb")
    out = subprocess.run([sys.executable, "-c", _BPY_IMPORT, str(p)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
    assert info["faces"] == len(m.faces)
    g = 64 / 255
    lin = ((g + 0.055) / 1.055) ** 2.4
    assert min(abs(info["mean_g"] - g), abs(info["mean_g"] - lin)) < 0.01, info


def test_bad_inputs():
    """Resolution above the cap, a threshold with no surface, an unknown format: MeshError (ValueError)."""
    with pytest.raises(MeshError, match="resolution"):
        MeshConfig(resolution=4096)
    with pytest.raises(MeshError, match="no surface"):
        extract_mesh(_sphere_field(), MeshConfig(resolution=8, threshold=1e9))
    m = MeshResult(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]], np.int32), np.zeros((3, 4), np.uint8), 0)
    with pytest.raises(MeshError, match="format"):
        export_mesh(m, "/tmp/x.fbx")
