"""Which backend each GPU component uses, as ``ping`` and ``i3d serve`` report it
(backend/service/ops_session.py ``fastpath_backends``, backend/accel/fastpath.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
from interactive3d.backend.accel.fastpath import FASTPATHS
from interactive3d.backend.service.ops_session import fastpath_backends
from interactive3d.commands import describe_backends

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_record():
    FASTPATHS.reset()
    yield FASTPATHS
    FASTPATHS.reset()


def test_cpu_reports_torch_everywhere_and_why(clean_record):
    b = fastpath_backends("cpu", self_test=True)
    assert set(b) == {"render", "hashgrid", "volrend"}
    assert all(v["backend"] == "torch" and v["ok"] and "no CUDA device" in v["reason"] for v in b.values())
    assert describe_backends(b).startswith("render=torch (no CUDA device")


def test_a_failed_self_test_is_reported_with_its_reason(clean_record):
    """A fake CUDA device whose gsplat self-test failed (injected) and whose hash grid passed: render says
    torch with the reason, hashgrid the fast path, volrend is pending (chosen at its first use; ping itself
    runs no self-test)."""

    def no_nvcc():
        raise OSError("no nvcc for gsplat's JIT")

    clean_record.choose("render", "cuda:4", "gsplat", no_nvcc)
    clean_record.choose("hashgrid", "cuda:4", "triton", lambda: None)
    b = fastpath_backends("cuda:4")
    assert b["render"] == {"backend": "torch", "fast": "gsplat", "ok": False, "reason": "OSError: no nvcc for gsplat's JIT"}
    assert b["hashgrid"]["backend"] == "triton" and b["hashgrid"]["ok"]
    assert b["volrend"]["backend"] == "pending"
    line = describe_backends(b)
    assert "render=torch (fallback from gsplat: OSError: no nvcc" in line and "hashgrid=triton" in line


def test_serve_prints_and_ping_reports_the_backends(tmp_path):
    """`i3d serve --device cpu` says at start-up which backend each component uses; `i3d ping` prints the
    same from the ping reply."""
    addr = f"ipc://{tmp_path}/fp.sock"
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", addr, "--device", "cpu", "--state-dir", str(tmp_path / "st")],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        out = None
        for _ in range(90):
            out = subprocess.run([sys.executable, "-m", "interactive3d.cli", "ping", "--connect", addr, "--timeout", "1"], cwd=ROOT, capture_output=True, text=True)
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stderr
        assert "backends: render=torch (no CUDA device" in out.stdout and "volrend=torch" in out.stdout and "hashgrid=torch" in out.stdout
    finally:
        proc.terminate()
        proc.wait(60)
    text = log.read_text()
    assert "fast paths on cpu: render=torch (no CUDA device" in text and "volrend=torch" in text
