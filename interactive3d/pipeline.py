"""The pipeline client of ``i3d demo``, ``i3d generate`` and ``i3d batch``: start and stop a backend
subprocess, drive one session through protocol ops, wait on jobs with a progress bar, write meshes.

Built on :class:`interactive3d.protocol.client.Client` (the wire-level client: envelopes, signatures,
retries); this module adds what a pipeline run needs on top of it. The Blender scene those commands
write is :mod:`interactive3d.scene`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# -- terminal progress ---------------------------------------------------------------------------------
class ProgressBar:
    """A plain-text progress bar on stderr (no extra dependency); redraws in place on a terminal."""

    def __init__(self, label: str, total: int, stream=None, width: int = 28):
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, step: int, info: str = "", force: bool = False) -> None:
        now = time.perf_counter()
        # Off a terminal (CI logs) draw rarely so logs stay short.
        if not force and now - self._last_draw < (0.1 if self._tty else 5.0):
            return
        self._last_draw = now
        frac = min(max(step / self.total, 0.0), 1.0)
        filled = int(round(frac * self.width))
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        line = f"{self.label:<12} [{'#' * filled}{'.' * (self.width - filled)}] {step}/{self.total} {elapsed:5.1f}s eta {eta:4.0f}s {info}"
        self.stream.write(("\r" + line + "\033[K") if self._tty else line + "\n")
        self.stream.flush()

    def close(self, info: str = "") -> None:
        self.update(self.total, info, force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


class PipelineError(RuntimeError):
    """A step of the pipeline (demo, generate, batch) failed; the message says which step and why."""


def model_dir_args(models: Sequence[str | None]) -> list[str]:
    """``--model-dir FOLDER`` for each local model folder among ``models`` (hub ids and None need none): the
    backend loads local models only from its model folders (``i3d serve --model-dir``)."""
    roots: list[str] = []
    for m in models:
        folder = os.path.expanduser(m) if m else ""
        if folder and os.path.isdir(folder) and os.path.realpath(folder) not in roots:
            roots.append(os.path.realpath(folder))
    return [arg for root in roots for arg in ("--model-dir", root)]


def spawn_backend(
    address: str, state_dir: str, log_path: str, device: str = "auto", exit_with_parent: bool = False, extra_args: Sequence[str] = (),
    models: Sequence[str | None] = (),
) -> subprocess.Popen:
    """Start ``i3d serve`` as a subprocess (its log goes to ``log_path``).

    ``exit_with_parent`` (Linux): the backend gets SIGTERM when this process dies, even by SIGKILL, so it
    checkpoints its session and exits instead of living on as an orphan (a batch worker killed mid-job).
    ``models``: the models the caller will name in requests; local folders among them become ``--model-dir``.
    """
    cmd = [sys.executable, "-m", "interactive3d.cli", "serve", "--bind", address, "--state-dir", state_dir, "--device", device,
           *model_dir_args(models), *extra_args]
    preexec = _parent_death_signal() if exit_with_parent else None
    logf = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec)
    finally:
        logf.close()


def _parent_death_signal():
    """A preexec_fn that asks Linux for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG); None elsewhere.

    prctl is looked up here, in the parent: between fork and exec the child only makes that one call
    (no import, no allocation that could wait on a lock another thread of the parent held)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)


def stop_backend(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM: the server stops jobs between steps and exits 0
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


_IDEMPOTENT_OPS = frozenset({"ping", "state.get", "job.status", "history.list", "session.list"})


class Backend:
    """A session on a backend, reached through :class:`interactive3d.protocol.client.Client`.

    Thin on purpose: every call is one protocol op with its documented args (protocol/catalogue.py);
    jobs are waited on through their progress/done/error events.
    """

    def __init__(self, address: str, connect_timeout: float = 60.0, proc: subprocess.Popen | None = None):
        from interactive3d.protocol.client import Client, ConnectionLost

        self.address, self.proc = address, proc
        self.client = Client(address)
        self.session: str | None = None
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.pong = self.client.request("ping", {}, timeout=2.0, retries=0).result
                break
            except ConnectionLost as exc:  # not up yet: retried until the deadline
                if proc is not None and proc.poll() is not None:
                    raise PipelineError(f"backend exited with code {proc.returncode} before answering ping at {address}") from exc
                if time.monotonic() > deadline:
                    raise PipelineError(f"no backend answered ping at {address} within {connect_timeout:.0f} s: {exc}") from exc
                time.sleep(0.2)

    def close(self) -> None:
        self.client.close()

    def call(self, op: str, args: dict | None = None, buffers: list | None = None, timeout: float = 120.0):
        """One request → its Reply; a remote error becomes PipelineError naming the op and the code."""
        from interactive3d.protocol.client import ConnectionLost, RemoteError

        args = dict(args or {})
        if self.session is not None and "session" not in args and op not in ("ping", "session.create", "session.list"):
            args["session"] = self.session
        # Only reads are re-sent on a timeout (Lazy Pirate); an edit or a job must not run twice.
        retries = 2 if op in _IDEMPOTENT_OPS else 0
        try:
            return self.client.request(op, args, buffers or [], timeout=timeout, retries=retries)
        except RemoteError as exc:
            raise PipelineError(f"{op} failed: {exc.code}: {exc.message}") from exc
        except ConnectionLost as exc:
            raise PipelineError(f"{op}: no reply from the backend at {self.address} within {timeout:.0f} s") from exc

    def run_job(self, op: str, args: dict, label: str, total: int, metric: str | None = None, timeout: float = 3600.0) -> dict:
        """Start a job with ``op`` and wait for its ``done`` event, drawing a progress bar; returns
        {"result": done payload, "metrics": last progress metrics, "seconds": wall time}."""
        t0 = time.perf_counter()
        reply = self.call(op, args)
        return self.wait_job(reply.result.get("job"), op, label, total, metric, timeout, t0)

    def wait_job(self, job: str | None, op: str, label: str, total: int, metric: str | None = None,
                 timeout: float = 3600.0, t0: float | None = None) -> dict:
        """Wait for the ``done`` event of a running job (one just started, or one ``session.resume``
        restarted), drawing a progress bar; returns as :meth:`run_job`."""
        t0 = time.perf_counter() if t0 is None else t0
        bar = ProgressBar(label, total)
        last: dict = {}
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise PipelineError(f"{op} job {job} did not finish within {timeout:.0f} s")
            if self.proc is not None and self.proc.poll() is not None:
                raise PipelineError(f"backend exited with code {self.proc.returncode} during {op}")
            for msg in self.client.poll(timeout_ms=200):
                header = msg.header
                kind = header.get("event")
                if kind is None or (job is not None and header.get("job") not in (None, job)):
                    continue
                payload = header.get("data") or header.get("result") or {}
                if kind == "progress":
                    last = dict(payload.get("metrics", payload))
                    step = int(payload.get("step", last.get("step", 0)))
                    info = f"{metric}={last[metric]:.3f}" if metric and isinstance(last.get(metric), (int, float)) else ""
                    bar.update(step, info)
                elif kind == "done":
                    bar.close()
                    return {"result": dict(payload), "metrics": last, "seconds": time.perf_counter() - t0}
                elif kind == "error":
                    bar.close("failed")
                    raise PipelineError(f"{op} job failed: {payload.get('code', 'internal')}: {payload.get('message', payload)}")

    def state(self) -> tuple[np.ndarray, dict]:
        """The session's [N,14] state frame (a writable copy) and the reply's result map."""
        reply = self.call("state.get")
        return np.array(reply.buffers[0], dtype=np.float32), reply.result


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def timed(stages: dict, name: str, t0: float, **fields) -> dict:
    """Record ``stages[name]`` = the seconds since ``t0`` (perf_counter) and ``fields``; logs and returns it."""
    entry = {"seconds": round(time.perf_counter() - t0, 3), **fields}
    stages[name] = entry
    log.info("%s: %s", name, json.dumps(entry, default=float))
    return entry


def write_mesh(path: Path, buffers: list) -> None:
    """Write a stage2.extract_mesh reply's arrays (vertices, faces, colours[, uvs, texture]) as ``path``'s
    format, with the backend's own exporter (so a remote backend's mesh gets the same conventions)."""
    from interactive3d.backend.stage2.mesh import MeshResult, export_mesh

    arrays = [np.asarray(b) for b in buffers]
    uvs, texture = (arrays[3], arrays[4]) if len(arrays) > 4 else (None, None)
    export_mesh(MeshResult(arrays[0], arrays[1], arrays[2], 0, uvs=uvs, texture=texture), path)
