"""Tests of backend/stage1/densify.py: clone / split / prune / opacity reset change the set exactly as the
3DGS rules say on constructed cases, keep optimiser moments and part masks in step, and the hook
accumulates the view-space gradient of a real render."""

import math

import pytest
import torch
from interactive3d.backend.stage1 import densify as D
from interactive3d.backend.stage1.cameras import orbit_cameras
from interactive3d.backend.stage1.gaussians import Gaussians, make_optimizers
from interactive3d.backend.stage1.render import render


def _set(scales, opacities, grads, counts=None):
    """Gaussians on the x axis with given max scales, opacities and average view-space gradients."""
    n = len(scales)
    means = torch.stack([torch.arange(n, dtype=torch.float32) * 0.1, torch.zeros(n), torch.zeros(n)], 1)
    g = Gaussians.from_activated(
        means,
        torch.rand(n, 3, generator=torch.Generator().manual_seed(0)),
        torch.tensor(opacities),
        torch.tensor(scales)[:, None] * torch.tensor([1.0, 0.5, 0.25]),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(1)), dim=-1),
    )
    D.ensure_state(g)
    c = torch.ones(n) if counts is None else torch.tensor(counts, dtype=torch.float32)
    g.buffers[D.GRAD] = torch.tensor(grads) * c
    g.buffers[D.COUNT] = c
    g.set_part("arm", torch.arange(n) % 2 == 0)
    return g


def _prime_adam(g, opts):
    """One optimiser step so every parameter has non-zero Adam moments."""
    loss = sum((p * torch.randn_like(p)).sum() for p in g.params.values())
    loss.backward()
    for o in opts.values():
        o.step()
        o.zero_grad(set_to_none=True)


def test_clone_copies_small_high_gradient_gaussians():
    """4 small Gaussians (max scale 0.005 ≤ 0.01·extent), average gradients [1e-3, 1e-4, 2e-4, 5e-3]:
    the 3 at or above 2e-4 are cloned (n 4 → 7); clones equal their parents bit for bit, inherit the
    'arm' part mask, start with zero Adam moments; the parents' moments are unchanged; stats reset."""
    g = _set([0.005] * 4, [0.5] * 4, [1e-3, 1e-4, 2e-4, 5e-3])
    opts = make_optimizers(g)
    _prime_adam(g, opts)
    before = {k: v.detach().clone() for k, v in g.params.items()}
    moments = {k: opts[k].state[g.params[k]]["exp_avg"].clone() for k in g.params}
    cloned, split = D.densify(g, opts, D.DensifyConfig())
    assert (cloned, split, g.n) == (3, 0, 7)
    parents = torch.tensor([0, 2, 3])
    for k, v in g.params.items():
        assert torch.equal(v[:4], before[k]) and torch.equal(v[4:], before[k][parents]), k
        st = opts[k].state[v]
        assert st["exp_avg"].shape == v.shape and torch.equal(st["exp_avg"][:4], moments[k])
        assert (st["exp_avg"][4:] == 0).all() and (st["exp_avg_sq"][4:] == 0).all()
        assert opts[k].param_groups[0]["params"][0] is v
    assert torch.equal(g.part_mask("arm"), torch.tensor([True, False, True, False, True, True, False]))
    assert all((g.buffers[b] == 0).all() and g.buffers[b].shape == (7,) for b in D.STAT_BUFFERS)


def test_split_replaces_large_gaussians_with_two_smaller_children():
    """3 Gaussians, max scales [0.05, 0.05, 0.005], gradients [1e-3, 1e-5, 1e-3]: Gaussian 0 (large) is
    split into 2 children with scales / 1.6 and centres drawn from it (within 4σ), Gaussian 2 (small)
    is cloned; n = 3 + 1 + 2 − 1 = 5; the children carry the parent's rotation, colour and opacity."""
    g = _set([0.05, 0.05, 0.005], [0.5] * 3, [1e-3, 1e-5, 1e-3])
    parent = {k: v.detach()[0].clone() for k, v in g.params.items()}
    cloned, split = D.densify(g, make_optimizers(g), D.DensifyConfig(), torch.Generator().manual_seed(0))
    assert (cloned, split, g.n) == (1, 1, 5)
    # order after densify: originals 1, 2 | clone of 2 | children of 0
    kids = slice(3, 5)
    assert torch.allclose(g.params["log_scales"][kids], (parent["log_scales"] - math.log(1.6)).expand(2, 3))
    for k in ("quats", "opacity_logits", "sh"):
        assert torch.equal(g.params[k][kids], parent[k].expand_as(g.params[k][kids])), k
    d = (g.params["means"][kids] - parent["means"]).norm(dim=-1)
    assert (d > 0).all() and (d < 4 * 0.05).all()
    assert torch.equal(g.part_mask("arm"), torch.tensor([False, True, True, True, True]))


def test_prune_rules():
    """Opacities [0.001, 0.5, 0.004, 0.9, 0.5], max scales [0.01, 0.01, 0.01, 0.2, 0.01], screen radii
    [1, 1, 1, 1, 30]: opacity < 0.005 removes 0 and 2, world scale > 0.1 removes 3 (n 5 → 2); with
    prune_screen_px 20 also 4 goes (n → 1); a rule that would remove everything removes nothing."""
    def make():
        g = _set([0.01, 0.01, 0.01, 0.2, 0.01], [0.001, 0.5, 0.004, 0.9, 0.5], [0.0] * 5)
        g.buffers[D.RADII] = torch.tensor([1.0, 1.0, 1.0, 1.0, 30.0])
        return g

    g = make()
    keep_means = g.params["means"][[1, 4]].detach().clone()
    assert D.prune(g, make_optimizers(g), D.DensifyConfig()) == 3 and g.n == 2
    assert torch.equal(g.params["means"], keep_means)
    g = make()
    assert D.prune(g, None, D.DensifyConfig(prune_screen_px=20.0)) == 4 and g.n == 1
    g = make()
    assert D.prune(g, None, D.DensifyConfig(prune_opacity=0.99)) == 0 and g.n == 5


def test_max_gaussians_cap_keeps_largest_gradients():
    """Cap 6 with 4 Gaussians and 4 clone candidates: only the 2 with the largest gradients are cloned."""
    g = _set([0.005] * 4, [0.5] * 4, [1e-3, 4e-3, 3e-3, 2e-3])
    cloned, _ = D.densify(g, None, D.DensifyConfig(max_gaussians=6))
    assert cloned == 2 and g.n == 6
    assert torch.equal(g.params["means"][4:], g.params["means"][[1, 2]])


def test_opacity_reset_clamps_and_zeroes_moments():
    """Reset to 0.01: opacities above become exactly sigmoid(logit(0.01)), lower ones are unchanged, and
    the opacity optimiser's moments are zero."""
    g = _set([0.005] * 3, [0.9, 0.005, 0.5], [0.0] * 3)
    opts = make_optimizers(g)
    _prime_adam(g, opts)
    low = g.opacities[1].item()
    D.reset_opacity(g, opts, 0.01)
    assert torch.allclose(g.opacities[[0, 2]], torch.tensor([0.01, 0.01]))
    assert g.opacities[1].item() == low
    st = opts["opacity_logits"].state[g.params["opacity_logits"]]
    assert (st["exp_avg"] == 0).all() and (st["exp_avg_sq"] == 0).all()


def test_hook_accumulates_render_gradients_and_follows_schedule():
    """Real renders of 2 views: the statistics equal Σ over visible views of ‖∂L/∂means2d · (W/2·B,
    H/2·B)‖ and the counts equal the number of views with radius > 0; off-schedule steps never change
    the count; at a densify step the count changes by exactly clones + splits − prunes; an opacity
    reset step clamps every opacity to ≤ 0.01."""
    gen = torch.Generator().manual_seed(0)
    n = 300
    g = Gaussians.from_activated(
        (torch.rand(n, 3, generator=gen) - 0.5) * 0.8, torch.rand(n, 3, generator=gen), torch.full((n,), 0.6), torch.full((n, 3), 0.03)
    )
    opts = make_optimizers(g)
    cams = orbit_cameras(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]), torch.tensor([1.8, 1.8]), torch.tensor([50.0, 50.0]), 32, 24)
    cfg = D.DensifyConfig(from_step=2, until_step=10, every=2, opacity_reset_every=5, grad_threshold=1e-4)
    out = render(g, cams)
    out.rgb.square().mean().backward()
    res = D.step_post_backward(g, opts, out, 1, cfg)
    assert res == D.DensifyStepResult()
    scaled = out.means2d.grad * torch.tensor([16.0 * 2, 12.0 * 2])
    vis = out.radii > 0
    assert torch.allclose(g.buffers[D.GRAD], (scaled.norm(dim=-1) * vis).sum(0), rtol=1e-6)
    assert torch.equal(g.buffers[D.COUNT], vis.sum(0).float())
    assert torch.equal(g.buffers[D.RADII], out.radii.amax(0).float())
    for o in opts.values():
        o.step()
        o.zero_grad(set_to_none=True)
    out = render(g, cams)
    out.rgb.square().mean().backward()
    n0 = g.n
    res = D.step_post_backward(g, opts, out, 2, cfg, torch.Generator().manual_seed(0))
    assert res.cloned + res.split > 0
    assert g.n == n0 + res.cloned + res.split - res.pruned
    for k, p in g.params.items():
        assert opts[k].param_groups[0]["params"][0] is p and p.grad is None
    out = render(g, cams)
    out.rgb.square().mean().backward()
    res = D.step_post_backward(g, opts, out, 5, cfg)
    assert res.opacity_reset and res.cloned == res.split == res.pruned == 0
    assert float(g.opacities.detach().max()) <= 0.01 + 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match="grad_threshold"):
        D.DensifyConfig(grad_threshold=0.0)
    with pytest.raises(ValueError, match="every"):
        D.DensifyConfig(every=0)
    with pytest.raises(ValueError, match="opacity_reset_value"):
        D.DensifyConfig(opacity_reset_value=1.0)
    cfg = D.DensifyConfig(from_step=100, until_step=300, every=100)
    assert [s for s in range(0, 400) if cfg.densify_at(s)] == [100, 200]
