"""SDS guidance (backend/stage1/guidance.py) with tiny real diffusers models and the closed-form oracle."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny_diffusion import tiny_pixart_guidance, tiny_sd_guidance
from interactive3d.backend.stage1.guidance import (
    GuidanceConfig,
    GuidanceWeightsMissing,
    OracleGuidance,
    PixArtGuidance,
    PromptSpec,
    StableDiffusionGuidance,
    linear_alphas_cumprod,
    view_suffixes,
)


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_guidance()


def _images(b=2, h=24, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=g).requires_grad_(True)


def test_sd_sds_step_gradients_finite_and_nonzero(sd):
    """One SDS step through tokenizer → CLIP → VAE encode → UNet (CFG) gives a finite, non-zero image
    gradient on every image of the batch; t lies in the default [0.02, 0.98]·999 range; the text cache
    holds exactly the distinct prompts used (2 view prompts + the empty negative)."""
    images = _images()
    out = sd(images, PromptSpec("a red chair"), torch.tensor([10.0, 5.0]), torch.tensor([0.0, 90.0]),
             generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    grad = images.grad
    assert torch.isfinite(grad).all()
    assert (grad.abs().flatten(1).sum(1) > 0).all()
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    assert out.grad_norm.item() > 0
    assert ((out.t >= 20) & (out.t <= 979)).all()
    assert len(sd.embeddings) == 3  # "a red chair, front view", "..., side view", ""


def test_sd_is_deterministic_given_generator(sd):
    """Same generator seed ⇒ bit-identical loss and gradient (needed for exact pause/resume)."""
    grads = []
    for _ in range(2):
        images = _images(seed=3)
        out = sd(images, PromptSpec("a cat"), torch.zeros(2), torch.zeros(2), generator=torch.Generator().manual_seed(7))
        out.loss.backward()
        grads.append(images.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_reparameterised_loss_gradient_equals_sds_gradient():
    """With the oracle's closed form, ∂loss/∂image must equal 2·w(t)·√ᾱ/√(1−ᾱ)·(x − x₀)/B exactly
    (the factor 2 from x = 2·image − 1); checked to 1e-6 relative."""
    target = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(0)).expand(2, 8, 8, 3)
    oracle = OracleGuidance(reference=None, render_fn=lambda ref, cams, bg: target)
    images = _images(2, 8, 8, seed=1)
    out = oracle(images, PromptSpec("x"), torch.zeros(2), torch.zeros(2), fixed_t=0.5, cameras=object())
    out.loss.backward()
    abar = linear_alphas_cumprod()[out.t].view(2, 1, 1, 1)
    expected = 2.0 * (1 - abar) * abar.sqrt() / (1 - abar).sqrt() * (2 * images.detach() - 2 * target) / 2
    assert torch.allclose(images.grad, expected, rtol=1e-5, atol=1e-7)
    assert out.t.tolist() == [round(0.5 * 999)] * 2


def test_view_suffixes_follow_dreamfusion_thresholds():
    """Azimuth 0 (+X) is front, ±90 side, 180 back, elevation > 60° overhead; 200° wraps to −160 (back)."""
    e = torch.tensor([0.0, 0.0, 0.0, 70.0, 0.0, 0.0])
    a = torch.tensor([0.0, 90.0, 180.0, 0.0, -45.0, 200.0])
    assert view_suffixes(e, a) == ["front view", "side view", "back view", "overhead view", "front view", "back view"]


def test_timestep_schedule_fixed_and_annealed(sd):
    """Annealing (0.02,0.98)→(0.02,0.5) over 100 steps gives hi = 979 at step 0, 739 at 50, 500 at ≥100;
    a per-call t_range overrides it; fixed_t=0.3 gives t=300 for the whole batch."""
    g = StableDiffusionGuidance.__new__(StableDiffusionGuidance)
    g.config = GuidanceConfig(t_range_end=(0.02, 0.5), anneal_steps=100)
    g.num_train_timesteps = 1000
    assert g.t_bounds(0) == (20, 979)
    assert g.t_bounds(50) == (20, 739)
    assert g.t_bounds(500) == (20, 500)
    assert g.t_bounds(0, (0.5, 0.5)) == (500, 500)
    assert g.sample_t(4, 0, 0.3, None).tolist() == [300] * 4
    with pytest.raises(ValueError, match="fixed_t"):
        g.sample_t(1, 0, 1.5, None)


@pytest.mark.parametrize("additional_conditions", [False, True])
def test_pixart_sds_step_gradients_finite_and_nonzero(additional_conditions):
    """PixArt-α path (T5 encoder + PixArtTransformer2DModel, ε half of the 8 output channels): finite,
    non-zero image gradients, with the prompt's attention mask passed to the transformer; also with the
    1024² model's resolution/aspect-ratio conditioning."""
    pix = tiny_pixart_guidance(additional_conditions=additional_conditions)
    images = _images()
    out = pix(images, PromptSpec("a blue vase", negative_prompt="blurry"), torch.zeros(2), torch.tensor([0.0, 180.0]),
              generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(images.grad).all() and (images.grad.abs().flatten(1).sum(1) > 0).all()
    assert len(pix.embeddings) == 3


def test_missing_weights_raise_typed_error_naming_model(tmp_path):
    """An unknown local folder with local_files_only gives GuidanceWeightsMissing naming the path."""
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(GuidanceWeightsMissing, match="no-such-model"):
        StableDiffusionGuidance.from_pretrained(missing, local_files_only=True, device="cpu")
    with pytest.raises(GuidanceWeightsMissing, match="stable-diffusion-2-1-base"):
        StableDiffusionGuidance.from_pretrained(local_files_only=True, device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"t_range": (0.9, 0.1)}, "t_range"), ({"fixed_t": 0.0}, "fixed_t"), ({"guidance_scale": float("nan")}, "guidance_scale"),
     ({"weighting": "foo"}, "weighting")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GuidanceConfig(**kwargs)


def test_prompt_validation():
    with pytest.raises(ValueError, match="prompt"):
        PromptSpec("   ")


def test_from_pretrained_local_folder_round_trip(tmp_path, sd):
    """The loading path used for SD 2.1: tiny components saved with save_pretrained into a diffusers
    folder layout (tokenizer/, text_encoder/, vae/, unet/, scheduler/) load back with
    local_files_only=True and give the same SDS loss as the in-memory object to 1e-5 relative."""
    from diffusers import DDPMScheduler

    sd.tokenizer.save_pretrained(tmp_path / "tokenizer")
    sd.text_encoder.save_pretrained(tmp_path / "text_encoder")
    sd.vae.save_pretrained(tmp_path / "vae")
    sd.unet.save_pretrained(tmp_path / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(tmp_path / "scheduler")
    loaded = StableDiffusionGuidance.from_pretrained(str(tmp_path), local_files_only=True, device="cpu")
    assert loaded.dtype == torch.float32 and loaded.resolution == sd.resolution
    losses = []
    for g in (sd, loaded):
        out = g(_images(seed=4), PromptSpec("a cat"), torch.zeros(2), torch.zeros(2), generator=torch.Generator().manual_seed(2))
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_pixart_from_pretrained_local_folder(tmp_path):
    """PixArt-α's loading path (AutoTokenizer, T5EncoderModel, AutoencoderKL, PixArtTransformer2DModel,
    DDPMScheduler from a diffusers folder, local_files_only) reproduces the in-memory loss to 1e-5."""
    from diffusers import DDPMScheduler

    pix = tiny_pixart_guidance()
    for name in ("tokenizer", "text_encoder", "vae", "transformer"):
        getattr(pix, name).save_pretrained(tmp_path / name)
    DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).save_pretrained(tmp_path / "scheduler")
    loaded = PixArtGuidance.from_pretrained(str(tmp_path), local_files_only=True, device="cpu")
    loaded.max_sequence_length = pix.max_sequence_length
    losses = []
    for g in (pix, loaded):
        out = g(_images(seed=4), PromptSpec("a vase"), torch.zeros(2), torch.zeros(2), generator=torch.Generator().manual_seed(2))
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sd_fp16_on_cuda_gradients_finite():
    """fp16 UNet/VAE/text encoder on CUDA (how SD 2.1 runs there): the image gradient is finite and
    non-zero, and the loss is float32."""
    sd = tiny_sd_guidance()
    cuda = StableDiffusionGuidance(
        sd.tokenizer, sd.text_encoder.to("cuda", torch.float16), sd.vae.to("cuda", torch.float16),
        sd.unet.to("cuda", torch.float16), sd.alphas_cumprod,
    )
    images = torch.rand(2, 32, 32, 3, device="cuda", requires_grad=True)
    out = cuda(images, PromptSpec("a cat"), torch.zeros(2), torch.zeros(2), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.loss.dtype == torch.float32
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
