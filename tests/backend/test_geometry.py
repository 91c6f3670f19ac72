"""Stage II geometry against exact shapes (issue 26): the Gaussians' support grid, the mesh's signed error from
the Gaussians alone (backend/stage2/occupancy.py gaussian_support, backend/stage2/mesh_error.py), and the
procedural shapes they are measured on (scripts/bench/geometry_shapes.py)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interactive3d.backend.stage1.gaussians import Gaussians
from interactive3d.backend.stage2.mesh_error import surface_error, vertex_normals
from interactive3d.backend.stage2.occupancy import OccupancyConfig, gaussian_support, update_occupancy

SHAPES = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "geometry_shapes.py"


def _shapes():
    if str(SHAPES.parent) not in sys.path:  # geometry_shapes imports scripts/bench/shapes.py's chamfer
        sys.path.insert(0, str(SHAPES.parent))
    spec = importlib.util.spec_from_file_location("geometry_shapes", SHAPES)
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: its dataclasses look it up
    spec.loader.exec_module(mod)
    return mod


def _mesh_of(shape_mod, shape: str, offset: float, res: int = 64):
    """Marching cubes of the exact shape's level set sdf = offset: a mesh `offset` outside the surface."""
    from skimage.measure import marching_cubes

    t = np.linspace(-1, 1, res)
    grid = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    d = shape_mod.sdf(shape, torch.from_numpy(grid)).numpy().reshape(res, res, res)
    step = 2.0 / (res - 1)
    v, f, _, _ = marching_cubes(-d, level=-offset, spacing=(step, step, step))
    return (v - 1.0).astype(np.float32), f[:, ::-1].astype(np.int32)  # outward, as extract_mesh winds


def test_shapes_are_exact_on_their_surfaces():
    """Every shape's samples lie on its zero level set (|sdf| < 1e-6) with outward unit normals: a step of 0.01
    along the normal reads sdf ≈ +0.01 (within 1e-3 for 95 %: near a union's seam or a box edge the step
    comes closer to another face)."""
    s = _shapes()
    for shape in s.SHAPES:
        p, n = s.surface(shape, 3000, seed=3)
        assert float(s.sdf(shape, p).abs().max()) < 1e-6, shape
        assert torch.allclose(n.norm(dim=-1), torch.ones(len(n), dtype=n.dtype), atol=1e-9)
        out = s.sdf(shape, p + 0.01 * n)
        assert float((out - 0.01).abs().quantile(0.95)) < 1e-3, shape


def test_support_grid_is_exact_on_the_shapes_and_bounded_by_the_gaussians():
    """The support of thin surfels (scale 0.008 × 0.008 × 0.001) on each shape at 32³: every cell that the
    surface touches is in it (recall 1.0) and every cell in it is within one cell of the surface (precision
    1.0). One round Gaussian (σ 0.1, opacity 1) covers the cells its 3.33σ box meets: 12 per axis; one whose
    opacity is under the rasteriser's cut-off (1/255) covers none; a large one (σ 0.5) takes the slow path."""
    s = _shapes()
    for shape in s.SHAPES:
        g = s.surfels(shape, int(s.area(shape) / 0.0095**2))
        occ = gaussian_support(g.means, g.scales, g.rotations, g.opacities, 32, 1.0)
        e = s.occupancy_errors(shape, occ, 1.0)
        assert e["precision"] == 1.0 and e["recall"] == 1.0, (shape, e)
    one = lambda o, sc: Gaussians.from_activated(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([o]), torch.full((1, 3), sc), torch.tensor([[1.0, 0, 0, 0]]))  # noqa: E731
    g = one(1.0, 0.1)
    occ = gaussian_support(g.means, g.scales, g.rotations, g.opacities, 32, 1.0)
    assert int(occ.sum()) == 12**3 and bool(occ[10:22, 10:22, 10:22].all())
    g = one(0.003, 0.1)  # below 1/255
    assert int(gaussian_support(g.means, g.scales, g.rotations, g.opacities, 32, 1.0).sum()) == 0
    g = one(1.0, 0.5)
    assert bool(gaussian_support(g.means, g.scales, g.rotations, g.opacities, 8, 1.0).all())
    empty = torch.zeros(0, 3)
    assert int(gaussian_support(empty, empty, torch.zeros(0, 4), torch.zeros(0), 8, 1.0).sum()) == 0


def test_update_occupancy_within_widens_by_one_cell_inside_the_bound():
    """With ``within``, the cells above the threshold are widened by one cell and cut to ``within``."""

    class _Dot:
        aabb_radius, device = 1.0, torch.device("cpu")

        def density(self, x):  # dense only in the cell [0, 0.25)³ of an 8³ grid
            return 100.0 * ((x >= 0) & (x < 0.25)).all(-1).float()

    within = torch.zeros(8, 8, 8, dtype=torch.bool)
    within[4:, 4, 4] = True
    g = update_occupancy(None, _Dot(), 0.1, OccupancyConfig(resolution=8, samples_per_cell=8), torch.Generator().manual_seed(0), within=within)
    assert g.occ.nonzero().tolist() == [[4, 4, 4], [5, 4, 4]]
    free = update_occupancy(None, _Dot(), 0.1, OccupancyConfig(resolution=8, samples_per_cell=8), torch.Generator().manual_seed(0))
    assert free.occ.nonzero().tolist() == [[4, 4, 4]]


@pytest.mark.parametrize("shape", ["torus", "torus_sphere"])
def test_surface_error_from_the_gaussians_matches_the_exact_signed_error(shape):
    """Meshes at the exact shape's level sets sdf = 0 and sdf = +0.03 (inflated) and −0.02, measured against
    thin surfels of the shape: surface_error's mean is the exact mean signed distance within 0.003 (0.1 of a
    96³ mesh cell is 0.002; the level-set meshes carry marching cubes' own error). Against round blobs
    (σ 0.015, the same centres) the reference is their outer side: the mesh at +0.015 reads ≈ 0."""
    s = _shapes()
    g = s.surfels(shape, int(s.area(shape) / 0.0095**2))
    for offset in (0.0, 0.03, -0.02):
        v, f = _mesh_of(s, shape, offset)
        exact = float(s.sdf(shape, torch.from_numpy(v).double()).mean())
        est = surface_error(v, f, g)
        assert abs(est.mean - exact) < 0.003, (offset, est, exact)
        assert est.p10 <= est.p50 <= est.p90 and est.vertices == len(v)
    blobs = Gaussians.from_activated(g.means, g.rgb, g.opacities, torch.full((g.n, 3), 0.015), g.rotations)
    v, f = _mesh_of(s, shape, 0.015)
    assert abs(surface_error(v, f, blobs).mean) < 0.003


def test_surface_error_degenerate_inputs():
    """No faces, no Gaussians, or none opaque enough: None. One Gaussian: the height above it along the normal.
    An unused vertex is not measured."""
    v = np.array([[0.0, 0.0, 0.1], [1.0, 0.0, 0.1], [0.0, 1.0, 0.1], [5.0, 5.0, 5.0]], np.float32)
    f = np.array([[0, 1, 2]], np.int32)
    assert np.allclose(vertex_normals(v, f)[:3], [0, 0, 1]) and np.allclose(vertex_normals(v, f)[3], 0)
    flat = Gaussians.from_activated(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([0.9]), torch.tensor([[0.1, 0.1, 1e-4]]), torch.tensor([[1.0, 0, 0, 0]]))
    e = surface_error(v, f, flat)
    assert e.vertices == 3 and e.mean == pytest.approx(0.1, abs=1e-4)
    assert surface_error(v, np.zeros((0, 3), np.int32), flat) is None
    assert surface_error(v, f, None) is None
    faint = Gaussians.from_activated(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([0.1]), torch.full((1, 3), 0.1), torch.tensor([[1.0, 0, 0, 0]]))
    assert surface_error(v, f, faint) is None
    assert math.isfinite(e.as_dict()["p90"])


def _bench():
    path = SHAPES.parent / "stage2_geometry.py"
    spec = importlib.util.spec_from_file_location("stage2_geometry", path)
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["torus", "plate", "genus2"])
def test_preview_budget_meshes_the_object_not_an_inflated_one(shape):
    """Issue 26 at the ``preview`` preset's Stage II budget on a CPU backend, as the preset asks for it (60 steps at
    64², lr 0.03 / 0.01; 4096 rays × 64 samples; 4× supersampled targets, threestudio's start blob; a 12×2×2^16 field
    to keep CI's time) on ≈ 18 000 thin surfels of a torus (a hole), a 0.05-thick plate (a thin part) and two joined
    tori (genus 2), meshed at 96³ through the occupancy grid as stage2.extract_mesh does: the vertices' mean signed
    distance to the exact shape is within ±1 mesh cell (0.021; measured −0.06, +0.79, +0.47 cells), the Chamfer
    distance ≤ 2 % of the bounding-box diagonal (1.76, 1.85, 1.20 % measured with one torch thread), the 32³
    occupancy grid has precision ≥ 0.9 and recall 1.0 (1.0 and 1.0 measured; no surface cell skipped), and the
    mesh's own report (surface_error, from the Gaussians alone) reads the exact mean within 0.01 (0.002, 0.004,
    0.006 measured). Before issue 26: torus +2.77 cells, 6.4 %, precision 0.46; plate +6.04 cells, 8.9 %,
    precision 0.31, recall 0.95; with one sample per pixel and lr 0.01 / 0.001: torus +0.53 cells, 2.15 %; plate
    +1.15, 2.35 %; genus 2 +1.58, 3.21 %. scripts/bench/stage2_geometry.py prints the same figures;
    docs/benchmarks.md has them per budget."""
    from interactive3d.backend.service.presets import resolve

    b = _bench()
    ops = resolve("preview", "cpu").preset.ops()["stage2.distill"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figures above were measured so
    try:
        r = b.run(shape, ops["steps"], ops["resolution"], 12, 16, 4096, 96, b.surfel_count(shape), lr=(ops["lr_grid"], ops["lr_mlp"]))
    finally:
        torch.set_num_threads(threads)
    print(r)
    assert abs(r["signed_mean_cells"]) <= 1.0, r
    assert r["chamfer_pct"] <= 2.0, r
    assert r["precision"] >= 0.9 and r["recall"] == 1.0, r
    assert abs(r["estimated_signed_mean"] - r["signed_mean"]) < 0.01, r


def test_supersampled_targets_keep_thin_surfels_to_their_silhouette():
    """Issue 26's cause of inflation at short budgets: the rasteriser's 0.3 px² low-pass widens every thin surfel
    by about half a pixel, so at 64² the torus's silhouette (alpha > 0.5) is far larger than the same view's
    footprint at 8× the resolution, pooled, and the target depth lies in front. ``gaussian_targets(...,
    supersample=4)`` (the distillation default) keeps the silhouette within 5 % of the 8× reference (+2.9 %
    measured) where one sample per pixel is ≥ 15 % larger (+25.5 % measured), and its median depth within 0.005 of
    it (−0.0024 measured; one sample: ≥ 0.01 in front, −0.0196 measured — about a 96³ mesh cell)."""
    from interactive3d.backend.stage1.cameras import OrbitConfig, sample_orbit
    from interactive3d.backend.stage2.distill import gaussian_targets

    s = _shapes()
    g = s.surfels("torus", int(s.area("torus") / 0.0095**2))
    cams = sample_orbit(2, OrbitConfig(width=64, height=64), torch.Generator().manual_seed(1)).cameras
    bg = torch.ones(3)
    ref = gaussian_targets(g, cams, bg, geometry=True, supersample=8)
    one = gaussian_targets(g, cams, bg, geometry=True, supersample=1)
    four = gaussian_targets(g, cams, bg, geometry=True, supersample=4)
    assert one.shape == four.shape == ref.shape == (2, 64, 64, 5)
    area = lambda t: int((t[..., 3] > 0.5).sum())  # noqa: E731
    both = (ref[..., 3] > 0.5) & (one[..., 3] > 0.5) & (four[..., 3] > 0.5)
    depth = lambda t: float((t[..., 4] - ref[..., 4])[both].median())  # noqa: E731
    assert area(one) / area(ref) >= 1.15
    assert abs(area(four) / area(ref) - 1.0) <= 0.05
    assert depth(one) <= -0.01 and abs(depth(four)) <= 0.005
    with pytest.raises(ValueError, match="supersample"):
        gaussian_targets(g, cams, bg, supersample=0)
