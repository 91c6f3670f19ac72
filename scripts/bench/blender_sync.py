"""Benchmark: applying backend state frames to a splat object, and importing a mesh, in headless bpy.

    python scripts/bench/blender_sync.py [--sizes 10000 100000 1000000] [--faces 200000] [--ply 200000]
                                         [--repeats 5]

Prints the median wall time of
  * apply_state on an existing object of the same size (the steady-state sync step; goal ≤ 50 ms at 100k),
    against the baseline "positions only" (one foreach_set of co — the least any update can cost) and, at
    the smallest size, a per-splat Python loop (what foreach_set avoids);
  * apply_state when N changes (mesh rebuilt), read_state, and re-evaluating the modifier (depsgraph) in
    the light points mode;
  * mesh_object_from_arrays for a mesh of F faces against Blender's own Mesh.from_pydata;
  * i3d.import_ply / export of an SH-degree-3 .ply against Blender's own wm.ply_import of the same file.
Timings are not asserted anywhere; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _state(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    return np.concatenate([rng.normal(size=(n, 3)), rng.random((n, 4)), rng.uniform(0.01, 0.1, (n, 3)),
                           q / np.linalg.norm(q, axis=1, keepdims=True)], axis=1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--faces", type=int, default=200_000)
    parser.add_argument("--ply", type=int, default=200_000, help="splats in the .ply import test (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import bpy

    from interactive3d.blender_addon import splat

    bpy.ops.wm.read_factory_settings(use_empty=True)
    print(f"Blender {bpy.app.version_string}; median of {args.repeats}")
    print(f"{'N':>9} {'apply_state':>12} {'co only':>9} {'ratio':>6} {'rebuild':>9} {'read':>8} "
          f"{'eval pts':>9}")
    for n in args.sizes:
        states = [_state(n, s) for s in range(2)]
        obj = splat.new_splat_object(f"bench{n}", states[0], light=True)
        k = [0]

        def update():
            k[0] ^= 1
            splat.apply_state(obj, states[k[0]])

        def co_only():
            k[0] ^= 1
            obj.data.vertices.foreach_set("co", np.ascontiguousarray(states[k[0]][:, :3]).ravel())
            obj.data.update()

        t_apply = _median_time(update, args.repeats)
        t_co = _median_time(co_only, args.repeats)
        sizes = [n, n - 1]

        def rebuild():
            sizes.reverse()
            splat.apply_state(obj, states[0][: sizes[0]])

        t_rebuild = _median_time(rebuild, args.repeats)
        t_read = _median_time(lambda: splat.read_state(obj), args.repeats)

        def evaluate():
            update()
            bpy.context.evaluated_depsgraph_get().update()

        t_eval = _median_time(evaluate, max(1, args.repeats // 2)) - t_apply
        print(f"{n:>9} {t_apply * 1e3:>10.1f}ms {t_co * 1e3:>7.1f}ms {t_apply / t_co:>5.1f}x "
              f"{t_rebuild * 1e3:>7.1f}ms {t_read * 1e3:>6.1f}ms {t_eval * 1e3:>7.1f}ms")
        bpy.data.objects.remove(obj)

    n = args.sizes[0]
    obj = splat.new_splat_object("loop", _state(n, 0))
    state = _state(n, 1)
    attr = obj.data.attributes["i3d_opacity"].data

    def python_loop():  # only one attribute and positions: already far slower than the whole apply_state
        for i in range(n):
            obj.data.vertices[i].co = state[i, :3]
            attr[i].value = state[i, 6]

    t_loop = _median_time(python_loop, 1)
    t_apply = _median_time(lambda: splat.apply_state(obj, state), args.repeats)
    print(f"per-splat Python loop at {n}: {t_loop * 1e3:.0f} ms = {t_loop / t_apply:.0f}x apply_state")

    # A height-field grid of ~F triangles: valid, manifold faces like a marching-cubes surface.
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(args.faces / 2))) + 1
    ii, jj = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    verts = np.stack([ii.ravel(), jj.ravel(), rng.random(side * side)], 1).astype(np.float32) / side
    corner = (ii[:-1, :-1] * side + jj[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([corner, corner + side, corner + 1], 1),
                            np.stack([corner + 1, corner + side, corner + side + 1], 1)]).astype(np.int32)
    f, v = len(faces), len(verts)
    colors = rng.integers(0, 256, size=(v, 3)).astype(np.uint8)
    t_ours = _median_time(lambda: splat.mesh_object_from_arrays("m", verts, faces, colors, np.eye(4)),
                          max(1, args.repeats // 2))

    def pydata():
        me = bpy.data.meshes.new("p")
        me.from_pydata(verts.tolist(), [], faces.tolist())
        me.update()

    t_py = _median_time(pydata, 1)
    print(f"mesh import {f} faces, {v} vertices, colours: mesh_object_from_arrays {t_ours * 1e3:.0f} ms; "
          f"from_pydata without colours {t_py * 1e3:.0f} ms ({t_py / t_ours:.1f}x)")
    if args.ply:
        _bench_ply(bpy, args.ply)


def _bench_ply(bpy, n: int) -> None:
    import os
    import tempfile

    from interactive3d.blender_addon.operators.io import export_splat_file, import_splat_file
    from interactive3d.protocol import ply, splat_data

    rng = np.random.default_rng(0)
    f = np.float32
    data = splat_data.SplatData(
        means=rng.normal(size=(n, 3)).astype(f), sh_dc=rng.normal(size=(n, 3)).astype(f),
        sh_rest=rng.normal(size=(n, 15, 3)).astype(f) * 0.1, opacity_logits=rng.normal(size=n).astype(f),
        log_scales=rng.uniform(-5, -1, (n, 3)).astype(f), quats=rng.normal(size=(n, 4)).astype(f))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.ply"), os.path.join(tmp, "out.ply")
        ply.write_ply(src, data)
        t0 = time.perf_counter()
        obj = import_splat_file(bpy.context, src)
        t_imp = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_splat_file(obj, dst)
        t_exp = time.perf_counter() - t0
        t0 = time.perf_counter()
        bpy.ops.wm.ply_import(filepath=src)
        t_native = time.perf_counter() - t0
    print(f".ply with {n} splats (SH degree 3): i3d import {t_imp * 1e3:.0f} ms, export {t_exp * 1e3:.0f} ms; "
          f"Blender wm.ply_import {t_native * 1e3:.0f} ms (import ratio {t_imp / t_native:.2f}x)")


if __name__ == "__main__":
    main()
