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


def test_ping_with_device_cuda_reads_records_written_under_cuda_0(clean_record, monkeypatch):
    """Issue 24 item 6: `--device auto` resolves to `cuda` while the renderers and the hash grid record their
    self-tests under a tensor's device, `cuda:0`. The ping handler, given the server device `cuda`, reports
    those records (no "pending"), and a second choice under the other name runs no second self-test.
    No GPU here: CUDA is faked for resolve_device and the records are written under the string `cuda:0`."""
    import types

    import torch
    from interactive3d.backend.accel.fastpath import canonical_device
    from interactive3d.backend.service.ops_session import ping
    from interactive3d.backend.service.requests import Request
    from interactive3d.backend.service.server import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    dev = resolve_device("auto")
    assert str(dev) == "cuda"
    assert canonical_device(dev) == canonical_device("cuda:0") == "cuda:0"
    assert canonical_device("cuda:1") == "cuda:1" and canonical_device("cpu") == "cpu"

    calls = []
    clean_record.choose("render", "cuda:0", "gsplat", lambda: calls.append("render"))
    clean_record.choose("hashgrid", torch.device("cuda", 0), "triton", lambda: calls.append("hashgrid"))
    clean_record.choose("volrend", "cuda:0", "nerfacc", lambda: calls.append("volrend"))
    for comp, fast in (("render", "gsplat"), ("hashgrid", "triton"), ("volrend", "nerfacc")):
        assert clean_record.choose(comp, dev, fast, lambda: calls.append("again")) == fast
    assert calls == ["render", "hashgrid", "volrend"]  # one self-test each, whichever name asks

    services = types.SimpleNamespace(device=dev, ops=("ping",))
    reply = ping(Request(op="ping", id="1", args={}, buffers=[], session=None, services=services))
    backends = reply.result["backends"]
    assert reply.result["device"] == "cuda"
    assert {c: b["backend"] for c, b in backends.items()} == {"render": "gsplat", "hashgrid": "triton", "volrend": "nerfacc"}
    assert all(b["ok"] for b in backends.values())
    assert clean_record.report() == {"render": {"cuda:0": "gsplat"}, "hashgrid": {"cuda:0": "triton"}, "volrend": {"cuda:0": "nerfacc"}}
