"""scripts/bench/shapes.py and mesh_quality.py: the known shapes are exact (the figures in docs/benchmarks.md
depend on them) and the script runs end to end at the defaults' field size (2 steps, a coarse mesh)."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
SCRIPT = BENCH / "mesh_quality.py"
sys.path.insert(0, str(BENCH))
import shapes  # noqa: E402


def test_shapes_lie_on_their_surfaces_with_outward_normals():
    p, n = shapes.surface("sphere", 5000, seed=0)
    assert torch.allclose(p.norm(dim=-1), torch.full((5000,), 0.5), atol=1e-6)
    assert torch.allclose(n, p / 0.5, atol=1e-6)
    p, n = shapes.surface("torus", 5000, seed=0)
    ring = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - shapes.TORUS_R
    assert float((torch.sqrt(ring**2 + p[:, 2] ** 2) - shapes.TORUS_r).abs().max()) < 1e-5  # (√(x²+y²) − R)² + z² = r²
    assert torch.allclose(n.norm(dim=-1), torch.ones(5000), atol=1e-5)
    assert float((n[:, 2] * p[:, 2]).min()) >= -1e-6  # the normal points away from the tube's core
    # area-uniform: the outer half of the tube (cos v > 0) holds (R + 2r/π)/(2R) of the area
    outer = float((ring > 0).float().mean())
    assert abs(outer - (shapes.TORUS_R + 2 * shapes.TORUS_r / math.pi) / (2 * shapes.TORUS_R)) < 0.02
    assert shapes.diagonal("sphere") == pytest.approx(math.sqrt(3))
    assert shapes.diagonal("torus") == pytest.approx(math.sqrt(2 * 1.0**2 + 0.3**2))
    g = shapes.surfel_sample("torus", 100)
    assert g.n == 100


def test_chamfer_is_symmetric_and_exact_on_shifted_copies():
    a = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    assert shapes.chamfer(a, a) == 0.0
    b = a + np.array([0.001, 0.0, 0.0], np.float32)
    assert shapes.chamfer(a, b, chunk=64) == pytest.approx(0.001, rel=1e-2)
    assert shapes.chamfer(a, b[:100]) == pytest.approx(shapes.chamfer(b[:100], a), rel=1e-6)


@pytest.mark.slow
def test_runs_end_to_end():
    out = subprocess.run([sys.executable, str(SCRIPT), "--shape", "torus", "--steps", "2", "--mesh-res", "24", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "16×2×2^19" in out.stdout and "% of the bounding-box diagonal" in out.stdout
