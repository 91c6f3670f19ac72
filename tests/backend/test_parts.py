"""backend/interact/parts.py (paper Eq. 1): remove a part with its optimiser rows; merge another set."""

import pytest
import torch
from interactive3d.backend.interact import parts as P
from interactive3d.backend.stage1 import gaussians as G


def _stepped(n=100, seed=0):
    g = G.init_random(n, seed=seed)
    g.set_part("head", torch.arange(n) < 30)
    opt = G.make_optimizers(g)
    (g.means.pow(2).sum() + g.scales.sum() + g.opacities.sum()).backward()
    for o in opt.values():
        o.step()
    return g, opt


def test_remove_part_drops_rows_and_moments():
    """Removing 30 of 100: 70 remain, rows and Adam moments equal the kept rows before (exact)."""
    g, opt = _stepped()
    part = g.part_mask("head").clone()
    means = g.means.detach().clone()
    m = opt["means"].state[g.params["means"]]["exp_avg"].clone()
    res = P.remove_part(g, opt, part)
    assert (res.removed, res.remaining) == (30, 70)
    assert torch.equal(g.means.detach(), means[~part])
    assert torch.equal(opt["means"].state[g.params["means"]]["exp_avg"], m[~part])
    assert not g.part_mask("head").any()


def test_remove_empty_part_rejected():
    g, opt = _stepped()
    with pytest.raises(ValueError, match="empty"):
        P.remove_part(g, opt, torch.zeros(g.n, dtype=torch.bool))
    assert g.n == 100


def test_merge_with_transform_and_part_name():
    """Merging 40 translated Gaussians: 140 total, new rows = other + t, part 'wing' = the new rows only."""
    g, opt = _stepped()
    other = G.init_random(40, seed=5, sh_degree=1)
    other.set_part("tip", torch.arange(40) < 4)
    m = torch.eye(4)
    m[:3, 3] = torch.tensor([1.0, 0.0, 0.0])
    before = g.means.detach().clone()
    res = P.merge_gaussians(g, opt, other, matrix=m, part_name="wing")
    assert (res.added, res.total) == (40, 140)
    assert torch.equal(g.means.detach()[:100], before)
    assert torch.allclose(g.means.detach()[100:], other.means.detach() + torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(g.part_mask("wing"), res.mask) and int(res.mask.sum()) == 40
    assert int(g.part_mask("tip").sum()) == 4 and not g.part_mask("head")[100:].any()
    assert g.params["sh"].shape == (140, 1, 3)  # degree-1 SH truncated to g's degree 0
    assert opt["means"].state[g.params["means"]]["exp_avg"][100:].abs().max() == 0
    assert other.n == 40  # the source set is untouched


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65])
def test_bad_part_name(name):
    g, opt = _stepped()
    with pytest.raises(ValueError, match="part name"):
        P.merge_gaussians(g, opt, G.init_random(5), part_name=name)
    assert g.n == 100
