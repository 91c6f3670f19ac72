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
