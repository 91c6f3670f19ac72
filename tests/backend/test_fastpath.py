"""The fast-path record: one self-test per (component, device), the twin on failure, a report."""

import logging

from interactive3d.backend.accel.fastpath import FastPaths


def test_self_test_runs_once_and_fast_path_is_used():
    fp, calls = FastPaths(), []
    for _ in range(3):
        assert fp.choose("render", "cpu", "gsplat", lambda: calls.append(1)) == "gsplat"
    assert calls == [1]
    assert fp.report() == {"render": {"cpu": "gsplat"}}


def test_failure_falls_back_to_the_twin_with_one_warning(caplog):
    fp = FastPaths()

    def broken():
        raise RuntimeError("nvcc not found")

    with caplog.at_level(logging.WARNING):
        assert fp.choose("render", "cpu", "gsplat", broken) == "torch"
        assert fp.choose("render", "cpu", "gsplat", broken) == "torch"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nvcc not found" in warnings[0].getMessage()
    c = fp.get("render", "cpu")
    assert (c.backend, c.fast, c.ok) == ("torch", "gsplat", False)
    assert "fallback from gsplat" in fp.report()["render"]["cpu"]


def test_devices_are_separate_and_reset_clears():
    fp = FastPaths()
    fp.record("hashgrid", "cpu", "torch", "CPU device")
    assert fp.choose("hashgrid", "meta", "triton", lambda: None) == "triton"
    assert fp.report() == {"hashgrid": {"cpu": "torch", "meta": "triton"}}
    fp.reset()
    assert fp.report() == {}
