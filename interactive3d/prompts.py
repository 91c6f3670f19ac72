"""Prompt files for batch runs (``i3d batch``, ``scripts/blender_batch.py``): parsing and output names.

One prompt per line; blank lines and lines starting with ``#`` are ignored; options may follow the prompt
after ``;`` as ``key=value``, e.g. ``a red robot ; steps=500 ; negative=blurry``. A malformed line is
returned with its number and the reason, never raised: a batch reports it and goes on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_PROMPT_CHARS = 500
# What every batch front end understands; ``i3d batch`` adds ``model`` (OPTION_TYPES_BATCH).
OPTION_TYPES: Mapping[str, type] = {"steps": int, "seed": int, "cfg": float, "negative": str}
OPTION_TYPES_BATCH: Mapping[str, type] = {**OPTION_TYPES, "model": str}


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


def parse_prompt_file(text: str, option_types: Mapping[str, type] = OPTION_TYPES) -> tuple[list[PromptJob], list[BadLine]]:
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
            if not sep or key not in option_types:
                reason = f"unknown option {opt!r} (known: {', '.join(option_types)})"
                break
            try:
                options[key] = option_types[key](value)
            except ValueError:
                reason = f"option {key} needs a {option_types[key].__name__}, got {value!r}"
                break
            if key == "steps" and options[key] < 1:
                reason = f"steps must be ≥ 1, got {options[key]}"
        if reason:
            bad.append(BadLine(no, raw, reason))
        else:
            jobs.append(PromptJob(no, prompt, options))
    return jobs, bad


def slug(index: int, prompt: str) -> str:
    """``NN_words``: the Blender batch's file names (by position in the file)."""
    return f"{index:02d}_{_words(prompt)}"


def stable_slug(prompt: str, options: Mapping | None = None, seed: int | None = None) -> str:
    """``words-hash``: a folder name that depends only on the prompt, its options and the seed, so a rerun
    of an edited prompt file finds the finished prompts again (``i3d batch`` skips them)."""
    key = json.dumps({"prompt": prompt, "options": dict(options or {}), "seed": seed}, sort_keys=True)
    return f"{_words(prompt)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _words(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:40] or "prompt"
