"""The package's layers (docs/architecture.md): imports point downwards only, the library never imports the
command layer, a command never imports another command, and no module imports itself in a circle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tumorclf"
# lowest first: a module may import its own layer and the layers before it, never a later one
LAYERS = ["errors", "utils", "data", "transforms", "models", "metrics", "runs", "gate", "evaluation", "explain",
          "training", "audit", "serving", "studies", "documentation", "cli"]
ENTRY_POINTS = {"tumorclf", "tumorclf.__main__", "tumorclf.run"}  # they only hand over to the command layer


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The tumorclf modules `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cli"


def test_every_subpackage_has_a_layer():
    assert {layer(m) for m in graph() if m not in ENTRY_POINTS} == set(LAYERS)


def test_imports_point_downwards_only():
    wrong = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
             for module, targets in graph().items() if module not in ENTRY_POINTS
             for target in targets if target not in ENTRY_POINTS
             and LAYERS.index(layer(target)) > LAYERS.index(layer(module))]
    assert not wrong, "\n".join(sorted(wrong))


def test_a_command_imports_no_other_command():
    commands = {m for m in graph() if m.startswith("tumorclf.cli.")} - {"tumorclf.cli.main", "tumorclf.cli.flags"}
    wrong = [f"{m} imports {t}" for m in commands for t in graph()[m] if t in commands]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("import tumorclf.data.splits\nfrom tumorclf.data import decoder\n",
     {"tumorclf.data.splits", "tumorclf.data", "tumorclf.data.decoder"}),
    ("def f():\n    from tumorclf.cli.main import main\n", {"tumorclf.cli.main"}),
])
def test_imports_are_found_at_the_top_and_inside_functions(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports(path, {"tumorclf.data.splits", "tumorclf.data", "tumorclf.data.decoder", "tumorclf.cli.main"}) \
        == expected
