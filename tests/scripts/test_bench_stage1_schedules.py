"""scripts/bench/stage1_schedules.py (issue 27): the script runs end to end, and Stage I's default schedule
holds its place in the table of docs/benchmarks.md on the table's own 150-step cell."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "stage1_schedules.py"


def _module():
    spec = importlib.util.spec_from_file_location("stage1_schedules", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variant_names_resolve_to_schedules():
    """'none' is no densification, a trainer schedule name is that schedule at the run's length, and
    'base+field=value' overrides fields ('x0.5' = half the run's steps)."""
    from interactive3d.backend.stage1.trainer import sds_schedule

    mod = _module()
    assert mod.variant("none", 150) is None
    assert mod.variant("sds", 2000) == sds_schedule(2000)
    v = mod.variant("sds+every=x0.1+grad_quantile=0.25+prune_radius=None", 300)
    assert (v.every, v.grad_quantile, v.prune_radius, v.from_step) == (30, 0.25, None, 50)


def test_smoke_runs_end_to_end(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--schedules", "sds", "none", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 2 and "floaters" in proc.stdout


@pytest.mark.slow
def test_default_schedule_holds_its_place_on_the_150_step_cell():
    """The table's 150-step cell, seed 0 (the demo's start: 2048 random Gaussians, the robot reference, 48²,
    batch 1; 8 held-out views at 64²), for the default and the schedules it replaced: the default ("sds")
    ends within 0.5 dB of the best and with the smallest floater share (within 0.5 points), under 1 %.
    Measured (docs/benchmarks.md, seed 0): sds 27.40 dB / 0.05 %, fixed 25.16 dB / 6.63 %, run 21.53 dB /
    17.33 %; over 3 seeds sds 27.84, fixed 25.77, run 21.43, sds at the long runs' threshold 0.2 24.35 (2 seeds)."""
    from interactive3d.backend.stage1.trainer import Stage1Config

    mod = _module()
    assert Stage1Config(steps=150).densify == mod.variant("sds", 150)
    refs: dict = {}
    rows = {name: mod.run_cell("robot", name, 150, 0, 48, 2048, 8, 64, refs)
            for name in ("sds", "fixed", "run", "sds+grad_threshold=0.2")}
    best = max(r["psnr"] for r in rows.values())
    assert rows["sds"]["psnr"] >= best - 0.5, rows
    assert rows["sds"]["floater_share"] <= min(r["floater_share"] for r in rows.values()) + 0.005, rows
    assert rows["sds"]["floater_share"] < 0.01, rows
