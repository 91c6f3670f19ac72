"""Stage II (paper §3.2): the InstantNGP field (hash grid and its kernels), distillation (Eq. 7), occupancy,
part-specific refinement (Eq. 8–9) and mesh extraction."""
