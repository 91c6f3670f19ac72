"""Round-trip latency and throughput of 100k×14 float32 state frames through the protocol stack, against a
raw pyzmq echo of the same bytes measured in the same run.

    /work/venv-probe/bin/python scripts/bench/protocol.py [--n 100000] [--iters 300]

For each transport (ipc, tcp loopback) it prints p50/p99 round-trip time and GB/s (request + reply
bytes / median round trip) for:
  raw      DEALER → a ROUTER process that sends the frames straight back (copy=False both ways);
  echo     Client.request → Server process (validation, dispatch, zero-copy reply) → back, finite check off;
  checked  the same with the op's finite-values check on (what ops taking float frames pay);
and the ratio raw_p50 / protocol_p50 (goal ≥ 0.8). The three kinds are interleaved round trip by
round trip, so load from other processes hits them alike. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq
from interactive3d.backend.service.requests import Reply
from interactive3d.backend.service.server import Server, ServerConfig
from interactive3d.protocol.catalogue import Buffer, OpSpec
from interactive3d.protocol.client import Client

OPS = [
    OpSpec("bench.echo", "echo", buffers=(Buffer("state", ("float32",), (None, 14), finite=False),)),
    OpSpec("bench.echo_checked", "echo with finite check", buffers=(Buffer("state", ("float32",), (None, 14)),)),
]


def _echo(req) -> Reply:
    return Reply({}, list(req.buffers))


HANDLERS = {"bench.echo": _echo, "bench.echo_checked": _echo}


def serve_raw(addr: str) -> None:
    """Baseline server process: a ROUTER that sends every message straight back (zero-copy)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(addr)
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def serve_protocol(addr: str) -> None:
    """Protocol server process: the real Server with the bench echo ops."""
    Server(ServerConfig(bind=addr, device="cpu"), extra_ops=OPS, extra_handlers=HANDLERS).serve_forever()


def _free_tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _spawn(kind: str, addr: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, f"--serve-{kind}", addr])


def _stats(times: list[float], nbytes: int) -> dict:
    a = np.array(times)
    p50 = float(np.percentile(a, 50))
    return {"p50_ms": p50 * 1e3, "p99_ms": float(np.percentile(a, 99)) * 1e3, "gbps": 2 * nbytes / p50 / 1e9}


def bench(addr_raw: str, addr_proto: str, frame: np.ndarray, iters: int) -> dict[str, list[float]]:
    """Interleaved round trips (raw, echo, checked, raw, …) against two server processes, so machine
    noise hits all three alike."""
    procs = [_spawn("raw", addr_raw), _spawn("protocol", addr_proto)]
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(addr_raw)
    c = Client(addr_proto)
    header = b"\x80" * 64  # stand-in for a small header frame
    times: dict[str, list[float]] = {"raw": [], "echo": [], "checked": []}
    try:
        c.request("ping", timeout=120, retries=0)  # wait for the server's start-up (imports torch)

        def raw() -> float:
            t0 = time.perf_counter()
            d.send_multipart([header, frame], copy=False)
            out = d.recv_multipart(copy=False)
            np.frombuffer(out[1].buffer, np.float32)
            return time.perf_counter() - t0

        def proto(op: str) -> float:
            t0 = time.perf_counter()
            r = c.request(op, {}, [frame], timeout=30)
            dt = time.perf_counter() - t0
            if r.buffers[0].shape != frame.shape:
                raise RuntimeError("echo mismatch")
            return dt

        for i in range(iters + 10):
            t = (raw(), proto("bench.echo"), proto("bench.echo_checked"))
            if i >= 10:  # warm-up
                for k, v in zip(times, t):
                    times[k].append(v)
    finally:
        c.close()
        d.close(0)
        ctx.term()
        for p in procs:
            p.kill()
            p.wait()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--iters", type=int, default=300, help="interleaved round trips of each kind")
    p.add_argument("--serve-raw", metavar="ADDR", help=argparse.SUPPRESS)
    p.add_argument("--serve-protocol", metavar="ADDR", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_raw:
        return serve_raw(a.serve_raw)
    if a.serve_protocol:
        return serve_protocol(a.serve_protocol)
    logging.basicConfig(level=logging.WARNING)
    frame = np.random.default_rng(0).standard_normal((a.n, 14)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="i3d-bench-")
    print(f"state frame {a.n}x14 float32 = {frame.nbytes / 1e6:.1f} MB, {a.iters} interleaved round trips each, {os.cpu_count()} CPUs")
    for name, addrs in (("ipc", (f"ipc://{tmp}/raw.sock", f"ipc://{tmp}/proto.sock")), ("tcp", (_free_tcp(), _free_tcp()))):
        times = bench(*addrs, frame, a.iters)
        raw = _stats(times["raw"], frame.nbytes)
        for label, t in times.items():
            s = _stats(t, frame.nbytes)
            ratio = raw["p50_ms"] / s["p50_ms"]
            print(f"{name:4s} {label:8s} p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  {s['gbps']:6.2f} GB/s  ratio to raw {ratio:5.2f}")


if __name__ == "__main__":
    main()
