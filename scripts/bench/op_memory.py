"""Measure the per-item peak memory the cost model (backend/service/costs.py) assumes.

Each case runs in a fresh subprocess and reports its peak RSS growth (VmHWM) divided by the items it
processed: (Gaussian, pixel) pairs of the torch rasteriser, Gaussians of an init with optimisers and an
undo snapshot; ray samples and rays of ``stage2.render`` (one 8,192-ray chunk of the default field, every cell
occupied: the worst case; with and without normals), texels of ``extract_mesh``'s texture bake with its GLB and
OBJ/PNG encodings (at two sizes: the slope is the per-texel cost, the rest is the bake's fixed field-query chunk).

    .venv/bin/python scripts/bench/op_memory.py [CASE…]   (e.g. texel, stage2_render_sample)
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
_RENDER = """
import torch
from interactive3d.backend.stage1.cameras import cameras_from_blender
from interactive3d.backend.stage2.nerf import NeRFField
from interactive3d.backend.stage2.rays import RenderConfig
from interactive3d.backend.stage2.render import render_image
f = NeRFField(device="cpu")
c2w = torch.eye(4)[None].clone(); c2w[0, 2, 3] = 2.5
with torch.no_grad():  # warm every path on a tiny image first
    render_image(f, cameras_from_blender(c2w, 0.8, 8, 8), RenderConfig(n_samples=2, normals=NORMALS))
cams = cameras_from_blender(c2w, 0.8, SIZE, SIZE)
items = ITEMS
base = hwm()
with torch.no_grad():
    render_image(f, cams, RenderConfig(n_samples=SAMPLES, normals=NORMALS))
"""
# one chunk (90² = 8,100 rays ≤ 8,192) × 128 samples: per sample; 512² rays × 2 samples (32 chunks): per ray
for _name, _size, _samples, _normals, _items in (("stage2_render_sample", 90, 128, False, "8100 * 128"),
                                                  ("stage2_render_sample_normals", 90, 128, True, "8100 * 128"),
                                                  ("stage2_render_ray", 512, 2, True, "512 * 512")):
    CASES[_name] = (_RENDER.replace("SIZE", str(_size)).replace("SAMPLES", str(_samples)).replace("NORMALS", str(_normals))
                    .replace("ITEMS", _items))
for _size in (512, 1536):
    CASES[f"texel_{_size}"] = """
import numpy as np, torch, trimesh
from interactive3d.backend.stage2.mesh import MeshResult, mesh_file_bytes, texture_mesh
from interactive3d.backend.stage2.nerf import NeRFField
f = NeRFField(device="cpu")
sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
v = np.ascontiguousarray(sphere.vertices, np.float32)
mesh = MeshResult(vertices=v, faces=np.ascontiguousarray(sphere.faces, np.int32), colors=np.full((len(v), 4), 200, np.uint8),
                  removed_components=0)
@torch.no_grad()
def colour(points):
    return f(torch.from_numpy(np.ascontiguousarray(points, np.float32))).rgb.float().numpy()
colour(v[:1024])
items = SIZE * SIZE
base = hwm()
m = texture_mesh(mesh, colour, SIZE, 4)
mesh_file_bytes(m, "glb")
mesh_file_bytes(m, "obj")
""".replace("SIZE", str(_size))

PRELUDE = """
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
"""


def main() -> int:
    out = {}
    only = sys.argv[1:]  # case names (default: all)
    for name, body in CASES.items():
        if only and name not in only and not (name.startswith("texel") and "texel" in only):
            continue
        code = PRELUDE + body + "\nimport json; print(json.dumps({'items': int(items), 'bytes': hwm() - base}))\n"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        out[name] = {**m, "bytes_per_item": m["bytes"] / max(1, m["items"])}
        print(f"{name}: {m['items']} items, peak +{m['bytes'] / 2**20:.1f} MiB, {out[name]['bytes_per_item']:.0f} B/item")
    if "texel_512" not in out or "texel_1536" not in out:
        return 0
    lo, hi = out["texel_512"], out["texel_1536"]
    slope = (hi["bytes"] - lo["bytes"]) / (hi["items"] - lo["items"])
    print(f"texel slope (1536² vs 512²): {slope:.0f} B/texel, fixed part {(lo['bytes'] - slope * lo['items']) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
