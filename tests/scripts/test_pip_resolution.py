"""Installing the backend beside numpy 2 and a torch that is already there changes neither (issue 24 item 3).

pip's own resolver decides it: ``pip install --dry-run --report`` in a venv that sees this checkout's torch
(through a .pth line, as a GPU image's site-packages would be seen) and has numpy 2 in its own site-packages.
Only bpy <= 5.0 (Python 3.11) needs numpy < 2, so only the ``blender`` extra may ask for it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _venvs import NUMPY2, overlay_venv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def numpy2_env(tmp_path_factory):
    """A venv with numpy 2.2.6 of its own, seeing this venv's packages (torch, diffusers, …) after its own."""
    py = overlay_venv(tmp_path_factory.mktemp("numpy2") / "venv")
    got = subprocess.run([str(py), "-c", "import numpy, torch; print(numpy.__version__, torch.__version__)"], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    numpy_v, torch_v = got.stdout.split()
    assert numpy_v == NUMPY2.split("==")[1]
    return py, torch_v


def _resolve(py: Path, target: str, tmp_path: Path) -> dict[str, str]:
    report = tmp_path / "report.json"
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--dry-run", "--quiet", "--no-build-isolation", "--report", str(report), target],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_backend_install_keeps_numpy2_and_torch(numpy2_env, tmp_path):
    """The backend (no extras) and its texture extra install neither numpy nor torch: numpy 2.2.6 and this
    torch stay. Only the project itself is new (everything else it needs is already there)."""
    py, _ = numpy2_env
    for target in (str(ROOT), f"{ROOT}[texture]"):
        install = _resolve(py, target, tmp_path)
        assert "numpy" not in install and "torch" not in install and "triton" not in install, install
        assert "interactive3d" in install


@pytest.mark.slow
def test_only_the_blender_extra_asks_for_numpy_below_2(numpy2_env, tmp_path):
    """bpy 5.0.1 (Python 3.11) is built against numpy 1.x: its extra is the one place that downgrades numpy,
    and it still leaves torch alone."""
    py, _ = numpy2_env
    install = _resolve(py, f"{ROOT}[blender]", tmp_path)
    assert install.get("numpy", "").startswith("1.") and "torch" not in install, install
