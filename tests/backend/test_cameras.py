"""Tests of backend/stage1/cameras.py: the Blender ↔ OpenCV camera conversion (round trip, centre pixel,
real Blender camera projection and lens), orbit sampling and the adaptive zoom-in cameras."""

import math

import pytest
import torch
from interactive3d.backend.stage1 import cameras as C


def _random_c2w(b, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, 4, generator=gen, dtype=torch.float64), dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(b, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(b, 1, 1)
    c2w[:, :3, :3] = R
    c2w[:, :3, 3] = torch.randn(b, 3, generator=gen, dtype=torch.float64) * 3
    return c2w.float()


def test_blender_round_trip_exact():
    """c2w → cameras_from_blender → c2w_blender returns the matrices to 1e-6, fov_x to 1e-6 rad, and
    viewmat·c2w·diag(1,−1,−1,1) = I (the documented conversion) to 1e-6."""
    c2w = _random_c2w(16)
    fov = torch.linspace(0.3, 2.5, 16)
    cams = C.cameras_from_blender(c2w, fov, 64, 48)
    assert len(cams) == 16 and cams.viewmats.dtype == torch.float32
    assert torch.allclose(cams.c2w_blender(), c2w, atol=1e-6)
    assert torch.allclose(cams.fov_x(), fov, atol=1e-6)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.allclose(cams.viewmats @ c2w @ flip, torch.eye(4).expand(16, 4, 4), atol=1e-5)
    assert torch.allclose(cams.centers(), c2w[:, :3, 3], atol=1e-5)
    single = C.cameras_from_blender(c2w[3], float(fov[3]), 64, 48)
    assert torch.equal(single.viewmats, cams[3].viewmats) and len(cams[3]) == 1 and len(cams[2:5]) == 3


def test_point_straight_ahead_projects_to_centre():
    """A point 2.5 units down a Blender camera's −Z projects to the image centre (W/2, H/2) within
    1e-4 px with depth +2.5; a point behind the camera has negative depth; +Y (camera up) is image up."""
    c2w = _random_c2w(8, seed=1)
    cams = C.cameras_from_blender(c2w, math.radians(60), 40, 30)
    ahead = (c2w @ torch.tensor([0.0, 0.0, -2.5, 1.0]))[:, :3]
    up = (c2w @ torch.tensor([0.0, 0.3, -2.5, 1.0]))[:, :3]
    behind = (c2w @ torch.tensor([0.0, 0.0, 1.0, 1.0]))[:, :3]
    for i in range(8):
        pix, depth = C.project_points(ahead[i : i + 1], cams[i])
        assert torch.allclose(pix, torch.tensor([20.0, 15.0]), atol=1e-4) and abs(float(depth) - 2.5) < 1e-5
        pix_up, _ = C.project_points(up[i : i + 1], cams[i])
        assert float(pix_up[0, 0, 1]) < 15.0 - 1.0  # higher in the world = smaller row
        assert float(C.project_points(behind[i : i + 1], cams[i])[1]) < 0


def test_blender_camera_lens_and_projection_match():
    """A real Blender camera (lens 35 mm, sensor 36 mm, fit HORIZONTAL, 64×48 px) at a look_at pose:
    its angle_x equals 2·atan(36/(2·35)) to 1e-6, and bpy_extras.world_to_camera_view
    of 200 random points gives the same pixels as project_points to 1e-3 px and the same depth."""
    bpy = pytest.importorskip("bpy")
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 64, 48, 100
    data = bpy.data.cameras.new("cam")
    data.lens, data.sensor_width, data.sensor_fit = 35.0, 36.0, "HORIZONTAL"
    obj = bpy.data.objects.new("cam", data)
    scene.collection.objects.link(obj)
    fov = data.angle_x
    assert abs(fov - 2 * math.atan(36 / 70)) < 1e-6
    c2w = C.look_at(torch.tensor([[1.5, -2.0, 0.8]]), torch.tensor([[0.1, 0.2, 0.0]]))[0]
    obj.matrix_world = Matrix(c2w.tolist())
    bpy.context.view_layer.update()
    cams = C.cameras_from_blender(torch.tensor([list(r) for r in obj.matrix_world]), fov, 64, 48)
    pts = torch.rand(200, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    pix, depth = C.project_points(pts, cams)
    ref = torch.tensor([list(world_to_camera_view(scene, obj, Vector(p.tolist()))) for p in pts])
    ref_pix = torch.stack([ref[:, 0] * 64, (1 - ref[:, 1]) * 48], -1)
    assert torch.allclose(pix[0], ref_pix, atol=1e-3)
    assert torch.allclose(depth[0], ref[:, 2], atol=1e-5)


def test_orbit_cameras_positions_and_upright():
    """orbit_cameras puts camera i at d·(cos e cos a, cos e sin a, sin e), the origin projects to the
    image centre, and cameras are upright (camera x horizontal, camera up has z ≥ 0)."""
    el, az = torch.tensor([0.0, 30.0, -10.0, 89.0]), torch.tensor([0.0, 90.0, -135.0, 10.0])
    d = torch.tensor([2.0, 1.5, 1.8, 2.2])
    cams = C.orbit_cameras(el, az, d, torch.full((4,), 50.0), 32, 32)
    e, a = torch.deg2rad(el), torch.deg2rad(az)
    expect = d[:, None] * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)
    assert torch.allclose(cams.centers(), expect, atol=1e-5)
    pix, depth = C.project_points(torch.zeros(1, 3), cams)
    assert torch.allclose(pix, torch.tensor(16.0), atol=1e-4) and torch.allclose(depth[:, 0], d, atol=1e-5)
    c2w = cams.c2w_blender()
    assert (c2w[:, 2, 0].abs() < 1e-6).all() and (c2w[:, 2, 1] >= 0).all()
    assert torch.allclose(torch.linalg.det(c2w[:, :3, :3]), torch.ones(4), atol=1e-5)


def test_sample_orbit_reproducible_and_in_range():
    """Same generator seed → identical cameras; 256 draws stay inside the configured ranges."""
    cfg = C.OrbitConfig(width=16, height=16)
    a = C.sample_orbit(256, cfg, torch.Generator().manual_seed(3))
    b = C.sample_orbit(256, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a.cameras.viewmats, b.cameras.viewmats) and torch.equal(a.azimuth_deg, b.azimuth_deg)
    assert a.elevation_deg.min() >= -10 and a.elevation_deg.max() <= 45
    assert a.distance.min() >= 1.5 and a.distance.max() <= 2.0
    fov = torch.rad2deg(a.cameras.fov_x())
    assert fov.min() >= 40 - 1e-3 and fov.max() <= 70 + 1e-3
    assert torch.allclose(a.cameras.centers().norm(dim=-1), a.distance, atol=1e-5)


@pytest.mark.parametrize("az_deg", [0.0, 90.0, 179.0, -135.0])
def test_zoom_in_cameras_look_from_outside_the_object(az_deg):
    """With ``outward`` (the region's centre seen from the object's), every camera is within the span of the
    outward azimuth (its offset from the region has a positive outward component for a 90° span), on the
    same draws (elevations unchanged); a region around the object's centre or straight above it keeps the
    full orbit; bad values are ValueErrors."""
    a = math.radians(az_deg)
    center, r = 0.45 * torch.tensor([math.cos(a), math.sin(a), 0.2]), 0.1
    full = C.zoom_in_cameras(center, r, 256, 16, 16, torch.Generator().manual_seed(0))
    s = C.zoom_in_cameras(center, r, 256, 16, 16, torch.Generator().manual_seed(0), outward=center)
    assert torch.equal(s.elevation_deg, full.elevation_deg)
    horizontal = torch.nn.functional.normalize(center[:2], dim=0)
    offset = s.cameras.centers() - center
    assert bool(((offset[:, :2] @ horizontal) >= -1e-4).all())
    assert float(((full.cameras.centers() - center)[:, :2] @ horizontal).min()) < -0.1  # the full orbit goes behind
    d = (s.azimuth_deg - az_deg + 180) % 360 - 180
    assert float(d.abs().max()) <= 90.0 + 1e-3 and float(d.abs().max()) > 80.0  # the whole window is used
    for outward in (torch.tensor([0.02, 0.0, 0.0]), torch.tensor([0.0, 0.05, 0.6])):
        same = C.zoom_in_cameras(center, r, 256, 16, 16, torch.Generator().manual_seed(0), outward=outward)
        assert torch.equal(same.azimuth_deg, full.azimuth_deg)
    with pytest.raises(ValueError, match="outward"):
        C.zoom_in_cameras(center, r, 2, 8, 8, torch.Generator(), outward=torch.tensor([float("nan"), 0.0, 0.0]))
    with pytest.raises(ValueError, match="outward_span_deg"):
        C.zoom_in_cameras(center, r, 2, 8, 8, torch.Generator(), outward=center, outward_span_deg=0.0)


@pytest.mark.parametrize("size", [(32, 32), (48, 32), (32, 48)])
def test_zoom_in_frames_the_region(size):
    """Zoom-in cameras around a region (centre (0.3, −0.2, 0.1), radius 0.15, margin 1.2): the centre
    projects to the image centre; the bounding sphere's outline (4000 points on it) stays inside the
    image and touches the narrower side's edges within 1 % (it fills the frame)."""
    w, h = size
    center, r = torch.tensor([0.3, -0.2, 0.1]), 0.15
    s = C.zoom_in_cameras(center, r, 6, w, h, torch.Generator().manual_seed(0))
    assert len(s.cameras) == 6 and s.elevation_deg.min() >= -10 and s.elevation_deg.max() <= 60
    pix, _ = C.project_points(center[None], s.cameras)
    assert torch.allclose(pix, torch.tensor([w / 2, h / 2]), atol=1e-3)
    sphere = torch.nn.functional.normalize(torch.randn(4000, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    pix, depth = C.project_points(center + 1.2 * r * sphere, s.cameras)
    front = depth > 0
    off = (pix - torch.tensor([w / 2, h / 2])).abs()
    half = min(w, h) / 2
    axis = 1 if h <= w else 0
    extent = off[..., axis].masked_fill(~front, 0).amax(dim=1)  # [B]
    assert (extent <= half * 1.0001).all() and (extent >= 0.99 * half).all()
    assert (off[..., 1 - axis].masked_fill(~front, 0).amax(dim=1) <= max(w, h) / 2 + 1e-3).all()


def test_look_at_degenerate_and_validation():
    """Looking straight down keeps a proper rotation (det 1); bad inputs raise ValueError naming the field."""
    c2w = C.look_at(torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(1, 3))
    assert torch.allclose(torch.linalg.det(c2w[:, :3, :3]), torch.ones(1), atol=1e-6)
    pix, depth = C.project_points(torch.zeros(1, 3), C.cameras_from_blender(c2w, 1.0, 8, 8))
    assert torch.allclose(pix, torch.tensor(4.0)) and float(depth) == pytest.approx(3.0)
    bad = torch.eye(4)
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="c2w"):
        C.cameras_from_blender(bad, 1.0, 8, 8)
    with pytest.raises(ValueError, match="fov_x"):
        C.cameras_from_blender(torch.eye(4), 3.2, 8, 8)
    with pytest.raises(ValueError, match="width"):
        C.cameras_from_blender(torch.eye(4), 1.0, 0, 8)
    with pytest.raises(ValueError, match="coincide"):
        C.look_at(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="radius"):
        C.zoom_in_cameras(torch.zeros(3), 0.0, 2, 8, 8, torch.Generator())
    with pytest.raises(ValueError, match="viewmats"):
        C.Cameras(torch.eye(3)[None], torch.eye(3)[None], 8, 8)
    with pytest.raises(ValueError, match="distance_range"):
        C.OrbitConfig(distance_range=(0.0, 1.0))
