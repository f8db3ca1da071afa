"""The layering rule of ``trapdoor/__init__.py``, checked on the source with ``ast``.

Every module of the package is parsed (never imported), so the check is fast and sees
imports inside functions too. The rule is what keeps the crypto core and the protocol
usable on their own and the three parties independent; an import cycle between modules
is refused as well, since it makes import order matter and hides which module owns what.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import trapdoor

PACKAGE_DIR = Path(trapdoor.__file__).resolve().parent
ROOT = "trapdoor"

# Layer (the second component of a module's name, "" for the root package) -> the layers
# it may import. A layer may always import itself.
ALLOWED_LAYERS: dict[str, frozenset[str]] = {
    "": frozenset(),
    "crypto": frozenset(),
    "protocol": frozenset({"crypto"}),
    "service": frozenset({"crypto", "protocol"}),
    "ml": frozenset(),
    "kgc": frozenset({"crypto", "protocol", "service"}),
    "ps": frozenset({"crypto", "protocol", "service"}),
    "participant": frozenset({"crypto", "protocol", "service", "ml"}),
    "flower": frozenset({"crypto", "protocol", "service", "ml", "participant"}),
    "demo": frozenset({"crypto", "protocol", "service", "ml", "kgc", "ps", "participant"}),
    "cli": frozenset({"crypto", "protocol", "service", "ml", "kgc", "ps", "participant", "demo"}),
}
# Single modules a layer may import from a layer it otherwise may not: the PS checks a
# job's model spec with the pure, numpy-only spec parser, and nothing else of the ML code.
ALLOWED_MODULES: dict[str, frozenset[str]] = {"ps": frozenset({"trapdoor.ml.spec"})}
# Third-party packages a layer never imports: the crypto core and the protocol are pure
# (no web framework, database or HTTP), and so is the ML code.
_PLUMBING = frozenset({"flask", "sqlalchemy", "alembic", "requests"})
FORBIDDEN_THIRD_PARTY: dict[str, frozenset[str]] = {
    "crypto": _PLUMBING,
    "protocol": _PLUMBING,
    "ml": _PLUMBING,
}


@dataclass(frozen=True)
class Import:
    """One imported module, as written in ``importer`` (line ``lineno``)."""

    importer: str
    target: str
    lineno: int
    top_level: bool  # executed when the importer is imported (not in a function/TYPE_CHECKING)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node``, and whether it runs at import time."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, top_level
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), False)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), top_level)
        else:
            yield from _walk(child, top_level)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of the module a (possibly relative) ``from`` import names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(modules: dict[str, Path]) -> list[Import]:
    """Every import of every module; ``from pkg import name`` counts as ``pkg.name``
    when that is a module of the package, else as ``pkg``."""
    found: list[Import] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, top_level in _walk(tree, True):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(module, path.name == "__init__.py", node)
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            found.extend(Import(module, t, node.lineno, top_level) for t in targets)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(modules: dict[str, Path], imports: list[Import]) -> list[str]:
    """Each import that breaks the rule, as ``importer:line -> target (why)``."""
    problems = []
    for module in modules:
        if _layer(module) not in ALLOWED_LAYERS:
            problems.append(f"{module}: layer {_layer(module)!r} is not in the layering rule")
    for imp in imports:
        where = f"{imp.importer}:{imp.lineno} -> {imp.target}"
        layer = _layer(imp.importer)
        if layer not in ALLOWED_LAYERS:
            continue
        top = imp.target.split(".")[0]
        if top != ROOT:
            if top in FORBIDDEN_THIRD_PARTY.get(layer, frozenset()):
                problems.append(f"{where} (the {layer} layer never imports {top})")
            continue
        target_layer = _layer(imp.target)
        if target_layer in ("", layer) or target_layer in ALLOWED_LAYERS[layer]:
            continue
        if any(
            imp.target == m or imp.target.startswith(m + ".")
            for m in ALLOWED_MODULES.get(layer, frozenset())
        ):
            continue
        problems.append(f"{where} (the {layer or ROOT} layer may not import {target_layer})")
    return problems


def import_cycles(modules: dict[str, Path], imports: list[Import]) -> list[list[str]]:
    """The import cycles between modules of the package, by import-time imports only:
    each strongly connected component of more than one module (Tarjan), sorted."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.top_level and imp.target in modules and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


@pytest.fixture(scope="module")
def package() -> tuple[dict[str, Path], list[Import]]:
    modules = _modules()
    return modules, _imports(modules)


def test_the_package_is_parsed_whole(package: tuple[dict[str, Path], list[Import]]) -> None:
    """A guard on the parser itself: it sees every layer and their imports between them."""
    modules, imports = package
    assert {_layer(m) for m in modules} >= {"crypto", "protocol", "service", "kgc", "ps"}
    assert any(
        i.importer.startswith("trapdoor.kgc.") and i.target.startswith("trapdoor.crypto.")
        for i in imports
    )


def test_every_import_follows_the_layering_rule(
    package: tuple[dict[str, Path], list[Import]],
) -> None:
    problems = layer_violations(*package)
    assert not problems, "imports that break the layering rule:\n" + "\n".join(problems)


def test_there_is_no_import_cycle(package: tuple[dict[str, Path], list[Import]]) -> None:
    cycles = import_cycles(*package)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The rule and the cycle finder flag a hand-made bad package (so a pass means something)."""
    modules = {
        "trapdoor.crypto.a": tmp_path / "a.py",
        "trapdoor.kgc.b": tmp_path / "b.py",
        "trapdoor.kgc.c": tmp_path / "c.py",
        "trapdoor.ps.d": tmp_path / "d.py",
    }
    imports = [
        Import("trapdoor.crypto.a", "flask", 1, True),
        Import("trapdoor.crypto.a", "trapdoor.kgc.b", 2, False),
        Import("trapdoor.kgc.b", "trapdoor.kgc.c", 1, True),
        Import("trapdoor.kgc.c", "trapdoor.kgc.b", 1, True),
        Import("trapdoor.kgc.c", "trapdoor.ps.d", 2, False),
        Import("trapdoor.ps.d", "trapdoor.ml.spec", 1, True),
        Import("trapdoor.ps.d", "trapdoor.ml.models", 2, True),
    ]
    assert layer_violations(modules, imports) == [
        "trapdoor.crypto.a:1 -> flask (the crypto layer never imports flask)",
        "trapdoor.crypto.a:2 -> trapdoor.kgc.b (the crypto layer may not import kgc)",
        "trapdoor.kgc.c:2 -> trapdoor.ps.d (the kgc layer may not import ps)",
        "trapdoor.ps.d:2 -> trapdoor.ml.models (the ps layer may not import ml)",
    ]
    assert import_cycles(modules, imports) == [["trapdoor.kgc.b", "trapdoor.kgc.c"]]
