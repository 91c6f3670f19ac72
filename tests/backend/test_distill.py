"""Gaussian → hash-grid distillation (backend/stage2/distill.py, paper Eq. 7) on CPU."""

import dataclasses
import time

import pytest
import torch
from _stage2_helpers import psnr
from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
from interactive3d.backend.stage1.gaussians import Gaussians
from interactive3d.backend.stage1.render import render
from interactive3d.backend.stage2.distill import (
    DistillConfig,
    DistillJob,
    distill_step,
    make_optimizer,
)
from interactive3d.backend.stage2.hashgrid import HashGridConfig
from interactive3d.backend.stage2.nerf import NeRFConfig, NeRFField
from interactive3d.backend.stage2.rays import RenderConfig
from interactive3d.backend.stage2.render import render_image
from interactive3d.backend.stage2.state import SLOT, Stage2State

# test field: 8 levels × 2 features × 2^14 (base 16, ×1.447), MLPs of width 32
TEST_FIELD = NeRFConfig(grid=HashGridConfig(n_levels=8, n_features=2, log2_table_size=14), hidden=32)


def _shell(n=3000) -> Gaussians:
    """A Gaussian sample: an opaque shell of radius 0.5 coloured by position (red ∝ x, green ∝ y, blue
    by hemisphere)."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(n, 3, generator=g)
    p = 0.5 * p / p.norm(dim=-1, keepdim=True)
    rgb = torch.stack([(p[:, 0] / 0.5 + 1) / 2, (p[:, 1] / 0.5 + 1) / 2, 0.3 + 0.4 * (p[:, 2] > 0).float()], -1).clamp(0, 1)
    return Gaussians.from_activated(p, rgb, torch.full((n,), 0.9), torch.full((n, 3), 0.035))


class _Session:
    def __init__(self, g):
        self.gaussians, self.device, self.extras = g, torch.device("cpu"), {}


@pytest.mark.slow
def test_distilled_field_matches_gaussians_on_held_out_views():
    """80 steps (24-view pool of 64×64 Gaussian renders, 1024 rays × 32 samples per step, lr 0.03 grid /
    0.01 MLP, occupancy from step 16): held-out PSNR of the NeRF against Gaussian renders from 4 unseen
    orbit cameras ≥ 25 dB (28.80 dB measured with the default terms and 4× supersampled targets; 30.21 with one
    sample per pixel, which is also how the held-out references are rendered: the supersampled targets are a
    little sharper than those references, by the rasteriser's half-pixel low-pass).
    CPU budget: ≈ 30 s on an idle 2-core machine."""
    g = _shell()
    s = _Session(g)
    cfg = DistillConfig(
        steps=80, resolution=64, view_pool=24, rays_per_step=1024, lr_grid=0.03, lr_mlp=0.01,
        render=RenderConfig(n_samples=32, stratified=True), occupancy_warmup=16, occupancy_every=8, preview_every=40,
    )
    job = DistillJob(s, cfg, TEST_FIELD, backend="torch")
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        job.step(i)
    seconds = time.perf_counter() - t0
    st = s.extras[SLOT]
    held = sample_orbit(4, OrbitConfig(), torch.Generator().manual_seed(123)).cameras
    with torch.no_grad():
        want = render(g, held, torch.ones(3)).rgb
        got = render_image(st.field, held, RenderConfig(n_samples=64), st.occupancy).rgb
    value = psnr(got, want)
    print(f"held-out PSNR {value:.2f} dB after {cfg.steps} steps in {seconds:.1f} s")
    assert value >= 25.0, value
    assert job.preview is not None and job.preview.shape == (32, 32, 3)
    assert st.distilled_steps == 80 and st.occupancy is not None


def test_step_lowers_l1_and_lrs():
    """Adam groups carry the official lrs by default (0.01 grid, 1e-3 MLPs); with 0.05 / 0.02, 15 steps on
    one fixed view toward a red image lower the L1 by > 30%."""
    f = NeRFField(NeRFConfig(grid=HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=8), hidden=16), backend="torch")
    assert [gr["lr"] for gr in make_optimizer(f, DistillConfig()).param_groups] == [0.01, 1e-3]
    cfg = DistillConfig(rays_per_step=512, lr_grid=0.05, lr_mlp=0.02, render=RenderConfig(n_samples=16, stratified=True))
    opt = make_optimizer(f, cfg)
    gen = torch.Generator().manual_seed(0)
    cams = sample_orbit(1, OrbitConfig(width=16, height=16), gen).cameras
    target = torch.zeros(1, 16, 16, 3)
    target[..., 0] = 0.8
    losses = [distill_step(f, opt, cams, target, cfg, gen).loss for _ in range(15)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_job_resume_continues_bit_identically():
    """A job restored from state_dict() (RNG + Adam moments) on a copy of the field gives the same next
    step loss, bit for bit, as the uninterrupted job."""
    s = _Session(_shell(500))
    tiny = NeRFConfig(grid=HashGridConfig(n_levels=3, log2_table_size=10, base_resolution=8), hidden=8)
    cfg = DistillConfig(steps=4, resolution=16, rays_per_step=128, view_pool=2, render=RenderConfig(n_samples=8, stratified=True), preview_every=0)
    a = DistillJob(s, cfg, tiny, backend="torch")
    for i in range(2):
        a.step(i)
    saved_job, saved_field = a.state_dict(), s.extras[SLOT].state_dict()
    s2 = _Session(s.gaussians)
    s2.extras[SLOT] = Stage2State.from_state_dict(saved_field, torch.device("cpu"))
    b = DistillJob(s2, cfg, tiny, backend="torch")
    b.load_state_dict(saved_job)
    assert a.step(2)["loss"] == b.step(2)["loss"]


def test_bad_config():
    with pytest.raises(ValueError, match="resolution"):
        DistillConfig(resolution=4)
    with pytest.raises(ValueError, match="rays_per_step"):
        DistillConfig(rays_per_step=0)
    with pytest.raises(ValueError, match="no Gaussians"):
        DistillJob(_Session(None), DistillConfig())
    with pytest.raises(ValueError, match="target_supersample"):
        DistillConfig(target_supersample=0)
    with pytest.raises(ValueError, match="start_blob"):
        DistillConfig(start_blob=(4.0, 0.0))


def test_targets_supersampled_up_to_1024_pixels_and_the_start_blob():
    """Targets are supersampled 4× at 64² (256² renders) and less where that would exceed 1024² (2× at 512², none at
    1024²). A fresh field distilled from the session's Gaussians keeps NeRFConfig's blob (threestudio's e^10 at the
    centre) unless DistillConfig.start_blob names another: with (4, 2) its bias is 4 at the centre and 3 at
    |x| = 0.5; a field distilled from other targets (target_fn) keeps NeRFConfig's blob either way."""
    from interactive3d.backend.stage2.distill import target_supersample

    assert [target_supersample(DistillConfig(resolution=r)) for r in (64, 256, 512, 1024)] == [4, 4, 2, 1]
    cfg = DistillConfig(steps=1, resolution=16, rays_per_step=64, preview_every=0)
    s = _Session(_shell(200))
    DistillJob(s, cfg, TEST_FIELD, backend="torch")._ensure_state()
    assert (s.extras[SLOT].cfg.density_blob_scale, s.extras[SLOT].cfg.density_blob_std) == (10.0, 0.5)
    wide = dataclasses.replace(cfg, start_blob=(4.0, 2.0))
    s = _Session(_shell(200))
    DistillJob(s, wide, TEST_FIELD, backend="torch")._ensure_state()
    st = s.extras[SLOT]
    assert (st.cfg.density_blob_scale, st.cfg.density_blob_std) == (4.0, 2.0)
    bias = st.field.density_bias(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]))
    assert torch.allclose(bias, torch.tensor([4.0, 3.0]))
    s = _Session(None)
    DistillJob(s, wide, TEST_FIELD, target_fn=lambda cams: torch.ones(len(cams), 16, 16, 3), backend="torch")._ensure_state()
    assert s.extras[SLOT].cfg.density_blob_scale == 10.0


def test_density_gradient_normals_match_finite_differences():
    """n = −∇σ/‖∇σ‖ from autograd equals central differences (cos > 0.999 at 300 points) and points
    outward on the blob-initialised field (mean n·x̂ > 0.99); the finite-difference method (for CUDA
    hash-grid kernels) gives the same normals and passes gradients to the tables; an unknown method is a
    ValueError."""
    from interactive3d.backend.stage2.normals import density_normals

    f = NeRFField(NeRFConfig(grid=HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=8), hidden=16), backend="torch")
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        _, n = density_normals(f, x)
        e = 1e-3
        g = torch.stack([(f(x + e * d).density - f(x - e * d).density) / (2 * e) for d in torch.eye(3)], -1)
    fd = torch.nn.functional.normalize(-g, dim=-1)
    assert not n.requires_grad
    assert (n * fd).sum(-1).min() > 0.999
    # the finite-difference path (used when a CUDA kernel runs the hash grid) agrees too, and trains
    with torch.no_grad():
        _, n_fd = density_normals(f, x, method="finite_difference")
    assert (n * n_fd).sum(-1).min() > 0.999
    _, n_train = density_normals(f, x[:20], method="finite_difference")
    n_train[:, 0].sum().backward()
    assert f.grid.table.grad is not None and f.grid.table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="method"):
        density_normals(f, x, method="sdf")
    assert (n * torch.nn.functional.normalize(x, dim=-1)).sum(-1).mean() > 0.99


@pytest.mark.slow
def test_orientation_loss_changes_the_result():
    """DreamFusion's orientation loss on a semi-transparent ball (blob density scale 3) distilled toward
    its own renders, 10 steps: with weight 0 the L1 gradient is exactly zero and the field stays
    bit-identical; with weight 1 the orientation penalty (weight on normals facing away from the camera)
    drops by ≥ 10 % (0.0419 → 0.0334, −20 %, measured) while the colour still matches (PSNR ≥ 35 dB; 44.5
    measured)."""
    cfg_f = NeRFConfig(grid=HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=8), hidden=16, density_blob_scale=3.0)
    cams = sample_orbit(1, OrbitConfig(width=16, height=16), torch.Generator().manual_seed(0)).cameras
    f0 = NeRFField(cfg_f, backend="torch", seed=0)
    ncfg = RenderConfig(n_samples=32, normals=True)
    with torch.no_grad():
        target = render_image(f0, cams, RenderConfig(n_samples=32)).rgb
        before = float(render_image(f0, cams, ncfg).orientation.mean())
    result = {}
    for w in (0.0, 1.0):
        f = NeRFField(cfg_f, backend="torch", seed=0)
        cfg = DistillConfig(rays_per_step=256, lr_grid=0.03, lr_mlp=0.01, render=RenderConfig(n_samples=32), orientation_weight=w,
                            orientation_rays=None, opacity_weight=0.0, depth_weight=0.0)
        opt, gen = make_optimizer(f, cfg), torch.Generator().manual_seed(1)
        for _ in range(10):
            distill_step(f, opt, cams, target, cfg, gen)
        with torch.no_grad():
            out = render_image(f, cams, ncfg)
        result[w] = (f, float(out.orientation.mean()), psnr(out.rgb, target))
    print(f"orientation penalty {before:.5f} → w=0: {result[0.0][1]:.5f}, w=1: {result[1.0][1]:.5f} (PSNR {result[1.0][2]:.1f} dB)")
    assert all(torch.equal(a, b) for a, b in zip(result[0.0][0].state_dict().values(), f0.state_dict().values()))
    assert result[1.0][1] <= 0.9 * before
    assert result[1.0][2] >= 35.0
    assert DistillConfig().orientation_weight > 0  # on by default


def test_target_supersample_is_bounded_by_the_side_cap_and_the_fit():
    """4× by default, at most 1024 px wide, and no finer than the size the set was fitted at (fit_resolution);
    never below 1."""
    from interactive3d.backend.stage2.distill import DistillConfig, target_supersample

    cases = {(64, None): 4, (256, None): 4, (512, None): 2, (1024, None): 1, (48, 48): 1, (64, 128): 2,
             (64, 256): 4, (64, 1024): 4, (64, 32): 1, (64, 200): 3, (512, 4096): 2}
    for (res, fit), expect in cases.items():
        assert target_supersample(DistillConfig(resolution=res, fit_resolution=fit)) == expect, (res, fit)
    assert target_supersample(DistillConfig(resolution=64, fit_resolution=128, target_supersample=1)) == 1
    for bad in (0, -1, 2.5, "64"):
        with pytest.raises(ValueError, match="fit_resolution"):
            DistillConfig(fit_resolution=bad)
