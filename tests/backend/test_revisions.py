"""State revisions (issue 14) through a real server and ZeroMQ client: every change of a session's Gaussians
bumps its revision; replies, state.get and state events carry it; the ops that take Gaussian indices refuse a
stale one with ``conflict`` and change nothing, so an edit always lands on the Gaussians that were selected."""

import threading
import time

import numpy as np
import pytest
import torch
from _server_helpers import TEST_HANDLERS, TEST_OPS
from interactive3d.backend.service.requests import Reply
from interactive3d.backend.service.server import Server, ServerConfig
from interactive3d.backend.stage1.gaussians import keep
from interactive3d.protocol.catalogue import Arg, OpSpec
from interactive3d.protocol.client import Client
from interactive3d.protocol.errors import ERROR_CODES, RemoteError

N = 300


class PruneJob:
    """A job whose every ``every``-th step drops the first Gaussian through stage1.gaussians.keep (the path
    densify & prune take), so steps change the number and order of the rows like Stage I's do."""

    kind = "test.prune"
    state_every = 1

    def __init__(self, session, steps: int, every: int) -> None:
        self.session, self.total_steps, self.every = session, steps, every

    def step(self, i: int) -> dict:
        g = self.session.gaussians
        if (i + 1) % self.every == 0:
            mask = torch.ones(g.n, dtype=torch.bool)
            mask[0] = False
            keep(g, self.session.optimizers, mask)
        return {"n": float(g.n)}

    def result(self) -> dict:
        return {"count": self.session.gaussians.n}


def _prune(req) -> Reply:
    job = PruneJob(req.session, req.args["steps"], req.args["every"])
    return Reply({"job": req.start_job(job, label="test.prune")})


PRUNE_OP = OpSpec(
    "test.prune", "A job that removes one Gaussian every `every` steps.",
    args=(Arg("steps", "int", required=True, min=1), Arg("every", "int", default=1, min=1)),
    session=True, starts_job=True, result=(("job", "job id"),), events=("progress", "state", "done", "error"),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(ServerConfig(bind="tcp://127.0.0.1:*", device="cpu", state_dir=str(tmp_path_factory.mktemp("state"))),
                 extra_ops=[*TEST_OPS, PRUNE_OP], extra_handlers={**TEST_HANDLERS, "test.prune": _prune})
    address = srv.bind()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.address = address
    yield srv
    srv.request_stop()
    thread.join(30)


@pytest.fixture()
def client(server):
    with Client(server.address) as c:
        yield c


@pytest.fixture()
def session(client):
    sid = client.request("session.create", {}).result["session"]
    client.request("test.init", {"session": sid, "n": N, "seed": 0})
    return sid


def _state(client, sid):
    r = client.request("state.get", {"session": sid})
    return np.array(r.buffers[0]), r.result["revision"]


def _conflict(client, op, args, buffers=()):
    with pytest.raises(RemoteError) as exc:
        client.request(op, args, list(buffers))
    assert exc.value.code == "conflict", exc.value
    return exc.value


def test_conflict_is_a_catalogued_error_code():
    from interactive3d.protocol.catalogue import OPS

    assert "conflict" in ERROR_CODES
    for op in ("parts.select", "parts.remove", "parts.transform"):
        spec = OPS[op]
        assert "conflict" in spec.errors and any(a.name == "revision" for a in spec.args), op


def test_which_ops_bump_the_revision(client, session):
    """Remove, add, transform, undo, redo and init bump it; select, list, forget and state.get do not (the
    Gaussians did not change); every reply of a session op carries the revision after it."""
    _, r0 = _state(client, session)
    for op, args in (("parts.select", {"name": "a", "kind": "indices", "indices": [1, 2, 3]}),
                     ("parts.list", {}), ("parts.forget", {"name": "a"}), ("history.list", {})):
        assert client.request(op, {"session": session, **args}).result["revision"] == r0, op
    seen = [r0]
    steps = [
        ("parts.remove", {"indices": [0, 5]}, []),
        ("parts.add", {"name": "copy", "source_session": session}, []),
        ("parts.transform", {"part": "copy", "matrix": np.diag([1.5, 1.0, 0.5, 1.0]).ravel().tolist()}, []),
        ("history.undo", {}, []),
        ("history.redo", {}, []),
        ("gaussians.init", {"kind": "random", "n": 50}, []),
    ]
    for op, args, bufs in steps:
        rev = client.request(op, {"session": session, **args}, bufs).result["revision"]
        assert rev > seen[-1], (op, rev, seen)
        assert _state(client, session)[1] == rev, op
        seen.append(rev)


def test_stale_remove_is_refused_and_changes_nothing(client, session):
    """Indices taken at revision r; another edit (remove 5) bumps it; remove of the 10 selected at r is refused
    with conflict: 295 Gaussians, bit-identical, history unchanged. With the current revision exactly the 10
    named rows go."""
    before, r = _state(client, session)
    client.request("parts.remove", {"session": session, "indices": [0, 1, 2, 3, 4], "revision": r})
    after5, r5 = _state(client, session)
    hist = client.request("history.list", {"session": session}).result
    sel = np.arange(100, 110)
    err = _conflict(client, "parts.remove", {"session": session, "revision": r}, [sel.astype(np.int64)])
    assert f"revision {r}" in err.message and f"revision {r5}" in err.message
    now, r_now = _state(client, session)
    assert r_now == r5 and now.shape == (295, 14)
    np.testing.assert_array_equal(now, after5)
    assert client.request("history.list", {"session": session}).result["undo"] == hist["undo"]
    # the artist re-syncs (state.get gave r5) and selects again: exactly those rows go
    client.request("parts.remove", {"session": session, "revision": r5}, [sel.astype(np.int64)])
    final, _ = _state(client, session)
    keep_mask = np.ones(295, bool)
    keep_mask[sel] = False
    np.testing.assert_array_equal(final, after5[keep_mask])
    np.testing.assert_array_equal(after5, before[5:])


def test_stale_select_and_transform_are_refused(client, session):
    """parts.select by indices and parts.transform with a stale revision: conflict, the part and the
    Gaussians unchanged."""
    _, r = _state(client, session)
    client.request("parts.select", {"session": session, "name": "sel", "kind": "indices", "indices": [7, 8, 9], "revision": r})
    client.request("history.undo", {"session": session})  # undo the select: the Gaussians are restored too
    client.request("history.redo", {"session": session})
    before, r2 = _state(client, session)
    assert r2 > r
    _conflict(client, "parts.select", {"session": session, "name": "sel", "kind": "indices", "indices": [1], "revision": r})
    assert client.request("parts.list", {"session": session}).result["parts"] == {"sel": 3}
    _conflict(client, "parts.transform", {"session": session, "part": "sel", "revision": r,
                                          "matrix": np.diag([2.0, 2.0, 2.0, 1.0]).ravel().tolist()})
    np.testing.assert_array_equal(_state(client, session)[0], before)
    res = client.request("parts.transform", {"session": session, "part": "sel", "revision": r2,
                                             "matrix": np.diag([2.0, 2.0, 2.0, 1.0]).ravel().tolist()}).result
    assert res["count"] == 3 and res["revision"] > r2


def test_job_steps_that_change_rows_bump_and_state_events_carry_it(client, session):
    """A job removing a Gaussian every 2nd of 6 steps: every state event's revision changes exactly when its
    frame's row count changes (frames and revisions agree); indices taken before the job are refused after it."""
    _, r0 = _state(client, session)
    job = client.request("test.prune", {"session": session, "steps": 6, "every": 2}).result["job"]
    frames, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        msgs = client.poll(200)
        frames += [(m.data["revision"], np.array(m.buffers[0]).shape[0]) for m in msgs
                   if m.header.get("job") == job and m.event == "state"]
        if any(m.header.get("job") == job and m.event in ("done", "error") for m in msgs):
            break
    assert len(frames) >= 6, frames
    counts = [c for _, c in frames]
    assert counts[0] == N and counts[-1] == N - 3
    for (ra, ca), (rb, cb) in zip(frames, frames[1:]):
        assert (ra != rb) == (ca != cb), frames
    assert frames[0][0] == r0
    _conflict(client, "parts.remove", {"session": session, "indices": [0], "revision": r0})
    assert _state(client, session)[0].shape[0] == N - 3


def test_resume_from_checkpoint_bumps(client, session):
    """A session closed with a checkpoint and resumed answers a higher revision; indices of before are refused."""
    _, r = _state(client, session)
    client.request("session.close", {"session": session, "checkpoint": True})
    res = client.request("session.resume", {"session": session}).result
    assert res["revision"] > r and res["count"] == N
    _conflict(client, "parts.remove", {"session": session, "indices": [0], "revision": r})
    assert _state(client, session)[1] == res["revision"]


def test_stage1_steps_without_densify_keep_the_revision(client, session):
    """A real Stage I job (oracle guidance, 4 steps, no densify): its steps move the Gaussians but keep their
    number and order, so the revision stays and a selection taken before the job still applies after it."""
    client.request("stage1.set_reference", {"session": session})
    _, r0 = _state(client, session)
    job = client.request("stage1.start", {"session": session, "guidance": "oracle", "steps": 4, "batch": 1,
                                          "resolution": 24, "densify": False, "seed": 1}).result["job"]
    revisions, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        msgs = client.poll(200)
        revisions += [m.data["revision"] for m in msgs if m.header.get("job") == job and m.event == "state"]
        if any(m.header.get("job") == job and m.event in ("done", "error") for m in msgs):
            break
    assert revisions and set(revisions) == {r0}
    assert client.request("parts.remove", {"session": session, "indices": [3], "revision": r0}).result["count"] == N - 1
