"""Interactive hash refinement (backend/stage2/refine.py, paper Eq. 8–9) on CPU with a small base field."""

import math

import pytest
import torch
from _stage2_helpers import look_at_cams, psnr
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.nerf import FieldOutput, NeRFConfig, NeRFField
from interactive3d.backend.stage2.occupancy import occupancy_from_field
from interactive3d.backend.stage2.rays import RenderConfig, camera_rays
from interactive3d.backend.stage2.render import render_image
from interactive3d.backend.stage2.parts import (
    PartConfig,
    RefinedField,
    RegionError,
    region_cells,
)
from interactive3d.backend.stage2.refine import RefineConfig, Refiner

BASE = NeRFConfig(grid=HashGridConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, per_level_scale=1.5), hidden=32)
PART = PartConfig(n_levels=4, n_features=2, log2_table_size=12, base_resolution=8, per_level_scale=1.5, hidden=16)
CENTER = torch.tensor([0.55, 0.0, 0.1])
RADIUS = 0.25
RCFG = RenderConfig(n_samples=48)


class _RedInside(torch.nn.Module):
    """The target scene: the base field with its colour replaced by red inside the sphere Q."""

    def __init__(self, base):
        super().__init__()
        self.base, self.cfg, self.background = base, base.cfg, base.background

    def forward(self, x):
        out = self.base(x)
        inside = ((x - CENTER).norm(dim=-1) < RADIUS)[:, None]
        return FieldOutput(out.density, torch.where(inside, torch.tensor([0.9, 0.1, 0.1]), out.rgb))


def _setup():
    base = NeRFField(BASE, backend="torch", seed=0)
    occ = occupancy_from_field(base, 32)
    return base, occ


def test_region_errors():
    """radius ≤ 0 and a region in empty space are RegionError (a ValueError) naming the field."""
    _, occ = _setup()
    with pytest.raises(RegionError, match="radius"):
        region_cells(occ, CENTER, 0.0)
    with pytest.raises(RegionError, match="no occupied cell"):
        region_cells(occ, torch.tensor([0.95, 0.95, 0.95]), 0.03)


@pytest.mark.parametrize("radius", [0.004, 0.03, 0.11, 0.37])
def test_region_cells_cover_exactly_the_occupied_cells_that_meet_q(radius):
    """O_part = the occupied cells whose box meets the sphere Q: every occupied point of Q lies in one (Q's rim
    included, a sphere smaller than a cell included), and each of them has a point within ``radius`` of the
    centre (its box's closest point). Centres on a cell corner, inside a cell and off-grid."""
    from interactive3d.backend.stage2.occupancy import OccupancyGrid

    g = torch.Generator().manual_seed(0)
    occ = OccupancyGrid(torch.rand(16, 16, 16, generator=g) < 0.6, 1.0)
    half = 1.0 / 16
    for center in (torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.03, -0.21, 0.4]), torch.tensor([0.5, 0.5, 0.125])):
        try:
            cells = region_cells(occ, center, radius)
        except RegionError:
            continue  # no occupied cell meets this Q (a tiny sphere in an empty cell)
        d = torch.randn(20000, 3, generator=g)
        pts = center + d / d.norm(dim=-1, keepdim=True) * radius * torch.rand(20000, 1, generator=g) ** (1 / 3)
        pts = pts[(pts.abs() < 1.0).all(-1)]
        i = occ.cell_index(pts)
        occupied = occ.occ[i[:, 0], i[:, 1], i[:, 2]]
        assert bool(cells[i[:, 0], i[:, 1], i[:, 2]][occupied].all())  # Q's occupied space is covered
        gap = ((occ.cell_centers()[cells] - center).abs() - half).clamp_min(0).norm(dim=-1)
        assert float(gap.max()) <= radius + 1e-6 and bool(occ.occ[cells].all())


def test_residuals_zero_outside_and_parts_disjoint():
    """A point outside O_part yields exactly 0 residuals from that part (its tables are never read there); two parts own
    separate table storage (disjoint memory ranges) and training one leaves the other bit-identical."""
    base, occ = _setup()
    f = RefinedField(base)
    a = f.add_part("a", region_cells(occ, CENTER, RADIUS), occ, PART, seed=1)
    b = f.add_part("b", region_cells(occ, -CENTER, RADIUS), occ, PART, seed=2)
    x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out_a = ~a.contains(x)
    assert out_a.sum() > 1000 and (~out_a).sum() > 10
    with torch.no_grad():
        torch.nn.init.normal_(a.mlp[2].weight)
        raw, _, base_feats = base.query(x, with_features=True)
        d_sig, d_rgb = a.residual(x, base_feats, raw)
    assert torch.equal(d_sig[out_a], torch.zeros_like(d_sig[out_a])) and torch.equal(d_rgb[out_a], torch.zeros_like(d_rgb[out_a]))
    ta, tb = a.grid.table, b.grid.table
    a0, a1 = ta.data_ptr(), ta.data_ptr() + ta.numel() * ta.element_size()
    b0, b1 = tb.data_ptr(), tb.data_ptr() + tb.numel() * tb.element_size()
    assert a1 <= b0 or b1 <= a0
    assert not (a.contains(x) & b.contains(x)).any()  # the two regions are apart; cells do not overlap


@pytest.mark.slow
def test_refinement_inside_up_outside_unchanged_base_bit_identical():
    """Target = base with red inside Q. After 60 L1 steps on part 'a' (4 levels × 2 × 2^12): PSNR inside
    Q's projection rises ≥ 2 dB, PSNR outside changes < 0.1 dB, the base field's tables and MLPs and
    the untrained part 'b' are bit-identical."""
    base, occ = _setup()
    eyes = torch.tensor([[2.0, 0.3, 0.5], [1.8, -0.8, 0.2], [1.6, 0.9, 0.9], [2.0, -0.2, -0.3]])
    cams = look_at_cams(eyes, CENTER, width=24, height=24, fov_deg=40)
    with torch.no_grad():
        target = render_image(_RedInside(base), cams, RCFG).rgb
        before = render_image(base, cams, RCFG).rgb
    inside = (target - before).abs().amax(-1) > 1e-3  # Q's projection (where the target differs)
    f = RefinedField(base)
    part = f.add_part("a", region_cells(occ, CENTER, RADIUS), occ, PART, seed=1)
    outside = ~_sees(part, cams)  # pixels whose rays never cross O_part's cells
    assert inside.float().mean() > 0.05 and outside.float().mean() > 0.2
    f.add_part("b", region_cells(occ, -CENTER, RADIUS), occ, PART, seed=2)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    b_sd = {k: v.clone() for k, v in f.parts["b"].state_dict().items()}
    r = Refiner(f, ["a"], RefineConfig(steps=60, rays_per_step=1024, lr_grid=0.03, lr_mlp=0.01, render=RenderConfig(n_samples=48, stratified=True)), targets=(cams, target), occupancy=occ)
    for i in range(60):
        r.step(i)
    with torch.no_grad():
        after = render_image(f, cams, RCFG, occupancy=occ).rgb
        before_occ = render_image(base, cams, RCFG, occupancy=occ).rgb
    gain = psnr(after, target, inside) - psnr(before_occ, target, inside)
    drift = abs(psnr(after, target, outside) - psnr(before_occ, target, outside))
    print(f"inside gain {gain:.2f} dB, outside drift {drift:.4f} dB")
    assert gain >= 2.0, gain
    assert drift < 0.1, drift
    assert all(torch.equal(v, base_sd[k]) for k, v in base.state_dict().items())
    assert all(torch.equal(v, b_sd[k]) for k, v in f.parts["b"].state_dict().items())


def _sees(part, cams, n=256):
    """[B,H,W] bool: the pixel's ray crosses a cell of O_part (dense samples over t ∈ [0, 4])."""
    rays = camera_rays(cams)
    t = torch.linspace(0.0, 4.0, n)
    pts = rays.origins[:, None] + rays.dirs[:, None] * t[None, :, None]
    hit = part.contains(pts.reshape(-1, 3)).reshape(-1, n).any(-1)
    return hit.reshape(len(cams), cams.height, cams.width)


def test_refiner_bad_inputs():
    base, occ = _setup()
    f = RefinedField(base)
    f.add_part("a", region_cells(occ, CENTER, RADIUS), occ, PART)
    with pytest.raises(ValueError, match="parts"):
        Refiner(f, ["zzz"], targets=(None, None))
    with pytest.raises(ValueError, match="target"):
        Refiner(f, ["a"])
    with pytest.raises(ValueError, match="already exists"):
        f.add_part("a", region_cells(occ, CENTER, RADIUS), occ, PART)


@pytest.mark.slow
def test_refinement_with_interactive_sds_oracle():
    """Eq. 8 path: interactive SDS on zoom-in cameras around the part with the user's t = 0.3, scored by
    the closed-form oracle denoiser whose reference is the red-inside target. 15 steps at 32×32 raise
    PSNR inside Q's projection by ≥ 2 dB on fixed views; the base stays bit-identical."""
    from interactive3d.backend.stage1.guidance import GuidanceConfig, OracleGuidance

    base, occ = _setup()
    target_field = _RedInside(base)
    oracle = OracleGuidance(target_field, lambda ref, cams, bg: render_image(ref, cams, RCFG).rgb, GuidanceConfig())
    eyes = torch.tensor([[2.0, 0.3, 0.5], [1.8, -0.8, 0.2]])
    cams = look_at_cams(eyes, CENTER, width=24, height=24, fov_deg=40)
    with torch.no_grad():
        target = render_image(target_field, cams, RCFG).rgb
        before = render_image(base, cams, RCFG, occupancy=occ).rgb
    inside = (target - before).abs().amax(-1) > 1e-3
    f = RefinedField(base)
    f.add_part("a", region_cells(occ, CENTER, RADIUS), occ, PART, seed=1)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = RefineConfig(steps=15, lr_grid=0.03, lr_mlp=0.01, prompt="a red patch", fixed_t=0.3, sds_size=32, render=RenderConfig(n_samples=32, stratified=True))
    r = Refiner(f, ["a"], cfg, guidance=oracle, occupancy=occ)
    for i in range(cfg.steps):
        r.step(i)
    with torch.no_grad():
        after = render_image(f, cams, RCFG, occupancy=occ).rgb
    gain = psnr(after, target, inside) - psnr(before, target, inside)
    print(f"SDS inside gain {gain:.2f} dB")
    assert gain >= 2.0, gain
    assert all(torch.equal(v, base_sd[k]) for k, v in base.state_dict().items())


def test_part_tables_add_resolution_in_local_coordinates():
    """Paper defaults (8 levels × 2 features × 2^19) on the default base field (16 levels up to 4084 cells
    over the 2-unit box): a part on a 0.5-wide region gets its own resolution range in coordinates local
    to its box — finest level 2042 cells across 0.5 units, twice the base's 1021 over the same box; the
    box maps to the unit cube; an explicit finest_resolution is honoured exactly."""
    base = NeRFField(NeRFConfig(), backend="torch", seed=0)
    occ = occupancy_from_field(base, 32)
    f = RefinedField(base)
    p = f.add_part("a", region_cells(occ, torch.tensor([0.3, 0.0, 0.0]), 0.25), occ)
    extent = float((p.box_hi - p.box_lo).max())
    base_over_box = base.cfg.grid.resolutions()[-1] * extent / 2.0
    res = p.grid.cfg.resolutions()
    assert (p.cfg.n_levels, p.cfg.n_features, p.cfg.log2_table_size) == (8, 2, 19) and len(res) == 8
    assert res[0] == 16 and res[-1] >= 2 * base_over_box - 1, (res, base_over_box)
    assert torch.allclose(p.local(torch.stack([p.box_lo, p.box_hi])), torch.tensor([[0.0] * 3, [1.0] * 3]))
    q = f.add_part("b", region_cells(occ, torch.tensor([-0.3, 0.0, 0.0]), 0.25), occ, PartConfig(n_levels=4, log2_table_size=12, finest_resolution=300))
    assert q.grid.cfg.resolutions()[-1] == 300 and q.grid.table.shape[1] == 2
    with pytest.raises(ValueError, match="finest_resolution"):
        PartConfig(base_resolution=32, finest_resolution=16)


def test_residual_reads_base_and_adds_before_activations():
    """The residual MLP reads [part features | base features | base raw density] (16·2 + 8·2 + 1 inputs
    here); Δσ = ln 2 from the last bias doubles σ exactly inside O_part (added to the raw density, before
    trunc_exp), Δc = 1 adds to the colour logits (before the sigmoid); outside nothing changes; the base
    never gets a gradient while the points do (density-gradient normals)."""
    base, occ = _setup()
    f = RefinedField(base)
    a = f.add_part("a", region_cells(occ, CENTER, RADIUS), occ, PART, seed=1)
    assert a.mlp[0].in_features == a.grid.out_dim + base.grid.out_dim + 1
    x = torch.rand(3000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    inside = a.contains(x)
    with torch.no_grad():
        a.mlp[2].bias.copy_(torch.tensor([math.log(2.0), 1.0, 1.0, 1.0]))
        raw, logits = base.query(x)
        out = f(x)
    assert torch.allclose(out.density[inside], 2 * torch.exp(raw[inside]), rtol=1e-5)
    assert torch.allclose(out.rgb[inside], torch.sigmoid(logits[inside] + 1.0), atol=1e-6)
    assert torch.equal(out.density[~inside], torch.exp(raw[~inside])) and torch.equal(out.rgb[~inside], torch.sigmoid(logits[~inside]))
    # the base's features and density enter the residual: perturbing them changes it
    with torch.no_grad():
        torch.nn.init.normal_(a.mlp[2].weight)
        r0, _, feats = base.query(x, with_features=True)
        d0, _ = a.residual(x, feats, r0)
        d1, _ = a.residual(x, feats + 0.1, r0 + 1.0)
    assert (d1 - d0)[inside].abs().mean() > 1e-3 and torch.equal(d1[~inside], d0[~inside])
    xg = x[inside][:64].clone().requires_grad_()
    (g,) = torch.autograd.grad(f(xg).density.sum(), xg)
    assert g.abs().sum() > 0
    f(xg).density.sum().backward()
    assert base.grid.table.grad is None and all(p.grad is None for p in base.parameters())
    assert a.grid.table.grad is not None


def test_parts_survive_state_round_trip_and_old_checkpoints_load():
    """Stage2State.state_dict → from_state_dict rebuilds every part with its resolved config and
    bit-identical tables; a part saved before issue 17 (explicit per_level_scale, an MLP reading its own
    features only, no reads_base key) loads as such and renders the same density; an unknown config key
    is refused with a ValueError naming it."""
    import copy

    from interactive3d.backend.stage2.state import PartInfo, Stage2State

    st = Stage2State(BASE, backend="torch")
    st.occupancy = occupancy_from_field(st.field, 32)
    p = st.refined.add_part("a", region_cells(st.occupancy, CENTER, RADIUS), st.occupancy, PartConfig(n_levels=3, log2_table_size=10, finest_resolution=64))
    st.parts["a"] = PartInfo(p.cfg, tuple(CENTER.tolist()), RADIUS)
    with torch.no_grad():
        torch.nn.init.normal_(p.mlp[2].weight, std=0.5)
    sd = st.state_dict()
    st2 = Stage2State.from_state_dict(sd, torch.device("cpu"))
    assert st2.parts["a"].cfg == p.cfg and st2.refined.parts["a"].grid.cfg.resolutions()[-1] == 64
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(st2.refined.density(x), st.refined.density(x))
    # an old part: PartConfig fields of before, MLP input = the part's features only
    old = copy.deepcopy(sd)
    part_old = old["parts"]["a"]
    part_old["cfg"] = {"n_levels": 3, "n_features": 2, "log2_table_size": 10, "base_resolution": 16, "per_level_scale": 1.447, "hidden": 32}
    legacy = RefinedField(st.field)
    from interactive3d.backend.stage2.parts import RefinePart

    lp = RefinePart("a", part_old["state"]["cells"], st.occupancy, PartConfig(**part_old["cfg"], reads_base=False).resolve(BASE, 1.0), seed=3)
    with torch.no_grad():
        torch.nn.init.normal_(lp.mlp[2].weight, std=0.5)
    legacy.parts["a"] = lp
    part_old["state"] = {k: v.clone() for k, v in lp.state_dict().items()}
    st3 = Stage2State.from_state_dict(old, torch.device("cpu"))
    assert st3.parts["a"].cfg.reads_base is False
    assert torch.equal(st3.refined.density(x), legacy.density(x))
    bad = copy.deepcopy(sd)
    bad["parts"]["a"]["cfg"]["space"] = "warp"
    with pytest.raises(ValueError, match="space"):
        Stage2State.from_state_dict(bad, torch.device("cpu"))


@pytest.mark.slow
def test_fig4_ablation_part_specific_beats_shared_beats_finetuning():
    """Fig. 4 on CPU (scripts/bench/parts_ablation.py, 100 steps of 1024 jittered rays on 8 zoom-in views of
    40² from outside the object, one torch thread): inside Q on a sharp surface, coarse stripes (period 0.1)
    too fine for the base's finest cell (0.074) and fine ones (0.05) too fine as well for the same tables
    spread over the whole box (0.042). At about equal parameter budgets (part tables 4×2×2^12 + MLPs: 19 220
    trained parameters; fine-tuning the base trains its 22 291) the part-specific tables in the part's local
    coordinates beat fine-tuning the base by ≥ 1 dB and beat a shared table. Measured here (seed 0): base
    16.72, fine-tuned 18.97, shared 20.76, part-specific 21.14 dB. What holds over seeds × stripe periods, and the
    spread: docs/benchmarks.md (the shared table's place is not asserted: it lost to fine-tuning at a seed).
    With the part, the field at 20k random points outside O_part, the base's parameters and every pixel whose
    ray never crosses O_part are bit-identical."""
    import dataclasses
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "parts_ablation.py"
    spec = importlib.util.spec_from_file_location("parts_ablation", path)
    mod = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)

    cfg = mod.AblationConfig()
    cfg = dataclasses.replace(cfg, steps=100, size=40, rays=1024, part=dataclasses.replace(cfg.part, log2_table_size=12))
    res = mod.run(cfg, log=print)
    a, b, c = (res[k]["psnr_in"] for k in ("finetune_base", "shared_table", "part_specific"))
    assert res["before"]["psnr_in"] < a < c and b < c, res
    assert c - a >= 1.0, res
    assert res["part_specific"]["parameters"] <= res["finetune_base"]["parameters"], res  # no bigger budget
    part = res["part_specific"]
    assert part["outside_identical"] and part["base_identical"], part
    assert part["blind_pixels"] > 1000 and part["blind_max_diff"] == 0.0, part
