"""Shared by the add-on tests: the extension zip built with its wheels (downloaded once per test session), and a
Python with an older bpy module for the version tests (test_blender_versions.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The oldest and newest bpy the add-on claims (blender_manifest.toml's blender_version_min; the newest is the
# project venv's bpy). README.md names both; CI installs the built zip and runs the add-on tests on each.
OLDEST_BPY, NEWEST_BPY = "4.2.0", "5.0.1"


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


def python_with_bpy(version: str) -> str:
    """A Python whose ``import bpy`` is bpy ``version``: this one if it is, else ``.venv-bpy-<version>`` in the
    repository (made once: a venv with only that bpy wheel from PyPI, layered over this venv for everything
    else — numpy, pyzmq, msgpack, torch, the project — through a .pth file that adds this venv's site dir
    after its own)."""
    if bpy_version_of(sys.executable) == version:
        return sys.executable
    venv = ROOT / f".venv-bpy-{version}"
    python = venv / "bin" / "python"
    done = venv / ".i3d-ready"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        site = sysconfig.get_paths()["purelib"]
        own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # zz_: processed after the venv's own .pth files; addsitedir also runs this venv's .pth files (editable
        # install, layered venvs)
        Path(own, "zz_i3d_project_venv.pth").write_text(f"import site; site.addsitedir({site!r})\n")
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                               f"bpy=={version}"], capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert bpy_version_of(str(python)) == version
        done.write_text(version + "\n")
    return str(python)


@pytest.fixture(scope="session")
def oldest_bpy_python() -> str:
    if os.environ.get("I3D_SKIP_OLD_BPY"):
        pytest.skip("I3D_SKIP_OLD_BPY is set")
    if bpy_version_of(sys.executable) != OLDEST_BPY and not pypi_reachable():
        pytest.skip(f"PyPI is not reachable: bpy {OLDEST_BPY} cannot be installed")
    return python_with_bpy(OLDEST_BPY)
