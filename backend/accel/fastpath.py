"""Fast paths checked once per device against their torch twins, with a safe fallback.

Every GPU fast path of the backend (gsplat rasterisation, the Triton and tiny-cuda-nn hash grids, nerfacc
volume rendering) has a pure-torch twin. The first time a component would use its fast path on a device,
:meth:`FastPaths.choose` runs a tiny self-test of that path (which compares it with the twin and raises on
any failure: no nvcc for gsplat's JIT, a compile error, a numeric mismatch). On success the fast path is
used from then on; on failure one warning is logged and the twin runs on the same device. The outcome is
remembered per (component, device) and reported by ``ping`` and at ``i3d serve`` start-up. Devices are
keyed by :func:`canonical_device`, so ``cuda`` (what ``--device auto`` resolves to) and ``cuda:0`` (a
tensor's device) are one record.

The record is process-wide (:data:`FASTPATHS`) on purpose: a self-test result is a fact about this process
and its device (a kernel compiled, a library loaded), not about a session, and every caller deep in the
stages must see the same answer without threading an object through them. Tests make their own
:class:`FastPaths` or call :meth:`FastPaths.reset`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)


def triton_interpreted() -> bool:
    """True when the Triton interpreter is requested (``TRITON_INTERPRET``): kernels then run on CPU tensors,
    slowly. Triton reads the variable when a module's kernels are decorated, i.e. when that module is imported."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def canonical_device(device: torch.device | str) -> str:
    """The one name a device's fast-path record is kept under: "cuda" becomes "cuda:N" (the current CUDA
    device, 0 where CUDA is not initialised or absent), everything else is ``str(torch.device(device))``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return f"cuda:{index}"
    return str(device)


@dataclass(frozen=True)
class Choice:
    """What a component uses on a device, and why."""

    component: str  # e.g. "render", "hashgrid", "volrend"
    device: str  # e.g. "cuda:0"
    backend: str  # the backend in use, e.g. "gsplat" or "torch"
    fast: str  # the fast path that was tried
    ok: bool  # True: the fast path passed its self-test
    reason: str = ""  # why the fast path is not used; when it is, what its self-test measured against the twin


class FastPaths:
    """The per-(component, device) record of which backend runs, filled by one self-test each."""

    def __init__(self) -> None:
        self._choices: dict[tuple[str, str], Choice] = {}
        self._lock = threading.Lock()

    def choose(self, component: str, device: torch.device | str, fast: str, self_test: Callable[[], str | None], twin: str = "torch") -> str:
        """The backend ``component`` uses on ``device``: ``fast`` if ``self_test()`` returns, else ``twin``.

        The self-test runs at most once per (component, device) in this record; it must raise on any
        failure (an exception of any type, including a numeric mismatch as an AssertionError/ValueError), and
        may return what it measured (kept as the choice's reason: the parity the GPU acceptance reports).
        """
        key = (component, canonical_device(device))
        with self._lock:  # one self-test per key even when two jobs start together
            got = self._choices.get(key)
            if got is None:
                try:
                    measured = self_test()
                    got = Choice(component, key[1], fast, fast, True, f"self-test passed: {measured}" if measured else "")
                    log.info("fast path %s for %s on %s passed its self-test", fast, component, key[1])
                except Exception as exc:  # noqa: BLE001 - any failure of a fast path means: use the twin
                    reason = f"{type(exc).__name__}: {exc}".strip()
                    got = Choice(component, key[1], twin, fast, False, reason[:500])
                    log.warning("fast path %s for %s on %s failed its self-test (%s); using the %s twin on the same device",
                                fast, component, key[1], got.reason, twin)
                self._choices[key] = got
        return got.backend

    def record(self, component: str, device: torch.device | str, backend: str, reason: str = "") -> None:
        """Note a choice made without a self-test (e.g. CPU, or the fast path's library is not installed)."""
        key = (component, canonical_device(device))
        with self._lock:
            if key not in self._choices:
                self._choices[key] = Choice(component, key[1], backend, backend, True, reason)

    def get(self, component: str, device: torch.device | str) -> Choice | None:
        with self._lock:
            return self._choices.get((component, canonical_device(device)))

    def report(self) -> dict[str, dict[str, str]]:
        """{component: {device: backend}} plus the reason of each fallback, for ``ping`` and logs."""
        out: dict[str, dict[str, str]] = {}
        with self._lock:
            for c in self._choices.values():
                out.setdefault(c.component, {})[c.device] = c.backend if c.ok else f"{c.backend} (fallback from {c.fast}: {c.reason})"
        return out

    def reset(self) -> None:
        with self._lock:
            self._choices.clear()


FASTPATHS = FastPaths()
