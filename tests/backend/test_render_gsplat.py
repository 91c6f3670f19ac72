"""The project's gsplat ``rasterization`` call (backend/stage1/render.py ``_render_gsplat``) run on CPU with
gsplat's CUDA entry points replaced by its torch references (tests/backend/_gsplat_torch.py says which
have none), against the built-in torch rasteriser; and the render fast path's self-test and fallback.

Tolerances: rgb, alpha 1e-5 max abs (the same float32 maths in another order); expected depth 1e-4
relative where alpha > 0.05; radii identical integers; the 2D-mean gradient that densify reads within
1e-4 relative of its largest value (float32 sums in a different order)."""

import logging

import pytest
import torch
from interactive3d.backend.accel.fastpath import FastPaths
from interactive3d.backend.stage1 import render as R
from interactive3d.backend.stage1.cameras import orbit_cameras
from interactive3d.backend.stage1.gaussians import Gaussians

pytest.importorskip("gsplat.cuda._torch_impl")
from _gsplat_torch import rasterize_to_pixels, torch_entry_points  # noqa: E402


def _scene(n=60, seed=0, sh_degree=1, low_opacity=0):
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * 0.55
    scales = 0.03 + 0.12 * torch.rand(n, 3, generator=gen)
    opac = 0.1 + 0.85 * torch.rand(n, generator=gen)
    opac[:low_opacity] = torch.tensor([0.002, 0.0045, 0.006, 0.01])[:low_opacity]  # < 1/255, just above, faint
    g = Gaussians.from_activated(means, torch.rand(n, 3, generator=gen), opac, scales, torch.randn(n, 4, generator=gen), sh_degree=sh_degree)
    with torch.no_grad():
        g.params["sh"][:, 1:] = 0.3 * torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen)
    el, az = torch.tensor([15.0, -10.0]), torch.tensor([20.0, 140.0])
    cams = orbit_cameras(el, az, torch.tensor([1.6, 2.0]), torch.tensor([55.0, 45.0]), 40, 32)
    return g, cams


def _both(g, cams, bg):
    outs = []
    for fn in (R._render_gsplat, R._render_torch):
        gg = Gaussians({k: v.detach().clone().requires_grad_(True) for k, v in g.params.items()}, sh_degree=g.sh_degree)
        colors = R.view_colors(gg, cams)
        out = fn(gg, cams.viewmats, cams.Ks, cams.width, cams.height, colors, bg, 0.01, 1e10)
        w = torch.rand(out.rgb.shape[:-1] + (5,), generator=torch.Generator().manual_seed(3))
        (torch.cat([out.rgb, out.alpha, out.depth], -1) * w).sum().backward()
        outs.append(out)
    return outs


def test_project_gsplat_call_matches_torch_rasteriser_on_cpu(monkeypatch):
    """60 Gaussians (SH 1, four of them faint: o = 0.002 < 1/255, 0.0045, 0.006, 0.01), 2 views of 40×32
    (3×2 tiles of 16 px), background (0.1, 0.2, 0.3): gsplat's rasterization with the torch stand-ins equals
    the torch twin in colour, alpha, expected depth, radii [B,N] and the 2D-mean gradient."""
    g, cams = _scene(low_opacity=4)
    bg = torch.tensor([[0.1, 0.2, 0.3]]).expand(2, 3)
    with torch_entry_points(monkeypatch):
        gs, tw = _both(g, cams, bg)
    assert gs.radii.shape == tw.radii.shape == (2, 60) and gs.radii.dtype == torch.int32
    assert torch.equal(gs.radii, tw.radii)
    assert (gs.radii[:, 0] == 0).all()  # o < 1/255: culled by gsplat 1.5's opacity-aware bound, and by the twin
    assert (gs.radii > 0).sum() > 80
    assert (gs.alpha > 0.5).float().mean() > 0.1  # the object covers a good part of both views
    for k in ("rgb", "alpha"):
        assert (getattr(gs, k) - getattr(tw, k)).abs().max() < 1e-5, k
    solid = tw.alpha > 0.05
    assert ((gs.depth - tw.depth).abs()[solid] / tw.depth[solid]).max() < 1e-4
    vis = tw.radii > 0
    ga, gb = gs.means2d.grad[vis], tw.means2d.grad[vis]
    assert gb.abs().max() > 0 and ((ga - gb).abs().max() / gb.abs().max()) < 1e-4
    assert (gs.means2d.grad[~vis] == 0).all() and (tw.means2d.grad[~vis] == 0).all()


def test_one_gaussian_and_all_culled(monkeypatch):
    """One Gaussian in front of the camera: identical images; all behind the camera: radii 0, alpha 0,
    the background everywhere on both paths."""
    g, cams = _scene(n=1, seed=5, sh_degree=0)
    with torch.no_grad():
        g.params["means"].zero_()
    bg = torch.full((2, 3), 0.25)
    with torch_entry_points(monkeypatch):
        gs, tw = _both(g, cams, bg)
        assert torch.equal(gs.radii, tw.radii) and (gs.radii > 0).all()
        assert (gs.rgb - tw.rgb).abs().max() < 1e-5
        with torch.no_grad():
            g.params["means"].copy_(cams.centers()[0] * 1.5)  # behind camera 0, outside camera 1's view
        gs, tw = _both(g, cams, bg)
    assert (gs.radii == 0).all() and (tw.radii == 0).all()
    assert gs.alpha.abs().max() == 0 and torch.allclose(gs.rgb, tw.rgb)


# -- the fast path ---------------------------------------------------------------------------------
def test_self_test_passes_with_torch_stand_ins(monkeypatch):
    """The real self-test (gsplat vs twin on a 24-Gaussian scene, forward and backward) passes on CPU when
    gsplat's entry points are the torch stand-ins: the record says gsplat for the (fake) CUDA device."""
    fp = FastPaths()
    with torch_entry_points(monkeypatch):
        assert R.choose_backend("cuda:3", fp, test=lambda: R.self_test("cpu")) == "gsplat"
    assert fp.report() == {"render": {"cuda:3": "gsplat"}}


def test_numeric_mismatch_falls_back_to_torch_with_one_warning(monkeypatch, caplog):
    """A rasteriser that gets colour wrong (×0.9) fails the self-test: one warning naming the difference,
    the torch twin for that device from then on, and the report says why."""

    def wrong(*a, **k):
        c, acc = rasterize_to_pixels(*a, **k)
        return c * 0.9, acc

    fp = FastPaths()
    with torch_entry_points(monkeypatch, rasterize=wrong), caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert R.choose_backend("cuda:0", fp, test=lambda: R.self_test("cpu")) == "torch"
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "differ by" in warns[0].getMessage()
    assert "fallback from gsplat" in fp.report()["render"]["cuda:0"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA torch the kernels may really build (minutes); this is the no-CUDA case")
def test_missing_kernels_fall_back(caplog):
    """gsplat whose kernels cannot be built or loaded (here: CPU torch, so gsplat's JIT build yields no
    library and its import fails, as it does on a user's machine without nvcc): the real self-test raises
    inside gsplat, the twin is chosen and the reason recorded."""
    fp = FastPaths()
    with caplog.at_level(logging.WARNING):
        assert R.choose_backend("cuda:1", fp, test=lambda: R.self_test("cpu")) == "torch"
    c = fp.get("render", "cuda:1")
    assert not c.ok and c.fast == "gsplat" and c.reason


def test_cpu_device_uses_torch_without_self_test():
    fp = FastPaths()
    called = []
    assert R.choose_backend("cpu", fp, test=lambda: called.append(1)) == "torch"
    assert called == [] and fp.get("render", "cpu").reason.startswith("no CUDA")
