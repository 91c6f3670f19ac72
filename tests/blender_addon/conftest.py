"""Shared by the add-on tests: the extension zip built with its wheels (downloaded once per test session), and a
Python with each bpy module of the tested matrix (test_blender_versions.py).

The matrix's venvs are made once and kept in the repository root (``.venv-bpy-<version>``, gitignored). A bpy
built for this interpreter's Python (3.11: bpy 4.2–5.0) gets a venv with only that wheel, layered over this
venv for everything else. A bpy built for another Python (3.13: bpy 5.1+) gets a venv of that Python with the
bpy wheel and its own dependencies (numpy ≥ 2.2), pyzmq, msgpack, scipy, pytest and the project itself
(``--no-deps``: the add-on and protocol are what runs there); the backend subprocesses its tests start run
with this venv's Python (``I3D_BACKEND_PYTHON``), which has torch. Which Python a bpy release needs is asked
of PyPI (through pip), never assumed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The bpy modules the add-on is tested on: the oldest and newest release of each Blender line users have, as
# PyPI served them on 2026-12-07 — 4.2.0 (blender_manifest.toml's blender_version_min) and 5.0.1 (the project
# venv's own, pyproject's `blender` extra) for Python 3.11; the newest 5.1.x, 5.2.x LTS and 5.3.x, which exist
# only for Python 3.13. README.md's "Tested versions" names exactly these.
BPY_MATRIX = ("4.2.0", "5.0.1", "5.1.2", "5.2.4", "5.3.0")
OLDEST_BPY, PROJECT_BPY, NEWEST_BPY = BPY_MATRIX[0], "5.0.1", BPY_MATRIX[-1]
# The Pythons a bpy release may be built for (the harness asks PyPI which one it is).
CANDIDATE_PYTHONS = ("3.11", "3.12", "3.13", "3.14")
# Runs backend subprocesses (tests.backend._server_helpers, `i3d serve`): a bpy venv of another Python has no
# torch, so the outer run passes its own interpreter down.
BACKEND_PYTHON = os.environ.get("I3D_BACKEND_PYTHON") or sys.executable


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def wheel_zip(tmp_path_factory) -> Path:
    """The extension zip with its pyzmq/msgpack wheels (built once per session; skips without PyPI)."""
    if not pypi_reachable():
        pytest.skip("PyPI is not reachable: the wheels cannot be downloaded")
    out = tmp_path_factory.mktemp("ext")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_extension.py"), "--out", str(out / "dist"),
                           "--cache-dir", str(out / "cache")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def bpy_version_of(python: str) -> str:
    proc = subprocess.run([python, "-c", "import bpy; print(bpy.app.version_string)"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1].split()[0]


def _pip(python: str, *args: str, timeout: float = 1800) -> None:
    proc = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stderr[-3000:]}"


def python_version_for_bpy(version: str) -> str:
    """The Python ("3.13") PyPI has bpy ``version`` wheels for: each bpy release is built for one Python."""
    for candidate in CANDIDATE_PYTHONS:
        proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "bpy", "--disable-pip-version-check",
                               "--only-binary=:all:", "--python-version", candidate], capture_output=True, text=True,
                              timeout=300)
        listed = re.search(r"Available versions:\s*(.+)", proc.stdout)
        if listed and version in [v.strip() for v in listed.group(1).split(",")]:
            return candidate
    pytest.fail(f"PyPI has no bpy {version} wheel for any of Python {', '.join(CANDIDATE_PYTHONS)}")


def _runs_as(python: str, minor: str) -> bool:
    try:
        proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == minor


def find_python(minor: str) -> str:
    """An interpreter of Python ``minor`` ("3.13"): this one, else ``python3.13`` on PATH, else one that pyenv
    installed (its shim on PATH fails while that version is not selected)."""
    if "%d.%d" % sys.version_info[:2] == minor:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    installed = sorted(pyenv.glob(f"{minor}.*/bin/python{minor}"),
                       key=lambda p: [int(x) for x in re.findall(r"\d+", p.parents[1].name)], reverse=True)
    for candidate in [shutil.which(f"python{minor}"), *map(str, installed)]:
        if candidate and _runs_as(candidate, minor):
            return candidate
    pytest.fail(f"bpy needs Python {minor}, and neither python{minor} on PATH nor pyenv has it (install it, e.g. "
                f"`pyenv install {minor}`, or set I3D_SKIP_BPY_MATRIX=1 to test only the project venv's bpy)")


def python_with_bpy(version: str) -> str:
    """A Python whose ``import bpy`` is bpy ``version``: this one if it is, else ``.venv-bpy-<version>`` in the
    repository (made once; see the module docstring)."""
    if bpy_version_of(sys.executable) == version:
        return sys.executable
    if os.environ.get("I3D_SKIP_BPY_MATRIX"):
        pytest.skip(f"I3D_SKIP_BPY_MATRIX is set: bpy {version} is not tested")
    venv = ROOT / f".venv-bpy-{version}"
    python = venv / "bin" / "python"
    done = venv / ".i3d-ready"  # holds what was installed: a changed TEST_DEPS is installed on the next run
    if done.exists() and (_layered(venv) or done.read_text() == _recipe(version)):
        return str(python)
    if not pypi_reachable():
        pytest.skip(f"PyPI is not reachable: bpy {version} cannot be installed")
    if not done.exists():
        minor = python_version_for_bpy(version)
        subprocess.run([find_python(minor), "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        if minor == "%d.%d" % sys.version_info[:2]:
            # zz_: processed after the venv's own .pth files; addsitedir also runs this venv's .pth files
            # (editable install, layered venvs)
            own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            site = sysconfig.get_paths()["purelib"]
            Path(own, "zz_i3d_project_venv.pth").write_text(f"import site; site.addsitedir({site!r})\n")
            _pip(str(python), "install", "--no-deps", f"bpy=={version}")
            assert bpy_version_of(str(python)) == version
            done.write_text(f"{version}\n")
            return str(python)
        _pip(str(python), "install", f"bpy=={version}")
    _pip(str(python), "install", f"bpy=={version}", *TEST_DEPS)
    _pip(str(python), "install", "--no-deps", "-e", str(ROOT))
    assert bpy_version_of(str(python)) == version
    done.write_text(_recipe(version))
    return str(python)


# What the add-on tests import beside bpy (and its numpy) in a bpy venv of another Python: the add-on's network
# libraries, the protocol's .spz v4 reader, and what test modules use (scipy's KD-tree; trimesh and Pillow for
# the mesh files backend/stage2/mesh_files.py writes); pytest as in this venv.
TEST_DEPS = ("pyzmq>=25", "msgpack>=1.0", "zstandard>=0.21", "scipy", "trimesh>=4.0", "pillow>=9",
             f"pytest=={pytest.__version__}")


def _layered(venv: Path) -> bool:
    """Whether ``venv`` is of this interpreter's Python (then layered over this venv, with bpy only)."""
    cfg = (venv / "pyvenv.cfg").read_text()
    return re.search(r"(?m)^version(?:_info)?\s*=\s*(\d+\.\d+)", cfg).group(1) == "%d.%d" % sys.version_info[:2]


def _recipe(version: str) -> str:
    return f"{version}\n{' '.join(TEST_DEPS)}\n"


def wheel_tag_loads_in(tag: str, python: str) -> bool:
    """Whether a wheel's ``Tag:`` line (``cp313-cp313-manylinux_2_28_x86_64``) loads in CPython ``python``
    ("3.13"): its own version-specific tag, or a stable-ABI (abi3) one built for that Python or an older one."""
    interpreter, abi, _ = tag.split("-", 2)
    own = "cp" + python.replace(".", "")
    if abi == own:
        return interpreter == own
    return abi == "abi3" and interpreter.startswith("cp3") and int(interpreter[3:]) <= int(own[3:])
