"""The package's shape, checked statically (issue 13): module size, import direction, privacy,
and the paper-equation table of ``docs/architecture.md``.

Each check reads the sources with :mod:`ast`; none imports the package, so they are fast and
independent of the backend.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cryonb"
MAX_LINES = 600  # docs/architecture.md: "no module over ~600 lines"
# IPython's display protocol: a public protocol whose name starts with an underscore.
PROTOCOL_NAMES = {"_repr_mimebundle_", "_repr_html_", "_ipython_display_"}


def _modules() -> dict[str, Path]:
    """``{"cryonb.sagd": path, "cryonb.likelihood": .../likelihood/__init__.py, ...}``."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The cryonb modules ``name`` imports, at module level or inside functions."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_module_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_the_import_graph_has_no_cycle():
    """A package importing its own submodules (``__init__`` re-exports) is not a cycle; any
    other loop, lazy imports inside functions included, is."""
    graph = {}
    for name in MODULES:
        deps = _imports(name)
        if _is_package(name):
            deps = {d for d in deps if not d.startswith(name + ".")}
        # importing a submodule runs its package's __init__ first, which is not an edge of
        # the submodule itself
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def _defined_private_names(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_")}


def test_no_object_reads_another_objects_private_attributes():
    """``other._name`` is allowed only where ``_name`` is defined in the same module or its
    package (a class's helpers living beside it), never across the package's modules."""
    offences = []
    for name, path in MODULES.items():
        owner = name.rpartition(".")[0] if not _is_package(name) else name
        siblings = [p for n, p in MODULES.items() if n == owner or n.startswith(owner + ".")] \
            if owner != "cryonb" else [path]
        local = _defined_private_names(siblings)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")) or node.attr in PROTOCOL_NAMES:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr not in local:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offences == []


def _equation_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\|\s*(Eq[^|]*?|Fig[^|]*?|[^|]*?marching[^|]*?|[^|]*?[Pp]rior[^|]*?)\s*\|"
                      r"\s*`([\w/]+\.py):([\w.]+)`", text, flags=re.M)
    return [(eq, f, fn) for eq, f, fn in rows]


def test_the_equation_table_names_existing_functions():
    rows = _equation_rows()
    needed = ["Eq. 4", "Eqs. 7", "Eq. 10", "Eq. 14", "marching", "rior"]
    labels = " ".join(r[0] for r in rows)
    assert all(k in labels for k in needed), labels
    for label, file, qualname in rows:
        path = ROOT / file
        assert path.is_file(), (label, file)
        tree = ast.parse(path.read_text())
        scope: list[ast.AST] = [tree]
        for part in qualname.split("."):
            found = [n for s in scope for n in ast.iter_child_nodes(s)
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part]
            assert found, f"{label}: {file}:{qualname} ({part} not found)"
            scope = found


def test_the_import_scanner_sees_real_edges():
    """The scanner is not vacuous: the run imports the solver, the solver the priors, and a
    lazy import inside a function counts."""
    assert "cryonb.sagd" in _imports("cryonb.abinitio")
    assert "cryonb.priors" in _imports("cryonb.sagd")
    lazy = [n for n in MODULES if "cryonb.io" in _imports(n) and n.startswith("cryonb.commands")]
    assert lazy
