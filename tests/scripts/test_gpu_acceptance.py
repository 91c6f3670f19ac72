"""scripts/gpu_acceptance.sh: its CPU-runnable parts (``--dry-run``) in CI, and its refusal without a GPU."""

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_one_report(tmp_path):
    """The dry run on this CPU: every part passes (install lists what it would install, the fast paths report
    torch with the reason, the gpu-marked tests are collected and skip, both benchmarks run their smoke
    sizes) and the one report file holds each part's output and the summary."""
    report = tmp_path / "out" / "report.txt"
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--report", str(report)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    text = report.read_text()
    assert r.returncode == 0, text
    for part in ("install (offline", "fast paths on cpu", "gpu-marked tests", "Stage I benchmark (smoke)", "Stage II benchmark (smoke)"):
        assert f"{part}" in text and any(line.startswith(part) and line.endswith("PASS") for line in text.splitlines()), part
    assert "render=torch (no CUDA device" in text and "volrend=torch" in text
    assert "test_volrend.py" in text and "test_render.py" in text and "skipped" in text  # the gpu tests skip cleanly
    assert "render=torch: full step" in text and "volrend=torch" in text and "mesh 24^3" in text
    assert text.rstrip().splitlines()[-2] == "result: PASS"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_a_gpu(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--report", str(tmp_path / "r.txt")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no CUDA GPU" in r.stdout and "--dry-run" in r.stdout
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown argument" in r.stderr
