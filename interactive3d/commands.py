"""Sub-command registration for ``i3d``: one ``add_<name>(sub)`` per command, explicit list in add_all."""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("interactive3d.cli")


def add_all(sub: argparse._SubParsersAction) -> None:
    # Each helper module adds its own parser; keep this list explicit (no registry).
    from interactive3d import convert, demo, evaluate, generate

    add_serve(sub)
    add_ping(sub)
    demo.add_demo(sub)
    generate.add_generate(sub)
    from interactive3d import batch  # Ray itself is imported only when a batch runs

    batch.add_batch(sub)
    evaluate.add_eval(sub)
    convert.add_convert(sub)


# -- i3d serve ---------------------------------------------------------------------------------------
def _size(text: str) -> int:
    """'1073741824', '512M', '1G' → bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if t[-1:] in "KMG" else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1G, 512M, 1048576)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    return n


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the backend (ZeroMQ ROUTER) until SIGINT/SIGTERM",
        description="Run the Interactive3D backend. Loopback by default; a non-loopback bind needs an auth key "
        "(--auth-key-file, $I3D_AUTH_KEY_FILE or $I3D_AUTH_KEY). Stops jobs between two steps, checkpoints and "
        "exits 0 on SIGINT/SIGTERM.",
    )
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="address: tcp://HOST:PORT or ipc:///PATH (default %(default)s)")
    p.add_argument("--state-dir", default=None, help="checkpoint folder (default $XDG_STATE_HOME/interactive3d or ~/.local/state/interactive3d)")
    p.add_argument("--auth-key-file", default=None, help="file holding the shared HMAC-SHA256 key")
    p.add_argument("--device", default="auto", help="cpu | cuda[:N] | auto (default %(default)s)")
    p.add_argument("--max-bytes", type=_size, default=1 << 30, help="cap on one message's bytes, e.g. 1G (default 1 GiB)")
    p.add_argument("--max-frames", type=int, default=64, help="cap on frames per message (default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="job steps between checkpoints (default %(default)s)")
    p.add_argument("--state-every", type=int, default=10, help="job steps between state frames (default %(default)s)")
    p.add_argument("--guidance-cache", type=_size, default=16 << 30,
                   help="memory bound of the diffusion models kept loaded for all jobs, e.g. 24G (default 16G)")
    p.add_argument("--keep-checkpoints-days", type=float, default=30.0,
                   help="at start-up, delete checkpoints of sessions untouched for longer; 0 keeps all (default %(default)s)")
    p.add_argument("--data-dir", action="append", default=None, metavar="DIR",
                   help="folder that request paths are resolved in; repeatable (default STATE_DIR/data, created)")
    p.add_argument("--model-dir", action="append", default=None, metavar="DIR",
                   help="folder that local model args (diffusers/Shap-E folders, SAM checkpoints) must lie in; repeatable "
                   "(default: none, only hub ids from the Hugging Face cache; the data folders are not model folders)")
    p.add_argument("--max-file-bytes", type=_size, default=1 << 30, help="largest file a request may read, e.g. 2G (default 1 GiB)")
    p.add_argument("--memory-budget", type=_size, default=None,
                   help="peak bytes one op may need, e.g. 8G (default: half the device's free memory, RAM on CPU)")
    p.add_argument("--max-sessions-per-client", type=int, default=16, help="open sessions one client may own (default %(default)s)")
    p.add_argument("--max-sessions-per-address", type=int, default=32,
                   help="open sessions the clients of one IP address (TCP) or process (IPC) may own together (default %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=86400.0, metavar="SECONDS",
                   help="checkpoint and close sessions no request named for this long; session.resume brings them back "
                   "(0: never; default %(default)s)")
    p.add_argument("--curve-secret-file", default=None,
                   help="CURVE secret key (Z85, 40 chars) to use instead of the one derived from the auth key (a server with a "
                   "key always speaks CURVE); clients then need its public key")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import zmq

    from interactive3d.backend.service.jobs import JobConfig
    from interactive3d.backend.service.server import (
        ServerConfig,
        default_state_dir,
        run,
    )
    from interactive3d.protocol.auth import load_key
    from interactive3d.protocol.codec import Limits

    try:
        cfg = ServerConfig(
            bind=args.bind,
            state_dir=args.state_dir or default_state_dir(),
            auth_key=load_key(args.auth_key_file),
            device=args.device,
            limits=Limits(max_frames=args.max_frames, max_frame_bytes=args.max_bytes, max_total_bytes=args.max_bytes),
            job=JobConfig(checkpoint_every=args.checkpoint_every, state_every=args.state_every),
            keep_checkpoints_days=args.keep_checkpoints_days,
            guidance_cache_bytes=args.guidance_cache,
            data_dirs=tuple(args.data_dir or ()),
            model_dirs=tuple(args.model_dir or ()),
            max_file_bytes=args.max_file_bytes,
            memory_budget=args.memory_budget,
            max_sessions_per_client=args.max_sessions_per_client,
            max_sessions_per_address=args.max_sessions_per_address,
            idle_timeout=args.idle_timeout,
            curve_secret_key=_curve_key(args.curve_secret_file),
        )
        cfg.check()
        for root in cfg.roots():  # the default data folder is made; named ones must exist
            if not args.data_dir:
                os.makedirs(root, mode=0o700, exist_ok=True)
            elif not os.path.isdir(root):
                raise ValueError(f"--data-dir {root!r} is not a folder")
        for root in cfg.model_roots():
            if not os.path.isdir(root):
                raise ValueError(f"--model-dir {root!r} is not a folder")
        _print_fast_paths(args.device)
        return run(cfg)
    except ValueError as exc:
        sys.stderr.write(f"i3d serve: {exc}\n")
        return 2
    except (OSError, zmq.ZMQError) as exc:  # e.g. "Address already in use"
        sys.stderr.write(f"i3d serve: cannot bind {args.bind}: {exc}\n")
        return 2


def _curve_key(path: str | None) -> bytes | None:
    """A Z85 CURVE secret key from a file (owner-only, like the auth key); None without a path."""
    if path is None:
        return None
    from interactive3d.protocol.auth import read_secret_file

    key = read_secret_file(path, "CURVE secret file")
    if len(key) != 40:
        raise ValueError(f"CURVE secret file {path!r} must hold a 40-character Z85 key (python -c 'import zmq; print(zmq.curve_keypair())')")
    return key


def _print_fast_paths(device: str) -> None:
    """Run the fast paths' self-tests on the serving device now and say which backend each component uses."""
    from interactive3d.backend.service.ops_session import fastpath_backends
    from interactive3d.backend.service.server import resolve_device

    dev = resolve_device(device)
    sys.stderr.write(f"i3d serve: fast paths on {dev}: {describe_backends(fastpath_backends(dev, self_test=True))}\n")
    sys.stderr.flush()


def describe_backends(backends: dict) -> str:
    """One line from ping's ``backends``: ``render=gsplat, hashgrid=torch (fallback from triton: …), …``."""
    parts = []
    for comp, b in backends.items():
        why = "" if not b.get("reason") else (f" (fallback from {b.get('fast')}: {b['reason']})" if not b.get("ok") else f" ({b['reason']})")
        parts.append(f"{comp}={b.get('backend')}{why}")
    return ", ".join(parts)


# -- i3d ping ----------------------------------------------------------------------------------------
def add_ping(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ping",
        help="check that a backend answers; prints its name and protocol version",
        description="Send 'ping' to a backend. Exit 0 and print NAME protocol VERSION, or exit 1 if it does not answer.",
    )
    p.add_argument("--connect", default="tcp://127.0.0.1:5555", help="backend address (default %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default %(default)s)")
    p.add_argument("--auth-key-file", default=None, help="shared key file (or $I3D_AUTH_KEY_FILE / $I3D_AUTH_KEY)")
    p.set_defaults(func=_cmd_ping)


def _cmd_ping(args: argparse.Namespace) -> int:
    from interactive3d.protocol.auth import load_key
    from interactive3d.protocol.client import Client, RemoteError, RequestTimeout

    try:
        key = load_key(args.auth_key_file)
        with Client(args.connect, auth_key=key) as c:
            r = c.request("ping", timeout=max(0.1, args.timeout), retries=0).result
    except ValueError as exc:
        sys.stderr.write(f"i3d ping: {exc}\n")
        return 2
    except RequestTimeout as exc:  # its message says why, as far as the connection's events tell
        sys.stderr.write(f"i3d ping: no backend answered at {args.connect} within {args.timeout:g} s ({exc})\n")
        return 1
    except RemoteError as exc:
        sys.stderr.write(f"i3d ping: the backend at {args.connect} refused: {exc.code}: {exc.message}\n")
        return 1
    sys.stdout.write(f"{r.get('name')} protocol {r.get('version')} (server {r.get('server_version')}, device {r.get('device')})\n")
    if isinstance(r.get("backends"), dict):
        sys.stdout.write(f"backends: {describe_backends(r['backends'])}\n")
    return 0
