"""backend/masked_optim.py + backend/semantic_edit.py: updates restricted to a part (paper §3.1.4)."""

import torch

from interactive3d.backend import gaussians as G
from interactive3d.backend.masked_optim import masked_step


def _stepped(n=300, seed=0):
    g = G.init_random(n, seed=seed)
    opt = G.make_optimizers(g)
    (g.means.pow(2).sum() + g.scales.sum() + g.opacities.sum() + g.rgb.sum()).backward()
    for o in opt.values():
        o.step()
        o.zero_grad()
    return g, opt


def _state(g, opt):
    out = {f"p/{k}": v.detach().clone() for k, v in g.params.items()}
    for k in g.params:
        for m, v in opt[k].state[g.params[k]].items():
            if m != "step":
                out[f"{m}/{k}"] = v.clone()
    return out


def test_masked_step_keeps_outside_bit_identical():
    """10 masked AdamW steps with weight decay and non-zero old moments: every parameter and moment row
    outside the part is bit-identical, while a plain step would have moved them (control)."""
    g, opt = _stepped()
    part = torch.arange(g.n) % 4 == 0
    before = _state(g, opt)
    for _ in range(10):
        loss = (g.means - 1.0).pow(2).sum() + g.rgb.sum() + g.scales.sum()
        loss.backward()
        masked_step(g, opt, part)
        for o in opt.values():
            o.zero_grad()
    after = _state(g, opt)
    for k in before:
        assert torch.equal(after[k][~part], before[k][~part]), k
    assert not torch.equal(after["p/means"][part], before["p/means"][part])
    # Control: a plain step with zero gradient outside the part still moves those rows (decay + moments).
    g2, opt2 = _stepped()
    (g2.means - 1.0).pow(2).sum().mul(part[:, None]).sum().backward()
    for o in opt2.values():
        o.step()
    assert not torch.equal(g2.params["means"].detach()[~part], before["p/means"][~part])
