"""scripts/blender_batch.py: prompt-file parsing (malformed lines reported with their number and skipped)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "blender_batch.py"


@pytest.fixture(scope="module")
def batch():
    spec = importlib.util.spec_from_file_location("blender_batch", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["blender_batch"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_prompt_file_parsing_reports_and_skips_bad_lines(batch):
    """3 good jobs out of 8 lines: comments/blank lines ignored, 3 malformed lines reported by number."""
    text = "\n".join(
        [
            "# a comment",
            "a red robot",
            "",
            "a blue car ; steps=50 ; negative=blurry",
            "a tree ; steps=many",  # 5: bad int
            "a lamp ; colour=red",  # 6: unknown option
            " ; steps=3",  # 7: empty prompt
            "a cup ; seed=4 ; cfg=7.5",
        ]
    )
    jobs, bad = batch.parse_prompt_file(text)
    assert [(j.line, j.prompt) for j in jobs] == [(2, "a red robot"), (4, "a blue car"), (8, "a cup")]
    assert jobs[1].options == {"steps": 50, "negative": "blurry"}
    assert jobs[2].options == {"seed": 4, "cfg": 7.5}
    assert [b.line for b in bad] == [5, 6, 7]
    assert "steps needs a int" in bad[0].reason and "unknown option" in bad[1].reason and "empty prompt" in bad[2].reason


def test_script_args_after_double_dash(batch):
    assert batch.script_args(["blender", "-b", "-P", "x.py", "--", "--demo", "--out", "d"]) == ["--demo", "--out", "d"]
    assert batch.script_args(["x.py", "--demo", "--out", "d"]) == ["--demo", "--out", "d"]
    assert batch.slug(3, "A Red Robot!") == "03_a_red_robot"
