"""Tests of backend/stage1/metrics.py: the floater share counts exactly the rendered alpha outside the
reference's (grown) silhouette, and a real render of a reference against itself scores 0 floaters."""

import math

import pytest
import torch
from interactive3d.backend.stage1 import metrics as M
from interactive3d.backend.stage1.cameras import orbit_cameras
from interactive3d.backend.stage1.gaussians import Gaussians


def test_floater_share_on_constructed_alphas():
    """8×8 views: the reference covers a 2×2 block (rows/cols 3-4); margin 1 grows it to 4×4 (rows/cols
    2-5). Alpha 1 on the block and 0.5 on 4 pixels of the far corner → share 2 / (4 + 2) = 1/3; the
    corner moved next to the block (inside the margin) → 0; margin 0 counts a ring pixel at alpha 0.5
    → 0.5 / 4.5; nothing rendered → 0."""
    ref = torch.zeros(1, 8, 8, 1)
    ref[0, 3:5, 3:5] = 1.0
    a = ref.clone()
    a[0, 0:2, 6:8] = 0.5
    assert M.floater_share(a, ref) == pytest.approx(1 / 3)
    b = ref.clone()
    b[0, 2, 3] = 0.5
    assert M.floater_share(b, ref) == 0.0
    assert M.floater_share(b, ref, margin_px=0) == pytest.approx(0.5 / 4.5)
    assert M.floater_share(torch.zeros_like(ref), ref) == 0.0
    assert M.silhouette(ref).sum() == 16 and M.silhouette(ref, 0).sum() == 4
    with pytest.raises(ValueError, match="differ"):
        M.floater_share(a[:, :4], ref)
    with pytest.raises(ValueError, match="margin_px"):
        M.silhouette(ref, -1)


def _blob(centres, opacity=0.9, scale=0.05):
    c = torch.tensor(centres, dtype=torch.float32)
    n = len(c)
    return Gaussians.from_activated(c, torch.full((n, 3), 0.3), torch.full((n,), opacity), torch.full((n, 3), scale))


def test_score_against_reference_renders_both():
    """A reference of 3 Gaussians scored against itself: PSNR 120 dB (identical), 0 floaters. Adding one
    faint Gaussian (opacity 0.2) far from the object (0.5 from it, in every view's frame) raises the share
    to its alpha over the total (between 1 % and 50 %) and lowers the PSNR; a render of that Gaussian alone
    is all floaters (share 1)."""
    ref = _blob([[0.0, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.1, 0.0]])
    cams = orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 100.0]), torch.full((2,), 2.0), torch.full((2,), 50.0), 32, 32)
    s = M.score_against_reference(ref, ref, cams)
    assert s.psnr == 120.0 and s.floater_share == 0.0
    far = [[0.5, 0.5, 0.5]]
    hazy = _blob([[0.0, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.1, 0.0]] + far)
    with torch.no_grad():
        hazy.params["opacity_logits"][3] = math.log(0.2 / 0.8)
    h = M.score_against_reference(hazy, ref, cams)
    assert 0.01 < h.floater_share < 0.5 and h.psnr < 60.0
    assert M.score_against_reference(_blob(far, 0.2), ref, cams).floater_share == pytest.approx(1.0)
