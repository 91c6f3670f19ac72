"""The backend's layout (issue: "A layout that shows the method"): imports run one way,
service → interact / stage2 → stage1 → maths (and accel, the fast-path record), with no import circle between modules, lazy imports included."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

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
    assert _circles(_module_imports()) == []


def test_quaternion_maths_has_one_home():
    """quat → rotation matrix is written once (maths/rotations.py); others import it."""
    hits = []
    for path in BACKEND.rglob("*.py"):
        text = path.read_text()
        if "1 - 2 * (y * y + z * z)" in text:
            hits.append(str(path.relative_to(BACKEND)))
    assert hits == ["maths/rotations.py"], hits


# -- the whole import graph: backend/, protocol/ and the interactive3d/ package (CLI, demo, client) ------------

ROOT = BACKEND.parent
TREES = {"backend": "interactive3d.backend", "protocol": "interactive3d.protocol", "interactive3d": "interactive3d"}


def _tree_name(dotted: str) -> str | None:
    """'interactive3d.backend.service.server' → 'backend.service.server' (None: outside the three trees)."""
    for tree, installed in sorted(TREES.items(), key=lambda kv: -len(kv[1])):  # longest installed prefix first
        if dotted == installed or dotted.startswith(installed + "."):
            return tree + dotted[len(installed):]
    return None


def _modules() -> dict[str, ast.Module]:
    """'backend.service.server' → its parsed source, for every module of the three trees."""
    out = {}
    for tree in TREES:
        for path in (ROOT / tree).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            if rel.name == "__init__" or "data" in rel.parts:
                continue
            out[".".join(rel.parts)] = ast.parse(path.read_text())
    return out


def _graph(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Every import between the three trees (lazy ones and TYPE_CHECKING ones included: a name a module
    annotates with is a name it uses)."""
    graph: dict[str, set[str]] = {}
    for name, tree in mods.items():
        pkg = name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(pkg[: len(pkg) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = _tree_name(node.module or "")
                if base is None:
                    continue
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [t for a in node.names if (t := _tree_name(a.name)) is not None]
            deps.update(t for t in targets if t in mods and t != name)
        graph[name] = deps
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    out: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                out.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return out


def test_no_import_circle_in_backend_protocol_or_package():
    circles = _circles(_graph(_modules()))
    assert circles == [], f"import circles: {circles}"


# Same attribute name, different object (checked by reading the code):
NOT_REACH_BACKS = {
    ("interactive3d.scene", "blend"): "argparse's --blend in _scene_main, not GenerateConfig.blend",
}


def _defined(tree: ast.Module) -> set[str]:
    """Names a module defines: top-level functions, classes and assignments, and its classes' methods,
    fields and ``self.x =`` attributes."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names.update(t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return names


def test_no_module_uses_names_of_a_module_that_imports_it():
    """A module imported by P must not reach back into P, through an import (a circle, above) or through
    an object P hands it: no ``obj.name`` where ``name`` is defined by P and by no other module (e.g. a
    handler calling ``req.server._job_ended``, which only server.py defines). Names that another module
    defines too (``Services.subscribe``) are the handed interface, not a reach-back."""
    mods = _modules()
    graph = _graph(mods)
    defined = {m: _defined(t) for m, t in mods.items()}
    owners: dict[str, set[str]] = {}
    for m, names in defined.items():
        for n in names:
            owners.setdefault(n, set()).add(m)
    # attributes of everyday objects (", ".join, arr.shape, t.device) are nobody's reach-back
    common = set().union(*(dir(o) for o in (str, bytes, list, dict, set, tuple, object, np.ndarray, torch.Tensor, Path)))
    bad = []
    for importer, deps in graph.items():
        only_importer = {n for n in defined[importer] - common if owners[n] == {importer} and not n.startswith("__")}
        for m in deps:
            imported = {a.asname or a.name.split(".")[0] for n in ast.walk(mods[m]) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
            used = {  # obj.name, except module.name (os.path, json.load) and ImportedClass.name
                n.attr for n in ast.walk(mods[m])
                if isinstance(n, ast.Attribute) and not (isinstance(n.value, ast.Name) and n.value.id in imported)
            }
            bad += [f"{m} uses {importer}'s {n!r}" for n in sorted(used & only_importer) if (m, n) not in NOT_REACH_BACKS]
    assert bad == [], "reach-backs: " + "; ".join(bad)


def test_handlers_call_no_private_method_of_what_they_are_handed():
    """requests.py and the ops_* handlers use the :class:`Services` they are handed, never the server
    (``req.server``) nor a private ``obj._name`` of another object (only their own ``self._name``)."""
    bad = []
    for path in sorted((BACKEND / "service").glob("*.py")):
        if path.name != "requests.py" and not path.name.startswith("ops_"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Attribute) and node.attr == "server":  # the old Request.server: use req.services
                bad.append(f"{path.name}:{node.lineno} .server")
    assert bad == [], bad
