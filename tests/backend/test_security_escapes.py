"""Issue 25's attacks replayed against a real server over real ZeroMQ sockets; each must be refused with a
typed error and nothing lost for other clients.

Files read through an uploaded mesh, client files taken for sessions, replay-floor lock-out, memory pinned
before authentication, nested arguments, extract_mesh's side files, orphaned temp files, session caps and
idle reaping, readers starving the owner, byte estimates, swaps after the check.
"""

from __future__ import annotations

import base64
import json
import os
import time

import numpy as np
import pytest
from _server_helpers import ThreadedServer
from interactive3d.protocol.client import Client, RemoteError

EMPTY = [np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)]
TRIANGLE = np.float32([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).tobytes() + np.uint16([0, 1, 2]).tobytes()


def _code(c: Client, op: str, args: dict, buffers=()) -> str:
    with pytest.raises(RemoteError) as err:
        c.request(op, args, list(buffers))
    return err.value.code


def _frame(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8)


def _gltf(uri: str) -> bytes:
    """A one-triangle glTF whose only buffer is ``uri`` (positions then uint16 indices, 42 bytes)."""
    return json.dumps({
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"uri": uri, "byteLength": len(TRIANGLE)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 6}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"},
        ],
    }).encode()


OBJ = b"mtllib %s\nusemtl m\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


# -- 1. files named inside an uploaded mesh -----------------------------------------------------------------
def test_meshes_cannot_name_files_outside_the_data_folders(sandboxed, tmp_path):
    """A glTF whose buffer URI is ``../outside.bin`` or an absolute path, and an OBJ whose ``mtllib`` is outside:
    uploaded as a frame or read from the data folder, all are invalid_args, and the named files are never even
    opened (they are FIFOs: opening one for reading would block the request forever). The same glTF with its
    buffer embedded as a data: URI, or next to it inside the data folder, loads (3 vertices → 50 Gaussians)."""
    c, root, _ = sandboxed
    for name in ("outside.bin", "outside.mtl"):
        os.mkfifo(tmp_path / name)
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 7})
    args = {"session": sid, "kind": "mesh", "n": 50}
    attacks = [("m.gltf", _gltf("../outside.bin")), ("m.gltf", _gltf(str(tmp_path / "outside.bin"))),
               ("m.gltf", _gltf("file://" + str(tmp_path / "outside.bin"))), ("m.obj", OBJ % b"../outside.mtl"),
               ("m.obj", OBJ % str(tmp_path / "outside.mtl").encode()), ("m.gltf", _gltf("inside.bin"))]
    (root / "inside.bin").write_bytes(TRIANGLE)
    for name, body in attacks:  # uploads refer to nothing, not even files inside the data folder
        assert _code(c, "gaussians.init", {**args, "filename": name}, [*EMPTY, _frame(body)]) == "invalid_args", (name, body[:80])
    for i, (name, body) in enumerate(attacks[:-1]):  # by path: only files inside the data folders
        (root / f"a{i}{os.path.splitext(name)[1]}").write_bytes(body)
        assert _code(c, "gaussians.init", {**args, "path": f"a{i}{os.path.splitext(name)[1]}"}) == "invalid_args", name
    assert c.request("state.get", {"session": sid}).buffers[0].shape == (7, 14)  # nothing lost
    embedded = _gltf("data:application/octet-stream;base64," + base64.b64encode(TRIANGLE).decode())
    assert c.request("gaussians.init", {**args, "filename": "e.gltf"}, [*EMPTY, _frame(embedded)]).result["count"] == 50
    (root / "ok.gltf").write_bytes(_gltf("inside.bin"))
    assert c.request("gaussians.init", {**args, "path": "ok.gltf"}).result["count"] == 50
    # an archive or a format that fetches is not parsed at all
    assert _code(c, "gaussians.init", {**args, "filename": "m.zip"}, [*EMPTY, _frame(b"PK\x03\x04" + bytes(40))]) == "invalid_args"


# -- 2. checkpoints out of the requests' reach; 10. orphaned temp files --------------------------------------
class _Payload:
    """Unpickling this makes a folder: proof that a checkpoint load ran a client's code."""

    def __init__(self, proof: str) -> None:
        self.proof = proof

    def __reduce__(self):
        return (os.mkdir, (self.proof,))


def test_client_files_are_never_sessions_and_cleanup_spares_them(tmp_path):
    """The issue's attack: with the default data folder (<state>/data), gaussians.save_ply to ``checkpoint.pt``
    (and to ``x/checkpoint.pt``) shows no session in session.list, session.resume of ``data`` is not_found; a
    pickle that would run code, planted in a session folder, is refused without running (weights_only); the
    30-day clean-up with every file 40 days old deletes the one real stale session and nothing of the data
    folder; a data folder overlapping the checkpoints is refused at start-up."""
    import torch
    from interactive3d.backend.service import checkpoint as ck
    from interactive3d.backend.service.server import ServerConfig

    state = tmp_path / "state"
    ts = ThreadedServer(state_dir=str(state))
    c = Client(ts.address)
    try:
        data = state / "data"
        data.mkdir(parents=True)
        (data / "x").mkdir()
        sid = c.request("session.create").result["session"]
        c.request("gaussians.init", {"session": sid, "kind": "random", "n": 9})
        for p in ("checkpoint.pt", "x/checkpoint.pt"):
            c.request("gaussians.save_ply", {"session": sid, "path": p})
        c.request("session.close", {"session": sid, "checkpoint": True})
        assert [x["session"] for x in c.request("session.list").result["checkpoints"]] == [sid]
        for bad in ("data", "x", "sessions", ".."):
            assert _code(c, "session.resume", {"session": bad}) in ("not_found", "invalid_args")
        proof = tmp_path / "pwned"
        forged = state / "sessions" / "forged"
        forged.mkdir()
        (forged / ".i3d-session").write_text("forged")
        torch.save({"format": ck.FORMAT_VERSION, "session": "forged", "x": _Payload(str(proof))}, forged / "checkpoint.pt")
        assert _code(c, "session.resume", {"session": "forged"}) == "not_found"
        assert not proof.exists()  # the pickle never ran
        assert c.request("session.resume", {"session": sid}).result["count"] == 9
        c.request("session.close", {"session": sid, "checkpoint": True})
    finally:
        c.close()
        ts.stop()
    old = time.time() - 40 * 86400
    for root, dirs, names in os.walk(state):
        for n in dirs + names:
            os.utime(os.path.join(root, n), (old, old), follow_symlinks=False)
    assert sorted(ck.prune(state, 30 * 86400)) == sorted(["forged", sid])  # marked session folders, and only they
    assert sorted(p.name for p in data.iterdir()) == ["checkpoint.pt", "x"] and (data / "x" / "checkpoint.pt").is_file()
    for dirs in ((str(state),), (str(state / "sessions" / "y"),), (str(tmp_path),)):
        with pytest.raises(ValueError, match="overlaps the checkpoint folder"):
            ServerConfig(state_dir=str(state), data_dirs=dirs).check()


def test_startup_removes_only_its_own_orphaned_temp_files(tmp_path):
    """Temp files a killed checkpoint write left (in a session folder and its history) go at start-up; a
    ``.tmp-`` file in the data folder or in a folder of the state dir the server did not mark stays."""
    from interactive3d.backend.service import checkpoint as ck
    from interactive3d.backend.service.session import Session
    from interactive3d.backend.stage1.gaussians import init_random

    s = Session("s1")
    s.gaussians = init_random(5, seed=0)
    s.record("edit")
    path = ck.write(tmp_path, ck.capture(s))
    orphans = [path.parent / ".tmp-a1.pt", path.parent / "history" / ".tmp-b2.pt"]
    kept = [tmp_path / "data" / ".tmp-c3.pt", tmp_path / "sessions" / "alien" / ".tmp-d4.pt"]
    for f in orphans + kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
    assert ck.remove_orphans(tmp_path) == 2
    assert not any(f.exists() for f in orphans) and all(f.exists() for f in kept)
    assert ck.restore_session(ck.read(tmp_path, "s1")).gaussians.n == 5


# -- 3. the replay floor ----------------------------------------------------------------------------------
KEY = b"k" * 32


def _signed_at(ts: float, op: str = "ping") -> list:
    """A correctly signed request stamped ``ts`` (the sender's clock), without touching this process's clock."""
    import secrets
    import uuid

    from interactive3d.protocol.auth import Signer
    from interactive3d.protocol.codec import PROTOCOL_VERSION, pack_header

    signer = Signer(KEY)
    raw = pack_header({"v": PROTOCOL_VERSION, "id": uuid.uuid4().hex, "op": op, "args": {}, "buffers": [],
                       "auth": {"ts": ts, "nonce": secrets.token_hex(16), "sig": bytes(32)}})
    return [raw[:-32] + signer._digest(signer.sign_domain, raw, [])]


def test_a_future_stamped_flood_cannot_lock_others_out():
    """The issue's attack, scaled to a store of 300 nonces: 900 correctly signed pings stamped now + 280 s (inside
    the ±300 s window) fill the store for messages stamped ahead (the first 300 pass, the rest are unauthorized);
    the floor stays at or below the server's clock, and a fresh request from another client succeeds at once.
    Replays of flooded messages stay refused."""
    import zmq
    from interactive3d.protocol.auth import curve_client_options
    from interactive3d.protocol.codec import decode

    ts = ThreadedServer(auth_key=KEY)
    ts.server._signer.max_nonces = 300  # the default 200,000 behaves the same, only slower to fill
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for opt, value in curve_client_options(KEY):  # a key holder: its transport passes the handshake
        sock.setsockopt(opt, value)
    sock.connect(ts.address)
    try:
        flood = [_signed_at(time.time() + 280) for _ in range(900)]
        codes = []
        for m in flood:
            sock.send_multipart(m)
            assert sock.poll(10_000)
            h = decode(sock.recv_multipart()).header
            codes.append("ok" if h["ok"] else h["error"]["code"])
        assert codes[:300] == ["ok"] * 300 and set(codes[300:]) == {"unauthorized"}
        assert ts.server._signer.floor <= time.time()
        with Client(ts.address, auth_key=KEY) as other:
            assert other.request("session.create").result["session"]
        sock.send_multipart(flood[0])  # a replay of an accepted flood message
        assert sock.poll(10_000) and decode(sock.recv_multipart()).header["error"]["code"] == "unauthorized"
    finally:
        sock.close(0)
        ts.stop()


# -- 9. no internal from nested or malformed arguments -----------------------------------------------------
def test_deep_nesting_and_bad_hub_ids_are_invalid_args(sandboxed):
    """indices/parts lists nested 1,000 deep and hub ids like ``x/..`` (with local_files_only) were ``internal``
    (RecursionError, HFValidationError): now invalid_args, and the session's Gaussians are untouched."""
    c, _, _ = sandboxed
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 10})
    deep = [0]
    for _ in range(1000):
        deep = [deep]
    for op, args in (("parts.select", {"name": "a", "kind": "indices", "indices": deep}), ("parts.remove", {"indices": deep}),
                     ("state.get", {"parts": deep}), ("gaussians.render", {"width": {"a": deep}})):
        assert _code(c, op, {"session": sid, **args}) == "invalid_args", op
    for model in ("x/..", "../x", "a--b/c", "x/y/z", "."):
        code = _code(c, "stage1.start", {"session": sid, "prompt": "a cat", "model": model, "local_files_only": True, "steps": 1})
        assert code == "invalid_args", (model, code)
    assert c.request("state.get", {"session": sid}).buffers[0].shape == (10, 14)


# -- 7. session caps per address, idle reaping, one identity per process -----------------------------------
def test_fresh_identities_cannot_take_every_session(tmp_path):
    """The issue's attack: 10 sockets with fresh routing ids each ask for sessions. Over IPC the peer is the
    process, so the 10 together get max_sessions_per_address (4), then busy; another process still gets one."""
    import subprocess
    import sys
    import uuid

    addr = f"ipc://{tmp_path}/s.sock"
    ts = ThreadedServer(bind=addr, max_sessions=8, max_sessions_per_client=2, max_sessions_per_address=4)
    try:
        codes = []
        for _ in range(10):
            with Client(addr, routing_id=uuid.uuid4().hex.encode()) as c:
                for _ in range(2):
                    try:
                        c.request("session.create")
                        codes.append("ok")
                    except RemoteError as e:
                        codes.append(e.code)
        assert codes.count("ok") == 4 and set(codes[4:]) == {"busy"}
        other = ("from interactive3d.protocol.client import Client\n"
                 f"print(Client({addr!r}).request('session.create').result['session'])")
        out = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and len(out.stdout.strip()) == 16, out.stderr[-2000:]
    finally:
        ts.stop()


def test_idle_sessions_are_checkpointed_and_closed(tmp_path):
    """idle_timeout 1 s: a session nobody names for ~3 s leaves the open list for the checkpoints and comes back
    whole with session.resume; one with a job running stays open."""
    ts = ThreadedServer(state_dir=str(tmp_path / "state"), idle_timeout=1.0)
    c = Client(ts.address)
    try:
        idle, busy = (c.request("session.create").result["session"] for _ in range(2))
        for sid in (idle, busy):
            c.request("test.init", {"session": sid, "n": 12})
        c.request("test.fit", {"session": busy, "steps": 1000, "sleep": 0.02})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = c.request("session.list").result
            if idle not in {x["session"] for x in listed["sessions"]}:
                break
            time.sleep(0.2)
        assert {x["session"] for x in listed["sessions"]} == {busy}
        assert idle in {x["session"] for x in listed["checkpoints"]}
        assert c.request("session.resume", {"session": idle}).result["count"] == 12
        c.request("job.cancel", {"session": busy})
    finally:
        c.close()
        ts.stop()


def test_one_identity_per_process():
    """Clients made one after another share the process's identity (a reconnecting program owns its sessions
    again); one made while another is open gets a different one."""
    a = Client("tcp://127.0.0.1:9")
    rid = a.routing_id
    b = Client("tcp://127.0.0.1:9")
    assert b.routing_id != rid
    a.close()
    b.close()
    with Client("tcp://127.0.0.1:9") as again:
        assert again.routing_id == rid


# -- 6. readers do not starve the owner ----------------------------------------------------------------------
def test_another_clients_render_does_not_stop_the_owners_job():
    """The issue's attack, on gaussians.render: while another client's long render (16 views of 256², 20,000
    Gaussians: seconds even on an idle machine) runs, the owner's job keeps stepping (it used to stop: the render held the session lock), a second
    read from that client is busy, and session.list answers."""
    ts = ThreadedServer()
    owner, other = Client(ts.address), Client(ts.address)
    try:
        sid = owner.request("session.create").result["session"]
        owner.request("test.init", {"session": sid, "n": 20_000})
        owner.request("test.fit", {"session": sid, "steps": 100_000, "sleep": 0.01})
        c2w = np.tile(np.float32([[1, 0, 0, 0], [0, 0, -1, -3], [0, 1, 0, 0], [0, 0, 0, 1]]), (16, 1, 1))
        big = other.send("gaussians.render", {"session": sid, "width": 256, "height": 256, "fov_x": 0.8}, [c2w])
        time.sleep(0.2)
        step0 = owner.request("job.status", {"session": sid}).result["step"]
        with pytest.raises(RemoteError) as err:
            other.request("gaussians.render", {"session": sid, "width": 8, "height": 8, "fov_x": 0.8}, [c2w[:1]])
        assert err.value.code == "busy"
        assert [x["session"] for x in owner.request("session.list").result["sessions"]] == [sid]
        done, steps_during = False, 0
        deadline = time.monotonic() + 300
        while not done and time.monotonic() < deadline:
            for msg in other.poll(200):
                done = done or msg.header.get("id") == big
            steps_during = owner.request("job.status", {"session": sid}).result["step"] - step0
        assert done and steps_during > 0
        owner.request("job.cancel", {"session": sid})
    finally:
        owner.close()
        other.close()
        ts.stop()


# -- 8. estimates from real inputs, a budget under the process's limits --------------------------------------
def test_splat_estimates_use_the_declared_count(tmp_path):
    """A 0.1 KiB .spz declaring 12 M Gaussians is too_large before decoding (its compressed size said ~2);
    a 2,000-Gaussian SH-3 .ply (248-byte rows) loads under an 8 MiB budget that the old 56-byte-row estimate
    (8,857 Gaussians × 1.5 KiB = 13 MiB) refused."""
    import gzip
    import struct

    from interactive3d.backend.stage1.gaussians import init_random
    from interactive3d.backend.stage1 import init as init_mod

    ts = ThreadedServer(data_dirs=(str(tmp_path),), memory_budget=8 << 20)
    c = Client(ts.address)
    try:
        sid = c.request("session.create").result["session"]
        bomb = gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 2, 12_000_000, 0, 12, 0, 0) + bytes(64))
        assert len(bomb) < 200
        assert _code(c, "gaussians.load_ply", {"session": sid, "filename": "x.spz"}, [_frame(bomb)]) == "too_large"
        init_mod.save_ply(init_random(2000, seed=1, sh_degree=3), tmp_path / "sh3.ply")
        assert (tmp_path / "sh3.ply").stat().st_size // 56 * 1536 > 8 << 20
        assert c.request("gaussians.load_ply", {"session": sid, "path": "sh3.ply"}).result["count"] == 2000
    finally:
        c.close()
        ts.stop()


def test_stage2_render_and_texture_bake_are_estimated_in_bytes():
    """stage2.render against a 256 MiB budget, on a distilled 4-level field: one 90×90 view at 128 samples (1 M
    samples, far under the old 268 M-sample cap; measured at 16 levels it peaks at 3.1 GB) is too_large, naming the
    views, size, samples and levels; 2 views of 32×32 at 16 samples are served ([2,32,32,3] rgb). The estimate's
    per-sample and per-ray figures are above the measured ones (op_memory.py at 16 levels: 2,434 B per sample,
    3,155 B with normals, 465 B per ray). extract_mesh counts its texels (TEXEL_BYTES) and its field-query chunk: a
    1024² texture (629 MB of texels) is too_large; at 64³ with a 512² texture (16 MiB + 157 MB) the chunk of field
    queries shrinks from 2¹⁸ (measured +878 MiB at 16 levels) to what the budget leaves, and the textured mesh is
    made."""
    from interactive3d.backend.service import costs

    assert costs.field_query_bytes(1, 16) >= 2434 and 2 * costs.field_query_bytes(1, 16) >= 3155 and costs.RAY_BYTES >= 465
    ts = ThreadedServer(memory_budget=256 << 20)
    c = Client(ts.address)
    try:
        sid = c.request("session.create").result["session"]
        c.request("gaussians.init", {"session": sid, "kind": "random", "n": 200, "radius": 0.5})
        c.request("stage2.distill", {"session": sid, "steps": 1, "resolution": 16, "view_pool": 2, "rays_per_step": 64,
                                           "n_samples": 8, "levels": 4, "log2_table_size": 10})
        deadline = time.monotonic() + 120
        while c.request("job.status", {"session": sid}).result["state"] not in ("done", "error") and time.monotonic() < deadline:
            time.sleep(0.2)
        cam = np.float32([[1, 0, 0, 0], [0, 0, -1, -3], [0, 1, 0, 0], [0, 0, 0, 1]])
        args = {"session": sid, "fov_x": 0.8, "width": 90, "height": 90, "n_samples": 128}
        with pytest.raises(RemoteError) as err:
            c.request("stage2.render", args, [cam])
        assert err.value.code == "too_large", err.value
        assert "1 view(s) of 90×90, 128 samples per ray, 4 hash-grid levels, normals" in err.value.message
        out = c.request("stage2.render", {**args, "width": 32, "height": 32, "n_samples": 16}, [np.stack([cam, cam])])
        assert out.buffers[0].shape == (2, 32, 32, 3)
        assert 1024 ** 2 * costs.TEXEL_BYTES > 256 << 20
        with pytest.raises(RemoteError) as err:
            c.request("stage2.extract_mesh", {"session": sid, "resolution": 64, "texture": True, "texture_size": 1024})
        assert err.value.code == "too_large" and "1024² texture" in err.value.message, err.value
        room = (256 << 20) - 64 ** 3 * costs.MESH_VOXEL_BYTES - 512 ** 2 * costs.TEXEL_BYTES
        assert 0 < room < costs.field_query_bytes(1 << 18, 4)  # the fixed 2^18 chunk would not fit
        mesh = c.request("stage2.extract_mesh", {"session": sid, "resolution": 64, "texture": True, "texture_size": 512},
                         timeout=300.0)
        r = mesh.result
        assert r["faces"] > 0 and r["textured"] and np.array(mesh.buffers[4]).shape == (512, 512, 4), r
    finally:
        c.close()
        ts.stop()


def test_budget_respects_the_address_space_limit():
    """Under ``ulimit -v`` (RLIMIT_AS) = what the process maps now + 1 GiB, the CPU budget's free memory is at most
    1 GiB, whatever MemAvailable says."""
    import subprocess
    import sys

    code = ("import resource, os\n"
            "from interactive3d.backend.service import costs\n"
            "import torch\n"
            "used = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))\n"
            "print(costs.available_bytes(torch.device('cpu')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0 <= int(out.stdout.split()[-1]) <= 1 << 30


# -- 5. swapped after the check ----------------------------------------------------------------------------
def test_swaps_after_the_check_cannot_redirect_reads_or_writes(tmp_path):
    """Each swap done between the check (resolve_*) and the use: a folder exchanged for a symlink to an outside
    folder (read and write), the file exchanged for a FIFO or a symlink to /dev/zero — all invalid_args, at once,
    and nothing outside is read or written."""
    import shutil

    from interactive3d.backend.service import files
    from interactive3d.protocol.errors import InvalidArgs

    root, outside = tmp_path / "data", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "x.ply").write_bytes(b"inside")
    (outside / "x.ply").write_bytes(b"outside")
    roots = (str(root.resolve()),)

    def swap_folder():
        shutil.move(str(root / "d"), str(root / "d-away"))
        (root / "d").symlink_to(outside)

    def unswap():
        (root / "d").unlink()
        shutil.move(str(root / "d-away"), str(root / "d"))

    real = files.resolve_read(roots, "d/x.ply", 1 << 20)
    assert files.read_bytes(roots, real, 1 << 20) == b"inside"
    swap_folder()
    with pytest.raises(InvalidArgs):
        files.read_bytes(roots, real, 1 << 20)
    unswap()
    target = files.resolve_write(roots, "d/new.ply")
    swap_folder()
    with pytest.raises(InvalidArgs):
        files.write_bytes(roots, target, [b"x"])
    unswap()
    assert sorted(p.name for p in outside.iterdir()) == ["x.ply"]
    files.write_bytes(roots, target, [b"written"])
    assert (root / "d" / "new.ply").read_bytes() == b"written"
    for make in (lambda p: os.mkfifo(p), lambda p: p.symlink_to("/dev/zero")):
        real = files.resolve_read(roots, "d/x.ply", 1 << 20)
        (root / "d" / "x.ply").unlink()
        make(root / "d" / "x.ply")
        t0 = time.monotonic()
        with pytest.raises(InvalidArgs):
            files.read_bytes(roots, real, 1 << 20)
        assert time.monotonic() - t0 < 10  # refused on the handle, not read or waited on
        (root / "d" / "x.ply").unlink()
        (root / "d" / "x.ply").write_bytes(b"inside")


def test_a_folder_swapped_during_requests_never_leads_outside(sandboxed, tmp_path):
    """The issue's race, end to end: a thread exchanges data/d with a symlink to an outside folder while 150
    load_ply and 150 save_ply requests name d/: no load returns the outside file's 20 Gaussians and no save
    writes outside (the outside folder keeps its one file)."""
    import shutil
    import threading

    from interactive3d.backend.stage1 import init as init_mod
    from interactive3d.backend.stage1.gaussians import init_random

    c, root, _ = sandboxed
    outside = tmp_path / "outside"
    (root / "d").mkdir()
    outside.mkdir()
    init_mod.save_ply(init_random(10, seed=1), root / "d" / "x.ply")
    init_mod.save_ply(init_random(20, seed=2), outside / "x.ply")
    sid = c.request("session.create").result["session"]
    c.request("gaussians.init", {"session": sid, "kind": "random", "n": 5})
    stop = threading.Event()

    def swapper():
        while not stop.is_set():
            shutil.move(str(root / "d"), str(root / "d-away"))
            (root / "d").symlink_to(outside)
            time.sleep(0.001)
            (root / "d").unlink()
            shutil.move(str(root / "d-away"), str(root / "d"))
            time.sleep(0.001)

    t = threading.Thread(target=swapper)
    t.start()
    counts = []
    try:
        for _ in range(150):
            try:
                counts.append(c.request("gaussians.load_ply", {"session": sid, "path": "d/x.ply"}).result["count"])
            except RemoteError as e:
                counts.append(e.code)
            try:
                c.request("gaussians.save_ply", {"session": sid, "path": "d/out.ply"})
            except RemoteError as e:
                assert e.code in ("invalid_args", "not_found"), e
    finally:
        stop.set()
        t.join()
    assert 20 not in counts and set(counts) <= {10, "invalid_args", "not_found"}
    assert sorted(p.name for p in outside.iterdir()) == ["x.ply"]


# -- 4. nothing held for peers without the key ---------------------------------------------------------------
def _curve_dealer(address: str, server_key: bytes | None):
    """A DEALER without the shared key: no CURVE (server_key None) or CURVE with the server's public key (public
    knowledge) and a fresh client pair. Its sends are bounded: a DEALER whose handshake was refused has no pipe."""
    import zmq

    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.SNDTIMEO, 2000)
    if server_key is not None:
        pub, sec = zmq.curve_keypair()
        for opt, v in ((zmq.CURVE_SERVERKEY, server_key), (zmq.CURVE_PUBLICKEY, pub), (zmq.CURVE_SECRETKEY, sec)):
            peer.setsockopt(opt, v)
    peer.connect(address)
    return peer


def test_keyless_peers_never_get_a_frame_to_the_server():
    """A server with a key and no --curve-secret-file (the default): a peer without CURVE, and one that knows the
    server's public key but not the shared key, fail the handshake, so nothing they send — a 64 MiB frame, or 64
    frames with MORE set and never the last — reaches the server: no reply at all. The same with an operator's
    CURVE secret. A key holder's Client (no CURVE argument: the server key derives from the shared key) is
    answered throughout."""
    import zmq
    from interactive3d.protocol.auth import curve_server_public
    from interactive3d.protocol.codec import encode

    public, secret = zmq.curve_keypair()
    for config, server_key in (({}, curve_server_public(KEY)), ({"curve_secret_key": secret}, public)):
        ts = ThreadedServer(auth_key=KEY, **config)
        peers = [_curve_dealer(ts.address, None), _curve_dealer(ts.address, server_key)]
        try:
            for peer in peers:
                try:
                    peer.send_multipart([*encode({"id": "x", "op": "ping", "args": {}}), bytes(64 << 20)], copy=False)
                    for _ in range(64):
                        peer.send(bytes(1 << 20), zmq.SNDMORE)
                except zmq.Again:
                    pass  # the gate dropped the connection before all of it was queued
            with Client(ts.address, auth_key=KEY, curve_server_key=None if not config else public) as c:
                for _ in range(10):
                    assert c.request("ping", timeout=10.0).result["version"] >= 1
            assert [peer.poll(3000) for peer in peers] == [0, 0]  # the server never saw them
        finally:
            for peer in peers:
                peer.close(0)
            ts.stop()


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _zmtp_flood(port: int, frames: int, frame_bytes: int, finish: bool):
    """A ZeroMQ peer written by hand (ZMTP 3.0, NULL mechanism, as a DEALER): ``frames`` frames of ``frame_bytes``
    with MORE set, then (``finish``) an empty last frame. libzmq's own DEALER never sends an unfinished message
    (it flushes whole messages only); this is what an attacker writes instead. Returns (bytes of frames the server
    took before it closed the connection — all of them when it never did, the open socket: the caller closes it
    after reading the server's memory)."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
    ready = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    chunk = b"\x03" + frame_bytes.to_bytes(8, "big") + bytes(frame_bytes)  # LONG | MORE
    sent = 0
    try:
        sock.sendall(greeting + b"\x04" + bytes([len(ready)]) + ready)
        for _ in range(frames):
            sock.sendall(chunk)
            sent += len(chunk)
        if finish:
            sock.sendall(b"\x00\x00")
    except OSError:  # the server closed the connection (reset, broken pipe)
        pass
    return sent, sock


def _serve(tmp_path, key: bytes | None):
    """An ``i3d serve`` subprocess on a free loopback port (with a key file when ``key``); (process, port)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "interactive3d.cli", "serve", "--bind", f"tcp://127.0.0.1:{port}", "--device", "cpu",
           "--state-dir", str(tmp_path / "state")]
    if key is not None:
        (tmp_path / "key").write_bytes(key)
        (tmp_path / "key").chmod(0o600)
        cmd += ["--auth-key-file", str(tmp_path / "key")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("I3D_AUTH")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    with Client(f"tcp://127.0.0.1:{port}", auth_key=key) as c:
        deadline = time.monotonic() + 180
        while True:
            try:
                c.request("ping", timeout=2.0, retries=0)
                return proc, port
            except (TimeoutError, RemoteError):  # not up yet, or a knock signed before it started
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]


def test_unfinished_messages_and_big_frames_pin_no_memory_in_a_served_backend(tmp_path):
    """The issue's attack on a real ``i3d serve`` with a key: a hand-written ZeroMQ peer without the key streams
    300 MiB of frames with MORE set and never the last, and sends an unsigned message with one 300 MiB frame;
    libzmq DEALERs without the key (plain, and CURVE with random keys) send another 300 MiB unsigned frame. The
    server takes none of it (it closes the hand-written peer after its greeting: < 300 MiB sent), its RSS, sampled
    through the attack, grows by < 64 MiB, and a key holder's 20 pings are all answered within their 5 s timeout.
    The control — the same flood against a keyless server (loopback, the residual local-user risk) — grows its
    RSS by > 200 MiB, so the measurement sees the attack when it lands."""
    import threading

    from interactive3d.protocol.auth import curve_server_public
    from interactive3d.protocol.codec import encode

    frames, size = 300, 1 << 20
    key = b"s" * 40
    (tmp_path / "keyed").mkdir()
    proc, port = _serve(tmp_path / "keyed", key)
    address = f"tcp://127.0.0.1:{port}"
    held = []
    try:
        base = peak = _rss(proc.pid)
        sent = {}

        def attack():
            sent["more"], sock = _zmtp_flood(port, frames, size, finish=False)
            held.append(sock)
            sent["big"], sock = _zmtp_flood(port, 1, frames * size, finish=True)
            held.append(sock)
            big = bytes(frames * size)
            for server_key in (None, curve_server_public(key)):
                peer = _curve_dealer(address, server_key)
                held.append(peer)
                try:
                    peer.send_multipart([*encode({"id": "x", "op": "ping", "args": {}}), big], copy=False)
                except Exception:  # noqa: BLE001 - a refused send is the point
                    pass

        t = threading.Thread(target=attack)
        t.start()
        latencies = []
        with Client(address, auth_key=key) as c:
            while t.is_alive() or len(latencies) < 20:
                t0 = time.monotonic()
                assert c.request("ping", timeout=5.0, retries=0).result["version"] >= 1
                latencies.append(time.monotonic() - t0)
                peak = max(peak, _rss(proc.pid))
                time.sleep(0.05)
        t.join()
        peak = max(peak, _rss(proc.pid))
        print(f"keyed: sent {sent}, RSS {base >> 20} → peak {peak >> 20} MiB, {len(latencies)} pings, max {max(latencies) * 1e3:.0f} ms")
        assert sent["more"] < frames * size and sent["big"] < frames * size
        assert peak - base < 64 << 20
    finally:
        for x in held:
            x.close()
        proc.terminate()
        proc.wait(60)
    (tmp_path / "keyless").mkdir()
    proc, port = _serve(tmp_path / "keyless", None)
    try:
        base = _rss(proc.pid)
        more, sock = _zmtp_flood(port, frames, size, finish=False)
        try:
            deadline = time.monotonic() + 60
            while _rss(proc.pid) - base < 200 << 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            grown = _rss(proc.pid) - base
        finally:
            sock.close()
        print(f"keyless control: sent {more >> 20} MiB unfinished, RSS grew {grown >> 20} MiB")
        assert more == frames * (size + 9) and grown > 200 << 20
    finally:
        proc.terminate()
        proc.wait(60)


def test_an_unbundled_sog_reads_only_images_beside_it(sandboxed, tmp_path):
    """An unbundled SOG given by path (meta.json in a data folder) loads with its images read like any request
    path; a meta.json naming ``../outside.webp`` or an absolute path is invalid_args, and a symlink beside it
    leading out of the data folders is refused too (the file outside is never read)."""
    import shutil
    from pathlib import Path

    c, root, _ = sandboxed
    sid = c.request("session.create").result["session"]
    src = Path(__file__).resolve().parents[1] / "fixtures" / "splats" / "source_sog"
    good = root / "sog"
    shutil.copytree(src, good)
    assert c.request("gaussians.load_ply", {"session": sid, "path": str(good / "meta.json")}).result["count"] == 300
    meta = json.loads((good / "meta.json").read_text())
    outside = tmp_path / "outside.webp"
    shutil.copy(good / meta["means"]["files"][0], outside)
    for name in ("../../outside.webp", str(outside)):
        bad = dict(meta, means=dict(meta["means"], files=[name, meta["means"]["files"][1]]))
        (good / "meta.json").write_text(json.dumps(bad))
        assert _code(c, "gaussians.load_ply", {"session": sid, "path": str(good / "meta.json")}) == "invalid_args"
    link = meta["means"]["files"][0]
    (good / link).unlink()
    (good / link).symlink_to(outside)
    (good / "meta.json").write_text(json.dumps(meta))
    assert _code(c, "gaussians.load_ply", {"session": sid, "path": str(good / "meta.json")}) == "invalid_args"


def test_a_clients_timeout_names_the_likely_cause():
    """When nothing answers, Client's error says why from its connection's handshake events: a keyless client at
    a server with a key (it requires CURVE), a client with a key at a keyless server (no CURVE there), another
    key (the keys differ), an operator's CURVE key the client was not given, and no listener at all."""
    import zmq
    from interactive3d.protocol.client import ConnectionLost

    public, secret = zmq.curve_keypair()
    keyed, keyless, own = ThreadedServer(auth_key=KEY), ThreadedServer(), ThreadedServer(auth_key=KEY, curve_secret_key=secret)
    cases = [(keyed.address, {}, "requires the CURVE handshake"), (keyless.address, {"auth_key": KEY}, "does not speak CURVE"),
             (keyed.address, {"auth_key": b"o" * 32}, "auth key differs"), (own.address, {"auth_key": KEY}, "--curve-secret-file"),
             ("tcp://127.0.0.1:9", {}, "nothing accepted the connection")]
    try:
        for address, kw, why in cases:
            with Client(address, **kw) as c:
                with pytest.raises(ConnectionLost, match=why):
                    c.request("ping", timeout=1.5, retries=0)
        with Client(own.address, auth_key=KEY, curve_server_key=public) as c:
            assert c.request("ping").result["version"] >= 1
    finally:
        for ts in (keyed, keyless, own):
            ts.stop()


def test_keyless_servers_bind_loopback_only():
    """Without a key a server refuses every bind that is not loopback: any address, an interface name, a DNS name
    that merely starts with 127., IPv6's any; it accepts 127.0.0.0/8, ::1, localhost and ipc://. A keyless
    server started on tcp://127.0.0.1:* is bound there. (Its residual risk — any local user who can reach the
    port may send it messages and hold memory — is documented in the protocol doc and the README.)"""
    from interactive3d.backend.service.server import ServerConfig

    for bind in ("tcp://0.0.0.0:0", "tcp://*:0", "tcp://[::]:0", "tcp://eth0:0", "tcp://127.0.0.1.example.com:0", "tcp://10.0.0.1:0"):
        with pytest.raises(ValueError, match="needs an auth key"):
            ServerConfig(bind=bind).check()
        ServerConfig(bind=bind, auth_key=KEY).check()  # with a key: allowed (and CURVE-gated)
    for bind in ("tcp://127.0.0.1:0", "tcp://127.8.9.10:0", "tcp://[::1]:0", "tcp://localhost:0", "ipc:///tmp/x.sock"):
        ServerConfig(bind=bind).check()
    ts = ThreadedServer()
    try:
        assert ts.address.startswith("tcp://127.0.0.1:")
    finally:
        ts.stop()
