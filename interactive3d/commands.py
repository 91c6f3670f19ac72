"""Sub-command registration for ``i3d``: one ``add_<name>(sub)`` per command, explicit list in add_all."""

from __future__ import annotations

import argparse


def add_all(sub: argparse._SubParsersAction) -> None:
    # Each helper module adds its own parser; keep this list explicit (no registry).
    from interactive3d import demo, generate

    demo.add_demo(sub)
    generate.add_generate(sub)
