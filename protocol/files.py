"""Atomic file writes shared by the .ply/.splat writer and the mesh exporter.

The bytes go to a temp file in the destination folder which is then renamed over the target, so a crash
never leaves half a file. ``tempfile.mkstemp`` creates files readable by the owner only; user-facing
outputs (splats, meshes) get the permissions a plain ``open(path, "w")`` would give (0o666 minus umask).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable


def _umask() -> int:
    """The process umask without changing it (os.umask would set it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        if os.name == "posix":
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
