"""Batch text → 3D inside Blender, through the add-on's own operators.

    blender -b -P scripts/blender_batch.py -- --prompts FILE --out DIR [--connect ADDR] [--model M] [--demo]
    python scripts/blender_batch.py --prompts FILE --out DIR [...]          (the bpy module)

Each prompt gets its own scene: the add-on's operators connect to the backend (a local one this script
spawns, or ``--connect ADDR``), run Stage I (``i3d.generate``), distil (``i3d.to_nerf``) and extract the
mesh (``i3d.extract_mesh``); the scene is saved as DIR/NN_slug.blend and the mesh as DIR/NN_slug.glb.
A failing prompt is reported and the batch goes on; a summary table is printed at the end and written
to DIR/summary.json. ``--demo`` runs the offline demo object with the oracle guidance instead of prompts.

Prompt file: one prompt per line; blank lines and lines starting with ``#`` are ignored; options may
follow the prompt after ``;`` as ``key=value`` (steps, seed, cfg, negative), e.g.
``a red robot ; steps=500 ; negative=blurry``. A malformed line is reported with its number and skipped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_PROMPT_CHARS = 500
_OPTION_TYPES = {"steps": int, "seed": int, "cfg": float, "negative": str}


@dataclass(frozen=True)
class PromptJob:
    line: int  # 1-based line number in the prompt file (0 for the demo job)
    prompt: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BadLine:
    line: int
    text: str
    reason: str


def parse_prompt_file(text: str) -> tuple[list[PromptJob], list[BadLine]]:
    """Prompt jobs and the malformed lines (with the reason), in file order."""
    jobs: list[PromptJob] = []
    bad: list[BadLine] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompt, *opts = [p.strip() for p in line.split(";")]
        reason = None
        if not prompt:
            reason = "empty prompt"
        elif len(prompt) > MAX_PROMPT_CHARS:
            reason = f"prompt longer than {MAX_PROMPT_CHARS} characters ({len(prompt)})"
        elif any(ord(c) < 32 for c in prompt):
            reason = "control characters in the prompt"
        options: dict = {}
        for opt in opts:
            if reason:
                break
            key, sep, value = opt.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in _OPTION_TYPES:
                reason = f"unknown option {opt!r} (known: {', '.join(_OPTION_TYPES)})"
                break
            try:
                options[key] = _OPTION_TYPES[key](value)
            except ValueError:
                reason = f"option {key} needs a {_OPTION_TYPES[key].__name__}, got {value!r}"
                break
            if key == "steps" and options[key] < 1:
                reason = f"steps must be ≥ 1, got {options[key]}"
        if reason:
            bad.append(BadLine(no, raw, reason))
        else:
            jobs.append(PromptJob(no, prompt, options))
    return jobs, bad


def slug(index: int, prompt: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:40] or "prompt"
    return f"{index:02d}_{s}"


def script_args(argv: list[str]) -> list[str]:
    """The script's own arguments: after ``--`` under ``blender -b -P``, else everything after argv[0]."""
    return argv[argv.index("--") + 1:] if "--" in argv else argv[1:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blender_batch.py", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="prompt file (one prompt per line)")
    src.add_argument("--demo", action="store_true", help="the offline demo object with oracle guidance")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--connect", default=None, help="backend address (default: spawn a local backend)")
    p.add_argument("--backend-python", default=None, help="Python with the backend installed (local backend; default: this one)")
    p.add_argument("--model", default=None, help="diffusion model id or local folder (default: the backend's)")
    p.add_argument("--steps", type=int, default=None, help="Stage I steps (default per mode)")
    p.add_argument("--resolution", type=int, default=None, help="Stage I render size")
    p.add_argument("--distill-steps", type=int, default=None)
    p.add_argument("--mesh-resolution", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p
