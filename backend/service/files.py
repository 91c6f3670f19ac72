"""The file sandbox of the backend (issue 15): where the bytes of a request's path come from and go to.

Every path in a request is resolved inside the server's data roots (``i3d serve --data-dir DIR``,
repeatable; default ``<state dir>/data``). Relative paths are taken under the first root.

- :func:`resolve_read` → the real path of an existing *regular* file inside a root, at most
  ``max_bytes`` long. Outside every root, a symlink leading out, a folder, FIFO or device, an empty
  path or one with a NUL byte: ``invalid_args``; a missing file: ``not_found``; too long: ``too_large``.
- :func:`resolve_write` → the real path to create or atomically replace. Its folder must already exist
  inside a root (no folders are created); an existing target must be a regular file.
- :func:`read_bytes` / :func:`write_bytes` then use those paths *once*, relative to a handle on their folder
  reached from the root without following any symlink (issue 25): a folder or file swapped after the check
  for a symlink, FIFO or device is refused, never followed, read or waited on. A write renames a temp file
  over the target through the same handle, so a symlink put there meanwhile is replaced, never followed.
- :func:`staged` gives readers that want a path a private temp file holding an uploaded frame's bytes
  (remote clients need no shared filesystem); :func:`read_back` reads a written file for a reply frame.

Format readers and writers (protocol/ply.py, the mesh exporter, …) get these resolved paths and never
see a request's raw string.

Model folders (diffusers, Shap-E) and model files (SAM checkpoints) named in a request are resolved the same
way in separate *model roots* (``i3d serve --model-dir DIR``, repeatable; none by default: then only hub ids,
served from the Hugging Face cache, are accepted): :func:`resolve_model`, :func:`resolve_model_file`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import uuid
from typing import Iterator, Sequence

import numpy as np
from interactive3d.protocol.errors import InvalidArgs, NotFound, TooLarge

MAX_PATH_CHARS = 4096
# a Hugging Face repo id: [org/]name, word characters, '-' and '.', no '--' or '..', at most 96 per part
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?/)?[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?$")


def _check_text(path: object, what: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidArgs(f"{what}: path must be a non-empty string")
    if "\x00" in path:
        raise InvalidArgs(f"{what}: path contains a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise InvalidArgs(f"{what}: path is longer than {MAX_PATH_CHARS} characters")
    return path


def _realpath(path: str, what: str) -> str:
    """os.path.realpath, with a path that changes while it is resolved (a symlink removed between its lstat
    and readlink: FileNotFoundError) refused as invalid_args instead of escaping as internal."""
    try:
        return os.path.realpath(path)
    except OSError as exc:
        raise InvalidArgs(f"{what}: the path changed while it was checked: {exc.strerror}") from None


def _inside(real: str, roots: Sequence[str]) -> bool:
    for r in roots:
        try:
            if os.path.commonpath([real, r]) == r:
                return True
        except ValueError:  # different drives (Windows)
            continue
    return False


def _candidate(roots: Sequence[str], path: str, what: str) -> str:
    if not roots:
        raise InvalidArgs(f"{what}: this server has no data folder (start it with --data-dir or --state-dir); send the file as a frame instead")
    p = os.path.expanduser(path)
    if not os.path.isabs(p):
        p = os.path.join(roots[0], p)
    return os.path.abspath(p)


def _roots_text(roots: Sequence[str]) -> str:
    return ", ".join(repr(r) for r in roots)


def resolve_read(roots: Sequence[str], path: object, max_bytes: int, what: str = "path") -> str:
    """The real path of the regular file ``path`` names inside ``roots`` (see the module docstring)."""
    text = _check_text(path, what)
    cand = _candidate(roots, text, what)
    real = _realpath(cand, what)
    if not _inside(real, roots):
        raise InvalidArgs(f"{what}: {text!r} is outside the server's data folders ({_roots_text(roots)})")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise NotFound(f"{what}: file not found: {text!r}") from None
    except OSError as exc:
        raise InvalidArgs(f"{what}: cannot read {text!r}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgs(f"{what}: {text!r} is not a regular file")
    if st.st_size > max_bytes:
        raise TooLarge(f"{what}: {text!r} is {st.st_size} bytes, over the server's file cap of {max_bytes}")
    return real


def resolve_write(roots: Sequence[str], path: object, what: str = "path") -> str:
    """The real path to create or replace for ``path`` inside ``roots`` (see the module docstring)."""
    text = _check_text(path, what)
    cand = _candidate(roots, text, what)
    name = os.path.basename(cand)
    if not name or name in (".", ".."):
        raise InvalidArgs(f"{what}: {text!r} names a folder, not a file")
    folder = _realpath(os.path.dirname(cand), what)
    if not _inside(folder, roots):
        raise InvalidArgs(f"{what}: {text!r} is outside the server's data folders ({_roots_text(roots)})")
    if not os.path.isdir(folder):
        raise NotFound(f"{what}: folder of {text!r} does not exist (folders are not created)")
    target = os.path.join(folder, name)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise InvalidArgs(f"{what}: cannot write {text!r}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # symlink, folder, FIFO, socket, device: never replaced
        raise InvalidArgs(f"{what}: {text!r} exists and is not a regular file; only regular files are replaced")
    return target


def _model_roots_text(roots: Sequence[str]) -> str:
    if not roots:
        return "this server has no model folders (start it with --model-dir DIR)"
    return f"the server's model folders are {_roots_text(roots)} (i3d serve --model-dir)"


def resolve_model(roots: Sequence[str], model: object, what: str = "model", missing_ok: bool = False) -> str:
    """A model arg (diffusers / Shap-E folder, or a hub id) made safe to hand to ``from_pretrained``.

    A *local* model — an absolute path, one starting with ``~`` or ``.``, a relative path that exists (from the
    server's working folder: from_pretrained would read it), or one naming a folder in one of ``roots`` (``i3d serve
    --model-dir``, tried first, in order) — must be a folder inside a model root once symlinks
    are resolved: outside every root, a symlink leading out, or not a folder → ``invalid_args`` naming the roots;
    missing inside a root → ``not_found`` (its path, with ``missing_ok``: the loader reports it). Its real path is
    returned. Anything else is a hub id and comes back
    unchanged (it only ever names a folder of the Hugging Face cache). Loading weights can unpickle, so a client
    must not be able to point the server at files it placed itself (the data folders are writable by requests,
    and are not model roots unless named with --model-dir too)."""
    text = _check_text(model, what)
    p = os.path.expanduser(text)
    local = os.path.isabs(p) or text.startswith((".", "~"))
    if not local:
        for r in roots:
            if os.path.lexists(os.path.join(r, p)):
                p, local = os.path.join(r, p), True
                break
    local = local or os.path.lexists(p)  # relative to the working folder: from_pretrained would read it
    if not local:
        if not _HUB_ID.match(text) or ".." in text or "--" in text or text.endswith(".git"):
            raise InvalidArgs(f"{what}: {text[:200]!r} is neither a folder inside a model folder nor a hub id 'org/name'")
        return text  # a hub id (ops check the cache)
    real = _realpath(os.path.abspath(p), what)
    if not roots or not _inside(real, roots):
        raise InvalidArgs(f"{what}: {text!r} is not inside a model folder: {_model_roots_text(roots)}")
    if not os.path.exists(real):
        if missing_ok:
            return real
        raise NotFound(f"{what}: model folder not found: {text!r}")
    if not os.path.isdir(real):
        raise InvalidArgs(f"{what}: {text!r} is not a folder (a model is a diffusers folder; {_model_roots_text(roots)})")
    return real


def resolve_model_file(roots: Sequence[str], path: object, max_bytes: int, what: str = "checkpoint") -> str:
    """A model *file* (a SAM checkpoint) inside the model roots (relative: under the first), checked as
    :func:`resolve_read` checks data files (not_found, not a regular file, too_large)."""
    text = _check_text(path, what)
    p = os.path.expanduser(text)
    if not os.path.isabs(p) and roots:
        p = os.path.join(roots[0], p)
    real = _realpath(os.path.abspath(p), what)
    if not roots or not _inside(real, roots):
        raise InvalidArgs(f"{what}: {text!r} is not inside a model folder: {_model_roots_text(roots)}")
    return resolve_read(roots, real, max_bytes, what)


def frame_bytes(buf: np.ndarray, what: str) -> memoryview:
    """A request frame holding a file's bytes (uint8, 1-D) as a memoryview; invalid_args if empty."""
    arr = np.asarray(buf)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise InvalidArgs(f"{what}: a file frame must be uint8 [nbytes], got {arr.dtype} {list(arr.shape)}")
    if arr.size == 0:
        raise InvalidArgs(f"{what}: the file frame is empty")
    return memoryview(arr)


@contextlib.contextmanager
def staged(content: memoryview | bytes, suffix: str) -> Iterator[str]:
    """A private temp file (removed afterwards) holding ``content``, for readers that take a path."""
    fd, tmp = tempfile.mkstemp(prefix="i3d-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def scratch_path(suffix: str) -> Iterator[str]:
    """A path in a private temp folder for a writer whose bytes go back as a reply frame."""
    with tempfile.TemporaryDirectory(prefix="i3d-out-") as d:
        yield os.path.join(d, "out" + suffix)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_folder(roots: Sequence[str], folder: str, what: str) -> int:
    """A descriptor of ``folder`` (a real path inside a root, as resolve_* return), reached from its root one
    component at a time without following a symlink (issue 25): a folder swapped for a symlink after the check
    makes this fail instead of leading elsewhere."""
    root = next((r for r in roots if os.path.commonpath([folder, r]) == r), None)
    if root is None:
        raise InvalidArgs(f"{what}: {folder!r} is outside the server's data folders")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for part in [p for p in os.path.relpath(folder, root).split(os.sep) if p not in ("", ".")]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        raise InvalidArgs(f"{what}: a folder on the way to {folder!r} changed or is a symlink: {exc.strerror}") from None
    return fd


def read_bytes(roots: Sequence[str], real: str, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a resolved regular file (:func:`resolve_read`), opened once relative to its folder's handle
    (:func:`_open_folder`), without following a symlink and without blocking, then checked on the open handle: a
    file swapped after the check for a symlink, FIFO or device is refused, never read; at most ``max_bytes``."""
    dfd = _open_folder(roots, os.path.dirname(real), what)
    try:
        fd = os.open(os.path.basename(real), os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=dfd)
    except OSError as exc:
        raise InvalidArgs(f"{what}: cannot open {os.path.basename(real)!r}: {exc.strerror}") from None
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgs(f"{what}: {os.path.basename(real)!r} is not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{what}: {os.path.basename(real)!r} is over the server's file cap of {max_bytes} bytes")
    return data


def write_bytes(roots: Sequence[str], real: str, chunks, what: str = "file") -> None:
    """Write ``chunks`` atomically to a resolved target (:func:`resolve_write`): a temp file made and renamed
    over the target relative to the folder's handle (:func:`_open_folder`), so a folder swapped for a symlink
    after the check cannot redirect the write; an existing target must still be a regular file."""
    from interactive3d.protocol.files import _umask

    dfd = _open_folder(roots, os.path.dirname(real), what)
    name = os.path.basename(real)
    tmp = f".tmp-{uuid.uuid4().hex}"
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgs(f"{what}: {name!r} exists and is not a regular file; only regular files are replaced")
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666 & ~_umask(), dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def read_back(path: str, max_bytes: int, what: str = "file") -> np.ndarray:
    """A written file's bytes as a uint8 array for a reply frame (too_large over ``max_bytes``)."""
    n = os.path.getsize(path)
    if n > max_bytes:
        raise TooLarge(f"{what} is {n} bytes, over the cap of {max_bytes} for a reply frame")
    return np.fromfile(path, dtype=np.uint8)


def suffix_of(name: object, default: str) -> str:
    """The lower-case suffix of a file name arg (``.ply``), or ``default``."""
    if isinstance(name, str) and "." in os.path.basename(name):
        return os.path.splitext(name)[1].lower()
    return default
