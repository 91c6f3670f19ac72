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


def test_spawned_backend_gets_the_local_model_folders_as_model_dirs(tmp_path, monkeypatch):
    """The backend loads local models only from its --model-dir folders: generate's spawn passes the folders of the
    models it will name (resolved; hub ids and None need none, a folder named twice once), and `i3d serve` refuses a
    --model-dir that is not a folder (exit 2, naming it)."""
    from interactive3d import pipeline

    sd, shap = tmp_path / "sd", tmp_path / "shap"
    sd.mkdir()
    shap.mkdir()
    (tmp_path / "link").symlink_to(sd)
    assert pipeline.model_dir_args([str(sd), "openai/shap-e", None, str(tmp_path / "link"), str(shap)]) == [
        "--model-dir", str(sd.resolve()), "--model-dir", str(shap.resolve())]
    proc = subprocess.run([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", "ipc://" + str(tmp_path / "s.sock"),
                           "--state-dir", str(tmp_path / "st"), "--model-dir", str(tmp_path / "nope"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--model-dir" in proc.stderr and "nope" in proc.stderr
    seen = []
    monkeypatch.setattr(pipeline.subprocess, "Popen", lambda cmd, **kw: seen.append(cmd))
    pipeline.spawn_backend("ipc:///x", str(tmp_path / "st"), str(tmp_path / "log"), models=(str(sd), "stabilityai/stable-diffusion-2-1-base"))
    cmd = seen[0]
    assert cmd[cmd.index("serve") + 1:].count("--model-dir") == 1 and cmd[cmd.index("--model-dir") + 1] == str(sd.resolve())


def build_tiny_sd(folder) -> None:
    """A Stable-Diffusion-shaped pipeline folder from configs (random weights, a 56-token CLIP BPE vocab),
    written with save_pretrained exactly as a downloaded model would be laid out."""
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab),
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink()


@pytest.mark.slow
def test_generate_with_a_tiny_local_model_runs_to_a_mesh(tmp_path):
    """Offline (HF_HUB_OFFLINE=1) with --model pointing at a tiny save_pretrained folder: Stage I through
    the real Stable Diffusion SDS path (3 steps), distillation, marching cubes → exit 0, a mesh.glb
    trimesh loads, a splats.ply with the Gaussians, a scene.blend with the splat object and the mesh."""
    import json

    import trimesh

    from interactive3d.protocol import ply

    build_tiny_sd(tmp_path / "tiny-sd")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "interactive3d.cli", "generate", "a red robot", "--out", str(out),
           "--model", str(tmp_path / "tiny-sd"), "--steps", "3", "--resolution", "32", "--n-init", "512",
           "--distill-steps", "10", "--distill-resolution", "32", "--mesh-resolution", "48", "--mesh-threshold", "1.0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=_env(tmp_path, offline=True))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["stages"]["stage1"]["job"]["status"] == "done" and rep["stages"]["stage1"]["steps"] == 3
    assert ply.read_ply(out / "splats.ply").n == rep["stages"]["stage1"]["count"]
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) == rep["stages"]["mesh"]["faces"] > 0
    assert rep["stages"]["blender"]["objects"] == ["I3D_splats", "I3D_mesh"]
