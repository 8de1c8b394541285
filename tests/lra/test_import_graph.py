"""No import circle in ``lrm`` or ``lra``, and no two ``lra`` modules with the same name.

The graph is read from the source (ast), not by importing: every ``import`` and ``from ...
import`` counts, at module level or inside a function (a function-level import closes a circle
just as surely, only later), except those under ``if TYPE_CHECKING:``. ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Run this file directly to
print the circles: ``python tests/lra/test_import_graph.py``.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lrm", "lra")


def modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    found = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the imports inside ``if TYPE_CHECKING:`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines |= {n.lineno for n in ast.walk(inner) if hasattr(n, "lineno")}
    return lines


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package holding this module
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[:len(here) - node.level + 1]
                base = ".".join([*here, base] if base else here)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` names a.b.c; keep the longest prefix that is one of ours
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != name:
                out.add(".".join(parts))
    return out


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (or a module importing
    itself), each as a sorted list: Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_lrm_or_lra():
    found = circles(import_graph())
    assert not found, (f"import circles (each: modules that import one another): {found}; "
                       f"move what both sides need into a module of its own")


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    # the circle of lra/lightning_cli -> module -> pretrain -> lightning_cli, closed by an
    # import inside a method, is what this test exists for: it must be found
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from pkg.module import Module\n")
    (pkg / "module.py").write_text("class Module:\n    def setup(self):\n"
                                   "        from pkg.pretrain import load\n")
    (pkg / "pretrain.py").write_text("from . import cli\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from pkg.cli import x\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.module"] == {"pkg.pretrain"}
    assert graph["pkg.pretrain"] == {"pkg.cli"}
    assert graph["pkg.typed"] == set()
    assert circles(graph) == [["pkg.cli", "pkg.module", "pkg.pretrain"]]


def test_every_lra_module_name_is_distinct():
    # a name says what a module holds; two recall.py files say nothing
    names = Counter(p.stem for p in (ROOT / "lra").rglob("*.py")
                    if p.stem not in ("__init__", "__main__"))
    assert not [n for n, k in names.items() if k > 1], names


def test_lrm_imports_nothing_of_lra():
    # the design's first rule: no training code in lrm, so nothing of the harness either
    # (its process-wide settings, lra/allocator.py, included)
    graph = import_graph()
    reach = {m: sorted(t for t in targets if t.split(".")[0] == "lra")
             for m, targets in graph.items() if m.split(".")[0] == "lrm"}
    assert not {m: t for m, t in reach.items() if t}


if __name__ == "__main__":
    graph = import_graph()
    found = circles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports; "
          f"{len(found)} circle(s)")
    for c in found:
        print("  " + " <-> ".join(c))
    sys.exit(1 if found else 0)
