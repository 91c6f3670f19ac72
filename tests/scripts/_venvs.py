"""Small venvs for the install tests: a fresh interpreter environment that sees this one's packages (torch,
diffusers, …) after its own, as a GPU image's site-packages would be seen, so a test can put numpy 2 in front
or install a wheel kit without downloading torch again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NUMPY2 = "numpy==2.2.6"  # a numpy 2 with cp311 wheels; GPU images ship a newer one, the resolution is the same


def overlay_venv(path: Path, with_pip: bool = False, numpy2: bool = True) -> Path:
    """A venv at ``path`` whose own site-packages comes first and then every site-packages this interpreter
    sees (a worktree venv sees the main one through a .pth line; .pth files are not followed twice). With
    ``numpy2`` it gets numpy 2.2.6 of its own. Returns its python."""
    args = [sys.executable, "-m", "venv", str(path)] + ([] if with_pip else ["--without-pip"])
    subprocess.run(args, check=True, timeout=300)
    py = path / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "_outer.pth").write_text("".join(f"{d}\n" for d in sys.path if d.endswith("site-packages")))
    if numpy2:  # pip runs from this interpreter and acts on the one --python names
        subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", NUMPY2], check=True, timeout=600)
    return py
