"""Shap-E initialisation of Stage I (paper §4: "we initialise with 4096 points from Shap-E, following GSGen").

The text prompt goes through diffusers' ``ShapEPipeline`` (prior → latent), the latent is decoded by its
renderer into a triangle mesh with per-vertex colours (``decode_to_mesh``: an SDF on a grid, marching cubes,
colours queried at the vertices), and N area-uniform surface samples of that mesh become the initial
Gaussians (colours interpolated barycentrically, 3DGS nearest-neighbour scales, opacity 0.1) through
:func:`.init.init_from_mesh`.

Frames and colours: Shap-E's objects live in [-1,1]³ with +Z up (its pan cameras orbit the z axis), as
ours (docs/conventions.md); the mesh is centred and scaled to ``fit_radius``. ``decode_to_mesh`` converts
its colours to linear RGB; Gaussian colours are display (sRGB) values — what the renders that SDS sees
are — so they are converted back.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .gaussians import Gaussians
from .init import init_from_mesh

logger = logging.getLogger(__name__)

DEFAULT_SHAP_E_MODEL = "openai/shap-e"


class ShapEUnavailable(FileNotFoundError):
    """The Shap-E weights cannot be loaded; the message names the model and how to get it."""


@dataclass(frozen=True)
class ShapEConfig:
    """Shap-E sampling and point sampling.

    Attributes:
        n: points sampled on the mesh (paper: 4096).
        steps: denoising steps of the prior (diffusers' Shap-E examples: 64).
        guidance_scale: classifier-free guidance of the prior (diffusers' examples: 15).
        grid_size: SDF grid of the mesh decoder (diffusers: 128).
        fit_radius: centre the mesh and scale its farthest vertex to this radius (None: keep Shap-E's units).
        opacity: initial opacity; seed: sampling seed (latents and surface samples).
    """

    n: int = 4096
    steps: int = 64
    guidance_scale: float = 15.0
    grid_size: int = 128
    fit_radius: float | None = 0.6
    opacity: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n", "steps", "grid_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ShapEConfig.{name} must be a positive integer, got {v!r}")
        if self.grid_size < 8 or self.grid_size > 512:
            raise ValueError(f"ShapEConfig.grid_size must be in [8, 512], got {self.grid_size}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"ShapEConfig.guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        if self.fit_radius is not None and not (math.isfinite(self.fit_radius) and self.fit_radius > 0):
            raise ValueError(f"ShapEConfig.fit_radius must be > 0 or None, got {self.fit_radius}")
        if not (0.0 < self.opacity < 1.0):
            raise ValueError(f"ShapEConfig.opacity must be in (0,1), got {self.opacity}")


def load_shap_e(model: str = DEFAULT_SHAP_E_MODEL, device: torch.device | str = "cpu", local_files_only: bool = False, dtype: torch.dtype | None = None):
    """diffusers' ShapEPipeline from a hub id or a local folder (fp16 on CUDA, fp32 on CPU).

    Raises:
        ShapEUnavailable: the weights are neither cached nor downloadable (message says how).
    """
    from diffusers import ShapEPipeline

    device = torch.device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    try:
        pipe = ShapEPipeline.from_pretrained(os.path.expanduser(model), local_files_only=local_files_only, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ShapEUnavailable(
            f"cannot load Shap-E from {model!r} ({type(exc).__name__}: {exc}). Download it once with "
            f"`huggingface-cli download {DEFAULT_SHAP_E_MODEL}` (or point model= at a folder made with "
            "ShapEPipeline.save_pretrained)."
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(c, 1.0 / 2.4) - 0.055)


@torch.no_grad()
def shap_e_mesh(pipe, prompt: str, cfg: ShapEConfig = ShapEConfig()):
    """The Shap-E mesh of ``prompt`` as a trimesh.Trimesh with sRGB vertex colours (Shap-E's own frame)."""
    import trimesh

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"Shap-E needs a non-empty prompt, got {prompt!r}")
    device = pipe.device
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    latents = pipe(prompt, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, generator=gen, output_type="latent").images
    mesh = pipe.shap_e_renderer.decode_to_mesh(latents[:1], device, grid_size=cfg.grid_size)
    verts = mesh.verts.detach().float().cpu().numpy()
    faces = mesh.faces.detach().long().cpu().numpy()
    if len(verts) == 0 or len(faces) == 0:
        raise ValueError(f"Shap-E produced an empty mesh for {prompt!r} (try another seed)")
    rgb = np.stack([mesh.vertex_channels[c].detach().float().cpu().numpy() for c in ("R", "G", "B")], axis=1)
    colors = np.round(_linear_to_srgb(rgb) * 255.0).astype(np.uint8)
    return trimesh.Trimesh(verts, faces, vertex_colors=colors, process=False)


def init_from_shap_e(
    pipe,
    prompt: str,
    cfg: ShapEConfig = ShapEConfig(),
    sh_degree: int = 0,
    device: torch.device | str = "cpu",
) -> Gaussians:
    """``cfg.n`` Gaussians on the surface of Shap-E's mesh for ``prompt`` (coloured as the mesh)."""
    mesh = shap_e_mesh(pipe, prompt, cfg)
    logger.info("Shap-E mesh for %r: %d vertices, %d faces", prompt, len(mesh.vertices), len(mesh.faces))
    return init_from_mesh(mesh, n=cfg.n, seed=cfg.seed, fit_radius=cfg.fit_radius, opacity=cfg.opacity, sh_degree=sh_degree, device=device)
