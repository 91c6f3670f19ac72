"""Measure the per-item peak memory the cost model (backend/service/costs.py) assumes.

Each case runs in a fresh subprocess and reports its peak RSS growth (VmHWM) divided by the items it
processed: (Gaussian, pixel) pairs of the torch rasteriser, Gaussians of an init with optimisers and an
undo snapshot, voxels of a mesh extraction grid.

    .venv/bin/python scripts/bench/op_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = {
    "render_pair": """
import torch
from interactive3d.backend.stage1.gaussians import init_random
from interactive3d.backend.stage1.cameras import cameras_from_blender
from interactive3d.backend.stage1.render import render
from interactive3d.backend.service import costs
g = init_random(4000, radius=0.3, seed=0)
with torch.no_grad():
    g.params["log_scales"].fill_(-2.5)
c2w = torch.eye(4)[None].clone(); c2w[0, 2, 3] = 2.0
cams = cameras_from_blender(c2w, 0.8, 256, 256)
items = costs.view_pairs(g, cams)
base = hwm()
with torch.no_grad():
    render(g, cams, torch.ones(3))
""",
    "gaussian": """
from interactive3d.backend.service.session import Session
from interactive3d.backend.stage1.gaussians import init_random, make_optimizers
s = Session("m")
make_optimizers(init_random(10))
items = 200_000
base = hwm()
s.gaussians = init_random(items, sh_degree=3)
s.optimizers = make_optimizers(s.gaussians)
s.record("x")
s.gaussians.state_array()
""",
}

PRELUDE = """
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
"""


def main() -> int:
    out = {}
    for name, body in CASES.items():
        code = PRELUDE + body + "\nimport json; print(json.dumps({'items': int(items), 'bytes': hwm() - base}))\n"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        out[name] = {**m, "bytes_per_item": m["bytes"] / max(1, m["items"])}
        print(f"{name}: {m['items']} items, peak +{m['bytes'] / 2**20:.1f} MiB, {out[name]['bytes_per_item']:.0f} B/item")
    return 0


if __name__ == "__main__":
    sys.exit(main())
