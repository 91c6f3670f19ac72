"""backend/interact/selection.py: 3D selectors (indices, sphere, boxes) and 2-view mask selection."""

import math

import numpy as np
import pytest
import torch
from interactive3d.backend.interact import selection as S


def _grid(n=11):
    """n³ points on a regular grid in [−1,1]³ (known counts for every region)."""
    t = torch.linspace(-1.0, 1.0, n)
    return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)


def test_indices_and_bad_indices():
    m = S.select_indices(10, [1, 3, 3, 9])
    assert m.tolist() == [False, True, False, True] + [False] * 5 + [True]
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        S.select_indices(10, [0, 10])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        S.select_indices(10, [-1])
    with pytest.raises(ValueError, match="empty"):
        S.select_indices(10, [])
    with pytest.raises(ValueError, match="integers"):
        S.select_indices(10, [1.5])
    assert int(S.select_indices(10, np.array([2, 4], dtype=np.uint32)).sum()) == 2


def test_sphere_matches_brute_force():
    """Sphere selection equals a per-point Python check on 1331 grid points (exact)."""
    pts = _grid()
    c, r = (0.1, -0.2, 0.3), 0.55
    expected = [math.dist(p, c) <= r for p in pts.tolist()]
    assert S.select_sphere(pts, c, r).tolist() == expected
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="radius"):
            S.select_sphere(pts, c, bad)


def test_aabb_count():
    """Box [−0.2,0.2]×[−1,1]×[0,1] on the 0.2-spaced grid holds 3·11·6 = 198 points."""
    pts = _grid()
    assert int(S.select_aabb(pts, (-0.2 - 1e-6, -1.0, -1e-6), (0.2 + 1e-6, 1.0, 1.0)).sum()) == 198
    with pytest.raises(ValueError, match="min"):
        S.select_aabb(pts, (1, 0, 0), (0, 1, 1))


def test_oriented_box_equals_aabb_after_rotation():
    """A box rotated 30° about z selects exactly the points whose rotated-back coordinates are in [−1,1]³·half."""
    pts = torch.rand(5000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = math.radians(30)
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    half = torch.tensor([0.5, 0.2, 0.3])
    m = torch.eye(4)
    m[:3, :3] = rot @ torch.diag(half)
    m[:3, 3] = torch.tensor([0.1, 0.0, -0.1])
    local = (pts - m[:3, 3]) @ rot  # rotate back
    expected = (local.abs() <= half).all(1)
    got = S.select_oriented_box(pts, m)
    assert int(got.sum()) > 100 and torch.equal(got, expected)
    with pytest.raises(ValueError, match="singular"):
        S.select_oriented_box(pts, torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0])))


def test_sam_missing_is_a_clear_error(tmp_path):
    """SAM is optional: a missing checkpoint or package raises SegmentorUnavailableError, never ImportError."""
    with pytest.raises(S.SegmentorUnavailableError, match="checkpoint"):
        S.sam_masks(np.zeros((8, 8, 3)), np.array([[4, 4]]), tmp_path / "nope.pth")
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x")
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        with pytest.raises(S.SegmentorUnavailableError, match="segment-anything"):
            S.sam_masks(np.zeros((8, 8, 3)), np.array([[4, 4]]), ckpt)


# -- 2D masks (needs backend/stage1/cameras.py) ---------------------------------------------------------
def _scene():
    """Known parts: a 'body' ball (r 0.4 at the origin, 3000 Gaussians) and an 'arm' box
    x∈[0.45,0.9], |y|,|z| ≤ 0.1 (600 Gaussians)."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(3000, 3, generator=gen)
    body = d / d.norm(dim=1, keepdim=True) * 0.4 * torch.rand(3000, 1, generator=gen) ** (1 / 3)
    arm = torch.rand(600, 3, generator=gen) * torch.tensor([0.45, 0.2, 0.2]) + torch.tensor([0.45, -0.1, -0.1])
    truth = torch.cat([torch.zeros(3000, dtype=torch.bool), torch.ones(600, dtype=torch.bool)])
    return torch.cat([body, arm]), truth


def _silhouette(cams, box_points, size):
    """Mask [B,H,W] of the pixels hit by dense samples of the arm box (the part as a painter sees it)."""
    from interactive3d.backend.stage1.cameras import project_points

    pix, depth = project_points(box_points, cams)
    masks = torch.zeros(len(cams), size, size, dtype=torch.bool)
    for b in range(len(cams)):
        u, v = pix[b, :, 0].floor().long(), pix[b, :, 1].floor().long()
        ok = (depth[b] > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
        masks[b, v[ok], u[ok]] = True
    return masks


def _cams(eyes, size=64):
    from interactive3d.backend.stage1.cameras import cameras_from_blender, look_at

    eyes = torch.tensor(eyes, dtype=torch.float32)
    return cameras_from_blender(look_at(eyes, torch.zeros_like(eyes)), math.radians(50), size, size)


def _iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


def test_two_view_mask_selection_iou():
    """2 views (front-right and top-right) of the scene, masks = the arm's silhouettes: IoU with the true
    arm ≥ 0.95 (measured 1.0); one view straight down the arm's axis catches body Gaussians behind it
    (IoU < 0.95), which is why every view must agree."""
    pytest.importorskip("interactive3d.backend.stage1.cameras")
    means, truth = _scene()
    gen = torch.Generator().manual_seed(1)
    dense = torch.rand(100_000, 3, generator=gen) * torch.tensor([0.45, 0.2, 0.2]) + torch.tensor([0.45, -0.1, -0.1])
    dense = torch.cat([dense, means[truth]])
    cams = _cams([[1.6, -1.6, 0.6], [1.2, 0.3, 2.0]])
    sel = S.select_by_masks(means, cams, _silhouette(cams, dense, 64))
    assert _iou(sel, truth) >= 0.95
    axis_cam = _cams([[2.5, 0.0, 0.0]])
    one = S.select_by_masks(means, axis_cam, _silhouette(axis_cam, dense, 64))
    assert _iou(one, truth) < 0.95


def test_occlusion_aware_excludes_hidden():
    """A front wall (x = 0.5) hides a back wall (x = −0.5) from a camera on +x. With a mask over the
    whole image and the depth of the front wall, occlusion-aware selection keeps all 400 front
    Gaussians and none of the 400 hidden ones; without it, all 800 are selected."""
    pytest.importorskip("interactive3d.backend.stage1.cameras")
    from interactive3d.backend.stage1.cameras import project_points

    t = torch.linspace(-0.3, 0.3, 20)
    yy, zz = torch.meshgrid(t, t, indexing="ij")
    wall = torch.stack([torch.zeros(400), yy.reshape(-1), zz.reshape(-1)], 1)
    front, back = wall + torch.tensor([0.5, 0.0, 0.0]), wall - torch.tensor([0.5, 0.0, 0.0])
    means = torch.cat([front, back])
    cams = _cams([[2.5, 0.0, 0.0]])
    _, depth = project_points(front[:1], cams)
    rendered = torch.full((1, 64, 64), float(depth[0, 0]))  # the front wall is a plane facing the camera
    masks = torch.ones(1, 64, 64, dtype=torch.bool)
    plain = S.select_by_masks(means, cams, masks)
    aware = S.select_by_masks(means, cams, masks, rendered, S.MaskSelectConfig(occlusion_aware=True))
    assert int(plain.sum()) == 800
    assert aware[:400].all() and not aware[400:].any()


def test_occlusion_aware_with_rendered_depth():
    """Same two walls as opaque splats, depth rendered by backend/stage1/render.py: occlusion-aware selection
    keeps all 400 front Gaussians and none of the 400 hidden behind them."""
    pytest.importorskip("interactive3d.backend.stage1.render")
    from interactive3d.backend.stage1 import gaussians as G
    from interactive3d.backend.stage1.render import render

    t = torch.linspace(-0.3, 0.3, 20)
    yy, zz = torch.meshgrid(t, t, indexing="ij")
    wall = torch.stack([torch.zeros(400), yy.reshape(-1), zz.reshape(-1)], 1)
    means = torch.cat([wall + torch.tensor([0.5, 0.0, 0.0]), wall - torch.tensor([0.5, 0.0, 0.0])])
    g = G.Gaussians.from_activated(means, torch.full((800, 3), 0.5), torch.full((800,), 0.99), torch.full((800, 3), 0.03))
    cams = _cams([[2.5, 0.0, 0.0]])
    with torch.no_grad():
        depth = render(g, cams).depth
    aware = S.select_by_masks(means, cams, torch.ones(1, 64, 64, dtype=torch.bool), depth, S.MaskSelectConfig(occlusion_aware=True))
    assert aware[:400].all() and not aware[400:].any()
