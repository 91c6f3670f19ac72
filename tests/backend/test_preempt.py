"""Interaction jobs (drag, semantic edit) while a Stage I job runs or is paused (issue 4, "applicable while
the Stage I job is paused or running").

The interaction's job starts in front of the Stage I job: Stage I stops before its next step (``paused``
event), the interaction runs to its end, and Stage I carries on as it was — resumed if it was running,
still paused if the artist had paused it. Real server, real ZeroMQ client, the real Stage I job with the
oracle guidance.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from _server_helpers import threaded_client
from interactive3d.protocol.client import Client, RemoteError


@pytest.fixture(scope="module")
def client():
    with threaded_client() as c:
        yield c


def _stage1_session(c: Client, tmp_path, steps: int) -> tuple[str, str]:
    ref = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": ref, "kind": "random", "n": 150, "seed": 7})
    path = str(tmp_path / "ref.ply")
    c.request("gaussians.save_ply", {"session": ref, "path": path})
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 150, "seed": 1})
    job = c.request("stage1.start", {"session": sid, "guidance": "oracle", "reference_path": path, "steps": steps,
                                     "batch": 1, "resolution": 24, "densify": False, "seed": 1}).result["job"]
    return sid, job


def _events_until(c: Client, pred, timeout: float = 60.0) -> list:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in c.poll(50):
            if m.kind == "event":
                seen.append(m)
                if pred(m):
                    return seen
    raise AssertionError(f"timed out; saw {[(m.header.get('job'), m.event) for m in seen]}")


def _drag_args(c: Client, sid: str, steps: int) -> dict:
    st = np.array(c.request("state.get", {"session": sid}).buffers[0])
    src = st[0, :3].astype(float)
    return {"session": sid, "source": src.tolist(), "target": (src + [0.2, 0.0, 0.0]).tolist(), "radius": 0.3,
            "mode": "rigid", "steps": steps, "densify_after": False}


def _status(c: Client, sid: str) -> dict:
    return c.request("job.status", {"session": sid}).result


def test_drag_while_stage1_runs_pauses_it_then_it_resumes(client, tmp_path):
    """A drag started while Stage I runs: Stage I emits 'paused', takes no step while the drag runs, the
    drag ends 'done' with its source moved by the offset (to 1e-3), Stage I emits 'resumed' and goes on
    stepping. Meanwhile a second drag and an undo are 'busy'."""
    c = client
    sid, s1 = _stage1_session(c, tmp_path, steps=100_000)
    _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "progress" and m.data["step"] >= 3)
    args = _drag_args(c, sid, steps=60)
    drag = c.request("interact.drag", args).result["job"]
    for op, a in (("interact.drag", args), ("history.undo", {"session": sid}), ("stage1.start", {"session": sid})):
        with pytest.raises(RemoteError) as err:
            c.request(op, a)
        assert err.value.code == "busy", op
    # one pass up to Stage I's 'resumed' (a poll returns a batch: stopping at the drag's 'done' could
    # drop the events behind it)
    seen = _events_until(c, lambda m: m.header.get("job") == s1 and m.event in ("resumed", "error"))
    assert seen[-1].event == "resumed"
    ends = [m for m in seen if m.header.get("job") == drag and m.event in ("done", "error")]
    assert [m.event for m in ends] == ["done"], [m.data for m in ends]
    paused = [i for i, m in enumerate(seen) if m.header.get("job") == s1 and m.event == "paused"]
    assert len(paused) == 1
    s1_steps_between = [m for m in seen[paused[0]:] if m.header.get("job") == s1 and m.event == "progress"]
    assert s1_steps_between == []  # no Stage I step while the drag ran
    step_then = _status(c, sid)["step"]
    _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "progress" and m.data["step"] >= step_then + 2)
    st = _status(c, sid)
    assert st["job"] == s1 and st["kind"] == "stage1" and st["state"] == "running"
    c.request("job.cancel", {"session": sid})
    _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "done")


def test_drag_while_stage1_is_paused_leaves_it_paused(client, tmp_path):
    """With Stage I paused by the artist, a drag runs (the Gaussians near the source move by the offset)
    and Stage I is still paused at the same step afterwards, the session's job again; cancelling it
    then ends it 'cancelled' at that step."""
    c = client
    sid, s1 = _stage1_session(c, tmp_path, steps=100_000)
    _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "progress")
    c.request("job.pause", {"session": sid})
    _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "paused")
    step = _status(c, sid)["step"]
    before = np.array(c.request("state.get", {"session": sid}).buffers[0])
    args = _drag_args(c, sid, steps=10)
    drag = c.request("interact.drag", args).result["job"]
    seen = _events_until(c, lambda m: m.header.get("job") == drag and m.event in ("done", "error"))
    assert seen[-1].event == "done", seen[-1].data
    deadline = time.monotonic() + 10
    while _status(c, sid)["job"] != s1 and time.monotonic() < deadline:
        time.sleep(0.02)
    st = _status(c, sid)
    assert st["job"] == s1 and st["state"] == "paused" and st["step"] == step
    after = np.array(c.request("state.get", {"session": sid}).buffers[0])
    moved = np.linalg.norm(after[0, :3] - before[0, :3] - [0.2, 0.0, 0.0])
    assert moved < 1e-3, moved
    c.request("job.cancel", {"session": sid})  # cancel from paused ends the job between two steps
    done = _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "done")[-1]
    assert done.data["status"] == "cancelled" and done.data["steps"] == step


def test_checkpoint_after_the_interaction_records_the_stage1_job(tmp_path):
    """With a state dir, a checkpoint during the drag records the drag and the paused Stage I job behind
    it; the one written when the drag ends records the Stage I job again (op, step, paused), so a crash
    right after an interaction still resumes generation."""
    from _server_helpers import ThreadedServer
    from interactive3d.backend.service import checkpoint
    ts = ThreadedServer(state_dir=str(tmp_path / "state"))
    c = Client(ts.address)
    try:
        (data := tmp_path / "state" / "data").mkdir(parents=True, exist_ok=True)  # the default data folder
        sid, s1 = _stage1_session(c, data, steps=100_000)
        _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "progress")
        c.request("job.pause", {"session": sid})
        _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "paused")
        step = _status(c, sid)["step"]
        drag = c.request("interact.drag", _drag_args(c, sid, steps=100_000)).result["job"]
        # while the drag runs, the paused Stage I job writes no checkpoint of its own; the session's
        # checkpoint holds the drag with Stage I behind it, to stay paused afterwards
        assert ts.server.sessions[sid].suspended[0].write_checkpoint() is None
        c.request("session.checkpoint", {"session": sid})
        ck = checkpoint.read(str(tmp_path / "state"), sid)
        assert ck.job.op == "interact.drag" and ck.job.job_id == drag
        assert ck.suspended.op == "stage1.start" and ck.suspended.job_id == s1 and ck.suspended.step == step and ck.suspended.paused
        c.request("job.cancel", {"session": sid})
        _events_until(c, lambda m: m.header.get("job") == drag and m.event == "done")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ck = checkpoint.read(str(tmp_path / "state"), sid)
            if ck.job is not None and ck.job.op == "stage1.start":
                break
            time.sleep(0.05)
        assert ck.job is not None and ck.job.op == "stage1.start" and ck.job.job_id == s1 and ck.job.step == step
        assert ck.job.paused
        c.request("job.cancel", {"session": sid})
    finally:
        c.close()
        ts.stop()



@pytest.mark.slow
def test_kill9_mid_drag_resumes_the_drag_then_stage1(tmp_path):
    """`kill -9` while a drag runs in front of a running Stage I job: the periodic checkpoint holds both.
    After a restart, session.resume restarts the drag (same job id, a checkpoint step at most one interval
    behind the last reported one) with Stage I paused behind it at the step it had when the drag began;
    the drag ends 'done', then Stage I emits 'resumed' and steps on from there."""
    from _server_helpers import spawn_helper_server, wait_up

    addr, state, log = f"ipc://{tmp_path}/p.sock", tmp_path / "state", tmp_path / "server.log"
    every = 3

    proc = spawn_helper_server(addr, state, log, every)
    c = Client(addr)
    try:
        wait_up(c, proc, log)
        (data := tmp_path / "state" / "data").mkdir(parents=True, exist_ok=True)  # the default data folder
        sid, s1 = _stage1_session(c, data, steps=100_000)
        _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "progress" and m.data["step"] >= 4)
        drag = c.request("interact.drag", _drag_args(c, sid, steps=100_000)).result["job"]
        # Stage I's 'paused' may come after a few drag steps (it finishes the step it was in first)
        s1_step = _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "paused")[-1].data["step"]
        seen = _events_until(c, lambda m: m.header.get("job") == drag and m.event == "progress" and m.data["step"] >= 2 * every + 1)
        last = max(m.data["step"] for m in seen if m.header.get("job") == drag and m.event == "progress")
        proc.kill()  # SIGKILL: nothing gets written now
        proc.wait(30)

        proc = spawn_helper_server(addr, state, log, every)
        wait_up(c, proc, log)
        r = c.request("session.resume", {"session": sid}).result
        assert r["job"] == drag and r["suspended"] == s1
        assert r["step"] > 0 and r["step"] % every == 0 and r["step"] >= last - every - 1
        st = _status(c, sid)
        assert st["job"] == drag and st["kind"] == "drag" and st["state"] == "running"
        c.request("job.cancel", {"session": sid})  # ends the drag; Stage I goes on as it was: running
        seen = _events_until(c, lambda m: m.header.get("job") == s1 and m.event == "progress")
        assert [m.event for m in seen if m.header.get("job") == drag and m.event in ("done", "error")] == ["done"]
        assert [m.event for m in seen if m.header.get("job") == s1 and m.event in ("paused", "resumed")][-1] == "resumed"
        assert seen[-1].data["step"] == s1_step + 1  # the step after the one Stage I stopped at
        st = _status(c, sid)
        assert st["job"] == s1 and st["state"] == "running"
        c.request("job.cancel", {"session": sid})
    finally:
        c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)

