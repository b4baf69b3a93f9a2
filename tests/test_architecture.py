"""The package layout keeps its promises: no import cycles, and the engine never reaches into the
built-in plugins (`clients/`, `strategies/`), which it finds through the registry like any other."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("fedsim", "clients", "strategies")


def module_imports() -> dict[str, set[str]]:
    """Every module of the packages -> the modules of the packages it imports (anywhere in its body)."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in found if m in files and m != name and not m.startswith(name + ".")}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = module_imports()
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for dependency in sorted(graph[module]):
            if dependency in path:
                cycles.append(" -> ".join(path[path.index(dependency) :] + [dependency]))
            elif dependency not in done:
                visit(dependency, path + [dependency])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    assert not cycles, cycles[:5]


def test_the_engine_does_not_import_the_built_in_plugins():
    leaks = [
        f"{module} imports {dependency}"
        for module, dependencies in module_imports().items()
        if module.split(".")[0] == "fedsim"
        for dependency in dependencies
        if dependency.split(".")[0] in ("clients", "strategies")
    ]
    assert not leaks, leaks


def test_every_built_in_plugin_is_registered_like_a_third_party_one():
    """Each class in strategies/ and clients/ that a config can name has an entry point."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in ("strategies", "clients"):
        for path in Path(ROOT / package).glob("*.py"):
            for node in ast.parse(path.read_text()).body:
                named = isinstance(node, ast.ClassDef) and any(
                    isinstance(s, ast.Assign) and any(getattr(t, "id", "") == "name" for t in s.targets)
                    or isinstance(s, ast.AnnAssign) and getattr(s.target, "id", "") == "name"
                    for s in node.body
                )
                if named:
                    assert f'{package}.{path.stem}:{node.name}"' in pyproject, f"{path.name}: {node.name}"
