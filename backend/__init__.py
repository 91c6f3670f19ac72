"""The backend process: owns the Gaussians and the NeRF, runs Stage I and Stage II (see DESIGN.md).

Subpackages follow the paper and the architecture; imports run one way, service → stages → maths:

- ``service/``  the process: ZeroMQ server, request/reply types, sessions, jobs, checkpoints, op handlers
- ``stage1/``   §3.1: Gaussians, initialisation, densification, rendering, cameras, SDS guidance, trainer
- ``interact/`` §3.1.1–3.1.5: selection, parts, transforms, drag, semantic edit, interactive SDS
- ``stage2/``   §3.2: hash grid (+ Triton kernels), NeRF field, distillation, refinement parts, mesh
- ``maths/``    rotations, quaternions and covariances (w-first)
- ``accel/``    which GPU fast path (gsplat, Triton, tiny-cuda-nn, nerfacc) runs on which device
"""
