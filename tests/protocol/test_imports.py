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


def _protocol_graph() -> dict[str, set[str]]:
    """protocol module → the protocol modules it imports (relative imports, at any depth in the file)."""
    graph = {}
    for path in sorted(PROTOCOL.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:  # from . import a, b
                    deps.update(a.name for a in node.names)
        graph[path.stem] = deps
    return graph


def test_protocol_import_graph_is_acyclic():
    """No circle among protocol/'s modules (depth-first search for a back edge; the circle is named)."""
    graph = _protocol_graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path + [node, dep]
            if dep not in state and (found := visit(dep, path + [node])):
                return found
        state[node] = 2
        return None

    circles = [c for name in graph if name not in state and (c := visit(name, []))]
    assert circles == []


def test_splat_format_modules_share_only_splat_data():
    """Each splat format module imports only the shared splat_data (and files.atomic_write); only the
    dispatcher splats.py knows every format."""
    graph = _protocol_graph()
    for fmt in ("ply", "compressed_ply", "spz", "sog"):
        assert graph[fmt] <= {"splat_data", "files"}, (fmt, graph[fmt])
    assert graph["splat_data"] == set()
    assert {"ply", "compressed_ply", "spz", "sog", "splat_data"} <= graph["splats"]
