"""``i3d generate`` with presets and Shap-E initialisation (issue 18): Shap-E points by default when its weights
are local (a tiny ShapEPipeline saved to a folder), a random sphere with a message saying why when they are not,
and ``--preset`` values resolved (and scaled, with a note) by the backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from _server_helpers import ThreadedServer  # noqa: E402

from interactive3d.pipeline import Backend  # noqa: E402
from interactive3d.generate import GenerateConfig, _init  # noqa: E402


def test_auto_init_falls_back_to_random_and_says_why(tmp_path, capsys):
    """--init auto with Shap-E missing: a random sphere of n points, stderr names the model and how to get it;
    --init shap_e with it missing is an error; --init random never asks for Shap-E."""
    from interactive3d.pipeline import PipelineError

    ts = ThreadedServer()
    b = Backend(ts.address)
    try:
        b.session = b.call("session.create", {}).result["session"]
        missing = str(tmp_path / "no-shap-e")
        res = _init(b, GenerateConfig(prompt="a chair", shap_e_model=missing), 64, {})
        assert res["kind"] == "random" and "huggingface-cli download openai/shap-e" in res["note"]
        assert missing in capsys.readouterr().err
        assert b.call("state.get", {}).result["count"] == 64
        with pytest.raises(PipelineError, match="Shap-E initialisation failed"):
            _init(b, GenerateConfig(prompt="a chair", shap_e_model=missing, init="shap_e"), 64, {})
        assert _init(b, GenerateConfig(prompt="a chair", init="random"), 32, {})["kind"] == "random"
    finally:
        b.close()
        ts.stop()


@pytest.mark.slow
def test_generate_preview_preset_with_local_shap_e(tmp_path):
    """Offline, tiny SD and tiny Shap-E folders, --preset preview with Stage I cut to 3 steps, distillation to 4 and
    512 initial points (explicit flags win over the preset): exit 0; the report holds the preset as the CPU backend
    scaled it (and its note on stderr), Shap-E as the initialisation, and Stage I at the preset's 64² renders."""
    from _tiny_diffusion import tiny_shap_e_with_surface

    from test_generate import _env, build_tiny_sd

    build_tiny_sd(tmp_path / "tiny-sd")
    tiny_shap_e_with_surface().save_pretrained(tmp_path / "tiny-shap-e")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "interactive3d.cli", "generate", "a red robot", "--out", str(out), "--preset", "preview",
           "--model", str(tmp_path / "tiny-sd"), "--shap-e", str(tmp_path / "tiny-shap-e"), "--shap-e-steps", "2", "--shap-e-grid", "24", "--steps", "3",
           "--n-init", "512", "--distill-steps", "4", "--distill-resolution", "32", "--mesh-resolution", "48", "--mesh-threshold", "1.0", "--no-blend"]
    env = _env(tmp_path, offline=True)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "backend"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["preset"]["preset"] == "preview" and rep["preset"]["scaled"] and "scaled down" in proc.stderr
    assert rep["init"]["kind"] == "shap_e" and rep["stages"]["init"]["kind"] == "shap_e"
    assert rep["stages"]["stage1"]["steps"] == 3 and rep["stages"]["stage1"]["resolution"] == 64
    assert rep["preset"]["values"]["init_points"] == 4096 and rep["stages"]["stage1"]["count"] >= 1
    assert "512 points from Shap-E" in rep["init"]["note"]
