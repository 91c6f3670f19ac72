"""Stage I step cost, split into its parts: render fwd+bwd, VAE encode fwd+bwd, UNet forward, optimiser.

    python scripts/bench/stage1.py                 # CPU, tiny UNet/VAE, 64² renders, batch 1 and 2
    python scripts/bench/stage1.py --gpu           # CUDA: SD-2.1-sized UNet + VAE (random weights, fp16),
                                                   # 256² renders upsampled to 512 (64² latents), gsplat,
                                                   # batch 1 and 4
    python scripts/bench/stage1.py --smoke         # seconds on a CPU: every part once at tiny sizes

Random weights cost exactly what the pretrained ones cost (same shapes), so no download is needed.
Each part is timed on its own (synchronised), then one full ``stage1_step``; the parts are printed as ms
and as a fraction of the full step measured in the same run (the baseline). Never asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "backend"))

from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit  # noqa: E402
from interactive3d.backend.stage1.gaussians import init_random, make_optimizers  # noqa: E402
from interactive3d.backend.stage1.guidance import (  # noqa: E402
    GuidanceConfig,
    PromptSpec,
    StableDiffusionGuidance,
)
from interactive3d.backend.stage1.render import render  # noqa: E402
from interactive3d.backend.stage1.trainer import Stage1Config, stage1_step  # noqa: E402


def sd21_sized_guidance(device: str, dtype: torch.dtype) -> StableDiffusionGuidance:
    """SD 2.1-base shapes with random weights: UNet (320,640,1280,1280), linear projection, 1024-d cross
    attention, 64² latents; the SD VAE (128,256,512,512). The text encoder is a 1-layer 1024-d CLIP (text
    embeddings are cached per prompt, so its size does not affect the per-step cost)."""
    from _tiny_diffusion import tiny_clip_tokenizer
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        layers_per_block=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(vocab_size=64, hidden_size=1024, intermediate_size=1024, num_hidden_layers=1,
                       num_attention_heads=16, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return StableDiffusionGuidance(
        tiny_clip_tokenizer(77), text.to(device, dtype), vae.to(device, dtype), unet.to(device, dtype), sched.alphas_cumprod
    )


def _timeit(fn, device: str, repeat: int) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat * 1000.0


def bench(guidance: StableDiffusionGuidance, n: int, res: int, batch: int, device: str, repeat: int) -> dict:
    g = init_random(n, device=device)
    opt = make_optimizers(g)
    gen = torch.Generator().manual_seed(0)
    orbit = OrbitConfig(width=res, height=res)
    cams = sample_orbit(batch, orbit, gen).cameras.to(device)
    bg = torch.ones(3, device=device)
    prompt = PromptSpec("a photo of a corgi", view_dependent=False)
    guidance.embeddings([prompt.prompt, ""])

    def render_fb():
        out = render(g, cams, bg)
        out.rgb.sum().backward()

    images = render(g, cams, bg).rgb.detach()

    def vae_fb():
        x = images.clone().requires_grad_(True)
        guidance._to_latents(x, gen).float().sum().backward()

    lat = guidance._to_latents(images, gen).detach()
    t = torch.full((batch,), 500, dtype=torch.long, device=device)

    def unet_f():
        with torch.no_grad():
            guidance._predict_noise(lat, t, [prompt.prompt] * batch, "")

    def optim():
        for o in opt.values():
            o.step()

    cfg = Stage1Config(steps=1, batch=batch, resolution=res, densify=None)
    step_i = [0]

    def full():
        stage1_step(g, opt, guidance, prompt, cfg, gen, step_i[0])
        step_i[0] += 1

    parts = {
        "render_fwd_bwd": _timeit(render_fb, device, repeat),
        "vae_encode_fwd_bwd": _timeit(vae_fb, device, repeat),
        "unet_fwd": _timeit(unet_f, device, repeat),
        "optimizer": _timeit(optim, device, repeat),
    }
    total = _timeit(full, device, repeat)
    return {"n": n, "res": res, "batch": batch, "device": device, "full_step_ms": total,
            **{k + "_ms": v for k, v in parts.items()},
            **{k + "_ratio": v / total for k, v in parts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="SD-2.1-sized fp16 models on CUDA (gsplat renders)")
    ap.add_argument("--n", type=int, default=None, help="number of Gaussians (default 2000 CPU, 20000 GPU)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="seconds on a CPU: tiny UNet, 200 Gaussians, 32², one repeat (checks the script, not speed)")
    args = ap.parse_args()
    from interactive3d.backend.stage1.render import choose_backend

    if args.smoke:
        from _tiny_diffusion import tiny_sd_guidance

        guidance = tiny_sd_guidance(GuidanceConfig())
        runs = [(args.n or 200, 32, 1, "cpu", 1)]
    elif args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
        guidance = sd21_sized_guidance("cuda", torch.float16)
        runs = [(args.n or 20000, 256, b, "cuda", args.repeat or 20) for b in (1, 4)]
    else:
        from _tiny_diffusion import tiny_sd_guidance

        guidance = tiny_sd_guidance(GuidanceConfig())
        runs = [(args.n or 2000, 64, b, "cpu", args.repeat or 5) for b in (1, 2)]
    for n, res, batch, device, repeat in runs:
        r = bench(guidance, n, res, batch, device, repeat)
        r["render_backend"] = choose_backend(device if device == "cpu" else torch.device("cuda", torch.cuda.current_device()))
        print(
            f"{device} N={n} {res}² batch {batch} render={r['render_backend']}: full step {r['full_step_ms']:.1f} ms | "
            + " | ".join(f"{k} {r[k + '_ms']:.1f} ms ({r[k + '_ratio']:.2f}×)" for k in
                         ("render_fwd_bwd", "vae_encode_fwd_bwd", "unet_fwd", "optimizer"))
        )
        print(json.dumps(r))


if __name__ == "__main__":
    main()
