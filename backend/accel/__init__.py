"""GPU fast paths (gsplat, Triton, tiny-cuda-nn, nerfacc): which one runs where, proven by a self-test."""
