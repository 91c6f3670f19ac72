"""The backend's layout (issue: "A layout that shows the method"): imports run one way,
service → interact / stage2 → stage1 → maths (and accel, the fast-path record), with no import circle between modules, lazy imports included."""

import ast
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[2] / "backend"
# which subpackages each layer may import (besides itself)
ALLOWED = {
    "maths": set(),
    "accel": set(),  # which GPU fast path runs where (self-tests and fallbacks)
    "stage1": {"maths", "accel"},
    "interact": {"stage1", "maths", "accel"},
    "stage2": {"stage1", "maths", "accel"},
    "service": {"interact", "stage1", "stage2", "maths", "accel"},
}


def _module_imports() -> dict[str, set[str]]:
    """'stage1.render' → {'maths.rotations', 'stage1.cameras', ...}: every backend import in the file."""
    graph: dict[str, set[str]] = {}
    for path in BACKEND.rglob("*.py"):
        rel = path.relative_to(BACKEND).with_suffix("")
        if rel.name == "__init__":
            continue
        pkg = rel.parts[:-1]
        name = ".".join(rel.parts)
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        typing_only = {  # `if TYPE_CHECKING:` imports are annotations, not imports at run time
            id(n) for block in ast.walk(tree)
            if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for stmt in block.body for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(pkg[: len(pkg) - (node.level - 1)])
                    mod = base + (node.module.split(".") if node.module else [])
                elif node.module and node.module.startswith("interactive3d.backend."):
                    mod = node.module.split(".")[2:]
                else:
                    continue
                if node.module is None or len(mod) == 1:  # "from . import x" / "from ..stage1 import x"
                    deps.update(".".join(mod + [a.name]) for a in node.names)
                else:
                    deps.add(".".join(mod))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("interactive3d.backend."):
                        deps.add(".".join(a.name.split(".")[2:]))
        graph[name] = deps
    return graph


def test_every_module_sits_in_a_layer():
    graph = _module_imports()
    assert graph, "no backend modules found"
    outside = sorted(m for m in graph if m.split(".")[0] not in ALLOWED)
    assert outside == [], f"modules outside the paper's subpackages: {outside}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_run_one_way(layer):
    bad = []
    for mod, deps in _module_imports().items():
        if mod.split(".")[0] != layer:
            continue
        for d in deps:
            top = d.split(".")[0]
            if top != layer and top not in ALLOWED[layer]:
                bad.append(f"{mod} imports {d}")
    assert bad == [], "imports against the layering: " + "; ".join(sorted(bad))


def test_no_import_circles():
    graph = _module_imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], f"import circles: {cycles}"


def test_quaternion_maths_has_one_home():
    """quat → rotation matrix is written once (maths/rotations.py); others import it."""
    hits = []
    for path in BACKEND.rglob("*.py"):
        text = path.read_text()
        if "1 - 2 * (y * y + z * z)" in text:
            hits.append(str(path.relative_to(BACKEND)))
    assert hits == ["maths/rotations.py"], hits
