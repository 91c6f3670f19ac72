"""Test helpers for the server tests: a small real optimisation job, its ops, and a server runner.

``FitJob`` fits the colours and opacities of a session's Gaussians to target values by AdamW on the
session's own optimisers (a real optimisation with deterministic results), so it exercises exactly the
machinery Stage I uses. When Stage I's ops land, the job tests can switch to them; only ``START_OP``
and its args change.

Run as a module to serve with the extra ops:
``python -m tests.backend._server_helpers --bind ADDR --state-dir DIR [--checkpoint-every C]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from interactive3d.backend.service.jobs import JobConfig
from interactive3d.backend.service.requests import Reply, Request
from interactive3d.backend.service.server import Server, ServerConfig
from interactive3d.backend.stage1.gaussians import init_random, make_optimizers
from interactive3d.protocol.catalogue import Arg, Buffer, OpSpec
from interactive3d.protocol.codec import DTYPES
from interactive3d.protocol.errors import InvalidArgs

TEST_OPS = [
    OpSpec("test.init", "Random Gaussians in a sphere.", args=(Arg("n", "int", required=True, min=1, max=1_000_000), Arg("seed", "int", default=0)), session=True, result=(("count", "N"),)),
    OpSpec(
        "test.fit",
        "Fit colours to a target colour: a small real optimisation job.",
        args=(
            Arg("steps", "int", required=True, min=1),
            Arg("sleep", "float", default=0.0, min=0.0, max=5.0, doc="extra seconds per step (slows the job down for control tests)"),
            Arg("seed", "int", default=0),
            Arg("lr", "float", default=0.05, min=0.0),
            Arg("state_every", "int", default=None, min=0, doc="the job's own state-event cadence (None: the server's)"),
        ),
        buffers=(Buffer("target", ("float32",), (3,), optional=True, doc="target rgb"),),
        session=True,
        starts_job=True,
        result=(("job", "job id"),),
        events=("progress", "state", "done", "error"),
    ),
    OpSpec(
        "test.echo",
        "Echo args and up to 4 buffers of any dtype and shape back.",
        args=(Arg("x", "float", default=0.0),),
        buffers=tuple(Buffer(f"b{i}", DTYPES, None, optional=True) for i in range(3)) + (Buffer("f", ("float32",), None, optional=True),),
        result=(("args", "the args"),),
    ),
    OpSpec("test.crash", "Raise an unexpected exception (internal error path)."),
]


class FitJob:
    """One AdamW step per job step on sh (colour) + a tiny random perturbation drawn from its own RNG,
    so a resumed job must restore the RNG state to reproduce the uninterrupted run bit for bit."""

    kind = "test.fit"

    def __init__(self, session, steps: int, target: torch.Tensor, sleep: float = 0.0, seed: int = 0, lr: float = 0.05) -> None:
        if session.gaussians is None:
            raise InvalidArgs("test.fit: the session has no Gaussians (test.init first)")
        self.session = session
        self.total_steps = steps
        self.target = target
        self.sleep = sleep
        self.generator = torch.Generator().manual_seed(seed)
        if session.optimizers is None:
            session.optimizers = make_optimizers(session.gaussians)
        for group in session.optimizers["sh"].param_groups:
            group["lr"] = lr
        self.loss = float("nan")

    def step(self, i: int) -> dict[str, float]:
        g, opt = self.session.gaussians, self.session.optimizers
        noise = 1e-3 * torch.randn(g.n, 3, generator=self.generator)
        loss = ((g.rgb - self.target - noise) ** 2).mean()
        for o in opt.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        opt["sh"].step()
        self.loss = float(loss.detach())
        if self.sleep:
            time.sleep(self.sleep)
        return {"loss": self.loss, "i": float(i)}

    def result(self) -> dict:
        return {"loss": self.loss, "count": self.session.gaussians.n}

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(d["rng"])


def _init(req: Request) -> Reply:
    s = req.session
    with s.lock:
        s.record("test.init")
        s.gaussians = init_random(req.args["n"], seed=req.args["seed"])
        s.optimizers = None
    return Reply({"count": s.gaussians.n})


def _fit(req: Request) -> Reply:
    target = torch.tensor([0.9, 0.2, 0.1]) if not req.buffers else torch.from_numpy(req.buffers[0].copy())
    a = req.args
    job = FitJob(req.session, a["steps"], target, a["sleep"], a["seed"], a["lr"])
    if a["state_every"] is not None:
        job.state_every = a["state_every"]
    return Reply({"job": req.start_job(job, label="test.fit")})


def _echo(req: Request) -> Reply:
    return Reply({"args": req.args}, list(req.buffers))


def _crash(req: Request) -> Reply:
    raise RuntimeError("boom")


TEST_HANDLERS = {"test.init": _init, "test.fit": _fit, "test.echo": _echo, "test.crash": _crash}


def make_server(bind: str = "tcp://127.0.0.1:*", **kw) -> Server:
    kw.setdefault("device", "cpu")
    # tests write their files under pytest's tmp_path: the system temp folder is the data root, unless the server
    # checkpoints (a data folder must not hold the checkpoints: then the default <state_dir>/data)
    kw.setdefault("data_dirs", () if kw.get("state_dir") else (tempfile.gettempdir(),))
    # and save their tiny models there (save_tiny_sd under tmp_path): the system temp folder is the model root too
    kw.setdefault("model_dirs", (tempfile.gettempdir(),))
    # module-scoped test servers serve one client that opens many sessions (the per-client cap has its own test)
    kw.setdefault("max_sessions_per_client", 64)
    kw.setdefault("max_sessions_per_address", 64)  # (and all of them come from one process)
    return Server(ServerConfig(bind=bind, **kw), extra_ops=TEST_OPS, extra_handlers=TEST_HANDLERS)


class ThreadedServer:
    """A Server running its loop on a thread (in-process tests); ``address`` is where it listens."""

    def __init__(self, **kw) -> None:
        self.server = make_server(**kw)
        self.address = self.server.bind()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--state-dir", default=None)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--state-every", type=int, default=10)
    p.add_argument("--auth-key", default=None)
    p.add_argument("--idle-timeout", type=float, default=86400.0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from interactive3d.backend.service.server import run

    cfg = ServerConfig(
        bind=a.bind, state_dir=a.state_dir, device="cpu", auth_key=a.auth_key.encode() if a.auth_key else None,
        job=JobConfig(checkpoint_every=a.checkpoint_every, state_every=a.state_every),
        data_dirs=() if a.state_dir else (tempfile.gettempdir(),),
        model_dirs=(tempfile.gettempdir(),), idle_timeout=a.idle_timeout,
    )
    return run(cfg, TEST_OPS, TEST_HANDLERS)


if __name__ == "__main__":
    sys.exit(main())


@contextlib.contextmanager
def threaded_client():
    """A :class:`ThreadedServer` and a client connected to it, both closed on exit."""
    from interactive3d.protocol.client import Client

    ts = ThreadedServer()
    c = Client(ts.address)
    try:
        yield c
    finally:
        c.close()
        ts.stop()


def spawn_helper_server(addr: str, state: Path, log: Path, checkpoint_every: int) -> subprocess.Popen:
    """This module as a backend subprocess (real ops + the test ops), its output appended to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, __file__, "--bind", addr, "--state-dir", str(state), "--checkpoint-every", str(checkpoint_every)],
                                cwd=Path(__file__).resolve().parents[2], stdout=f, stderr=subprocess.STDOUT)


def wait_up(c, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Ping until the server answers; AssertionError with its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            c.request("ping", timeout=1.0, retries=0)
            return
        except TimeoutError:
            continue
    raise AssertionError("server did not come up")
