"""Stage I (paper §3.1): 3D Gaussians optimised with score distillation — the Gaussians, their initialisation,
densification, differentiable rendering, cameras, SDS guidance and the trainer."""
