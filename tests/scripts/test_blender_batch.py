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


_CHECK = r"""
import json, sys
import bpy
out = {}
for path in sys.argv[1:]:
    bpy.ops.wm.open_mainfile(filepath=path)
    out[path] = {ob.name: {"type": ob.type, "vertices": len(ob.data.vertices) if ob.type == "MESH" else 0,
                           "polygons": len(ob.data.polygons) if ob.type == "MESH" else 0,
                           "attributes": sorted(a.name for a in ob.data.attributes) if ob.type == "MESH" else []}
                 for ob in bpy.data.objects}
print("BLENDS " + json.dumps(out))
"""


@pytest.mark.slow
def test_batch_prompts_with_a_tiny_model(tmp_path, batch):
    """`python scripts/blender_batch.py --prompts F` (the bpy module) with a tiny local SD model: the two
    good prompts each give a .blend that bpy opens with the splat object (i3d_* attributes) and the
    coloured mesh, plus a .glb; the malformed line (4) is reported by number on stderr and skipped; the
    summary table lists all three; exit code 0 (every run prompt succeeded)."""
    import json
    import os
    import subprocess

    from test_generate import build_tiny_sd

    build_tiny_sd(tmp_path / "tiny-sd")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# batch\na red robot\na blue car ; steps=2\na tree ; steps=many\n")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    cmd = [sys.executable, str(SCRIPT), "--prompts", str(prompts), "--out", str(out), "--model", str(tmp_path / "tiny-sd"),
           "--steps", "3", "--resolution", "32", "--distill-steps", "10", "--mesh-resolution", "48", "--mesh-threshold", "1.0", "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "skipping line 4" in proc.stderr and "option steps needs a int" in proc.stderr
    assert "SKIPPED" in proc.stdout and proc.stdout.count(" ok ") == 2
    summary = json.loads((out / "summary.json").read_text())
    blends = [j["blend"] for j in summary["jobs"]]
    assert [Path(b).name for b in blends] == ["01_a_red_robot.blend", "02_a_blue_car.blend"]
    assert all((out / f"{Path(b).stem}.glb").is_file() for b in blends)
    check = subprocess.run([sys.executable, "-c", _CHECK, *blends], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    seen = json.loads([l for l in check.stdout.splitlines() if l.startswith("BLENDS ")][-1][len("BLENDS "):])
    for path, job in zip(blends, summary["jobs"]):
        objs = seen[path]
        splat = [o for o in objs.values() if "i3d_color" in o["attributes"]]
        meshes = [o for o in objs.values() if o["polygons"] > 0]
        assert len(splat) == 1 and splat[0]["vertices"] == job["gaussians"]
        assert len(meshes) == 1 and meshes[0]["vertices"] == job["mesh_vertices"]


@pytest.mark.slow
def test_batch_demo_object_with_oracle(tmp_path):
    """`--demo`: the offline robot with the oracle guidance through the add-on's operators (short runs):
    exit 0, demo.blend opens in bpy with the splat object and a mesh of > 100 faces, demo.glb exists."""
    import json
    import subprocess

    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--demo", "--out", str(out), "--steps", "40", "--resolution", "32",
           "--distill-steps", "30", "--mesh-resolution", "48"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    job = json.loads((out / "summary.json").read_text())["jobs"][0]
    assert job["ok"] and (out / "demo.glb").is_file()
    check = subprocess.run([sys.executable, "-c", _CHECK, job["blend"]], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    objs = json.loads([l for l in check.stdout.splitlines() if l.startswith("BLENDS ")][-1][len("BLENDS "):])[job["blend"]]
    assert any("i3d_color" in o["attributes"] and o["vertices"] == job["gaussians"] for o in objs.values())
    assert any(o["polygons"] > 100 and "i3d_color" not in o["attributes"] for o in objs.values())


def test_its_backend_gets_a_local_model_folder_as_model_dir(batch, tmp_path):
    """The batch's own backend (`i3d serve`) gets --model-dir for a local --model folder (it loads local models only
    from there), none for a hub id."""
    (tmp_path / "sd").mkdir()
    cmd = batch.serve_command("python", "ipc:///x", tmp_path, str(tmp_path / "sd"))
    assert cmd[-2:] == ["--model-dir", str((tmp_path / "sd").resolve())]
    assert "--model-dir" not in batch.serve_command("python", "ipc:///x", tmp_path, "stabilityai/stable-diffusion-2-1-base")
    assert "--model-dir" not in batch.serve_command("python", "ipc:///x", tmp_path, None)


@pytest.fixture
def keyed_backend(tmp_path):
    """`i3d serve` with a shared key (so it speaks CURVE with keys derived from it), on an ipc address."""
    import os
    import subprocess

    key_file = tmp_path / "key"
    key_file.write_bytes(b"a-batch-test-key-0123456789abcdef0123456789")
    os.chmod(key_file, 0o600)
    address = f"ipc://{tmp_path}/keyed.sock"
    proc = subprocess.Popen([sys.executable, "-m", "interactive3d.cli", "serve", "--bind", address, "--state-dir",
                             str(tmp_path / "state"), "--auth-key-file", str(key_file), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield address, key_file
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_waiting_for_a_keyed_backend_with_and_without_its_key(batch, keyed_backend):
    """The batch's wait for `--connect` pings with the key (a keyed backend admits only key holders at its CURVE
    handshake); without it, it exits with the reason in its message instead of a traceback."""
    from interactive3d.protocol.auth import load_key

    address, key_file = keyed_backend
    batch._wait_for_backend(address, None, load_key(str(key_file), env={}), timeout=120)
    with pytest.raises(SystemExit, match="no backend answered .* requires the CURVE handshake"):
        batch._wait_for_backend(address, None, None, timeout=3)


def test_an_unreadable_key_file_exits_2_before_any_work(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, str(SCRIPT), "--demo", "--out", str(tmp_path / "out"), "--connect",
                           "ipc:///nowhere", "--auth-key-file", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--auth-key-file" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_batch_demo_on_a_backend_with_a_key(tmp_path, keyed_backend):
    """`--connect ADDR --auth-key-file F`: the whole batch (add-on operators signing with the key) runs on a
    remote-style backend that has a key: exit 0, the .glb written."""
    import json
    import subprocess

    address, key_file = keyed_backend
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--demo", "--out", str(out), "--connect", address, "--auth-key-file",
           str(key_file), "--steps", "10", "--resolution", "32", "--distill-steps", "10", "--mesh-resolution", "32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    job = json.loads((out / "summary.json").read_text())["jobs"][0]
    assert job["ok"] and (out / "demo.glb").is_file()
