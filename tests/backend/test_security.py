"""Issue 15's attacks replayed against a real server over real ZeroMQ sockets; each must fail safely.

Sandbox (paths outside the data roots, symlinks, FIFOs, devices, huge .ply headers), authentication
(replays across a restart and after a flood, NaN timestamps, reflected replies, weak key files),
isolation between clients (retry cache, events, per-client caps), the small ones (oversized messages
name their request, logs are escaped and rate-limited, session.list has ``step``) and a bounded fuzz run
that must end with zero ``internal`` replies.
"""

from __future__ import annotations

import logging
import math
import os
import random
import stat
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq
from _server_helpers import ThreadedServer
from interactive3d.protocol.auth import Signer, curve_client_options, load_key
from interactive3d.protocol.client import Client, RemoteError
from interactive3d.protocol.codec import Limits, buffer_frames, decode, encode, pack_header

KEY = b"k" * 32


class Raw:
    """A bare DEALER with a chosen routing id: sends arbitrary frames, reads whole messages."""

    def __init__(self, address: str, identity: bytes | None = None, key: bytes | None = None) -> None:
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        for opt, value in curve_client_options(key):  # a server with a key takes frames from key holders only
            self.s.setsockopt(opt, value)
        if identity is not None:
            self.s.setsockopt(zmq.ROUTING_ID, identity)
        self.s.connect(address)

    def send(self, frames: list) -> None:
        self.s.send_multipart(frames, copy=False)

    def recv(self, timeout_ms: int = 5000):
        if not self.s.poll(timeout_ms):
            return None
        return decode(self.s.recv_multipart())

    def ask(self, frames: list, timeout_ms: int = 30000) -> dict:
        self.send(frames)
        msg = self.recv(timeout_ms)
        assert msg is not None, "no reply"
        return msg.header

    def close(self) -> None:
        self.s.close(0)


def _req(op: str, args: dict | None = None, rid: str | None = None) -> list:
    return encode({"id": rid or uuid.uuid4().hex, "op": op, "args": args or {}})


def _code(c: Client, op: str, args: dict, buffers=()) -> str:
    with pytest.raises(RemoteError) as err:
        c.request(op, args, list(buffers))
    return err.value.code


# -- the file sandbox --------------------------------------------------------------------------------------
def test_writes_stay_in_the_roots_and_replace_only_regular_files(sandboxed, tmp_path):
    c, root, _ = sandboxed
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 50})
    outside = tmp_path / "outside.ply"
    (root / "link_out").symlink_to(tmp_path)  # a folder symlink leading out of the root
    (root / "file_link").symlink_to(outside)  # a symlink to a file outside
    os.mkfifo(root / "fifo.ply")
    (root / "dir.ply").mkdir()
    cases = {
        str(outside): "invalid_args",
        "../outside.ply": "invalid_args",
        str(root / "link_out" / "outside.ply"): "invalid_args",
        str(root / "file_link"): "invalid_args",
        str(root / "fifo.ply"): "invalid_args",
        str(root / "dir.ply"): "invalid_args",
        "/dev/null": "invalid_args",
        "": "invalid_args",
        "a\x00b.ply": "invalid_args",
        str(root / "missing" / "x.ply"): "not_found",
    }
    for path, code in cases.items():
        assert _code(c, "gaussians.save_ply", {"session": sid, "path": path}) == code, path
    assert not outside.exists() and not (root / "missing").exists()  # nothing written, no folder created
    assert stat.S_ISFIFO(os.lstat(root / "fifo.ply").st_mode) and (root / "file_link").is_symlink()
    # inside the root: relative and absolute paths work, and an existing regular file is replaced atomically
    r = c.request("gaussians.save_ply", {"session": sid, "path": "a.ply"}).result
    assert r["path"] == str(root / "a.ply") and r["count"] == 50
    ino = os.stat(root / "a.ply").st_ino
    r2 = c.request("gaussians.save_ply", {"session": sid, "path": str(root / "a.ply"), "return_file": True})
    assert os.stat(root / "a.ply").st_ino != ino  # a new file renamed over the old one
    assert bytes(r2.buffers[0]) == (root / "a.ply").read_bytes()
    assert not [p for p in os.listdir(root) if p.startswith(".tmp-")]


def test_reads_stay_in_the_roots_capped_and_typed(sandboxed, tmp_path):
    c, root, _ = sandboxed
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 64, "seed": 3})
    frame = c.request("gaussians.save_ply", {"session": sid, "return_file": True}).buffers[0]
    body = np.array(frame)
    (tmp_path / "out.ply").write_bytes(body.tobytes())
    (root / "esc").symlink_to(tmp_path / "out.ply")
    head = b"ply\nformat binary_little_endian 1.0\nelement vertex %d\n" + b"".join(
        b"property float %s\n" % n.encode() for n in
        ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
    ) + b"end_header\n"
    (root / "billion.ply").write_bytes(head % 10**9 + bytes(56 * 4))
    (root / "huge.ply").write_bytes(head % 2**70 + bytes(56))
    (root / "big.ply").write_bytes(bytes((1 << 20) + 1))
    (root / "dir.ply").mkdir()
    cases = {
        str(tmp_path / "out.ply"): "invalid_args",
        str(root / "esc"): "invalid_args",
        str(root / "billion.ply"): "invalid_args",
        str(root / "huge.ply"): "invalid_args",
        str(root / "dir.ply"): "invalid_args",
        "/dev/zero": "invalid_args",
        "": "invalid_args",
        "x\x00.ply": "invalid_args",
        str(root / "big.ply"): "too_large",
        "nope.ply": "not_found",
    }
    before = np.array(c.request("state.get", {"session": sid}).buffers[0])
    for path, code in cases.items():
        assert _code(c, "gaussians.load_ply", {"session": sid, "path": path}) == code, path
        if path:  # set_reference without a path copies the session's own Gaussians
            assert _code(c, "stage1.set_reference", {"session": sid, "path": path}) == code, path
    assert np.array_equal(np.array(c.request("state.get", {"session": sid}).buffers[0]), before)  # nothing lost
    # the same bytes as a frame (remote clients): bit-identical Gaussians, no file on the server
    other = c.request("session.create").result["session"]
    assert c.request("gaussians.load_ply", {"session": other}, [body]).result["count"] == 64
    assert np.array_equal(np.array(c.request("state.get", {"session": other}).buffers[0]), before)
    assert c.request("stage1.set_reference", {"session": other, "filename": "r.ply"}, [body]).result["count"] == 64
    assert _code(c, "gaussians.load_ply", {"session": other}, [np.zeros(10, np.uint8)]) == "invalid_args"
    assert _code(c, "gaussians.load_ply", {"session": other}, [np.zeros((1 << 20) + 1, np.uint8)]) == "too_large"  # over the file cap
    assert _code(c, "gaussians.load_ply", {"session": other}) == "invalid_args"  # neither path nor frame


def test_init_from_uploaded_files_matches_paths(sandboxed):
    """gaussians.init kind ply/mesh with the file as a frame gives the same Gaussians as with a path;
    a garbage mesh frame is invalid_args."""
    import trimesh

    c, root, _ = sandboxed
    trimesh.creation.box(extents=(1, 2, 3)).export(root / "box.obj")
    body = np.fromfile(root / "box.obj", dtype=np.uint8)
    empty = [np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)]
    a, b = (c.request("session.create").result["session"] for _ in range(2))
    args = {"kind": "mesh", "n": 200, "seed": 4, "fit_radius": 1.0}
    c.request("gaussians.init", {"session": a, **args, "path": "box.obj"})
    c.request("gaussians.init", {"session": b, **args, "filename": "box.obj"}, [*empty, body])
    sa, sb = (np.array(c.request("state.get", {"session": s}).buffers[0]) for s in (a, b))
    assert sa.shape == (200, 14) and np.array_equal(sa, sb)
    ply = c.request("gaussians.save_ply", {"session": a, "return_file": True}).buffers[0]
    c.request("gaussians.init", {"session": b, "kind": "ply"}, [*empty, np.array(ply)])
    assert np.array_equal(np.array(c.request("state.get", {"session": b}).buffers[0]), sa)
    for frame, name in ((np.frombuffer(b"\x00garbage" * 50, np.uint8), "x.glb"), (body, "noext")):
        assert _code(c, "gaussians.init", {"session": b, **args, "filename": name}, [*empty, frame]) == "invalid_args"
    assert np.array_equal(np.array(c.request("state.get", {"session": b}).buffers[0]), sa)  # nothing lost


def test_no_roots_means_frames_only():
    ts = ThreadedServer(data_dirs=())  # and no state dir
    try:
        with Client(ts.address) as c:
            sid = c.request("session.create").result["session"]
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 10})
            assert _code(c, "gaussians.save_ply", {"session": sid, "path": "x.ply"}) == "invalid_args"
            assert len(c.request("gaussians.save_ply", {"session": sid, "return_file": True}).buffers[0]) > 10 * 56
    finally:
        ts.stop()


# -- authentication -----------------------------------------------------------------------------------------
def _signed_request(op: str = "session.create", signer: Signer | None = None, ts: float | None = None) -> list:
    signer = signer or Signer(KEY)
    specs, frames = buffer_frames([])
    header = {"v": 2, "id": uuid.uuid4().hex, "op": op, "args": {}, "buffers": specs}
    if ts is None:
        return [signer.sign(header, pack_header, frames)]
    real = time.time
    time.time = lambda: ts  # noqa: E731 - the sender's clock says ts
    try:
        return [signer.sign(header, pack_header, frames)]
    finally:
        time.time = real


def test_replay_after_restart_nan_timestamp_and_reflected_reply():
    first = ThreadedServer(auth_key=KEY)
    captured = _signed_request()
    try:
        raw = Raw(first.address, key=KEY)
        assert raw.ask(captured)["ok"] is True
        assert raw.ask(captured)["error"]["code"] == "unauthorized"  # replay within the run
        # the server's own signed reply, sent back to it, is not a request
        raw.send(_signed_request("ping"))
        reply = raw.s.recv_multipart()
        assert raw.ask(reply)["error"]["code"] == "unauthorized"
        raw.close()
    finally:
        first.stop()
    second = ThreadedServer(auth_key=KEY)
    try:
        raw = Raw(second.address, key=KEY)
        assert raw.ask(captured)["error"]["code"] == "unauthorized"  # replay after a restart
        for bad_ts in (math.nan, math.inf, -math.inf):
            h = msgpack.unpackb(_signed_request("ping")[0])
            h["auth"]["ts"] = bad_ts  # any change breaks the signature, so sign a NaN honestly
            signer = Signer(KEY)
            header = {k: v for k, v in h.items() if k != "auth"}
            raw_header = pack_header({**header, "auth": {"ts": bad_ts, "nonce": "n" * 32, "sig": bytes(32)}})
            import hashlib
            import hmac as hmac_mod

            sig = hmac_mod.new(KEY, signer.sign_domain + raw_header, hashlib.sha256).digest()
            assert raw.ask([raw_header[:-32] + sig])["error"]["code"] == "unauthorized"
        with Client(second.address, auth_key=KEY) as c:
            assert c.request("session.list").result["sessions"] == []  # none of it created anything
        raw.close()
    finally:
        second.stop()


def test_nonce_store_is_time_bounded_with_a_rising_floor():
    """A flood that overflows the store raises the floor: an evicted nonce can never be replayed."""
    recv = Signer(KEY, role="server", max_nonces=100)
    sender = Signer(KEY)
    t0 = time.time() + 1.0
    msgs = [_signed_request("ping", sender, ts=t0 + i * 1e-3) for i in range(300)]
    for m in msgs:
        decode(m, verify=recv.verify)
    for m in msgs:  # every one of them, evicted or not, is refused again
        with pytest.raises(Exception) as e:
            decode(m, verify=recv.verify)
        assert getattr(e.value, "code", "") == "unauthorized"
    decode(_signed_request("ping", sender, ts=t0 + 1.0), verify=recv.verify)  # fresh messages still pass


def test_key_files_must_be_private_and_long(tmp_path):
    f = tmp_path / "key"
    f.write_bytes(b"x" * 40)
    f.chmod(0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        load_key(str(f), env={})
    f.chmod(0o600)
    assert load_key(str(f), env={}) == b"x" * 40
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="at least 32"):
        load_key(str(f), env={})
    with pytest.raises(ValueError, match="at least 32"):
        load_key(None, env={"I3D_AUTH_KEY": "short"})
    from interactive3d.backend.service.server import Server, ServerConfig

    with pytest.raises(ValueError, match="at least 32"):
        Server(ServerConfig(auth_key=b"k", device="cpu"))


# -- isolation ----------------------------------------------------------------------------------------------
def test_retry_cache_is_per_client_and_events_go_to_subscribers():
    ts = ThreadedServer(max_sessions_per_client=2)
    try:
        a, b = Raw(ts.address, b"client-a"), Raw(ts.address, b"client-b")
        rid = "same-id"
        sa = a.ask(_req("session.create", rid=rid))["result"]["session"]
        sb = b.ask(_req("session.create", rid=rid))["result"]["session"]
        assert sa != sb  # b got its own session, not a's cached reply
        assert a.ask(_req("session.create", rid=rid))["result"]["session"] == sa  # a's retry: a's reply
        assert a.ask(_req("session.create"))["ok"] is True
        assert a.ask(_req("session.create"))["error"]["code"] == "busy"  # per-client cap
        assert b.ask(_req("session.create"))["ok"] is True  # b's own cap is untouched
        # a job on a's session: b only names it (state.get) and must not steal its events
        assert a.ask(_req("test.init", {"session": sa, "n": 20}))["ok"]
        assert b.ask(_req("state.get", {"session": sa}))["ok"]
        obs = Raw(ts.address, b"observer")
        assert obs.ask(_req("session.attach", {"session": sa}))["ok"]
        a.send(_req("test.fit", {"session": sa, "steps": 5}))  # its reply may come after its first events

        def events(r: Raw) -> list:
            out, deadline = [], time.monotonic() + 20
            while time.monotonic() < deadline:
                m = r.recv(500)
                if m is None:
                    if out and out[-1] == "done":
                        break
                    continue
                if m.kind == "reply":
                    assert m.header["ok"], m.header
                elif m.kind == "event":
                    out.append(m.event)
                    if m.event == "done":
                        break
            return out

        ev_a, ev_obs = events(a), events(obs)
        assert ev_a.count("progress") == 5 and ev_a[-1] == "done"
        assert ev_obs.count("progress") == 5 and ev_obs[-1] == "done"
        assert b.recv(300) is None  # nothing for the client that only read the state
        rows = {r["session"]: r for r in a.ask(_req("session.list"))["result"]["sessions"]}
        assert rows[sa]["step"] == 5 and rows[sa]["mine"] is True and rows[sb]["mine"] is False
        for r in (a, b, obs):
            r.close()
    finally:
        ts.stop()


# -- model folders ------------------------------------------------------------------------------------------
def test_local_models_load_only_from_the_model_folders(tmp_path):
    """Every op arg that names a local model (stage1.start / gaussians.init shap_e / stage2.refine model, segment.sam
    checkpoint) is resolved in the server's --model-dir folders: a folder outside them (even inside the data folder),
    a symlink leading out, ``..``, or a file answers invalid_args naming the model folders; a missing folder inside is
    not_found; the tiny SD inside (absolute or relative to the root) is accepted and its job runs (1 step); a hub id
    still goes to the cache (not_found when absent, offline). A server without --model-dir refuses every local path."""
    from _tiny_diffusion import save_tiny_sd

    models, data, elsewhere = tmp_path / "models", tmp_path / "data", tmp_path / "elsewhere"
    for d in (models, data, elsewhere):
        d.mkdir()
    tiny = save_tiny_sd(models / "tiny-sd")
    outside = save_tiny_sd(elsewhere / "sd")
    in_data = save_tiny_sd(data / "sd")
    (models / "escape").symlink_to(elsewhere / "sd")
    (models / "weights.bin").write_bytes(b"0" * 64)
    (elsewhere / "sam.pth").write_bytes(b"0" * 64)
    (models / "sam_link.pth").symlink_to(elsewhere / "sam.pth")
    base = {"guidance": "sd", "prompt": "a red chair", "local_files_only": True, "steps": 1, "batch": 1, "resolution": 32}
    ts = ThreadedServer(data_dirs=(str(data),), model_dirs=(str(models),))
    try:
        with Client(ts.address) as c:
            sid = c.request("session.create").result["session"]
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 64})
            refused = {outside: "invalid_args", in_data: "invalid_args", str(models / "escape"): "invalid_args",
                       str(models / "weights.bin"): "invalid_args", "../elsewhere/sd": "invalid_args",
                       str(models / "tiny-sd" / ".." / ".." / "elsewhere" / "sd"): "invalid_args",
                       str(models / "missing"): "not_found", "interactive3d-tests/no-such-model": "not_found"}
            for model, code in refused.items():
                with pytest.raises(RemoteError) as err:
                    c.request("stage1.start", {"session": sid, **base, "model": model})
                assert err.value.code == code, (model, err.value)
                if code == "invalid_args":
                    assert str(models) in err.value.message and "model folder" in err.value.message, err.value.message
            assert _code(c, "gaussians.init", {"session": sid, "kind": "shap_e", "prompt": "a chair", "model": outside}) == "invalid_args"
            assert _code(c, "stage2.refine", {"session": sid, "parts": ["p"], "guidance": "sd", "model": outside}) == "invalid_args"
            image = np.zeros((8, 8, 3), np.uint8)
            for ckpt, code in ((str(elsewhere / "sam.pth"), "invalid_args"), (str(models / "sam_link.pth"), "invalid_args"),
                               (str(models / "nope.pth"), "not_found")):
                assert _code(c, "segment.sam", {"checkpoint": ckpt, "points": [[4, 4]]}, [image]) == code, ckpt
            assert c.request("job.status", {"session": sid}).result["state"] == "idle"  # nothing started
            for model in (tiny, "tiny-sd"):  # absolute, and relative to the model folder
                r = c.request("stage1.start", {"session": sid, **base, "model": model}).result
                assert r["model"] == os.path.realpath(tiny)
                deadline = time.monotonic() + 120
                while c.request("job.status", {"session": sid}).result["state"] not in ("done", "error"):
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                assert c.request("job.status", {"session": sid}).result["state"] == "done"
    finally:
        ts.stop()
    bare = ThreadedServer(data_dirs=(str(data),), model_dirs=())
    try:
        with Client(bare.address) as c:
            sid = c.request("session.create").result["session"]
            c.request("gaussians.init", {"session": sid, "kind": "random", "n": 64})
            with pytest.raises(RemoteError) as err:
                c.request("stage1.start", {"session": sid, **base, "model": tiny})
            assert err.value.code == "invalid_args" and "--model-dir" in err.value.message
    finally:
        bare.stop()


# -- session ownership ---------------------------------------------------------------------------------------
# The session ops any client may send (they only read); every other session op is owner-only. Listed here so
# that making an op a read is a deliberate change of this test too.
READ_ONLY_OPS = {"session.attach", "job.status", "history.list", "state.get", "gaussians.save_ply", "gaussians.render",
                 "parts.list", "stage2.extract_mesh", "stage2.preview", "stage2.render"}


def test_every_session_op_is_owner_only_unless_it_only_reads():
    """Each session op of the catalogue (and the test ops), sent by a client that does not own the session with only
    the session arg: the owner-only ones (OpSpec.mutates) answer unauthorized, naming the take-over; the reads answer
    anything else. The owner's session is unchanged afterwards: same state frame, history, job (none) and owner."""
    from interactive3d.protocol.catalogue import OPS

    ts = ThreadedServer()
    try:
        with Client(ts.address) as a, Client(ts.address) as b:
            sa = a.request("session.create", {"name": "mine"}).result["session"]
            a.request("test.init", {"session": sa, "n": 64})
            a.request("parts.select", {"session": sa, "name": "p", "kind": "all"})
            before = np.array(a.request("state.get", {"session": sa}).buffers[0])
            hist = a.request("history.list", {"session": sa}).result
            session_ops = {n: sp for n, sp in ts.server.specs.items() if sp.session}
            assert set(OPS) - set(session_ops) == {n for n, sp in OPS.items() if not sp.session}
            assert {n for n, sp in OPS.items() if sp.session and not sp.mutates} == READ_ONLY_OPS
            assert all(sp.mutates for sp in session_ops.values() if sp.starts_job)
            refused, read = [], []
            for name, spec in sorted(session_ops.items()):
                try:
                    b.request(name, {"session": sa}, timeout=30.0, retries=0)
                    code = "ok"
                except RemoteError as exc:
                    code = exc.code
                    if code == "unauthorized":
                        assert "belongs to another client" in exc.message and "take_over=true" in exc.message, exc.message
                (refused if code == "unauthorized" else read).append(name)
                assert (code == "unauthorized") == spec.mutates, (name, code)
            assert len(refused) == sum(sp.mutates for sp in session_ops.values()) >= 20
            assert set(read) == READ_ONLY_OPS
            np.testing.assert_array_equal(np.array(a.request("state.get", {"session": sa}).buffers[0]), before)
            assert a.request("history.list", {"session": sa}).result == hist
            assert a.request("job.status", {"session": sa}).result["state"] == "idle"
            assert ts.server.owner(sa) == a.routing_id and sa in ts.server.sessions
    finally:
        ts.stop()


def test_take_over_by_attach_and_by_resume_of_an_open_session():
    """b takes a's session over with session.attach take_over=true: b's edits and jobs now run, a's are refused
    (unauthorized) but a still gets the session's events; a takes it back with session.resume of the open session
    (its state as it is: 40 Gaussians, no job). take_over counts against the caller's session cap (busy)."""
    ts = ThreadedServer(max_sessions_per_client=1)
    try:
        a, b = Raw(ts.address, b"owner-a"), Raw(ts.address, b"other-b")
        sa = a.ask(_req("session.create"))["result"]["session"]
        assert a.ask(_req("test.init", {"session": sa, "n": 40}))["ok"]
        assert b.ask(_req("test.init", {"session": sa, "n": 8}))["error"]["code"] == "unauthorized"
        assert b.ask(_req("session.close", {"session": sa}))["error"]["code"] == "unauthorized"
        r = b.ask(_req("session.attach", {"session": sa}))["result"]
        assert r["owner"] is False  # observing only
        assert b.ask(_req("history.undo", {"session": sa}))["error"]["code"] == "unauthorized"
        r = b.ask(_req("session.attach", {"session": sa, "take_over": True}))["result"]
        assert r["owner"] is True and ts.server.owner(sa) == b"other-b"
        assert a.ask(_req("test.init", {"session": sa, "n": 8}))["error"]["code"] == "unauthorized"
        rows = {x["session"]: x["mine"] for x in a.ask(_req("session.list"))["result"]["sessions"]}
        assert rows == {sa: False}
        b.send(_req("test.fit", {"session": sa, "steps": 3}))  # its reply may follow its first events

        def until_done(r: Raw, replies: int = 0) -> list:
            """The session's events up to "done", and ``replies`` replies (a job's reply can come after its "done"
            when its steps are quick: left in the queue, it would be taken for the next request's answer)."""
            out = []
            while "done" not in out or replies:
                m = r.recv(10000)
                assert m is not None, out
                if m.kind == "reply":
                    assert m.header["ok"], m.header
                    replies -= 1
                elif m.kind == "event" and "done" not in out:
                    out.append(m.event)
            return out

        assert until_done(b, replies=1).count("progress") == 3
        assert until_done(a).count("progress") == 3  # the previous owner still hears the session
        sc = a.ask(_req("session.create"))["result"]["session"]  # a owns nothing now: its cap of 1 is free
        assert a.ask(_req("session.resume", {"session": sa}))["error"]["code"] == "busy"  # a second one: over a's cap
        assert a.ask(_req("session.attach", {"session": sa, "take_over": True}))["error"]["code"] == "busy"
        assert ts.server.owner(sa) == b"other-b"
        assert a.ask(_req("session.close", {"session": sc}))["ok"]
        r = a.ask(_req("session.resume", {"session": sa}))["result"]
        assert (r["session"], r["count"], r["job"], r["step"]) == (sa, 40, None, 0) and ts.server.owner(sa) == b"owner-a"
        assert b.ask(_req("test.init", {"session": sa, "n": 8}))["error"]["code"] == "unauthorized"
        assert a.ask(_req("test.init", {"session": sa, "n": 8}))["result"]["count"] == 8
        for r in (a, b):
            r.close()
    finally:
        ts.stop()


# -- the small ones -----------------------------------------------------------------------------------------
def test_oversized_message_reply_names_its_request_and_the_client_fails_fast():
    """Frames within the per-frame cap (a larger one is dropped at the socket: test_server) that exceed the total
    cap together: too_large, in one round trip."""
    ts = ThreadedServer(limits=Limits(max_frame_bytes=1 << 16, max_total_bytes=1 << 16))
    try:
        with Client(ts.address) as c:
            t0 = time.monotonic()
            with pytest.raises(RemoteError) as e:
                c.request("test.echo", {}, [np.zeros(1 << 15, np.uint8)] * 3, timeout=5.0, retries=2)
            assert e.value.code == "too_large" and time.monotonic() - t0 < 4.0  # one round trip, no retries
    finally:
        ts.stop()


def test_logs_are_escaped_and_rate_limited(caplog):
    ts = ThreadedServer()
    try:
        raw = Raw(ts.address, b"flooder")
        with caplog.at_level(logging.INFO, logger="interactive3d.backend.service.server"):
            assert raw.ask(_req("evil\nFAKE LINE op=ping ok"))["error"]["code"] == "unknown_op"
            for i in range(400):  # undecodable garbage and well-formed requests for unknown ops
                raw.send([b"\xc1garbage"] if i % 2 else _req(f"no.such.op{i}"))
            got = 0
            while raw.recv(2000) is not None:
                got += 1
                if got == 400:
                    break
        assert got == 400  # every message is still answered
        lines = [r.getMessage() for r in caplog.records]
        assert not any("\n" in line for line in lines)
        assert any("evil\\nFAKE LINE" in line for line in lines)
        flood = [line for line in lines if "rejected message" in line or "no.such.op" in line]
        assert 1 <= len(flood) <= 40, len(flood)  # a burst of 20, then ~2 a second, for 400 messages
        raw.close()
    finally:
        ts.stop()


# -- fuzz -----------------------------------------------------------------------------------------------------
def _mutations(rng: random.Random, base: list[bytes]) -> list:
    """A random malformed or odd message derived from valid ones."""
    choice = rng.randrange(8)
    frames = [bytes(f) for f in rng.choice(base)]
    h = msgpack.unpackb(frames[0])
    h["id"] = uuid.uuid4().hex  # a fresh id: a repeated in-flight id is answered once, by design
    frames[0] = msgpack.packb(h)
    if choice == 0:  # flip bytes in the header
        h = bytearray(frames[0])
        for _ in range(rng.randint(1, 4)):
            h[rng.randrange(len(h))] = rng.randrange(256)
        frames[0] = bytes(h)
    elif choice == 1:  # truncate
        frames[0] = frames[0][: rng.randrange(len(frames[0]))]
    elif choice == 2:  # random bytes
        frames = [os.urandom(rng.randint(0, 64)) for _ in range(rng.randint(1, 3))]
    elif choice == 3:  # random header values
        h = msgpack.unpackb(frames[0])
        key = rng.choice(["v", "id", "op", "args", "buffers"])
        h[key] = rng.choice([None, -1, 2**63, 1.5, math.nan, "", "x" * 300, [], {}, b"\x00", [{"dtype": "float32", "shape": [-1]}]])
        frames[0] = msgpack.packb(h)
    elif choice == 4:  # random args
        h = msgpack.unpackb(frames[0])
        h["args"] = {k: rng.choice([None, -1, 2**64 - 1, 1e300, math.inf, "", "\x00", [], {"a": 1}, True, 0.0]) for k in
                     rng.sample(["session", "n", "kind", "path", "width", "height", "fov_x", "steps", "resolution", "name", "x"], 3)}
        frames[0] = msgpack.packb(h)
    elif choice == 5:  # extra or missing frames
        frames = frames + [os.urandom(rng.randint(0, 16))] if rng.random() < 0.5 else frames[:1]
    elif choice == 6:  # a valid op on a session that does not exist
        frames = _req(rng.choice(["state.get", "gaussians.render", "job.status", "history.undo"]), {"session": "nope"})
    return frames


def test_bounded_fuzz_ends_with_zero_internal_replies(tmp_path):
    ts = ThreadedServer(data_dirs=(str(tmp_path),))
    rng = random.Random(15)
    try:
        raw = Raw(ts.address)
        sid = raw.ask(_req("session.create"))["result"]["session"]
        raw.ask(_req("gaussians.init", {"session": sid, "kind": "random", "n": 32}))
        c2w = np.eye(4, dtype=np.float32)
        c2w[2, 3] = 2.0
        base = [
            _req("ping"), _req("state.get", {"session": sid}), _req("history.list", {"session": sid}),
            encode({"id": "r", "op": "gaussians.render", "args": {"session": sid, "fov_x": 0.8, "width": 16, "height": 16}}, [c2w]),
            _req("gaussians.save_ply", {"session": sid, "path": "f.ply"}),
            _req("gaussians.load_ply", {"session": sid, "path": "f.ply"}),
            encode({"id": "e", "op": "test.echo", "args": {"x": 1.0}}, [np.arange(6, dtype=np.int16)]),
        ]
        codes: dict[str, int] = {}
        sent, answered = 0, 0
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline and sent < 4000:
            raw.send(_mutations(rng, base))
            sent += 1
            while True:
                m = raw.recv(0 if sent - answered < 50 else 5000)
                if m is None:
                    break
                if m.kind == "reply":
                    answered += 1
                    code = "ok" if m.ok else m.error.get("code", "?")
                    codes[code] = codes.get(code, 0) + 1
        while answered < sent:
            m = raw.recv(5000)
            assert m is not None, f"{sent - answered} of {sent} fuzz messages unanswered; codes {codes}"
            if m.kind == "reply":
                answered += 1
                code = "ok" if m.ok else m.error.get("code", "?")
                codes[code] = codes.get(code, 0) + 1
        print(f"fuzz: {sent} messages, replies by code {codes}")
        assert sent >= 300 and codes.get("internal", 0) == 0, codes
        assert raw.ask(_req("ping"))["ok"] is True
        raw.close()
    finally:
        ts.stop()


def test_curve_encryption_option():
    """With an operator's CURVE secret the server talks only to clients that know its public key (the one derived
    from the shared key is not it; the key still signs)."""
    public, secret = zmq.curve_keypair()
    ts = ThreadedServer(auth_key=KEY, curve_secret_key=secret)
    try:
        with Client(ts.address, auth_key=KEY, curve_server_key=public) as c:
            assert c.request("ping").result["version"] == 2
        with Client(ts.address, auth_key=KEY) as plain:  # the derived server key: the handshake fails, nothing is answered
            with pytest.raises(TimeoutError):
                plain.request("ping", timeout=1.0, retries=0)
    finally:
        ts.stop()


def test_state_get_during_a_step_answers_from_the_last_snapshot():
    """A job step holds the session lock for 1.5 s: state.get answers from the job's last state frame at
    once (the same rows), and ping is not held up by a lane waiting on that lock."""
    ts = ThreadedServer()
    try:
        with Client(ts.address) as c, Client(ts.address) as other:
            sid = c.request("session.create").result["session"]
            c.request("test.init", {"session": sid, "n": 20})
            c.request("test.fit", {"session": sid, "steps": 4, "sleep": 1.5, "state_every": 1})
            deadline = time.monotonic() + 30
            while not any(m.event == "state" for m in c.poll(200)):  # the first frame arrives after step 1
                assert time.monotonic() < deadline
            time.sleep(0.2)  # well inside step 2, which holds the lock
            t0 = time.perf_counter()
            frame = other.request("state.get", {"session": sid}, timeout=10).buffers[0]
            took = time.perf_counter() - t0
            other.request("history.list", {"session": sid}, timeout=10)  # waits on the lane: a step at most
            t1 = time.perf_counter()
            other.request("ping", timeout=10)
            assert frame.shape == (20, 14) and took < 1.0 and time.perf_counter() - t1 < 1.0, took
            c.request("job.cancel", {"session": sid})
    finally:
        ts.stop()
