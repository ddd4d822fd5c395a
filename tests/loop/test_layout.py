"""The plan of the house, read from the imports: no import loops in either half (module-level and
function-level imports alike), ``sim`` never imports torch or ``reference``, and every scheme has
its file in both halves."""
from __future__ import annotations

import ast
import os

import networkx as nx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def modules(package: str) -> dict[str, str]:
    """Dotted module name -> file, for every .py under the package."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return out


def imports(name: str, path: str, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (a package's ``__init__`` counts as
    the package; importing ``a.b`` imports ``a`` first, which is not counted as a loop of ``a``)."""
    is_package = path.endswith("__init__.py")
    base = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                up = parts[: len(parts) - (node.level - 1)]
                mod = ".".join(up + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.mark.parametrize("package", ["sim", "reference"])
def test_no_import_loops(package):
    mods = modules(package)
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        for target in imports(name, path, set(mods)):
            if not name.startswith(target + "."):  # a module importing its own package's __init__
                graph.add_edge(name, target)
    assert sorted(map(sorted, nx.simple_cycles(graph))) == []


def test_sim_never_imports_torch_or_reference():
    bad = []
    for name, path in modules("sim").items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [(name, n) for n in names if n.split(".")[0] in ("torch", "reference")]
    assert bad == []


def test_every_scheme_has_its_file_in_both_halves():
    from sim.job import SCHEME_KINDS
    from sim.schemes import SCHEMES

    assert sorted(SCHEMES) == sorted(SCHEME_KINDS)
    for kind in SCHEME_KINDS:
        module = kind.replace("-", "_")
        assert os.path.exists(os.path.join(ROOT, "sim", "schemes", f"{module}.py"))
        assert os.path.exists(os.path.join(ROOT, "reference", "schemes", f"{module}.py"))
