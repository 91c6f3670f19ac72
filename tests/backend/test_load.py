"""The router thread never waits (issue 15): ping latency of a real ``i3d serve`` while a Stage I job runs
and another client hammers ``state.get`` on the job's session. The figures are printed (and recorded in
docs/benchmarks.md); the assertion keeps only a generous margin, as this shared CI machine is noisy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from interactive3d.protocol.client import Client

ROOT = Path(__file__).resolve().parents[2]
PINGS = 200


def _pings(c: Client, n: int, gap: float = 0.02) -> np.ndarray:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.request("ping", timeout=30)
        out.append((time.perf_counter() - t0) * 1e3)
        time.sleep(gap)  # spread over several job steps
    return np.array(out)


def _fmt(ms: np.ndarray) -> str:
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms"


def run_load(address: str, pings: int = PINGS, hammer: int = 200) -> dict:
    """Idle pings, then pings while a Stage I job runs and a second client sends ``hammer`` state.get."""
    owner, pinger, other = Client(address), Client(address), Client(address)
    try:
        idle = _pings(pinger, pings)
        sid = owner.request("session.create").result["session"]
        owner.request("gaussians.init", {"session": sid, "kind": "random", "n": 4096}, timeout=120)
        owner.request("stage1.set_reference", {"session": sid}, timeout=60)
        owner.request("stage1.start", {"session": sid, "guidance": "oracle", "steps": 100_000, "resolution": 128, "batch": 2,
                                       "snapshot_every": 1, "densify": False}, timeout=60)
        while owner.request("job.status", {"session": sid}).result["step"] < 2:
            time.sleep(0.05)
        first = owner.request("job.status", {"session": sid}).result["step"]
        got = []

        def hammer_state() -> None:
            for _ in range(hammer):
                got.append(other.request("state.get", {"session": sid}, timeout=60).buffers[0].shape[0])

        t = threading.Thread(target=hammer_state)
        t.start()
        busy = _pings(pinger, pings)
        t.join(120)
        steps = owner.request("job.status", {"session": sid}).result["step"] - first
        owner.request("job.cancel", {"session": sid})
        return {"idle": idle, "busy": busy, "state_gets": len(got), "rows": set(got), "job_steps": steps}
    finally:
        for c in (owner, pinger, other):
            c.close()


@pytest.mark.slow
def test_ping_p99_while_stage1_runs_and_state_get_hammers(tmp_path):
    addr = f"ipc://{tmp_path}/s.sock"
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", addr, "--device", "cpu",
                                 "--state-dir", str(tmp_path / "st")], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        with Client(addr) as c:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    c.request("ping", timeout=1.0, retries=0)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline
        r = run_load(addr)
        print(f"\nping idle: {_fmt(r['idle'])}\nping during Stage I + {r['state_gets']} state.get: {_fmt(r['busy'])}"
              f" ({r['job_steps']} job steps meanwhile)")
        assert r["state_gets"] == 200 and r["rows"] == {4096}
        assert np.percentile(r["busy"], 99) < 1000.0  # issue 15 measured 1,969 ms before; 50 ms is the goal
    finally:
        proc.terminate()
        proc.wait(60)
