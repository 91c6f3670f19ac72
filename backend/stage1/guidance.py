"""Score distillation sampling (SDS) guidance, paper §3.1 / §3.1.5 (DreamFusion's SDS as threestudio).

Three guidances share one interface, ``guidance(images, prompt, elevation_deg, azimuth_deg, ...)``
→ :class:`GuidanceOutput`:

- :class:`StableDiffusionGuidance` — diffusers components (tokenizer, CLIP text encoder, VAE, UNet,
  DDPM schedule); the default model is ``stabilityai/stable-diffusion-2-1-base`` as the paper.
- :class:`PixArtGuidance` — PixArt-α (T5 text encoder + ``PixArtTransformer2DModel``), which the
  official README supports; the transformer predicts (ε, σ) and only ε is used.
- :class:`OracleGuidance` — a denoiser whose optimal noise prediction is known in closed form: it renders
  a reference object at the sampled cameras and returns ε* such that x_t = √ᾱ·x_target + √(1−ᾱ)·ε*.
  Its SDS gradient is w(t)·√ᾱ/√(1−ᾱ)·(x − x_target), so it proves that the SDS plumbing converges
  without any pretrained weights (tests and the offline demo use it).

SDS (DreamFusion eq. 3): for a render x, latents z = E(x)·s, t ~ U[t_min, t_max], ε ~ N(0, I),
z_t = √ᾱ_t z + √(1−ᾱ_t) ε, ε̂ = ε_uncond + γ (ε_cond − ε_uncond) (classifier-free guidance, γ = 100),
grad = w(t) (ε̂ − ε) with w(t) = 1 − ᾱ_t. The loss ½‖z − sg(z − grad)‖² / B has ∂loss/∂z = grad / B,
so back-propagation carries exactly the SDS gradient into the Gaussians.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

DEFAULT_SD_MODEL = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_PIXART_MODEL = "PixArt-alpha/PixArt-XL-2-512x512"


class GuidanceWeightsMissing(FileNotFoundError):
    """Pretrained diffusion weights could not be loaded; the message names the model and the fix."""


@dataclass(frozen=True)
class PromptSpec:
    """A text prompt with its negative prompt.

    Attributes:
        prompt: the object description, e.g. "a DSLR photo of a corgi". Must not be empty.
        negative_prompt: what classifier-free guidance steers away from ("" = unconditional).
        view_dependent: append ", front view" / ", side view" / ", back view" / ", overhead view"
            from each camera's azimuth and elevation (DreamFusion §3.2).
    """

    prompt: str
    negative_prompt: str = ""
    view_dependent: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"PromptSpec.prompt must be a non-empty string, got {self.prompt!r}")
        if not isinstance(self.negative_prompt, str):
            raise TypeError(f"PromptSpec.negative_prompt must be a string, got {type(self.negative_prompt).__name__}")


@dataclass(frozen=True)
class GuidanceConfig:
    """SDS hyper-parameters (threestudio / gsgen defaults, paper §4).

    Attributes:
        guidance_scale: classifier-free guidance scale γ.
        t_range: (t_min, t_max) as fractions of the training timesteps at step 0.
        t_range_end: t range reached after ``anneal_steps`` steps (linear annealing); None = constant.
        anneal_steps: length of the linear annealing of the t range.
        anneal_start: step at which the annealing starts (threestudio's ``[start_step, start, end, end_step]``
            schedules: ``max_step_percent: [5000, 0.98, 0.5, 5001]`` is anneal_start 5000, anneal_steps 1).
        fixed_t: a user-fixed t in (0, 1) (paper §3.1.5: 0.98 to change shape, ~0.3 to fine-tune);
            overrides the range. Can also be given per call.
        weighting: "sds" for w(t) = 1 − ᾱ_t, "uniform" for w = 1.
        grad_clip: clamp |grad| element-wise to this value (None = no clamp).
        front_threshold_deg / back_threshold_deg / overhead_threshold_deg: view-dependent prompt
            thresholds: |azimuth| ≤ front → front; |azimuth| ≥ 180 − back → back; elevation > overhead
            → overhead; else side. Azimuth 0 is the +X axis (docs/conventions.md), as threestudio.
    """

    guidance_scale: float = 100.0
    t_range: tuple[float, float] = (0.02, 0.98)
    t_range_end: tuple[float, float] | None = None
    anneal_steps: int = 0
    anneal_start: int = 0
    fixed_t: float | None = None
    weighting: str = "sds"
    grad_clip: float | None = None
    front_threshold_deg: float = 45.0
    back_threshold_deg: float = 45.0
    overhead_threshold_deg: float = 60.0

    def __post_init__(self) -> None:
        for name in ("t_range", "t_range_end"):
            rng = getattr(self, name)
            if rng is None:
                continue
            if len(rng) != 2 or not (0.0 <= rng[0] <= rng[1] <= 1.0):
                raise ValueError(f"GuidanceConfig.{name} must be (lo, hi) with 0 <= lo <= hi <= 1, got {rng}")
        if self.fixed_t is not None and not (0.0 < self.fixed_t < 1.0):
            raise ValueError(f"GuidanceConfig.fixed_t must be in (0, 1), got {self.fixed_t}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"GuidanceConfig.guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        if self.weighting not in ("sds", "uniform"):
            raise ValueError(f"GuidanceConfig.weighting must be 'sds' or 'uniform', got {self.weighting!r}")
        if self.anneal_steps < 0:
            raise ValueError(f"GuidanceConfig.anneal_steps must be >= 0, got {self.anneal_steps}")
        if self.anneal_start < 0:
            raise ValueError(f"GuidanceConfig.anneal_start must be >= 0, got {self.anneal_start}")


@dataclass
class GuidanceOutput:
    """Result of one guidance call.

    Attributes:
        loss: scalar, differentiable w.r.t. the images; its gradient is the SDS gradient / B.
        grad_norm: scalar tensor ‖grad‖ (detached) over the batch, for logging.
        t: [B] int64 diffusion timesteps used.
    """

    loss: Tensor
    grad_norm: Tensor
    t: Tensor


def view_suffixes(
    elevation_deg: Tensor,  # [B]
    azimuth_deg: Tensor,  # [B]
    cfg: GuidanceConfig = GuidanceConfig(),
) -> list[str]:
    """DreamFusion's view-dependent prompt suffix for each camera."""
    out = []
    for e, a in zip(elevation_deg.tolist(), azimuth_deg.tolist()):
        a = (a + 180.0) % 360.0 - 180.0  # wrap to [-180, 180)
        if e > cfg.overhead_threshold_deg:
            out.append("overhead view")
        elif abs(a) <= cfg.front_threshold_deg:
            out.append("front view")
        elif abs(a) >= 180.0 - cfg.back_threshold_deg:
            out.append("back view")
        else:
            out.append("side view")
    return out


def _with_suffix(prompt: str, suffix: str | None) -> str:
    return prompt if suffix is None else f"{prompt}, {suffix}"


class _SDSBase:
    """Shared SDS maths: timestep sampling, weighting, CFG combination and the reparameterised loss.

    Subclasses provide ``_to_latents`` (images → what the denoiser sees) and ``_predict_noise``.
    """

    def __init__(self, alphas_cumprod: Tensor, config: GuidanceConfig) -> None:
        self.config = config
        self.alphas_cumprod = alphas_cumprod.detach().float()  # [T]
        self.num_train_timesteps = int(alphas_cumprod.shape[0])

    def with_config(self, config: GuidanceConfig) -> "_SDSBase":
        """The same guidance (same modules, same text-embedding cache) with another config: how one loaded
        model serves jobs with different CFG scales and t schedules (backend/stage1/guidance_cache.py)."""
        if not isinstance(config, GuidanceConfig):
            raise TypeError(f"config must be a GuidanceConfig, got {type(config).__name__}")
        view = copy.copy(self)
        view.config = config
        return view

    # -- timesteps -----------------------------------------------------------------------------
    def t_bounds(self, step: int, t_range: tuple[float, float] | None = None) -> tuple[int, int]:
        """Integer timestep range [lo, hi] at a training step (linear annealing of ``t_range``).

        An explicit ``t_range`` (fractions in [0,1]) overrides the config and is not annealed.
        """
        if t_range is not None:
            lo, hi = float(t_range[0]), float(t_range[1])
            if not (0.0 <= lo <= hi <= 1.0):
                raise ValueError(f"t_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {t_range}")
            t_max = self.num_train_timesteps - 1
            return int(round(lo * t_max)), int(round(hi * t_max))
        lo, hi = self.config.t_range
        if self.config.t_range_end is not None and self.config.anneal_steps > 0:
            frac = min(max(step - self.config.anneal_start, 0) / self.config.anneal_steps, 1.0)
            lo = lo + frac * (self.config.t_range_end[0] - lo)
            hi = hi + frac * (self.config.t_range_end[1] - hi)
        t_max = self.num_train_timesteps - 1
        return int(round(lo * t_max)), int(round(hi * t_max))

    def sample_t(
        self,
        batch: int,
        step: int,
        fixed_t: float | None,
        generator: torch.Generator | None,
        t_range: tuple[float, float] | None = None,
    ) -> Tensor:
        """[B] int64 timesteps: a user-fixed t or uniform in the (annealed) range."""
        fixed_t = self.config.fixed_t if fixed_t is None else fixed_t
        if fixed_t is not None:
            if not (0.0 < float(fixed_t) < 1.0):
                raise ValueError(f"fixed_t must be in (0, 1), got {fixed_t}")
            return torch.full((batch,), int(round(float(fixed_t) * (self.num_train_timesteps - 1))), dtype=torch.long)
        lo, hi = self.t_bounds(step, t_range)
        return torch.randint(lo, hi + 1, (batch,), generator=generator, dtype=torch.long)

    # -- hooks -----------------------------------------------------------------------------
    def _to_latents(self, images: Tensor, generator: torch.Generator | None, **ctx) -> Tensor:
        raise NotImplementedError

    def _predict_noise(self, latents_noisy: Tensor, t: Tensor, prompts: list[str], negative: str, **ctx) -> Tensor:
        raise NotImplementedError

    # -- the SDS step --------------------------------------------------------------------------
    def __call__(
        self,
        images: Tensor,  # [B,H,W,3] in [0,1]
        prompt: PromptSpec,
        elevation_deg: Tensor,  # [B]
        azimuth_deg: Tensor,  # [B]
        step: int = 0,
        fixed_t: float | None = None,
        t_range: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
        **ctx,
    ) -> GuidanceOutput:
        """One SDS evaluation on a batch of renders.

        Args:
            images: [B,H,W,3] renders in [0,1] (differentiable).
            prompt: the prompt; view-dependent suffixes come from the cameras' angles.
            elevation_deg, azimuth_deg: [B] camera angles (degrees).
            step: training step (for t-range annealing).
            fixed_t: user-fixed t in (0,1) for this call (overrides the config and ``t_range``).
            t_range: (lo, hi) fractions for this call (overrides the config's annealed range).
            generator: CPU torch.Generator for t and ε (a trainer passes its own for determinism).
            ctx: guidance-specific context (the oracle needs ``cameras`` and ``background``).
        """
        if not isinstance(prompt, PromptSpec):
            raise TypeError(f"prompt must be a PromptSpec, got {type(prompt).__name__}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B,H,W,3], got {tuple(images.shape)}")
        b = int(images.shape[0])
        if elevation_deg.shape != (b,) or azimuth_deg.shape != (b,):
            raise ValueError(
                f"elevation_deg and azimuth_deg must be [B]={b}, got {tuple(elevation_deg.shape)} and {tuple(azimuth_deg.shape)}"
            )
        suffixes = view_suffixes(elevation_deg, azimuth_deg, self.config) if prompt.view_dependent else [None] * b
        prompts = [_with_suffix(prompt.prompt, s) for s in suffixes]

        latents = self._to_latents(images, generator, **ctx)  # [B,C,h,w], differentiable
        t = self.sample_t(b, step, fixed_t, generator, t_range)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
        abar = self.alphas_cumprod.to(latents.device)[t.to(latents.device)].view(b, 1, 1, 1)
        with torch.no_grad():
            noisy = abar.sqrt() * latents.detach().float() + (1.0 - abar).sqrt() * noise
            eps_hat = self._predict_noise(noisy, t.to(latents.device), prompts, prompt.negative_prompt, **ctx).float()
            w = (1.0 - abar) if self.config.weighting == "sds" else torch.ones_like(abar)
            grad = torch.nan_to_num(w * (eps_hat - noise))
            if self.config.grad_clip is not None:
                grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        target = (latents.float() - grad).detach()
        loss = 0.5 * F.mse_loss(latents.float(), target, reduction="sum") / b
        return GuidanceOutput(loss=loss, grad_norm=grad.norm().detach(), t=t)


def _cfg_combine(eps: Tensor, scale: float) -> Tensor:
    """[2B,...] noise predictions ordered (uncond, cond) → [B,...] classifier-free guided prediction."""
    uncond, cond = eps.chunk(2)
    return uncond + scale * (cond - uncond)


class _TextEmbeddingCache:
    """Per-instance cache prompt → text embedding (the text encoder runs once per distinct prompt)."""

    def __init__(self, encode: Callable[[list[str]], Tensor]) -> None:
        self._encode = encode
        self._cache: dict[str, Tensor] = {}

    def __call__(self, prompts: list[str]) -> Tensor:
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            with torch.no_grad():
                embs = self._encode(missing)
            for p, e in zip(missing, embs):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])

    def __len__(self) -> int:
        return len(self._cache)


def _load(component_cls, model: str, subfolder: str, local_files_only: bool, **kwargs):
    """from_pretrained with a typed, actionable error when the weights are not available."""
    try:
        return component_cls.from_pretrained(model, subfolder=subfolder, local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as exc:
        where = f"local folder {model!r}" if os.path.isdir(model) else f"model {model!r}"
        raise GuidanceWeightsMissing(
            f"cannot load {subfolder!r} of {where} ({type(exc).__name__}: {exc}). Download it once with "
            f"`huggingface-cli download {model if not os.path.isdir(model) else DEFAULT_SD_MODEL}` (or "
            f"`diffusers` from_pretrained with network access), or pass --model / model=PATH pointing at a "
            f"local diffusers folder that contains {subfolder}/."
        ) from exc


class StableDiffusionGuidance(_SDSBase):
    """SDS with Stable Diffusion (2.1-base by default) built from diffusers components.

    Construct from loaded components (tests build tiny ones from configs) or with
    :meth:`from_pretrained`. Images are resized to the UNet's resolution (sample_size × VAE factor),
    encoded with the VAE (differentiably) and scaled by ``vae.config.scaling_factor``.
    """

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        vae: torch.nn.Module,
        unet: torch.nn.Module,
        alphas_cumprod: Tensor,  # [T] from the scheduler
        config: GuidanceConfig = GuidanceConfig(),
        resolution: int | None = None,
    ) -> None:
        super().__init__(alphas_cumprod, config)
        self.tokenizer, self.text_encoder, self.vae, self.unet = tokenizer, text_encoder, vae, unet
        for module in (text_encoder, vae, unet):
            module.requires_grad_(False)
            module.eval()
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(resolution or unet.config.sample_size * self.vae_scale)
        self.device = next(unet.parameters()).device
        self.dtype = next(unet.parameters()).dtype
        self.embeddings = _TextEmbeddingCache(self._encode_text)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_SD_MODEL,
        config: GuidanceConfig = GuidanceConfig(),
        device: torch.device | str | None = None,
        local_files_only: bool = False,
        dtype: torch.dtype | None = None,
    ) -> "StableDiffusionGuidance":
        """Load from a hub id or a local diffusers folder; fp16 on CUDA, fp32 on CPU.

        Raises:
            GuidanceWeightsMissing: the weights are neither cached nor downloadable (message says how).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        tokenizer = _load(CLIPTokenizer, model, "tokenizer", local_files_only)
        text_encoder = _load(CLIPTextModel, model, "text_encoder", local_files_only, torch_dtype=dtype)
        vae = _load(AutoencoderKL, model, "vae", local_files_only, torch_dtype=dtype)
        unet = _load(UNet2DConditionModel, model, "unet", local_files_only, torch_dtype=dtype)
        scheduler = _load(DDPMScheduler, model, "scheduler", local_files_only)
        return cls(
            tokenizer, text_encoder.to(device), vae.to(device), unet.to(device), scheduler.alphas_cumprod, config
        )

    def _encode_text(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)  # [P,L,D]

    def _to_latents(self, images: Tensor, generator: torch.Generator | None, **ctx) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(self.device)  # [B,3,H,W]
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        dist = self.vae.encode((x * 2.0 - 1.0).to(self.dtype)).latent_dist
        # Sample the posterior with our generator (on CPU) so training stays deterministic.
        eps = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(self.device, dist.mean.dtype)
        latents = dist.mean + dist.std * eps
        return latents * self.vae.config.scaling_factor

    def _predict_noise(self, latents_noisy: Tensor, t: Tensor, prompts: list[str], negative: str, **ctx) -> Tensor:
        cond = self.embeddings(prompts)
        uncond = self.embeddings([negative] * len(prompts))
        x = torch.cat([latents_noisy, latents_noisy]).to(self.dtype)
        eps = self.unet(x, torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        return _cfg_combine(eps.float(), self.config.guidance_scale)


class PixArtGuidance(_SDSBase):
    """SDS with PixArt-α: T5 text encoder, SD VAE, ``PixArtTransformer2DModel`` denoiser.

    The transformer outputs 2·C channels (ε and the learned variance); SDS uses the first C.
    """

    def __init__(
        self,
        tokenizer,
        text_encoder: torch.nn.Module,
        vae: torch.nn.Module,
        transformer: torch.nn.Module,
        alphas_cumprod: Tensor,  # [T]
        config: GuidanceConfig = GuidanceConfig(),
        max_sequence_length: int = 120,
        resolution: int | None = None,
    ) -> None:
        super().__init__(alphas_cumprod, config)
        self.tokenizer, self.text_encoder, self.vae, self.transformer = tokenizer, text_encoder, vae, transformer
        for module in (text_encoder, vae, transformer):
            module.requires_grad_(False)
            module.eval()
        self.max_sequence_length = max_sequence_length
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = int(resolution or transformer.config.sample_size * self.vae_scale)
        self.device = next(transformer.parameters()).device
        self.dtype = next(transformer.parameters()).dtype
        self.embeddings = _TextEmbeddingCache(self._encode_text)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_PIXART_MODEL,
        config: GuidanceConfig = GuidanceConfig(),
        device: torch.device | str | None = None,
        local_files_only: bool = False,
        dtype: torch.dtype | None = None,
    ) -> "PixArtGuidance":
        """Load PixArt-α from a hub id or a local diffusers folder (fp16 on CUDA)."""
        from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel
        from transformers import AutoTokenizer, T5EncoderModel

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        tokenizer = _load(AutoTokenizer, model, "tokenizer", local_files_only)
        text_encoder = _load(T5EncoderModel, model, "text_encoder", local_files_only, torch_dtype=dtype)
        vae = _load(AutoencoderKL, model, "vae", local_files_only, torch_dtype=dtype)
        transformer = _load(PixArtTransformer2DModel, model, "transformer", local_files_only, torch_dtype=dtype)
        scheduler = _load(DDPMScheduler, model, "scheduler", local_files_only)
        return cls(
            tokenizer, text_encoder.to(device), vae.to(device), transformer.to(device), scheduler.alphas_cumprod, config
        )

    def _encode_text(self, prompts: list[str]) -> Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        emb = self.text_encoder(ids, attention_mask=mask)[0].to(self.dtype)  # [P,L,D]
        # Keep the mask next to the embedding (last channel) so the cache stores one tensor per prompt.
        return torch.cat([emb, mask[..., None].to(emb.dtype)], dim=-1)

    def _to_latents(self, images: Tensor, generator: torch.Generator | None, **ctx) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(self.device)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        dist = self.vae.encode((x * 2.0 - 1.0).to(self.dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(self.device, dist.mean.dtype)
        return (dist.mean + dist.std * eps) * self.vae.config.scaling_factor

    def _predict_noise(self, latents_noisy: Tensor, t: Tensor, prompts: list[str], negative: str, **ctx) -> Tensor:
        both = torch.cat([self.embeddings([negative] * len(prompts)), self.embeddings(prompts)])
        emb, mask = both[..., :-1], both[..., -1]
        x = torch.cat([latents_noisy, latents_noisy]).to(self.dtype)
        cond = {"resolution": None, "aspect_ratio": None}
        if getattr(self.transformer, "use_additional_conditions", False):  # the 1024² model
            n = x.shape[0]
            cond = {
                "resolution": torch.tensor([[self.resolution, self.resolution]] * n, device=x.device, dtype=self.dtype),
                "aspect_ratio": torch.ones(n, 1, device=x.device, dtype=self.dtype),
            }
        out = self.transformer(
            x,
            encoder_hidden_states=emb,
            encoder_attention_mask=mask,
            timestep=torch.cat([t, t]),
            added_cond_kwargs=cond,
        ).sample
        eps = out[:, : latents_noisy.shape[1]]  # drop the learned-variance channels
        return _cfg_combine(eps.float(), self.config.guidance_scale)


def linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """ᾱ_t of Stable Diffusion's "scaled_linear" β schedule ([T] float32), without loading a scheduler."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class OracleGuidance(_SDSBase):
    """SDS with a closed-form optimal denoiser for a known reference object (image space, no VAE).

    For target x₀ = render(reference, cameras) and noisy x_t = √ᾱ x + √(1−ᾱ) ε, the denoiser that
    knows x₀ predicts ε* = (x_t − √ᾱ x₀)/√(1−ᾱ), hence grad = w(t)·√ᾱ/√(1−ᾱ)·(x − x₀): a weighted
    L2 pull toward the reference through exactly the SDS loss, timesteps, noise and weighting.

    Args:
        reference: the reference Gaussians (backend.gaussians.Gaussians).
        render_fn: ``render_fn(reference, cameras, background) -> [B,H,W,3]`` target images.
    """

    def __init__(
        self,
        reference,
        render_fn: Callable[..., Tensor],
        config: GuidanceConfig = GuidanceConfig(),
        alphas_cumprod: Tensor | None = None,
    ) -> None:
        super().__init__(linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod, config)
        self.reference = reference
        self.render_fn = render_fn
        self._target: Tensor | None = None

    def _to_latents(self, images: Tensor, generator: torch.Generator | None, cameras=None, background=None, **ctx) -> Tensor:
        if cameras is None:
            raise ValueError("OracleGuidance needs the sampled cameras (cameras=...) to render its target")
        with torch.no_grad():
            target = self.render_fn(self.reference, cameras, background)  # [B,H,W,3]
        if target.shape != images.shape:
            raise ValueError(f"oracle target shape {tuple(target.shape)} != images shape {tuple(images.shape)}")
        self._target = target.permute(0, 3, 1, 2).float() * 2.0 - 1.0
        return images.permute(0, 3, 1, 2) * 2.0 - 1.0  # "latents" are the images in [-1, 1]

    def _predict_noise(self, latents_noisy: Tensor, t: Tensor, prompts: list[str], negative: str, **ctx) -> Tensor:
        abar = self.alphas_cumprod.to(latents_noisy.device)[t].view(-1, 1, 1, 1)
        target = self._target.to(latents_noisy.device)
        return (latents_noisy - abar.sqrt() * target) / (1.0 - abar).sqrt()
