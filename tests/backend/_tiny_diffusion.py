"""Tiny diffusion models built from configs for tests (no hub files, no pretrained weights).

The components are the real diffusers/transformers classes that Stable Diffusion and PixArt-α load;
only their sizes are tiny. The tokenizer is a real CLIPTokenizer over a 56-entry vocabulary written to
a temporary folder (CLIP's byte-level BPE with no merges: every letter is a token).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
from interactive3d.backend.stage1.guidance import (
    GuidanceConfig,
    PixArtGuidance,
    StableDiffusionGuidance,
)


def tiny_clip_tokenizer(max_length: int = 16):
    from transformers import CLIPTokenizer

    folder = tempfile.mkdtemp(prefix="i3d-tok-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz,.":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(
        os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=max_length
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )


def tiny_sd_guidance(config: GuidanceConfig = GuidanceConfig(), seed: int = 0) -> StableDiffusionGuidance:
    """SD-style guidance: CLIP text (hidden 32) → UNet (32,64) at 16² latents ↔ VAE ×2 → 32² images."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return StableDiffusionGuidance(tiny_clip_tokenizer(), text, tiny_vae(), unet, scheduler.alphas_cumprod, config)


def tiny_pixart_guidance(
    config: GuidanceConfig = GuidanceConfig(), seed: int = 0, additional_conditions: bool = False
) -> PixArtGuidance:
    """PixArt-α-style guidance: T5 encoder (d_model 32) → PixArt transformer (1 layer) at 16² latents.
    ``additional_conditions`` builds it like the 1024² model (resolution and aspect-ratio embeddings)."""
    from diffusers import DDPMScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, num_heads=4, num_layers=1, d_ff=64))
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=24, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=additional_conditions,
    )
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return PixArtGuidance(
        tiny_clip_tokenizer(), t5, tiny_vae(), transformer, scheduler.alphas_cumprod, config, max_sequence_length=16
    )


def save_tiny_sd(folder, seed: int = 0) -> str:
    """A local diffusers folder with the tiny SD components (what ``from_pretrained`` reads); returns its path."""
    from diffusers import DDPMScheduler

    sd = tiny_sd_guidance(seed=seed)
    for name in ("tokenizer", "text_encoder", "vae", "unet"):
        getattr(sd, name).save_pretrained(os.path.join(folder, name))
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(os.path.join(folder, "scheduler"))
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline"}, f)
    return str(folder)


def tiny_shap_e_pipeline(seed: int = 0):
    """diffusers' ShapEPipeline with a tiny prior (1 layer, 32 tokens of width 32) and a tiny renderer (width 8):
    sizes as diffusers' own Shap-E fast tests; random weights, so the mesh is an arbitrary closed surface."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=64, hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    )
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=16, embedding_dim=32, num_embeddings=32, embedding_proj_dim=32,
        time_embed_dim=128, num_layers=1, clip_embed_dim=64, additional_embeddings=0, time_embed_act_fn="gelu",
        norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None,
    )
    renderer = ShapERenderer(
        param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=32, d_hidden=8, n_output=12, background=(0.1, 0.1, 0.1)
    )
    scheduler = HeunDiscreteScheduler(
        beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample", use_karras_sigmas=True, clip_sample=True,
        clip_sample_range=1.0,
    )
    pipe = ShapEPipeline(prior=prior, text_encoder=text, tokenizer=tiny_clip_tokenizer(), scheduler=scheduler, shap_e_renderer=renderer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shap_e_marching_cubes_tables():
    """Shap-E's marching-cubes lookup tables (``MeshDecoder.cases`` [256,5,3] and ``masks`` [256,5]).

    The real checkpoint ships them as buffers; a renderer built from a config has zeros (no triangles).
    Built here from scikit-image's classic (Lorensen) marching cubes on each of the 256 corner
    configurations of one cube, with Shap-E's numbering: corner bit = x + 2y + 4z (bit set: field > 0),
    edges 0-3 along x at (y,z) = (0,0),(1,0),(0,1),(1,1), 4-7 along y at (x,z) in that order, 8-11 along z
    at (x,y) in that order.
    """
    import numpy as np
    from skimage.measure import marching_cubes

    def edge_of(v) -> int:
        axis = [i for i in range(3) if abs(v[i] - 0.5) < 1e-6]
        assert len(axis) == 1, v
        a = axis[0]
        o = [int(round(v[i])) for i in range(3) if i != a]  # the two other coordinates, in axis order
        return 4 * a + o[0] + 2 * o[1]

    cases = torch.zeros(256, 5, 3, dtype=torch.long)
    masks = torch.zeros(256, 5, dtype=torch.bool)
    for bits in range(1, 255):
        vol = np.full((2, 2, 2), -1.0)
        for c in range(8):
            if bits >> c & 1:
                vol[c & 1, c >> 1 & 1, c >> 2 & 1] = 1.0
        verts, faces, _, _ = marching_cubes(vol, level=0.0, method="lorensen")
        assert len(faces) <= 5, (bits, len(faces))
        for k, f in enumerate(faces):
            cases[bits, k] = torch.tensor([edge_of(verts[i]) for i in f])
            masks[bits, k] = True
    return cases, masks


def tiny_shap_e_with_surface(seed: int = 0):
    """The tiny Shap-E pipeline with marching-cubes tables and an SDF that is tanh(0.5) > 0 everywhere inside
    the decoder's grid (its border is forced to −1): the decoded mesh is the closed surface of a box, and
    its vertex colours come from the (random) colour head."""
    pipe = tiny_shap_e_pipeline(seed)
    r = pipe.shap_e_renderer
    cases, masks = shap_e_marching_cubes_tables()
    r.mesh_decoder.cases.copy_(cases)
    r.mesh_decoder.masks.copy_(masks)
    out = r.mlp.mlp[-1]
    with torch.no_grad():
        out.weight[0].zero_()
        out.bias[0] = 0.5
    return pipe
