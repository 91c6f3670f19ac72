"""Round-trip latency and throughput of 100k×14 float32 state frames through the protocol stack, against a
raw pyzmq echo of the same bytes measured in the same run.

    /work/venv-probe/bin/python scripts/bench/protocol.py [--n 100000] [--iters 200]

For each transport (ipc, tcp loopback) it prints p50/p99 round-trip time and GB/s (request + reply
bytes / median round trip) for:
  raw      DEALER → ROUTER thread that sends the frames straight back (copy=False both ways);
  echo     Client.request → Server (validation, dispatch, zero-copy reply) → back, finite check off;
  checked  the same with the op's finite-values check on (what ops taking float frames pay);
and the ratio raw_p50 / protocol_p50 (goal ≥ 0.8). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time

import numpy as np
import zmq

from interactive3d.backend.server import Reply, Server, ServerConfig
from interactive3d.protocol.catalogue import Buffer, OpSpec
from interactive3d.protocol.client import Client

OPS = [
    OpSpec("bench.echo", "echo", buffers=(Buffer("state", ("float32",), (None, 14), finite=False),)),
    OpSpec("bench.echo_checked", "echo with finite check", buffers=(Buffer("state", ("float32",), (None, 14)),)),
]


def _echo(req) -> Reply:
    return Reply({}, list(req.buffers))


HANDLERS = {"bench.echo": _echo, "bench.echo_checked": _echo}


def _raw_echo_server(ctx: zmq.Context, addr: str, stop: threading.Event) -> tuple[threading.Thread, str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(addr)
    bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def loop() -> None:
        while not stop.is_set():
            if sock.poll(100):
                sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
        sock.close(0)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t, bound


def _stats(times: list[float], nbytes: int) -> dict:
    a = np.array(times)
    p50 = float(np.percentile(a, 50))
    return {"p50_ms": p50 * 1e3, "p99_ms": float(np.percentile(a, 99)) * 1e3, "gbps": 2 * nbytes / p50 / 1e9}


def bench_raw(addr: str, frame: np.ndarray, iters: int) -> list[float]:
    ctx = zmq.Context()
    stop = threading.Event()
    t, bound = _raw_echo_server(ctx, addr, stop)
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(bound)
    header = b"\x80" * 64  # stand-in for a small header frame
    times = []
    for i in range(iters + 10):
        t0 = time.perf_counter()
        d.send_multipart([header, frame], copy=False)
        out = d.recv_multipart(copy=False)
        np.frombuffer(out[1].buffer, np.float32)
        if i >= 10:
            times.append(time.perf_counter() - t0)
    d.close(0)
    stop.set()
    t.join()
    ctx.term()
    return times


def bench_protocol(addr: str, frame: np.ndarray, iters: int, op: str) -> list[float]:
    srv = Server(ServerConfig(bind=addr, device="cpu"), extra_ops=OPS, extra_handlers=HANDLERS)
    bound = srv.bind()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    c = Client(bound)
    times = []
    try:
        for i in range(iters + 10):
            t0 = time.perf_counter()
            r = c.request(op, {}, [frame], timeout=30)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        if not np.array_equal(r.buffers[0], frame):
            raise RuntimeError("echo mismatch")
    finally:
        c.close()
        srv.request_stop()
        t.join()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--iters", type=int, default=100, help="round trips per round")
    p.add_argument("--rounds", type=int, default=3, help="raw/echo/checked are interleaved this many times (noisy shared machines)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    frame = np.random.default_rng(0).standard_normal((a.n, 14)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="i3d-bench-")
    print(f"state frame {a.n}x14 float32 = {frame.nbytes / 1e6:.1f} MB, {a.rounds}x{a.iters} round trips each, {os.cpu_count()} CPUs")
    for name, addr in (("ipc", f"ipc://{tmp}/b.sock"), ("tcp", "tcp://127.0.0.1:*")):
        times: dict[str, list[float]] = {"raw": [], "echo": [], "checked": []}
        for _ in range(a.rounds):
            times["raw"] += bench_raw(addr, frame, a.iters)
            times["echo"] += bench_protocol(addr, frame, a.iters, "bench.echo")
            times["checked"] += bench_protocol(addr, frame, a.iters, "bench.echo_checked")
        raw = _stats(times["raw"], frame.nbytes)
        for label, t in times.items():
            s = _stats(t, frame.nbytes)
            ratio = raw["p50_ms"] / s["p50_ms"]
            print(f"{name:4s} {label:8s} p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  {s['gbps']:6.2f} GB/s  ratio to raw {ratio:5.2f}")


if __name__ == "__main__":
    main()
