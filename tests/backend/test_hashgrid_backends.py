"""Hash-grid backends without a GPU (issue 13, items 3 and 5): tcnn's table layout, backend-neutral state,
loading across backends, and the self-tested fast paths falling back to the torch twin.

tiny-cuda-nn cannot run here (no GPU, not on PyPI): its place is taken by ``FakeTcnnEncoding``
(tests/backend/_tcnn_reference.py), a per-point reading of tcnn's grid.h with tcnn's constructor and flat
``params``. These tests check our side of the contract (the layout, calling tcnn on our table, state,
fallback); whether the real tcnn computes what that reading says is checked on a GPU by the self-test
that runs before tcnn is used and by tests/backend/test_hashgrid.py::test_gpu_backend_parity.
"""

import logging
import sys
import types

import pytest
import torch
from _tcnn_reference import FakeTcnnEncoding, tcnn_level_constants
from interactive3d.backend.accel.fastpath import FastPaths
from interactive3d.backend.stage2 import hashgrid as hg
from interactive3d.backend.stage2.hashgrid import (
    SELF_TEST_CFG,
    HashGrid,
    HashGridConfig,
    encode_torch,
    table_from_tcnn_params,
    tcnn_params_from_table,
)

CFG = HashGridConfig(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, per_level_scale=1.9)


@pytest.fixture
def record(monkeypatch):
    """A fresh fast-path record for the hash grid (the process-wide one is left alone)."""
    fp = FastPaths()
    monkeypatch.setattr(hg, "FASTPATHS", fp)
    return fp


@pytest.fixture
def fake_tcnn(monkeypatch, record):
    """``import tinycudann`` gives the CPU reading of tcnn, and tcnn may run on the CPU "device"."""
    mod = types.ModuleType("tinycudann")
    mod.Encoding = type("Encoding", (FakeTcnnEncoding,), {"corrupt": False})
    monkeypatch.setitem(sys.modules, "tinycudann", mod)
    real = hg._fast_device_ok
    monkeypatch.setattr(hg, "_fast_device_ok", lambda fast, dev: fast == "tcnn" or real(fast, dev))
    return mod


@pytest.mark.parametrize(
    "cfg",
    [HashGridConfig(), CFG, HashGridConfig(n_levels=8, log2_table_size=19), HashGridConfig(n_levels=16, n_features=4, log2_table_size=14, base_resolution=7, per_level_scale=1.3819)],
    ids=["official", "small", "part", "odd"],
)
def test_level_offsets_and_param_count_are_tcnns(cfg):
    """Per level: tcnn's float32 scale, ceil(scale)+1 vertices, rows = res³ rounded up to 8 and capped at 2^T,
    offsets the running sum; tcnn's n_params = rows·F is exactly the built-in table's size (so a reshape
    converts). The official config: 6,299,960 rows (5 dense levels, 532,792 rows, + 11 × 2^19) → 12,599,920 params."""
    levels = tcnn_level_constants(cfg.n_levels, cfg.log2_table_size, cfg.base_resolution, cfg.per_level_scale)
    assert [float(s) for s, *_ in levels] == cfg.scales().tolist()
    assert [r for _, r, _, _ in levels] == cfg.resolutions()
    assert [p for _, _, p, _ in levels] == cfg.level_sizes()
    g = HashGrid(cfg, backend="torch")
    assert g.meta.offsets.tolist() == [o for *_, o in levels]
    assert g.table.shape == (cfg.table_rows(), cfg.n_features)
    assert FakeTcnnEncoding(3, _tcnn_config(cfg)).params.numel() == g.table.numel()
    if cfg == HashGridConfig():
        assert cfg.table_rows() == 6_299_960 and cfg.resolutions()[:5] == [16, 24, 34, 49, 71]


def _tcnn_config(cfg):
    return {"otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features,
            "log2_hashmap_size": cfg.log2_table_size, "base_resolution": cfg.base_resolution, "per_level_scale": cfg.per_level_scale}


def test_tcnn_backend_runs_on_the_one_table(fake_tcnn, record):
    """backend="tcnn" passes its self-test and is reported; the grid's only parameter is ``table [S,F]`` (tcnn's
    own initial table is freed: 0 elements), its state is {table, layout_version}, and tcnn called on that
    table gives the torch twin's output (same seed) to 1e-6 and its table gradient to 1e-5 of its largest entry
    (fp32 sums in another order)."""
    g = HashGrid(CFG, backend="tcnn", seed=0)
    assert g.backend == "tcnn" and record.report() == {"hashgrid": {"cpu": "tcnn"}}
    assert record.get("hashgrid", "cpu").reason.startswith("self-test passed: max difference from the torch twin F=2: output ")
    assert [n for n, _ in g.named_parameters()] == ["table"] and g._tcnn.params.numel() == 0
    assert sorted(g.state_dict()) == ["layout_version", "table"]
    ref = HashGrid(CFG, backend="torch", seed=0)
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    a, b = ref(x), g(x)
    assert torch.allclose(a, b, atol=1e-6)
    gout = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    (a * gout).sum().backward()
    (b * gout).sum().backward()
    d = float((ref.table.grad - g.table.grad).abs().max()) / float(ref.table.grad.abs().max())
    assert d <= 1e-5, d  # measured 9e-7


def test_a_field_trained_with_any_backend_loads_into_any_other(fake_tcnn):
    """3 Adam steps with tcnn, then its state loads into a torch grid (and the torch grid's into a fresh tcnn
    grid): the encodings agree to 1e-6 and the tables are bit-identical."""
    tc = HashGrid(CFG, backend="tcnn", seed=1)
    opt = torch.optim.Adam(tc.parameters(), lr=0.05)
    x = torch.rand(256, 3, generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        opt.zero_grad()
        ((tc(x) - 0.3) ** 2).mean().backward()
        opt.step()
    to = HashGrid(CFG, backend="torch", seed=5)
    to.load_state_dict(tc.state_dict())
    back = HashGrid(CFG, backend="tcnn", seed=6)
    back.load_state_dict(to.state_dict())
    assert torch.equal(to.table, tc.table) and torch.equal(back.table, tc.table)
    assert float((tc.table - HashGrid(CFG, backend="torch", seed=1).table).abs().max().detach()) > 1e-2  # it trained
    with torch.no_grad():
        assert torch.allclose(to(x), tc(x), atol=1e-6) and torch.allclose(back(x), tc(x), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_old_tcnn_state_converts(dtype):
    """A state saved by the tcnn backend before the layouts were one ({table: unused, _tcnn.params: flat
    fp32/fp16}) loads into a torch grid: the table is tcnn's params reshaped to [S,F] (fp32); and the two
    conversion functions invert each other."""
    g = HashGrid(CFG, backend="torch", seed=0)
    flat = torch.randn(g.table.numel()).to(dtype)
    g.load_state_dict({"table": torch.zeros_like(g.table), "_tcnn.params": flat})
    assert g.table.dtype == torch.float32 and torch.equal(g.table, flat.float().reshape(-1, 2))
    assert torch.equal(tcnn_params_from_table(table_from_tcnn_params(flat, CFG)), flat.float())
    with pytest.raises(ValueError, match="cannot be converted"):
        table_from_tcnn_params(flat[:-8], CFG)


def test_unconvertible_states_are_refused_with_both_backends_named():
    """A layout-1 table (the vertex-aligned built-in grid of before, no layout_version) cannot be converted:
    loading refuses with a ValueError naming the saving backends ('torch'/'triton') and the loading one;
    a table of another config is refused with its shape; nothing of the grid changes."""
    g = HashGrid(CFG, backend="torch", seed=0)
    before = g.table.detach().clone()
    with pytest.raises(ValueError, match=r"layout 1.*'torch'/'triton'.*backend 'torch'"):
        g.load_state_dict({"table": torch.zeros_like(g.table)})
    with pytest.raises(ValueError, match=r"shape \(16, 2\).*backend 'torch'"):
        g.load_state_dict({"table": torch.zeros(16, 2), "layout_version": torch.tensor(2)})
    assert torch.equal(g.table, before)


def test_stage2_state_saved_with_tcnn_loads_without_it(fake_tcnn, monkeypatch):
    """A Stage II state saved while the field ran on tcnn rebuilds where tinycudann is missing: the field runs
    on the torch twin with the same table (density and colour equal to 1e-6), and the saved backend
    ("tcnn") is kept for the next save."""
    from interactive3d.backend.stage2.nerf import NeRFConfig
    from interactive3d.backend.stage2.state import Stage2State

    cfg = NeRFConfig(grid=CFG, hidden=16)
    st = Stage2State(cfg, backend="tcnn", seed=0)
    assert st.field.grid.backend == "tcnn"
    with torch.no_grad():
        st.field.grid.table.uniform_(-1, 1)
    saved = st.state_dict()
    monkeypatch.delitem(sys.modules, "tinycudann")
    monkeypatch.setattr(hg, "_tcnn_available", lambda: False)
    again = Stage2State.from_state_dict(saved, torch.device("cpu"))
    assert again.field.grid.backend == "torch" and again.backend == "tcnn"
    x = torch.rand(100, 3) * 2 - 1
    with torch.no_grad():
        a, b = st.field(x), again.field(x)
    assert torch.allclose(a.density, b.density, rtol=1e-6, atol=1e-6) and torch.allclose(a.rgb, b.rgb, atol=1e-6)


# -- fast paths fall back to the torch twin ------------------------------------------------------------
def test_broken_tcnn_falls_back_to_the_twin_with_one_warning(fake_tcnn, record, caplog):
    """tcnn whose indices are off by one (what a layout misreading would give) fails the self-test: one
    warning, the torch twin on the same device, the reason in the report; a second grid does not re-test."""
    fake_tcnn.Encoding.corrupt = True
    with caplog.at_level(logging.WARNING):
        g = HashGrid(CFG, backend="tcnn", seed=0)
        g2 = HashGrid(CFG, backend="tcnn", seed=1)
    assert g.backend == "torch" and g2.backend == "torch" and g._tcnn is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "differs from the torch twin" in warnings[0].getMessage()
    assert "fallback from tcnn" in record.report()["hashgrid"]["cpu"]
    x = torch.rand(50, 3)
    assert torch.allclose(g(x), encode_torch(x, g.table, CFG, g.meta))


def test_tcnn_with_another_param_count_falls_back(fake_tcnn, record):
    """A tcnn whose parameter count differs from the built-in table (another layout) is refused inside the
    self-test with a ValueError naming both backends, and the grid runs on the twin."""

    class Padded(FakeTcnnEncoding):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.params = torch.nn.Parameter(torch.zeros(self.params.numel() + 16))

    fake_tcnn.Encoding = Padded
    assert HashGrid(CFG, backend="tcnn").backend == "torch"
    c = record.get("hashgrid", "cpu")
    assert not c.ok and "backend 'tcnn'" in c.reason and "'torch'/'triton'" in c.reason


@pytest.fixture
def interpret_env(monkeypatch, record):
    """TRITON_INTERPRET=1 as the "device" that lets triton run on CPU, with the kernels swapped per test.
    The kernel module is imported before the variable is set, so its kernels stay compilable in this process."""
    from interactive3d.backend.stage2 import hashgrid_triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return hashgrid_triton


def test_triton_numeric_mismatch_falls_back(interpret_env, record, monkeypatch, caplog):
    """A Triton encode 1e-3 off the twin fails the self-test: "torch" on the same device, one warning, the
    mismatch in the report; the grid then encodes with the twin."""
    meta = HashGrid._unchecked(SELF_TEST_CFG, "torch", torch.device("cpu"), 0).meta  # the self-test's grid layout
    monkeypatch.setattr(interpret_env, "encode", lambda x, t, levels, scalars: encode_torch(x, t, SELF_TEST_CFG, meta) + 1e-3)
    with caplog.at_level(logging.WARNING):
        g = HashGrid(SELF_TEST_CFG, backend="triton", seed=0)
    assert g.backend == "torch"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    c = record.get("hashgrid", "cpu")
    assert (c.backend, c.fast, c.ok) == ("torch", "triton", False) and "output 0.001" in c.reason
    x = torch.rand(20, 3)
    assert torch.equal(g(x), encode_torch(x, g.table, SELF_TEST_CFG, g.meta))


def test_triton_compile_error_falls_back_under_auto(interpret_env, record, monkeypatch):
    """"auto" picks triton here (interpreter on CPU); a compile error in its self-test gives the twin, and the
    self-test ran once for the device however many grids are built."""
    calls = []

    def broken(x, t, levels, scalars):
        calls.append(1)
        raise RuntimeError("PTXAS error: Internal Triton PTX codegen error")

    monkeypatch.setattr(interpret_env, "encode", broken)
    grids = [HashGrid(CFG, backend="auto", seed=i) for i in range(3)]
    assert [g.backend for g in grids] == ["torch"] * 3 and len(calls) == 1
    assert "PTXAS error" in record.report()["hashgrid"]["cpu"]


def test_auto_on_cpu_without_interpreter_is_torch_and_recorded(record, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert HashGrid(CFG, backend="auto").backend == "torch"
    assert record.report() == {"hashgrid": {"cpu": "torch"}}
