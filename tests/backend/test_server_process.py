"""The backend as a real subprocess: `i3d serve` / `i3d ping`, graceful SIGTERM, `kill -9` + resume, and a
client that keeps working across a server restart.

Holds: ping exits 0 printing name + protocol version (1 when unreachable, 2 for a refused non-loopback
bind); SIGTERM mid-job exits 0 after checkpointing and resume finishes the job; after `kill -9` mid-job,
resume continues from a checkpoint at most C=5 steps behind the last reported step, and the final state
is bit-identical to an uninterrupted run of the same job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _server_helpers import spawn_helper_server
from _server_helpers import wait_up as _wait_up
from interactive3d.protocol.client import Client

ROOT = Path(__file__).resolve().parents[2]
CKPT_EVERY = 5


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def _helper(addr: str, state: Path, log: Path) -> subprocess.Popen:
    return spawn_helper_server(addr, state, log, CKPT_EVERY)


def _events_until(c: Client, pred, timeout: float = 60.0) -> list:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.poll(100):
            seen.append(m)
            if pred(m):
                return seen
    raise AssertionError(f"timed out; saw {[m.event for m in seen][-20:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _stale_checkpoint(state: Path, days: float) -> Path:
    """A real checkpoint folder whose file was last written ``days`` ago."""
    from interactive3d.backend.service import checkpoint
    from interactive3d.backend.service.session import Session
    from interactive3d.backend.stage1.gaussians import init_random

    s = Session("stale0")
    s.gaussians = init_random(10, seed=0)
    path = checkpoint.write(state, checkpoint.capture(s))
    t = time.time() - days * 86400
    os.utime(path, (t, t))
    return path.parent


def test_cli_serve_and_ping(tmp_path):
    """With a key file on both sides ping succeeds; without the key it exits 1 saying the backend requires the
    CURVE handshake of a server with a key (a peer without the key never gets a frame in)."""
    addr = f"ipc://{tmp_path}/cli.sock"
    log = tmp_path / "serve.log"
    keyfile = tmp_path / "key"
    keyfile.write_text("a-shared-secret-for-the-test-of-32+-bytes\n")
    keyfile.chmod(0o600)
    stale = _stale_checkpoint(tmp_path / "st", days=31)  # deleted at start-up (--keep-checkpoints-days 30)
    proc = _spawn(["-m", "interactive3d.cli", "serve", "--bind", addr, "--state-dir", str(tmp_path / "st"), "--device", "cpu", "--auth-key-file", str(keyfile)], log)
    ping = [sys.executable, "-m", "interactive3d.cli", "ping", "--connect", addr, "--timeout", "1"]
    try:
        out = None
        for _ in range(90):
            out = subprocess.run([*ping, "--auth-key-file", str(keyfile)], cwd=ROOT, capture_output=True, text=True)
            if out.returncode == 0:
                break
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("interactive3d-backend protocol 2")
        assert not stale.exists() and (tmp_path / "st").is_dir()
        nokey = subprocess.run(ping, cwd=ROOT, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if not k.startswith("I3D_AUTH")})
        assert nokey.returncode == 1 and "requires the CURVE handshake" in nokey.stderr, nokey.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0  # graceful
    finally:
        _stop(proc)
    dead = subprocess.run([sys.executable, "-m", "interactive3d.cli", "ping", "--connect", addr, "--timeout", "0.3"], cwd=ROOT, capture_output=True, text=True)
    assert dead.returncode == 1 and "no backend answered" in dead.stderr
    no_key_env = {k: v for k, v in os.environ.items() if not k.startswith("I3D_AUTH")}
    refused = subprocess.run([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", "tcp://0.0.0.0:0"], cwd=ROOT, capture_output=True, text=True, env=no_key_env)
    assert refused.returncode == 2 and "auth key" in refused.stderr
    bad_keep = subprocess.run([sys.executable, "-m", "interactive3d.cli", "serve", "--keep-checkpoints-days", "-1"], cwd=ROOT, capture_output=True, text=True)
    assert bad_keep.returncode == 2 and "keep_checkpoints_days" in bad_keep.stderr
    import socket

    with socket.socket() as busy:  # a port somebody else holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", f"tcp://127.0.0.1:{port}", "--device", "cpu", "--state-dir", str(tmp_path / "st2")], cwd=ROOT, capture_output=True, text=True)
    assert taken.returncode == 2 and "cannot bind" in taken.stderr
    helptext = subprocess.run([sys.executable, "-m", "interactive3d.cli", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "serve" in helptext and "ping" in helptext


@pytest.mark.slow
def test_kill9_resume_loses_at_most_one_interval(tmp_path):
    addr = f"ipc://{tmp_path}/k.sock"
    state, log = tmp_path / "state", tmp_path / "server.log"
    steps = 60
    proc = _helper(addr, state, log)
    c = Client(addr)
    try:
        _wait_up(c, proc, log)
        sid = c.request("session.create").result["session"]
        c.request("test.init", {"session": sid, "n": 200, "seed": 5})
        c.request("test.fit", {"session": sid, "steps": steps, "sleep": 0.05, "seed": 9})
        seen = _events_until(c, lambda m: m.event == "progress" and m.data["step"] >= 18)
        proc.kill()  # SIGKILL: no chance to checkpoint
        proc.wait(30)
        last = max(m.data["step"] for m in seen if m.event == "progress")

        proc = _helper(addr, state, log)
        _wait_up(c, proc, log)
        listed = c.request("session.list").result["checkpoints"]
        assert [x["session"] for x in listed] == [sid]
        r = c.request("session.resume", {"session": sid}).result
        # A checkpoint step, at most one interval (+ the step in flight) behind the last reported step.
        assert r["step"] > 0 and r["step"] % CKPT_EVERY == 0 and r["step"] >= last - CKPT_EVERY - 1
        assert r["count"] == 200 and r["job"] is not None
        done = _events_until(c, lambda m: m.event == "done" and m.header["session"] == sid)[-1].data
        assert done["status"] == "done" and done["steps"] == steps
        resumed = np.array(c.request("state.get", {"session": sid}).buffers[0])

        # The same job uninterrupted, on the same server: bit-identical result (RNG + moments restored).
        ref = c.request("session.create").result["session"]
        c.request("test.init", {"session": ref, "n": 200, "seed": 5})
        c.request("test.fit", {"session": ref, "steps": steps, "seed": 9})
        _events_until(c, lambda m: m.event == "done" and m.header["session"] == ref)
        assert np.array_equal(np.array(c.request("state.get", {"session": ref}).buffers[0]), resumed)
    finally:
        c.close()
        _stop(proc)


@pytest.mark.slow
def test_sigterm_checkpoints_and_client_survives_restart(tmp_path):
    """SIGTERM mid-job: exit 0 with the job checkpointed at the step it stopped. A request sent while
    the server is down is answered once it is back (Lazy Pirate retries on a fresh socket), and resume
    finishes the job."""
    addr = f"ipc://{tmp_path}/t.sock"
    state, log = tmp_path / "state", tmp_path / "server.log"
    proc = _helper(addr, state, log)
    c = Client(addr)
    try:
        _wait_up(c, proc, log)
        sid = c.request("session.create").result["session"]
        c.request("test.init", {"session": sid, "n": 100})
        c.request("test.fit", {"session": sid, "steps": 500, "sleep": 0.05})
        _events_until(c, lambda m: m.event == "progress" and m.data["step"] >= 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        # The same client object is used across the restart.
        restarted = {}

        def restart_later() -> None:
            time.sleep(1.0)
            restarted["proc"] = _helper(addr, state, log)

        t = threading.Thread(target=restart_later)
        t.start()
        pong = c.request("ping", timeout=3.0, retries=30).result  # spans the downtime and the start-up
        t.join()
        proc = restarted["proc"]
        assert pong["name"] == "interactive3d-backend"
        r = c.request("session.resume", {"session": sid, "paused": True}).result
        assert r["step"] >= 3 and r["job"] is not None
        st = c.request("job.status", {"session": sid}).result
        assert st["state"] == "paused" and st["step"] == r["step"]
        c.request("job.cancel", {"session": sid})
        done = _events_until(c, lambda m: m.event == "done" and m.header["session"] == sid)[-1].data
        assert done["status"] == "cancelled" and done["steps"] == r["step"]
    finally:
        c.close()
        _stop(proc)
