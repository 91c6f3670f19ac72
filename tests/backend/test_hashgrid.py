"""Hash encoding (backend/stage2/hashgrid.py): layout, interpolation, gradients, and backend parity."""

import math

import numpy as np
import pytest
import torch
from interactive3d.backend.stage2.hashgrid import (
    PRIMES,
    HashGrid,
    HashGridConfig,
    hash_indices,
    self_test_points,
)

SMALL = HashGridConfig(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, per_level_scale=2.0)


def test_official_config_levels():
    """The official config (16 levels, 2^19, base 16, ×1.447) in tcnn's layout: level l has
    ceil(16·1.447^l − 1) + 1 vertices per axis (16, 24, …); the 5 levels whose res³ vertices fit in 2^19
    (up to 71³) are indexed densely, the other 11 hashed; rows are res³ rounded up to 8, capped at 2^19."""
    cfg = HashGridConfig()
    res = cfg.resolutions()
    assert res[:3] == [16, 24, 34] and res[-1] == math.ceil(16 * 1.447**15 - 1) + 1
    hashed = cfg.level_hashed()
    assert hashed == [False] * 5 + [True] * 11 and res[4] == 71 and res[5] == 102
    assert cfg.level_sizes()[:5] == [(r**3 + 7) // 8 * 8 for r in res[:5]] and cfg.level_sizes()[5:] == [2**19] * 11
    assert cfg.level_sizes()[0] == 4096 and cfg.table_rows() == sum(cfg.level_sizes())


def test_init_uniform_range():
    """Features start uniform in ±1e-4 (as tcnn)."""
    g = HashGrid(SMALL, backend="torch", seed=0)
    assert g.table.abs().max() <= 1e-4 and g.table.abs().max() > 0.9e-4


def _linear_table(g, scale, res):
    """Fill a one-level dense grid with f(vertex) = px + 2·py + 3·pz at the vertex's position p = (i − 0.5)/scale."""
    with torch.no_grad():
        i = torch.arange(g.table.shape[0])
        ix, iy, iz = i % res, (i // res) % res, i // res**2
        p = lambda k: (k.float() - 0.5) / scale
        g.table[:, 0] = p(ix) + 2 * p(iy) + 3 * p(iz)


def test_trilinear_reproduces_vertex_values_and_linear_functions():
    """Vertices sit at (i − 0.5)/scale (tcnn's 0.5 offset). A table holding a linear function of the vertex
    position interpolates it to 1e-5 wherever the cell does not reach past the last vertex, and a point on
    a vertex reads that vertex's value exactly (one-hot weights)."""
    cfg = HashGridConfig(n_levels=1, n_features=1, log2_table_size=12, base_resolution=9)  # scale 8, 9³ vertices
    g = HashGrid(cfg, backend="torch")
    assert cfg.resolutions() == [9] and cfg.level_hashed() == [False]
    _linear_table(g, 8.0, 9)
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 0.93  # 8x + 0.5 < 8: no wrap-around
    want = x[:, 0] + 2 * x[:, 1] + 3 * x[:, 2]
    assert torch.allclose(g(x)[:, 0], want, atol=1e-5)
    v = torch.tensor([[1.5 / 8, 2.5 / 8, 0.5 / 8]])  # pos = (2, 3, 1): exactly on vertex (2, 3, 1)
    assert torch.equal(g(v)[:, 0], g.table[2 + 3 * 9 + 1 * 81, 0].detach()[None])


def test_top_corner_wraps_around_as_tcnn():
    """At x = 1 a level whose scale has fraction ≥ 0.5 (here scale 8: pos 8.5, cell 8) reads the +1 corner at
    index res = 9, one past the last vertex; tcnn does not clamp it: the dense index x + y·9 + z·81 wraps
    into the next row, and past the table's end modulo its rows (736 = 9³ rounded up to 8)."""
    cfg = HashGridConfig(n_levels=1, n_features=1, log2_table_size=12, base_resolution=9)
    g = HashGrid(cfg, backend="torch")
    idx, w = hash_indices(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), cfg, g.meta)
    assert int(idx[0, 0, 1]) == 9 + 0 * 9 + 0 * 81  # corner (9, 0, 0) → row 9 = vertex (0, 1, 0)
    assert float(w[0, 0, 1]) == 0.125  # pos (8.5, 0.5, 0.5): every fraction 0.5, so the wrapped corner weighs 1/8
    assert int(idx[1, 0, 7]) == (9 + 9 * 9 + 9 * 81) % 736  # corner (9, 9, 9) wraps past the end
    assert torch.allclose(w.sum(-1), torch.ones(2, 1))


def test_indices_and_weights_match_a_reading_of_tcnn():
    """Rows and weights equal a per-point Python reading of tcnn's grid.h (tests/backend/_tcnn_reference.py)
    on dense and hashed levels, for random points and points on the cube's faces, corners and grid planes:
    rows exactly, weights to 1e-6 (the product of three float32 fractions, in another order)."""
    from _tcnn_reference import tcnn_corners, tcnn_level_constants

    cfg = HashGridConfig(n_levels=6, n_features=2, log2_table_size=10, base_resolution=4, per_level_scale=1.7)
    g = HashGrid(cfg, backend="torch")
    levels = tcnn_level_constants(cfg.n_levels, cfg.log2_table_size, cfg.base_resolution, cfg.per_level_scale)
    assert [lv[1] for lv in levels] == cfg.resolutions() and [lv[2] for lv in levels] == cfg.level_sizes()
    assert [float(lv[0]) for lv in levels] == cfg.scales().tolist()
    assert cfg.level_hashed() == [False, False, True, True, True, True]
    x = torch.cat([self_test_points(torch.device("cpu"), n=120), torch.tensor([[0.5, 0.25, 0.75], [1.0, 1.0, 1.0]])])
    rows, ws = tcnn_corners(x.numpy(), levels)
    idx, w = hash_indices(x, cfg, g.meta)
    assert torch.equal(idx, torch.from_numpy(rows))
    assert torch.allclose(w, torch.from_numpy(ws), atol=1e-6)


def test_spatial_hash_matches_uint32_formula():
    """Hashed levels use (x·1 ⊕ y·2654435761 ⊕ z·805459861) mod 2^T computed with uint32 wrap-around, as
    InstantNGP/tcnn — checked against a Python integer reference on 200 random corners."""
    cfg = HashGridConfig(n_levels=2, n_features=2, log2_table_size=8, base_resolution=16, per_level_scale=2.0)
    g = HashGrid(cfg, backend="torch")
    assert cfg.level_hashed() == [True, True]
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(1))
    idx, w = hash_indices(x, cfg, g.meta)
    scales = cfg.scales()
    offsets = [0, cfg.level_sizes()[0]]
    for n in range(0, 200, 17):
        for lvl in range(2):
            c0 = [math.floor(float(np.float32(float(x[n, a]) * float(scales[lvl]) + 0.5))) for a in range(3)]
            for k in range(8):
                c = [c0[a] + ((k >> a) & 1) for a in range(3)]
                h = ((c[0] * PRIMES[0]) & 0xFFFFFFFF) ^ ((c[1] * PRIMES[1]) & 0xFFFFFFFF) ^ ((c[2] * PRIMES[2]) & 0xFFFFFFFF)
                assert int(idx[n, lvl, k]) == offsets[lvl] + h % 2**8
    assert torch.allclose(w.sum(-1), torch.ones(200, 2), atol=1e-6)


def test_backward_is_scatter_add_of_weights():
    """d(sum of outputs)/d(table row) = sum of that row's trilinear weights over all samples: gradient of
    the torch path equals an explicit index_add to 1e-6."""
    g = HashGrid(SMALL, backend="torch", seed=0)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(2))
    g(x).sum().backward()
    idx, w = hash_indices(x, SMALL, g.meta)
    want = torch.zeros(g.table.shape[0]).index_add_(0, idx.reshape(-1), w.reshape(-1))
    assert torch.allclose(g.table.grad[:, 0], want, atol=1e-6)
    assert torch.allclose(g.table.grad[:, 1], want, atol=1e-6)


def test_fits_a_function():
    """A 4-level grid + linear read-out fitted by Adam to sin patterns reaches MSE < 1e-3 in 200 steps."""
    gen = torch.Generator().manual_seed(3)
    g = HashGrid(HashGridConfig(n_levels=6, n_features=2, log2_table_size=12, base_resolution=4, per_level_scale=1.6), backend="torch", seed=0)
    head = torch.nn.Linear(12, 1)
    opt = torch.optim.Adam([{"params": g.parameters(), "lr": 0.05}, {"params": head.parameters(), "lr": 0.01}])
    f = lambda x: torch.sin(4 * x[:, 0]) * torch.cos(3 * x[:, 1]) + x[:, 2]
    for _ in range(200):
        x = torch.rand(2048, 3, generator=gen)
        loss = ((head(g(x))[:, 0] - f(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(4096, 3, generator=gen)
    with torch.no_grad():
        mse = float(((head(g(x))[:, 0] - f(x)) ** 2).mean())
    assert mse < 1e-3, mse


def test_bad_inputs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="log2_table_size"):
        HashGridConfig(log2_table_size=40)
    with pytest.raises(ValueError, match="base_resolution"):
        HashGridConfig(base_resolution=0)
    with pytest.raises(ValueError, match="backend"):
        HashGrid(SMALL, backend="cuda-magic")
    with pytest.raises(ValueError, match="CUDA"):
        HashGrid(SMALL, backend="triton", device="cpu")
    with pytest.raises(ValueError, match="CUDA"):
        HashGrid(SMALL, backend="tcnn", device="cpu")
    with pytest.raises(ValueError, match=r"\[N,3\]"):
        HashGrid(SMALL, backend="torch")(torch.zeros(4, 2))


def test_empty_input():
    """Zero points give a [0, L·F] encoding and a zero table gradient."""
    g = HashGrid(SMALL, backend="torch", seed=0)
    out = g(torch.zeros(0, 3))
    assert out.shape == (0, SMALL.out_dim)
    out.sum().backward()
    assert float(g.table.grad.abs().sum()) == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "tcnn"])
def test_gpu_backend_parity(backend):
    """On CUDA, Triton (and tcnn, when importable) run on the same table as the torch twin: forward and
    table gradient agree on the official 16×2×2^19 config to 1e-5 (triton, fp32) or 2e-2 relative (tcnn's
    default fp16), and the fast path passed its self-test (the grid did not fall back to torch)."""
    pytest.importorskip("tinycudann" if backend == "tcnn" else "triton")
    from interactive3d.backend.stage2.hashgrid import SELF_TEST_TOL, compare_to_twin

    g = HashGrid(HashGridConfig(), backend=backend, device="cuda", seed=0)
    assert g.backend == backend
    x = torch.rand(1 << 16, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    d_out, d_grad = compare_to_twin(backend, torch.device("cuda"), HashGridConfig(), x)
    assert d_out <= SELF_TEST_TOL[backend] and d_grad <= SELF_TEST_TOL[backend], (d_out, d_grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda_never_crashes():
    """On CUDA, "auto" resolves to tcnn, triton or (after a failed self-test) the torch twin, and the record
    says which; the grid then encodes and back-propagates 2^16 points to finite values."""
    from interactive3d.backend.accel.fastpath import FASTPATHS

    g = HashGrid(HashGridConfig(), backend="auto", device="cuda", seed=0)
    x = torch.rand(1 << 16, 3, device="cuda")
    out = g(x)
    out.square().sum().backward()
    assert out.shape == (1 << 16, 32) and torch.isfinite(out).all() and torch.isfinite(g.table.grad).all()
    choice = FASTPATHS.get("hashgrid", torch.device("cuda", torch.cuda.current_device()))
    assert choice is not None and choice.backend == g.backend
