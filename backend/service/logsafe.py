"""Log lines that an attacker can neither forge nor flood (issue 15).

- :func:`printable` escapes control characters (a newline in an op name cannot start a fake log line)
  and shortens long values.
- :class:`PeerLogLimiter` lets each peer (ROUTER identity) log at most ``burst`` lines, refilled at
  ``rate`` per second (a token bucket); what it drops is counted and reported in the next line that
  passes, so a garbage flood costs a few lines a second instead of gigabytes an hour.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any


def printable(value: Any, limit: int = 200) -> str:
    """``value`` as one line of text: control characters escaped (\\n, \\x1b, …), at most ``limit`` chars."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"…(+{len(text) - limit})"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class PeerLogLimiter:
    """Token bucket per peer identity (bounded number of peers remembered, least recent forgotten).

    Args:
        rate: lines per second a peer may log on average.
        burst: lines it may log at once.
        peers: peers remembered.
    """

    def __init__(self, rate: float = 2.0, burst: int = 20, peers: int = 1024) -> None:
        self.rate, self.burst, self.peers = float(rate), float(burst), int(peers)
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()  # peer → [tokens, last time, dropped]
        self._lock = threading.Lock()  # the router thread and the workers log through one limiter

    def allow(self, peer: bytes) -> tuple[bool, int]:
        """(may log now, lines dropped since this peer's last logged line)."""
        with self._lock:
            return self._allow(peer)

    def _allow(self, peer: bytes) -> tuple[bool, int]:
        now = time.monotonic()
        b = self._buckets.pop(peer, None) or [self.burst, now, 0]
        self._buckets[peer] = b
        while len(self._buckets) > self.peers:
            self._buckets.popitem(last=False)
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] < 1.0:
            b[2] += 1
            return False, 0
        b[0] -= 1.0
        dropped, b[2] = int(b[2]), 0
        return True, dropped

    def log(self, logger: logging.Logger, level: int, peer: bytes | None, fmt: str, *args: Any) -> bool:
        """Log ``fmt % args`` for ``peer`` unless its bucket is empty; True if logged."""
        if not logger.isEnabledFor(level):
            return False
        peer = peer or b""
        ok, dropped = self.allow(peer)
        if ok:
            if dropped:
                fmt += " (%d lines from this peer dropped)"
                args = (*args, dropped)
            logger.log(level, "peer=%s " + fmt, printable(peer, 40), *args)
        return ok

    def warning(self, logger: logging.Logger, peer: bytes | None, fmt: str, *args: Any) -> bool:
        return self.log(logger, logging.WARNING, peer, fmt, *args)

    def info(self, logger: logging.Logger, peer: bytes | None, fmt: str, *args: Any) -> bool:
        return self.log(logger, logging.INFO, peer, fmt, *args)
