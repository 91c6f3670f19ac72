"""The backend process: owns the Gaussians and the NeRF, runs Stage I and Stage II (see DESIGN.md)."""
