"""Jobs through the real server and client (server loop on a thread).

Holds: cancel stops a running job within one step; pause stops stepping (the step count stays put
while paused) and resume finishes it with a state bit-identical to an uninterrupted run; a second job or
an undo while one is in flight is `busy`; events carry the request id, session and job; undo after a job
restores the exact pre-job state. The job is tests/backend/_server_helpers.FitJob (a real AdamW fit);
Stage I can replace it by changing the start op and its args.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from interactive3d.protocol.client import Client, RemoteError

START_OP = "test.fit"


def _session(c: Client, n: int = 64) -> str:
    sid = c.request("session.create").result["session"]
    c.request("test.init", {"session": sid, "n": n, "seed": 3})
    return sid


def _wait(c: Client, pred, timeout: float = 30.0) -> list:
    """Poll events until pred(msg) is true; returns all events seen (the last one matched)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.poll(100):
            seen.append(m)
            if pred(m):
                return seen
    raise AssertionError(f"timed out; saw {[m.event for m in seen]}")


def _run_to_end(c: Client, sid: str, steps: int) -> np.ndarray:
    c.request(START_OP, {"session": sid, "steps": steps})
    _wait(c, lambda m: m.event == "done" and m.header["session"] == sid)
    return np.array(c.request("state.get", {"session": sid}).buffers[0])


def test_events_and_done(client):
    sid = _session(client)
    r = client.request(START_OP, {"session": sid, "steps": 12})
    job = r.result["job"]
    evs = _wait(client, lambda m: m.event == "done")
    progress = [m for m in evs if m.event == "progress"]
    assert [m.data["step"] for m in progress] == list(range(1, 13))  # one per step (progress_every=1)
    assert all(m.header["job"] == job and m.header["session"] == sid and m.id == r.id for m in evs)
    states = [m for m in evs if m.event == "state"]
    assert [m.data["step"] for m in states] == [10, 12]  # every 10 steps + the final one
    assert states[-1].buffers[0].shape == (64, 14) and states[-1].buffers[0].dtype == np.float32
    done = evs[-1].data
    assert done["status"] == "done" and done["steps"] == 12 and done["count"] == 64
    assert progress[-1].data["metrics"]["loss"] > 0
    st = client.request("job.status", {"session": sid}).result
    assert st["state"] == "done" and st["step"] == 12


def test_job_state_every_overrides_server_default(client):
    """A job's own cadence (stage1.start's snapshot_every) wins over the server's state_every=10."""
    sid = _session(client)
    client.request(START_OP, {"session": sid, "steps": 7, "state_every": 3})
    evs = _wait(client, lambda m: m.event == "done")
    assert [m.data["step"] for m in evs if m.event == "state"] == [3, 6, 7]


def test_cancel_within_one_step(client):
    """After the cancel reply at step k, the job stops at k or k+1 and says 'cancelled'."""
    sid = _session(client)
    client.request(START_OP, {"session": sid, "steps": 1000, "sleep": 0.05})
    _wait(client, lambda m: m.event == "progress" and m.data["step"] >= 3)
    k = client.request("job.cancel", {"session": sid}).result["step"]
    evs = _wait(client, lambda m: m.event == "done")
    done = evs[-1].data
    assert done["status"] == "cancelled"
    assert k <= done["steps"] <= k + 1
    assert client.request("job.status", {"session": sid}).result["state"] == "cancelled"
    with pytest.raises(RemoteError) as e:
        client.request("job.cancel", {"session": sid})
    assert e.value.code == "not_found"


def test_pause_resume_is_exact(client):
    """Paused: no step for 0.5 s while the server keeps answering; resumed: the final state equals an
    uninterrupted run of the same job bit for bit."""
    steps = 40
    ref = _run_to_end(client, _session(client), steps)
    sid = _session(client)
    client.request(START_OP, {"session": sid, "steps": steps, "sleep": 0.02})
    _wait(client, lambda m: m.event == "progress" and m.data["step"] >= 5)
    client.request("job.pause", {"session": sid})
    paused = _wait(client, lambda m: m.event == "paused")[-1].data["step"]
    for _ in range(5):  # the server answers while the job is paused
        assert client.request("ping").result["version"] == 2
        time.sleep(0.1)
    st = client.request("job.status", {"session": sid}).result
    assert st["state"] == "paused" and st["step"] == paused
    with pytest.raises(RemoteError) as e:  # one job per session
        client.request(START_OP, {"session": sid, "steps": 3})
    assert e.value.code == "busy"
    with pytest.raises(RemoteError) as e:
        client.request("history.undo", {"session": sid})
    assert e.value.code == "busy"
    client.request("job.resume", {"session": sid})
    done = _wait(client, lambda m: m.event == "done")[-1].data
    assert done["status"] == "done" and done["steps"] == steps
    out = np.array(client.request("state.get", {"session": sid}).buffers[0])
    assert np.array_equal(out, ref)


def test_undo_after_job_restores_exact_state(client):
    sid = _session(client)
    before = np.array(client.request("state.get", {"session": sid}).buffers[0])
    after = _run_to_end(client, sid, 5)
    assert not np.array_equal(before, after)
    h = client.request("history.undo", {"session": sid}).result
    assert h["label"] == "test.fit" and h["redo"] == ["test.fit"]
    assert np.array_equal(np.array(client.request("state.get", {"session": sid}).buffers[0]), before)
    client.request("history.redo", {"session": sid})
    assert np.array_equal(np.array(client.request("state.get", {"session": sid}).buffers[0]), after)


def test_job_error_becomes_error_event(client, server):
    """A job whose step raises ends with an 'error' event; the session and server keep working."""
    sid = _session(client)
    s = server.server.sessions[sid]

    class Boom:
        kind, total_steps = "boom", 3

        def step(self, i):
            raise RuntimeError("step exploded")

    from interactive3d.backend.service.requests import Request

    Request("x", "rid", {}, [], s, server.server.services).start_job(Boom())
    evs = _wait(client, lambda m: m.event == "error")
    assert "step exploded" in evs[-1].data["message"] and evs[-1].data["code"] == "internal"
    assert client.request("state.get", {"session": sid}).result["count"] == 64
