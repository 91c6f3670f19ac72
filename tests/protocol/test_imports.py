"""protocol/ is vendored into the Blender extension: it must import neither torch nor bpy and must use only
relative imports inside itself. Checked on the source (AST) and by importing the client in a fresh
interpreter (torch must not end up in sys.modules)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


def test_no_torch_bpy_or_absolute_self_imports():
    bad = []
    for path in sorted(PROTOCOL.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top in ("torch", "bpy", "interactive3d", "protocol", "backend", "blender_addon"):
                    bad.append(f"{path.name}:{node.lineno} imports {n}")
    assert bad == []


def test_client_import_does_not_load_torch():
    code = "import sys, interactive3d.protocol.client, interactive3d.protocol.catalogue; print('torch' in sys.modules, 'bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
