"""``i3d demo``: the sample object, the demo's metrics, and (below) the end-to-end quick run."""

from __future__ import annotations

import io

import numpy as np
import pytest

from interactive3d import demo, pipeline, sample, scene


def test_sample_object_parts_colours_and_reference_frame():
    """4 named parts with distinct colours, all inside the unit sphere (threestudio's object radius),
    every part gets ≥ 2% of the samples, and the reference frame is a valid [N,14] state
    (unit quaternions, opacity 0.9, positive scales)."""
    obj = sample.build_sample_object()
    assert obj.names == ("body", "head", "arm", "antenna")
    colours = np.array([p.rgb for p in obj.parts])
    assert min(np.linalg.norm(colours[i] - colours[j]) for i in range(4) for j in range(i + 1, 4)) > 0.3
    s = sample.sample_surface(obj, 4000, seed=0)
    assert s.points.shape == (4000, 3) and np.linalg.norm(s.points, axis=1).max() < 0.75
    assert min(int(s.mask(i).sum()) for i in range(4)) >= 80
    st = sample.surface_state(s, sum(p.mesh.area for p in obj.parts))
    assert st.shape == (4000, 14) and st.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(st[:, 10:14], axis=1), 1.0, atol=1e-5)
    assert np.all(st[:, 6] == np.float32(0.9)) and np.all(st[:, 7:10] > 0)
    # Each disc's local Z (its thin axis) is the surface normal.
    from scipy.spatial.transform import Rotation

    z = Rotation.from_quat(st[:, [11, 12, 13, 10]]).apply([0.0, 0.0, 1.0])
    np.testing.assert_allclose(z, s.normals, atol=1e-4)
    hat = sample.hat_state(300, center=demo.HAT_POSITION)
    assert hat.shape == (300, 14) and hat[:, 2].min() >= demo.HAT_POSITION[2] - 1e-4


def test_metrics_hold_known_values():
    """Chamfer of a set with itself is 0 and of a set shifted by 0.1 (far from others) is 0.1;
    PSNR of an image off by 0.1 everywhere is 20 dB; a pure translation is perfectly rigid."""
    rng = np.random.default_rng(0)
    a = rng.random((500, 3))
    assert demo.chamfer_distance(a, a) == 0.0
    b = np.array([[0.0, 0.0, 0.0]])
    assert demo.chamfer_distance(b, b + [0.1, 0, 0]) == pytest.approx(0.1)
    assert demo.psnr(np.full((8, 8, 3), 0.5), np.full((8, 8, 3), 0.6)) == pytest.approx(20.0)
    m = demo.rigid_drag_metrics(a, a + [0.0, 0.15, 0.25], np.array([0.0, 0.15, 0.25]))
    assert m["translation_error"] < 1e-12 and m["rigidity_error"] < 1e-12


def test_edited_reference_removes_antenna_and_adds_hat():
    """Ground truth after the scripted edits: nothing above the stretched head but the hat's points,
    and the forearm's samples moved by ARM_OFFSET (none left at the source)."""
    obj = sample.build_sample_object()
    pts = demo.edited_reference_points(obj, 4000, seed=0)
    top = pts[pts[:, 2] > 0.41]
    hat = sample.hat_mesh(demo.HAT_POSITION)
    lo, hi = hat.bounds
    assert len(top) > 50 and np.all((top >= lo - 1e-4) & (top <= hi + 1e-4))
    assert not np.any(np.linalg.norm(pts - np.asarray(demo.ARM_SOURCE), axis=1) < 0.5 * demo.ARM_RADIUS)


def test_progress_bar_plain_text():
    """Off a terminal the bar prints whole lines (CI logs) with step/total."""
    buf = io.StringIO()
    bar = pipeline.ProgressBar("stage I", 10, stream=buf)
    bar.update(5, "loss=0.1", force=True)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("stage I") and "5/10" in lines[0] and "loss=0.1" in lines[0]
    assert "10/10" in lines[-1] and "#" * 28 in lines[-1]


_CHECK_BLEND = r"""
import json, sys
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
out = {}
for ob in bpy.data.objects:
    me = ob.data
    out[ob.name] = {
        "type": ob.type, "vertices": len(me.vertices) if ob.type == "MESH" else 0,
        "polygons": len(me.polygons) if ob.type == "MESH" else 0,
        "attributes": sorted(a.name for a in me.attributes) if ob.type == "MESH" else [],
        "modifiers": [m.type for m in ob.modifiers],
    }
print("BLEND " + json.dumps(out))
"""


def open_blend(path) -> dict:
    """Objects of a .blend as bpy (a fresh subprocess) sees them."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CHECK_BLEND, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("BLEND ")][-1]
    return json.loads(line[len("BLEND "):])


def test_blender_scene_and_contact_sheet(tmp_path):
    """The Blender step alone on the sample (no backend): scene.blend holds the splat object (4000
    vertices, the i3d_* attributes, a geometry-nodes modifier) and the coloured mesh; the contact
    sheet is 3 rows × 2 views and the robot's blue body shows in every tile (≥ 3% of its pixels)."""
    from PIL import Image

    obj = sample.build_sample_object()
    mesh = obj.mesh()
    st = sample.surface_state(sample.sample_surface(obj, 4000), sum(p.mesh.area for p in obj.parts))
    np.savez(tmp_path / "in.npz", after=st, before=st, mesh_vertices=mesh.vertices.astype(np.float32),
             mesh_faces=mesh.faces.astype(np.int32), mesh_colors=np.asarray(mesh.visual.vertex_colors))
    made = scene.run_blender_scene(str(tmp_path / "in.npz"), str(tmp_path / "scene.blend"), str(tmp_path / "sheet.png"), resolution=96, samples=4)
    assert made["objects"] == ["I3D_splats", "I3D_mesh"] and made["sheet"]["rows"] == ["before", "after", "mesh"]
    objs = open_blend(tmp_path / "scene.blend")
    assert "I3D_splats_before" not in objs
    splats = objs["I3D_splats"]
    assert splats["vertices"] == 4000 and "NODES" in splats["modifiers"]
    assert {"i3d_color", "i3d_opacity", "i3d_scale", "i3d_rotation"} <= set(splats["attributes"])
    assert objs["I3D_mesh"]["polygons"] == len(mesh.faces)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB")).astype(int)
    assert sheet.shape[1] == 2 * 96
    tile_h = sheet.shape[0] // 3
    for r in range(3):
        for c in range(2):
            tile = sheet[r * tile_h + 18:(r + 1) * tile_h, c * 96:(c + 1) * 96]
            blue = (tile[..., 2] > 150) & (tile[..., 0] < 100)
            assert blue.mean() > 0.03, (r, c, blue.mean())


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """`i3d demo --quick` through a real backend subprocess. Thresholds are set below what was measured
    on the 2-core dev machine (measured: Stage I PSNR 14.4 → 27.0 dB on the old fixed schedule, 27.4 dB and
    0.05 % floaters on the default sds schedule (issue 27), 29.2 dB and 0.01 % after its short-run threshold, drag translation/rigidity error
    2e-4 (4e-4 on sds), distillation PSNR 26.0 dB at the preview view, mesh Chamfer 0.033 (0.031 on sds) for a
    ~1.3-unit object):
    Stage I gains ≥ 6 dB and reaches ≥ 22 dB; the rigid drag moves the arm by the offset within 0.01
    with rigidity error < 0.01 and leaves nothing at the source; the antenna box is empty; undo restores
    the state bit for bit; distillation ≥ 20 dB; mesh Chamfer < 0.06. Files load with their readers."""
    import json
    import subprocess
    import sys

    import trimesh

    from interactive3d.protocol import ply

    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "interactive3d.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage I" in proc.stderr and "[####" in proc.stderr  # progress bars on the terminal
    rep = json.loads((out / "report.json").read_text())
    st = rep["stages"]
    assert st["stage1"]["psnr"] >= 22.0 and st["stage1"]["psnr"] - st["init"]["psnr"] >= 6.0
    assert st["stage1"]["floater_share"] < 0.01  # issue 27: under 1 % of the alpha outside the reference (measured 0.01 %)
    assert st["drag"]["translation_error"] < 0.01 and st["drag"]["rigidity_error"] < 0.01 and st["drag"]["left_behind"] == 0
    assert st["remove_antenna"]["remaining_in_box"] == 0 and st["remove_antenna"]["reply"]["removed"] > 20
    assert st["add_hat"]["added"] > 0 and st["undo"]["bit_identical"] is True
    assert st["edited"]["chamfer"] < 0.06
    assert st["distill"]["psnr"] >= 20.0
    assert st["mesh"]["chamfer"] < 0.06 and st["mesh"]["faces"] > 1000
    assert st["mesh"]["signed_error"]["vertices"] > 0 and np.isfinite(st["mesh"]["signed_error"]["mean"])  # issue 26

    splats = ply.read_ply(out / "splats.ply")
    assert splats.n == st["edited"]["count"]
    from interactive3d.backend.stage2.mesh_files import linear_to_srgb

    mesh = list(trimesh.load(out / "mesh.glb", process=False).geometry.values())[0]
    assert len(mesh.faces) == st["mesh"]["faces"]
    vc = (255 * linear_to_srgb(np.asarray(mesh.visual.vertex_attributes["color"])[:, :3])).astype(int)  # COLOR_0 is linear
    assert ((vc[:, 2] > 150) & (vc[:, 0] < 100)).mean() > 0.2  # the blue body
    assert st["mesh_textured"]["faces"] == st["mesh"]["faces"] and st["mesh_textured"]["texture_size"] == 1024
    for name in ("mesh_textured.glb", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png"):
        assert (out / name).stat().st_size > 0
    objs = open_blend(out / "scene.blend")
    assert objs["I3D_splats"]["vertices"] == st["edited"]["count"]
    assert objs["I3D_mesh"]["polygons"] == st["mesh"]["faces"]
    assert rep["stages"]["blender"]["sheet"]["rows"] == ["before", "after", "mesh"]
    assert (out / "contact_sheet.png").stat().st_size > 10_000


def test_missing_optional_parts_are_named_with_their_extra(monkeypatch):
    """Without bpy and xatlas the demo names what it skips and the extras that bring them back, in one
    line; with both installed it skips nothing."""
    monkeypatch.setattr(demo, "installed", lambda module: module not in ("bpy", "xatlas"))
    line = demo.skipped_line(demo.missing_extras())
    assert "\n" not in line and "scene.blend and contact_sheet.png" in line and "mesh_textured" in line
    assert "pip install 'interactive3d[blender,texture]'" in line
    monkeypatch.setattr(demo, "installed", lambda module: True)
    assert demo.missing_extras() == [] and demo.skipped_line([]) == ""


@pytest.mark.slow
def test_demo_without_bpy_writes_everything_else(tmp_path, monkeypatch):
    """A tiny demo run (real backend subprocess; ~50 s on the loaded 2-core machine) where the bpy module is
    absent: it is detected before
    the run, the Blender step is never started, and every other output is written and readable
    (splats.ply, mesh.glb, the textured GLB/OBJ/MTL/PNG, report.json naming the skip)."""
    import json

    monkeypatch.setattr(demo, "installed", lambda module: module != "bpy")

    def no_blender(*a, **k):
        raise AssertionError("the Blender step ran without bpy")

    monkeypatch.setattr(demo, "run_blender_scene", no_blender)
    cfg = demo.DemoConfig(n_init=256, reference_points=600, stage1_steps=4, stage1_resolution=24, drag_steps=2,
                          distill_steps=4, distill_resolution=24, distill_rays=256, distill_samples=16, distill_view_pool=2,
                          distill_levels=4, distill_log2_table=12, refine_steps=2, mesh_resolution=32, eval_views=1,
                          eval_resolution=24, texture_size=64)
    rep = demo.run_demo(tmp_path, cfg)
    assert "no bpy module" in rep["skipped"] and "interactive3d[blender]" in rep["skipped"]
    assert "skipped" in rep["stages"]["blender"]
    names = {p.name for p in tmp_path.iterdir()}
    assert {"splats.ply", "mesh.glb", "mesh_textured.glb", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png",
            "report.json"} <= names
    assert not {"scene.blend", "contact_sheet.png", "scene_inputs.npz"} & names
    assert json.loads((tmp_path / "report.json").read_text())["skipped"] == rep["skipped"]
    assert rep["stages"]["mesh_textured"]["faces"] > 0
    assert 0.0 <= rep["stages"]["stage1"]["floater_share"] <= 1.0  # share of alpha outside the reference's silhouette
