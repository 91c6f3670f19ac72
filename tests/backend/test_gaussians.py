"""backend/stage1/gaussians.py: parameters, Adam moments and per-Gaussian buffers change together."""

import numpy as np
import torch
from interactive3d.backend.stage1 import gaussians as G


def _stepped(n=50, seed=0):
    g = G.init_random(n, seed=seed)
    g.set_part("arm", torch.arange(n) % 3 == 0)
    opt = G.make_optimizers(g)
    loss = (g.means ** 2).sum() + g.scales.sum() + g.opacities.sum() + g.rgb.sum() + g.rotations[:, 1].sum()
    loss.backward()
    for o in opt.values():
        o.step()
    return g, opt


def _moments(opt, g, name):
    return opt[name].state[g.params[name]]["exp_avg"]


def test_keep_selects_rows_of_params_moments_and_buffers():
    """After keep(mask) row j of every tensor equals row idx[j] before (exact)."""
    g, opt = _stepped()
    before = {k: v.detach().clone() for k, v in g.params.items()}
    moments = {k: _moments(opt, g, k).clone() for k in g.params}
    part = g.part_mask("arm").clone()
    mask = torch.arange(g.n) % 2 == 1
    G.keep(g, opt, mask)
    idx = mask.nonzero()[:, 0]
    assert g.n == int(mask.sum())
    for k in g.params:
        assert torch.equal(g.params[k].detach(), before[k][idx])
        assert torch.equal(_moments(opt, g, k), moments[k][idx])
        assert opt[k].param_groups[0]["params"][0] is g.params[k]
    assert torch.equal(g.part_mask("arm"), part[idx])


def test_append_zero_moments_and_default_buffers_then_optimises():
    """Appended rows start with zero Adam moments, part masks False, and receive updates next step."""
    g, opt = _stepped(n=20)
    new = {k: v.detach()[:4].clone() + 1.0 for k, v in g.params.items()}
    G.append(g, opt, new)
    assert g.n == 24
    for k in g.params:
        assert torch.equal(_moments(opt, g, k)[20:], torch.zeros_like(_moments(opt, g, k)[20:]))
    assert not g.part_mask("arm")[20:].any()
    before = g.means.detach().clone()
    (g.means ** 2).sum().backward()
    opt["means"].step()
    assert (g.means.detach()[20:] - before[20:]).abs().min() > 0  # new rows moved too


def test_snapshot_round_trip_is_exact():
    g, _ = _stepped()
    snap = g.snapshot()
    h = G.Gaussians.from_snapshot(snap)
    for k in g.params:
        assert g.params[k].detach().numpy().tobytes() == h.params[k].detach().numpy().tobytes()
    assert torch.equal(h.part_mask("arm"), g.part_mask("arm"))


def test_state_array_layout_matches_conventions():
    """[N,14]: xyz, rgb in [0,1], opacity in (0,1), positive scales, unit w-first quaternions."""
    g = G.init_random(100, radius=0.5, seed=3)
    s = g.state_array()
    assert s.shape == (100, 14) and s.dtype == np.float32
    assert np.abs(s[:, 0:3]).max() <= 0.5 + 1e-6
    assert (s[:, 3:6] >= 0).all() and (s[:, 3:6] <= 1).all()
    np.testing.assert_allclose(s[:, 6], 0.1, rtol=1e-5)
    assert (s[:, 7:10] > 0).all()
    np.testing.assert_allclose(s[:, 10], 1.0)  # identity quaternion, w first
