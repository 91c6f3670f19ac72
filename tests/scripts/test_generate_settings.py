"""run_generate checks its settings against the protocol catalogue before it starts a backend, so a bad
setting (a batch prompt's steps=2000000) fails at once, naming the field, and writes nothing."""

from __future__ import annotations

import pytest

from interactive3d.pipeline import PipelineError
from interactive3d.generate import GenerateConfig, run_generate


@pytest.mark.parametrize(
    ("change", "named"),
    [({"steps": 2_000_000}, "'steps' must be <= 1000000"), ({"resolution": 4}, "'resolution' must be >= 8"),
     ({"distill_levels": 99}, "'levels' must be <= 32"), ({"guidance": "clip"}, "guidance must be one of")],
)
def test_bad_settings_fail_before_a_backend_starts(tmp_path, change, named):
    with pytest.raises(PipelineError, match=named):
        run_generate(tmp_path / "out", GenerateConfig(prompt="a cup", **{"guidance": "oracle", **change}))
    assert not (tmp_path / "out").exists()  # refused before the output folder and the backend exist
