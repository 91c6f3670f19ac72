"""``i3d convert IN OUT``: between every splat format the project reads and writes (INRIA .ply, SuperSplat's
compressed .ply, antimatter15 .splat, Niantic .spz, PlayCanvas .sog), with the same reader and writer code the backend and
the add-on use (protocol.splats.read_any / write_any). The input's format comes from its content, the
output's from its name (``x.compressed.ply`` is compressed, ``meta.json`` the unbundled .sog) or ``--to``.
``--spz-axes`` says which axes an .spz input or output holds (docs/conventions.md, 'Splat files')."""

from __future__ import annotations

import argparse
import os
import sys


def add_convert(sub: argparse._SubParsersAction) -> None:
    from interactive3d.protocol.splats import SPLAT_FORMATS
    from interactive3d.protocol.spz import SPZ_AXES

    p = sub.add_parser(
        "convert",
        help="convert a splat file between .ply, .compressed.ply, .splat, .spz and .sog",
        description="Read IN (format from its content: INRIA .ply, compressed .ply, .splat, .spz v2–v4, .sog or an "
        "unbundled SOG's meta.json) and write OUT (format from its name, or --to). Lossy targets quantise: see "
        "docs/conventions.md, 'Splat files'.",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--to", choices=SPLAT_FORMATS, default=None, help="output format (default: from OUT's name)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--spz-axes", choices=SPZ_AXES, default=SPZ_AXES[0],
                   help="axes of an .spz IN or OUT: 'ply' = the .ply's own, as stored (splat-transform 3.x, the "
                   "default); 'rub' = Niantic's RUB, flipped (splat-transform 2.x and older Niantic exports)")
    p.set_defaults(func=_cmd_convert)


def _lost(data, fmt: str) -> str | None:
    """What the target format cannot hold, in words (None: nothing beyond quantisation)."""
    m = data.sh_rest.shape[1]
    if fmt == "splat" and m:
        return f"the .splat layout has no spherical harmonics: SH degree {data.sh_degree} → 0"
    if fmt in ("compressed.ply", "sog") and m > 15:
        return f"{'compressed .ply' if fmt != 'sog' else '.sog'} keeps SH degree ≤ 3: degree {data.sh_degree} → 3"
    return None


def _cmd_convert(args: argparse.Namespace) -> int:
    from interactive3d.protocol import splats

    try:
        if not os.path.isfile(args.input):
            raise FileNotFoundError(f"no such file: {args.input!r}")
        if os.path.exists(args.output) and not args.force:
            raise FileExistsError(f"{args.output!r} exists (use --force to overwrite)")
        if os.path.abspath(args.input) == os.path.abspath(args.output):
            raise ValueError("IN and OUT are the same file")
        src_fmt = splats.format_of(args.input)
        out_fmt = args.to or splats.format_of(args.output, sniff=False)
        data = splats.read_any(args.input, fmt=src_fmt, spz_axes=args.spz_axes)
        lost = _lost(data, out_fmt)
        splats.write_any(args.output, data, fmt=out_fmt, spz_axes=args.spz_axes)
    except (OSError, ValueError) as exc:  # PlyFormatError is a ValueError
        sys.stderr.write(f"i3d convert: {exc}\n")
        return 2
    if lost:
        sys.stderr.write(f"i3d convert: warning: {lost}\n")
    sys.stdout.write(f"{args.input} ({src_fmt}) → {args.output} ({out_fmt}): {data.n} Gaussians, "
                     f"{os.path.getsize(args.output)} bytes\n")
    return 0
