"""backend/interact/masked_optim.py + backend/interact/semantic_edit.py: updates restricted to a part (paper §3.1.4)."""

import pytest
import torch
from interactive3d.backend.interact.masked_optim import masked_step
from interactive3d.backend.stage1 import gaussians as G


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


class _RedGuidance:
    """Stands in for a diffusion model (no weights here): its loss pulls rendered pixels to red, and it
    records the prompt and timestep choice it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompt, elevation_deg, azimuth_deg, step=0, fixed_t=None, t_range=None, generator=None, **ctx):
        from interactive3d.backend.stage1.guidance import GuidanceOutput

        loss = (images - torch.tensor([1.0, 0.0, 0.0])).pow(2).mean()
        self.calls.append((prompt, t_range, fixed_t, step, tuple(images.shape), float(loss.detach())))
        return GuidanceOutput(loss=loss, grad_norm=loss.detach(), t=torch.tensor([int(fixed_t * 1000)]))


def test_semantic_edit_outside_part_bit_identical():
    """5 semantic-edit steps through the real renderer: every parameter and Adam moment outside the part
    is bit-identical, the part's parameters changed, and the guidance got the
    edit's prompt and fixed t (0.3) on zoom-in renders of the configured size."""
    pytest.importorskip("interactive3d.backend.stage1.render")
    from interactive3d.backend.interact.interactive_sds import InteractiveSDSConfig
    from interactive3d.backend.interact.semantic_edit import (
        SemanticEditConfig,
        semantic_edit,
    )

    g, opt = _stepped(n=400)
    part = g.means.detach()[:, 0] > 0.15
    g.set_part("edit", part)
    before = _state(g, opt)
    guidance = _RedGuidance()
    cfg = SemanticEditConfig(steps=5, sds=InteractiveSDSConfig(prompt="make it red", fixed_t=0.3, width=32, height=32))
    semantic_edit(g, opt, "edit", guidance, cfg)
    after = _state(g, opt)
    for k in before:
        assert torch.equal(after[k][~part], before[k][~part]), k
    assert not torch.equal(after["p/sh"][part], before["p/sh"][part])  # the part did change
    assert len(guidance.calls) == 5 and guidance.calls[0][2] == 0.3 and guidance.calls[0][4] == (1, 32, 32, 3)
    assert guidance.calls[0][0].prompt == "make it red"


def test_zoom_in_cameras_frame_the_part():
    """Interactive SDS (§3.1.5): the region sphere of a part (region_of) given to the zoom-in cameras puts
    every centre of the part inside each of 8 sampled 32×32 views, and the part spans ≥ 40% of the
    image width in each view (the camera is near the part, not orbiting the whole object)."""
    from interactive3d.backend.interact.interactive_sds import region_of
    from interactive3d.backend.stage1.cameras import project_points, zoom_in_cameras

    g = G.init_random(3000, radius=0.5, seed=0)
    part = (g.means.detach() - torch.tensor([0.3, 0.0, 0.0])).norm(dim=1) <= 0.12
    region = region_of(g.means, part)
    sample = zoom_in_cameras(region.center, region.radius, 8, 32, 32, torch.Generator().manual_seed(0))
    pix, depth = project_points(g.means.detach()[part], sample.cameras)
    assert (depth > 0).all()
    assert ((pix >= 0) & (pix < 32)).all()
    span = pix[..., 0].amax(1) - pix[..., 0].amin(1)
    assert (span >= 0.4 * 32).all()


def test_semantic_edit_densifies_inside_the_part_only():
    """With densification on (every 2 steps from step 1, any visible gradient qualifies): the part grows,
    the new rows belong to the part, and the rows outside it are bit-identical, in the same order."""
    pytest.importorskip("interactive3d.backend.stage1.render")
    from interactive3d.backend.interact.interactive_sds import InteractiveSDSConfig
    from interactive3d.backend.interact.semantic_edit import (
        SemanticEditConfig,
        semantic_edit,
    )
    from interactive3d.backend.stage1.densify import DensifyConfig

    g, opt = _stepped(n=400)
    part = g.means.detach()[:, 0] > 0.15
    g.set_part("edit", part)
    before = {k: v.detach().clone() for k, v in g.params.items()}
    dcfg = DensifyConfig(grad_threshold=1e-12, from_step=1, every=2, until_step=100, prune_scale=None, opacity_reset_every=None)
    sds = InteractiveSDSConfig(prompt="make it red", fixed_t=0.3, width=32, height=32)
    res = semantic_edit(g, opt, "edit", _RedGuidance(), SemanticEditConfig(steps=3, sds=sds, densify=dcfg))
    grown = g.part_mask("edit")
    assert res[2].added > 0 and int(grown.sum()) == int(part.sum()) + sum(r.added for r in res)
    assert int((~grown).sum()) == int((~part).sum())
    for k, v in g.params.items():
        assert torch.equal(v.detach()[~grown], before[k][~part]), k
