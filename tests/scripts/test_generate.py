"""``i3d generate``: a missing model fails fast with a message that says how to get it (never hangs
offline); a tiny diffusers model folder built here from configs runs the whole path to a mesh."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from interactive3d.generate import ModelNotAvailableError, resolve_model


def _env(tmp_path, offline: bool) -> dict:
    env = dict(os.environ)
    env["HF_HOME"] = str(tmp_path / "hf_home")  # an empty cache: nothing can be found locally
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env.pop("HF_HUB_OFFLINE", None)
    return env


@pytest.mark.parametrize("offline", [True, False])
def test_no_weights_exits_nonzero_naming_the_model(tmp_path, offline):
    """Exit code 2 within 60 s (offline it must not hang; online an unknown repo or no network fails
    fast), stderr names the model id and the --model /path/to/folder way out, and nothing is written."""
    model = "interactive3d-tests/no-such-model"
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "interactive3d.cli", "generate", "a red robot", "--out", str(out), "--model", model],
        capture_output=True, text=True, timeout=120, env=_env(tmp_path, offline),
    )
    assert proc.returncode == 2, proc.stderr
    assert time.perf_counter() - t0 < 60
    assert model in proc.stderr and "--model /path/to/folder" in proc.stderr and "huggingface-cli download" in proc.stderr
    assert not out.exists()


def test_folder_without_model_index_is_rejected(tmp_path):
    """A folder that is not a diffusers save_pretrained folder is named in the error."""
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no model_index.json"):
        resolve_model(str(tmp_path / "weights"))
    with pytest.raises(ModelNotAvailableError, match="not a diffusers model folder"):
        resolve_model(str(tmp_path / "missing" / "deeper" / "folder"))


def test_local_folder_resolves_to_itself(tmp_path):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    assert resolve_model(str(tmp_path / "sd")) == str((tmp_path / "sd").resolve())
