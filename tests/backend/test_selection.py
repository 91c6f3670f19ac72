"""backend/selection.py: 3D selectors (indices, sphere, boxes) and 2-view mask selection."""

import math

import numpy as np
import pytest
import torch

from interactive3d.backend import selection as S


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
