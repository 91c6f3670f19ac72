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


def test_grad_quantile_densifies_the_top_fraction_above_the_floor():
    """10 small Gaussians with average gradients 1..10 (×0.1), one never seen (count 0, gradient 0):
    grad_quantile 0.3 clones exactly the top 3 of the 10 seen (gradients 0.8, 0.9, 1.0) whatever their
    scale; a floor above them (grad_threshold 0.95) keeps only the 1.0; quantile 1.0 with a floor of 0.5
    clones the 6 at or above 0.5. The never-seen Gaussian does not count toward the quantile."""
    grads = [0.1 * (i + 1) for i in range(10)] + [0.0]
    counts = [1.0] * 10 + [0.0]

    def run(**kw):
        g = _set([0.005] * 11, [0.5] * 11, grads, counts)
        cloned, split = D.densify(g, None, D.DensifyConfig(**kw))
        return cloned, sorted(g.params["means"][11:, 0].mul(10).round().int().tolist())

    assert run(grad_threshold=1e-6, grad_quantile=0.3) == (3, [7, 8, 9])
    assert run(grad_threshold=0.95, grad_quantile=0.3) == (1, [9])
    assert run(grad_threshold=0.5, grad_quantile=1.0) == (6, [4, 5, 6, 7, 8, 9])
    g = _set([0.005], [0.5], [0.0], [0.0])  # nothing seen: nothing densified
    assert D.densify(g, None, D.DensifyConfig(grad_threshold=1e-6, grad_quantile=0.5)) == (0, 0)


def test_prune_radius_removes_gaussians_outside_the_scene_bound():
    """Centres at x = 0, 0.1, …, 0.4 with prune_radius 0.25 (extent 1): the 2 beyond 0.25 go; with
    extent 2 the bound is 0.5 and none goes."""
    g = _set([0.01] * 5, [0.5] * 5, [0.0] * 5)
    assert D.prune(g, None, D.DensifyConfig(prune_radius=0.25)) == 2 and g.n == 3
    assert torch.allclose(g.params["means"][:, 0], torch.tensor([0.0, 0.1, 0.2]))
    g = _set([0.01] * 5, [0.5] * 5, [0.0] * 5)
    assert D.prune(g, None, D.DensifyConfig(prune_radius=0.25, extent=2.0, prune_scale=None)) == 0


def test_prune_every_prunes_between_densify_steps_until_its_own_end():
    """Densify every 10 from 10 until 40, prune every 5 until 60: the plan lists densify steps 10, 20, 30
    and prune-only steps 15, 25, 35, 40, 45, 50, 55; the hook prunes a transparent Gaussian at a prune-only
    step after the densify window (step 45) without densifying, and leaves it alone at step 44."""
    cfg = D.DensifyConfig(from_step=10, until_step=40, every=10, prune_every=5, prune_until_step=60,
                          opacity_reset_every=None, grad_threshold=1e-9)
    assert cfg.plan(60) == D.DensifyPlan((10, 20, 30), (), (15, 25, 35, 40, 45, 50, 55))
    assert D.DensifyConfig().plan(300).prune_steps == ()
    g = _set([0.01] * 3, [0.5, 0.001, 0.5], [0.0] * 3)

    class Out:  # the hook reads means2d.grad/radii only inside the densify window (step < until_step)
        pass

    assert D.step_post_backward(g, None, Out(), 44, cfg).pruned == 0 and g.n == 3
    r = D.step_post_backward(g, None, Out(), 45, cfg)
    assert (r.pruned, r.densified, r.cloned, g.n) == (1, False, 0, 2)
    # an opacity reset is kept when only a prune-only step follows it inside the prune window
    late = D.DensifyConfig(from_step=10, until_step=40, every=10, prune_every=5, prune_until_step=60, opacity_reset_every=35)
    assert late.plan(60).reset_steps == (35,)
    assert D.DensifyConfig(from_step=10, until_step=40, every=10, opacity_reset_every=35).plan(60).reset_steps == ()


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
    for bad in (dict(grad_quantile=0.0), dict(grad_quantile=1.5), dict(prune_every=0), dict(prune_until_step=2.5),
                dict(prune_radius=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            D.DensifyConfig(**bad)
    cfg = D.DensifyConfig(from_step=100, until_step=300, every=100)
    assert [s for s in range(0, 400) if cfg.densify_at(s)] == [100, 200]


# -- the schedule of a whole run (issue 18) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "steps, expect",
    [
        # 3DGS's own run: from 500 until 15k every 100, resets every 3k
        (30_000, dict(from_step=500, until_step=15_000, every=100, resets=(3000, 6000, 9000, 12000), n_densify=145)),
        # the paper's Stage I length
        (10_000, dict(from_step=167, until_step=5000, every=33, resets=(1000, 2000, 3000, 4000), n_densify=146)),
        # a short run keeps the same fractions
        (2000, dict(from_step=33, until_step=1000, every=7, resets=(200, 400, 600, 800), n_densify=138)),
    ],
)
def test_schedule_scales_with_run_length(steps, expect):
    """for_run keeps 3DGS's fractions of the run: densify inside the first half, four resets, every reset
    inside the window and followed by ≥ 25 densify (prune) steps; nothing densifies or resets after the window."""
    cfg = D.DensifyConfig.for_run(steps)
    assert (cfg.from_step, cfg.until_step, cfg.every) == (expect["from_step"], expect["until_step"], expect["every"])
    plan = cfg.plan(steps)
    assert plan.reset_steps == expect["resets"]
    assert len(plan.densify_steps) == expect["n_densify"]
    assert plan.densify_steps[0] >= cfg.from_step and plan.densify_steps[-1] < cfg.until_step
    assert all(s % cfg.every == 0 for s in plan.densify_steps)
    for r in plan.reset_steps:
        assert sum(1 for s in plan.densify_steps if s > r) >= 25
    assert max(plan.reset_steps) < cfg.until_step <= steps // 2 + 1


def test_reset_only_inside_window_and_before_a_prune():
    """The issue's case: the old defaults (until 1500, reset every 3000) on a 10k run reset at 3k, 6k, 9k;
    now never (all outside the window). A reset whose window has no densify step after it is dropped."""
    assert D.DensifyConfig().plan(10_000).reset_steps == ()
    cfg = D.DensifyConfig(from_step=10, until_step=105, every=10, opacity_reset_every=50)
    # 50 → densify at 60 follows; 100 → the next densify step (110) is outside the window
    assert cfg.plan(200).reset_steps == (50,)
    assert cfg.plan(200).densify_steps == tuple(range(10, 101, 10))
    with pytest.raises(ValueError, match="total_steps"):
        D.DensifyConfig.for_run(0)


class _FakeRender:
    """What the hook reads from a RenderOutput: means2d (with .grad), radii [1,N], rgb [1,H,W,3]."""

    def __init__(self, grad):
        n = grad.shape[1]
        self.means2d = torch.zeros(1, n, 2, requires_grad=True)
        self.means2d.grad = grad
        self.radii = torch.ones(1, n)
        self.rgb = torch.empty(1, 8, 8, 3)


def _run_schedule(cfg, steps):
    """Drive the hook for a whole run on a constructed set and an emulated optimiser; returns step → result.

    Gaussian 0 (small, x>0) always has a large gradient → cloned at every densify step. The largest
    Gaussian gets a large gradient while its scale is above the clone/split boundary → split. Two floaters
    (x<0) are driven toward transparency but the "optimiser" cannot push them below 2 % by itself; the others
    recover toward 0.8 (+0.05 logit/step). Only an opacity reset brings the floaters under the prune threshold.
    """
    means = torch.tensor([[0.5, 0, 0], [0.8, 0, 0], [-0.5, 0, 0], [-0.6, 0.1, 0]])
    g = Gaussians.from_activated(
        means, torch.full((4, 3), 0.5), torch.tensor([0.8, 0.8, 0.3, 0.3]), torch.tensor([0.005, 0.09, 0.008, 0.008])[:, None].repeat(1, 3)
    )
    floor, top = math.log(0.02 / 0.98), math.log(0.8 / 0.2)
    gen = torch.Generator().manual_seed(0)
    log = {}
    for step in range(steps):
        grad = torch.zeros(1, g.n, 2)
        grad[0, 0, 0] = 1.0  # NDC ×4 → far above 2e-4
        scales = g.scales.detach().amax(-1)
        big = int(scales.argmax())
        if float(scales[big]) > cfg.percent_dense * cfg.extent:
            grad[0, big, 0] = 1.0
        res = D.step_post_backward(g, None, _FakeRender(grad), step, cfg, gen)
        if res != D.DensifyStepResult():
            log[step] = res
        with torch.no_grad():
            p = g.params["opacity_logits"]
            floater = g.means[:, 0] < 0
            down = torch.where(p >= floor - 1e-4, torch.clamp(p - 0.02, min=floor), p - 0.02)
            p.copy_(torch.where(floater, down, torch.clamp(p + 0.05, max=top)))
    return g, log


@pytest.mark.parametrize("steps", [2000, 10_000])
def test_run_clones_splits_prunes_and_resets_on_schedule(steps):
    """A whole run through the hook: clones exactly at the plan's densify steps (one per step), splits only
    at its first densify steps (until the children are small), resets exactly at the plan's reset steps,
    and the two floaters are pruned at the first densify step after the first reset once they fall under
    0.005 (35 steps after the reset at 0.02 logit/step), not before. The run ends with opacities recovered."""
    cfg = D.DensifyConfig.for_run(steps)
    plan = cfg.plan(steps)
    g, log = _run_schedule(cfg, steps)
    assert tuple(s for s, r in log.items() if r.densified) == plan.densify_steps
    assert tuple(s for s, r in log.items() if r.cloned) == plan.densify_steps
    assert all(log[s].cloned == 1 for s in plan.densify_steps)
    split_steps = tuple(s for s, r in log.items() if r.split)
    assert split_steps == plan.densify_steps[: len(split_steps)] and len(split_steps) == 31  # 1+2+4+8+16 parents
    assert tuple(s for s, r in log.items() if r.opacity_reset) == plan.reset_steps
    prune_steps = [s for s, r in log.items() if r.pruned]
    first_reset = plan.reset_steps[0]
    expected = min(s for s in plan.densify_steps if s >= first_reset + 35)
    assert prune_steps == [expected] and log[expected].pruned == 2
    assert not bool((g.means[:, 0] < 0).any())
    assert float(g.opacities.detach().min()) > 0.5  # nothing ends forced down
    # the old schedule (resets outside its window) never removes the floaters
    g_old, log_old = _run_schedule(D.DensifyConfig(), 2000)
    assert int((g_old.means[:, 0] < 0).sum()) == 2 and not any(r.opacity_reset for r in log_old.values())


def test_outliers_are_the_stray_centres_of_a_cluster():
    """500 centres in a ball of radius 0.5 and 5 strays at distance 1.5–2.5: the mean distance to 16 nearest
    neighbours of a stray is ~1 (the cluster's ~0.1), above the set's mean + 2 std; no cluster point is
    flagged. The k-d tree gives the answer of the brute-force distance matrix."""
    gen = torch.Generator().manual_seed(0)
    ball = torch.nn.functional.normalize(torch.randn(500, 3, generator=gen), dim=-1) * 0.5 * torch.rand(500, 1, generator=gen) ** (1 / 3)
    strays = torch.tensor([[1.5, 0, 0], [0, 2.0, 0], [0, 0, -2.5], [1.2, 1.2, 0], [-1.6, 0, 0.4]])
    means = torch.cat([ball, strays])
    bad = D.outliers(means, 16, 2.0)
    assert bad[500:].all() and not bad[:500].any()
    mean_d = torch.topk(torch.cdist(means.double(), means.double()), 17, dim=1, largest=False).values[:, 1:].mean(1)
    assert torch.equal(bad, mean_d > mean_d.mean() + 2.0 * mean_d.std())
    assert not D.outliers(means[:3], 16, 2.0).any()  # k capped at N−1: 3 points, nothing stands out by 2 std
    assert D.outliers(means[:1], 16, 2.0).shape == (1,) and not D.outliers(means[:1], 16, 2.0).any()  # one centre
    assert not D.outliers(torch.zeros(40, 3), 16, 2.0).any()  # all at one place: every distance 0, std 0


def test_end_prune_removes_what_left_the_scene_bound():
    """With a scene bound (prune_radius) the last prune also removes centres beyond it — the default schedule
    prunes the bound only on its densify steps, which end at 2/3 of the run; without a bound, or without the
    final opacity prune, they stay."""
    n = 12
    g = _set([0.005] * n, [0.5] * n, [0.0] * n)
    with torch.no_grad():
        g.params["means"][:, 0] *= 0.5  # x up to 0.55
        g.params["means"][:, 1] = torch.linspace(-0.5, 0.5, n)
        g.params["means"][3] = torch.tensor([0.0, 0.0, 1.2])  # 1.2 from the centre: outside radius 1
        g.params["means"][7] = torch.tensor([0.0, 0.99, 0.0])  # inside
    assert D.end_prune(g, None, D.DensifyConfig(prune_radius=1.0)) == 0 and g.n == n
    assert D.end_prune(g, None, D.DensifyConfig(end_prune_opacity=0.1)) == 0 and g.n == n
    assert D.end_prune(g, None, D.DensifyConfig(end_prune_opacity=0.1, prune_radius=1.0)) == 1 and g.n == n - 1
    assert float(g.params["means"].detach().norm(dim=-1).max()) < 1.0
    assert D.end_prune(g, None, D.DensifyConfig(end_prune_opacity=0.1, prune_radius=0.5, extent=2.0)) == 0  # bound = 1.0


def test_end_prune_removes_faint_then_stray_gaussians_with_their_moments():
    """The run's last prune: opacity < end_prune_opacity goes (2 of 12), then the statistical outlier (the one
    centre 3 units away); parameters, Adam moments and part masks stay in step. Off (None, None): nothing."""
    n = 12
    g = _set([0.005] * n, [0.5] * n, [0.0] * n)
    with torch.no_grad():
        g.params["means"][:, 1] = torch.linspace(-0.05, 0.05, n)
        g.params["means"][5] = torch.tensor([0.5, 3.0, 0.0])
        g.params["opacity_logits"][[0, 1]] = math.log(0.05 / 0.95)
    opts = make_optimizers(g)
    _prime_adam(g, opts)
    kept_means = g.params["means"].detach()[[i for i in range(n) if i not in (0, 1, 5)]].clone()
    assert D.end_prune(g, opts, D.DensifyConfig()) == 0 and g.n == n
    removed = D.end_prune(g, opts, D.DensifyConfig(end_prune_opacity=0.1, end_outlier_std=2.0, outlier_neighbours=4))
    assert removed == 3 and g.n == 9
    assert torch.equal(g.params["means"].detach(), kept_means)
    state = opts["means"].state[g.params["means"]]
    assert state["exp_avg"].shape == (9, 3) and g.part_mask("arm").shape == (9,)
