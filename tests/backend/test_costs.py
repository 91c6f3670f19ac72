"""Cost accounting (backend/service/costs.py): the worst in-cap request of every op that allocates in
proportion to its arguments is refused with ``too_large`` (naming estimate and cap) or served within the
budget; a real ``i3d serve`` subprocess with a small budget survives them all and its peak RSS stays
within the budget of where it started."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from interactive3d.backend.service import costs
from interactive3d.protocol.client import Client, RemoteError
from interactive3d.protocol.errors import TooLarge

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 192 << 20
PLY_PROPS = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_budget_check_and_reserve():
    b = costs.MemoryBudget(1000)
    assert b.check("x", 999.5) == 999
    with pytest.raises(TooLarge, match=r"1001 bytes.*budget of .*1000 bytes"):
        b.check("op", 1001)
    with b.reserve("a", 600):
        assert b._used == 600
    assert b._used == 0


def test_pair_bound_covers_the_rasteriser_and_one_gaussian():
    """The bound is ≥ the pixels a Gaussian can touch: one big Gaussian in front of the camera → the
    whole image; one behind the camera → 0."""
    from interactive3d.backend.stage1.cameras import cameras_from_blender
    from interactive3d.backend.stage1.gaussians import init_random

    g = init_random(1, radius=1e-6, seed=0)
    with torch.no_grad():
        g.params["means"].zero_()
        g.params["log_scales"].fill_(0.0)  # σ = 1 unit at 2 units away: covers the 32² image
    c2w = torch.eye(4)[None].clone()
    c2w[0, 2, 3] = 2.0
    assert costs.view_pairs(g, cameras_from_blender(c2w, 0.8, 32, 32)) == 32 * 32
    c2w[0, 2, 3] = -2.0  # the Gaussian is behind this camera
    assert costs.view_pairs(g, cameras_from_blender(c2w, 0.8, 32, 32)) == 0


def _ply(path: Path, n: int) -> None:
    head = b"ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    head += b"".join(b"property float %s\n" % p.encode() for p in PLY_PROPS) + b"end_header\n"
    rows = np.zeros((n, len(PLY_PROPS)), np.float32)
    rows[:, 10] = 1.0  # unit quaternions
    path.write_bytes(head + rows.tobytes())


@pytest.mark.slow
def test_worst_in_cap_requests_cannot_exhaust_memory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _ply(data / "big.ply", (48 << 20) // 56)  # 48 MiB: under the file cap, over the memory budget
    _ply(data / "small.ply", 500)
    addr = f"ipc://{tmp_path}/s.sock"
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "interactive3d.cli", "serve", "--bind", addr, "--device", "cpu", "--state-dir", str(tmp_path / "st"),
             "--data-dir", str(data), "--memory-budget", str(BUDGET), "--max-file-bytes", str(64 << 20)],
            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
        )
    c = Client(addr)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                c.request("ping", timeout=1.0, retries=0)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "server did not come up"
        sid = c.request("session.create").result["session"]
        c.request("gaussians.init", {"session": sid, "kind": "random", "n": 4096, "radius": 0.5}, timeout=60)
        c.request("gaussians.load_ply", {"session": sid, "path": "small.ply"}, timeout=60)  # warm every path once
        c.request("gaussians.init", {"session": sid, "kind": "random", "n": 4096, "radius": 0.5}, timeout=60)
        c.request("parts.select", {"session": sid, "name": "q", "kind": "all"}, timeout=60)
        base = _hwm(proc.pid)
        c2w = np.tile(np.eye(4, dtype=np.float32), (64, 1, 1))
        c2w[:, 2, 3] = 2.0
        stage2 = {"rays_per_step": 1 << 20, "n_samples": 1024}
        worst = [  # (op, args, buffers): each op's largest in-cap arguments
            ("gaussians.init", {"kind": "random", "n": 10_000_000}, []),
            ("gaussians.init", {"kind": "points"}, [np.zeros((2_000_000, 3), np.float32)]),
            ("gaussians.load_ply", {"path": "big.ply"}, []),
            ("stage1.set_reference", {"path": "big.ply"}, []),
            ("parts.add", {"path": "big.ply", "name": "p"}, []),
            ("gaussians.render", {"fov_x": 0.8, "width": 4096, "height": 4096}, [c2w]),
            ("gaussians.render", {"fov_x": 3.0, "width": 2048, "height": 2048}, [c2w[:1]]),  # one view, many pairs
            ("stage1.start", {"guidance": "oracle", "batch": 64, "resolution": 2048, "steps": 1}, []),
            ("interact.drag", {"source": [0, 0, 0], "target": [0.1, 0, 0], "radius": 0.2, "guidance": True, "prompt": "x", "batch": 16, "resolution": 1024}, []),
            ("interact.edit", {"part": "q", "prompt": "x", "batch": 16, "resolution": 1024}, []),
            ("stage2.distill", {**stage2, "levels": 32, "features": 8, "log2_table_size": 24, "view_pool": 4096, "resolution": 1024}, []),
            ("stage2.refine", {**stage2, "parts": ["p"], "views": 256, "resolution": 1024}, []),
            ("stage2.occupancy", {"resolution": 256}, []),
            ("stage2.extract_mesh", {"resolution": 512}, []),
        ]
        for op, args, buffers in worst:
            with pytest.raises(RemoteError) as e:
                c.request(op, {"session": sid, **args}, buffers, timeout=120)
            assert e.value.code == "too_large", (op, e.value)
            m = re.search(r"about .* \((\d+) bytes\) at peak, over the server's memory budget of .* \((\d+) bytes\)", e.value.message)
            assert m and int(m.group(1)) > int(m.group(2)) == BUDGET, e.value.message
        # in-budget requests are still served, view by view
        r = c.request("gaussians.render", {"session": sid, "fov_x": 0.8, "width": 96, "height": 64}, [c2w[:4]], timeout=120)
        assert r.buffers[0].shape == (4, 64, 96, 3)
        assert proc.poll() is None
        grown = _hwm(proc.pid) - base
        print(f"peak RSS grew {grown / 2**20:.0f} MiB over {base / 2**20:.0f} MiB (budget {BUDGET >> 20} MiB)")
        assert grown < BUDGET, grown
    finally:
        c.close()
        proc.terminate()
        proc.wait(60)


# -- the budget's limits: cgroup v2 and v1 files, RLIMIT_AS (issue 25) -----------------------------------------
def _cgroup_tree(tmp_path, membership: str, files: dict[str, str]) -> tuple[str, str]:
    """A fake cgroup mount under tmp_path (``files``: path relative to the mount → contents) and a
    /proc/self/cgroup-style membership file; returns (root, membership file)."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    (tmp_path / "self_cgroup").write_text(membership)
    return str(root), str(tmp_path / "self_cgroup")


GIB = 1 << 30


def test_cgroup_v2_headroom_is_the_least_over_the_process_cgroup_and_its_ancestors(tmp_path):
    """v2: the process's cgroup (memory.max 4 GiB, current 1 GiB → 3 GiB) under a parent that allows 2 GiB more
    (memory.max 6 GiB, current 4 GiB): 2 GiB. "max" at every level: no limit (None). A limit under its usage: 0.
    A membership path with ``..`` never leaves the mount."""
    membership = "0::/user.slice/app.scope\n"
    numeric = {"user.slice/app.scope/memory.max": str(4 * GIB), "user.slice/app.scope/memory.current": str(GIB),
               "user.slice/memory.max": str(6 * GIB), "user.slice/memory.current": str(4 * GIB)}
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "a", membership, numeric)) == 2 * GIB
    unlimited = {"user.slice/app.scope/memory.max": "max", "user.slice/app.scope/memory.current": str(GIB),
                 "user.slice/memory.max": "max", "user.slice/memory.current": str(GIB)}
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "b", membership, unlimited)) is None
    only_child = dict(unlimited, **{"user.slice/app.scope/memory.max": str(GIB + 123)})
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "c", membership, only_child)) == 123
    over = {"app/memory.max": str(GIB), "app/memory.current": str(2 * GIB)}
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "d", "0::/app\n", over)) == 0
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "e", "0::/../../etc\n", {"memory.max": str(GIB), "memory.current": "0"})) == GIB


def test_cgroup_v1_headroom_and_no_cgroup(tmp_path):
    """v1 (``4:memory:/docker/x``): limit_in_bytes 3 GiB − usage_in_bytes 1 GiB = 2 GiB; v1's "unlimited" (the
    page-rounded 2^63) sets none; an unreadable membership file falls back to the mount's root files; nothing at
    all: None."""
    membership = "9:name=systemd:/\n4:memory:/docker/x\n1:cpu,cpuacct:/\n0::/\n"
    v1 = {"memory/docker/x/memory.limit_in_bytes": str(3 * GIB), "memory/docker/x/memory.usage_in_bytes": str(GIB)}
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "a", membership, v1)) == 2 * GIB
    huge = {"memory/docker/x/memory.limit_in_bytes": "9223372036854771712", "memory/docker/x/memory.usage_in_bytes": str(GIB)}
    assert costs.cgroup_headroom(*_cgroup_tree(tmp_path / "b", membership, huge)) is None
    root, _ = _cgroup_tree(tmp_path / "c", "", {"memory.max": str(5 * GIB), "memory.current": str(GIB)})
    assert costs.cgroup_headroom(root, str(tmp_path / "missing")) == 4 * GIB
    assert costs.cgroup_headroom(str(tmp_path / "nothing"), str(tmp_path / "missing")) is None


def test_available_memory_is_the_least_of_meminfo_cgroup_and_address_space(tmp_path):
    """In a child process: a fake cgroup with 256 MiB of headroom under RLIMIT_AS = mapped + 1 GiB → at most
    256 MiB (the cgroup binds); with 64 GiB of cgroup headroom → at most 1 GiB (the address space binds), and
    more than 256 MiB (the cgroup figure is not stuck); with neither, at least as much as either."""
    tight, loose = tmp_path / "tight", tmp_path / "loose"
    for folder, room in ((tight, 256 << 20), (loose, 64 * GIB)):
        _cgroup_tree(folder, "0::/app\n", {"app/memory.max": str(GIB + room), "app/memory.current": str(GIB)})
    code = ("import os, resource, sys, torch\n"
            "from interactive3d.backend.service import costs\n"
            "cpu = torch.device('cpu')\n"
            "free = costs.available_bytes(cpu, sys.argv[3], sys.argv[3] + '/none')\n"
            "used = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))\n"
            "print(free, *(costs.available_bytes(cpu, a + '/cgroup', a + '/self_cgroup') for a in sys.argv[1:3]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tight), str(loose), str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    free, with_tight, with_loose = map(int, out.stdout.split())
    assert 0 <= with_tight <= 256 << 20
    assert 256 << 20 < with_loose <= GIB
    assert free >= with_loose
