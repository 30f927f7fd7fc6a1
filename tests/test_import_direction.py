"""Which way the imports go (docs/ARCHITECTURE.md).

Between packages: partners and workflows never import gateway; workflows import only
temporalio, the standard library and themselves; nothing imports partners from gateway or
workflows. Inside gateway/, the rooms stack in one order and a room imports only itself
and the rooms below it. And no module imports itself back, by any path: imports inside
functions and under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "partners", "workflows")

# Bottom to top. A module imports only from its own room and the rooms before it.
# `gateway/settings.py`, `banner.py` and `stack.py` are rooms of one module each.
GATEWAY_ROOMS = (
    "settings",
    "telemetry",
    "core",
    "store",
    "crypto",
    "audit",
    "identity",
    "consent",
    "admin",
    "work",
    "cases",
    "orchestration",
    "api",
    "banner",
    "stack",
    "cli",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def imports_of(path: Path) -> Iterator[str]:
    """Every module name `path` imports, wherever the import statement stands; for
    `from X import Y` both X and X.Y (Y may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sources(package):
        for name in imports_of(path):
            found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def module_graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each one imports (packages' __init__ included)."""
    paths = {module_name(p): p for package in PACKAGES for p in sources(package)}
    return {
        name: {imported for imported in imports_of(path) if imported in paths} - {name}
        for name, path in paths.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "gateway" and len(parts) > 1 else None


@pytest.mark.parametrize("package", ["partners", "workflows"])
def test_never_imports_gateway(package: str) -> None:
    assert "gateway" not in imported_roots(package)


def test_workflows_import_only_temporalio_and_stdlib() -> None:
    roots = set(imported_roots("workflows")) - {"workflows", "__future__"}
    foreign = {r for r in roots if r not in sys.stdlib_module_names and r != "temporalio"}
    assert foreign == set()


@pytest.mark.parametrize("package", ["gateway", "workflows"])
def test_nothing_imports_partners(package: str) -> None:
    assert "partners" not in imported_roots(package)


def test_no_module_imports_itself_back() -> None:
    assert cycles(module_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_gateway_module_stands_in_a_known_room() -> None:
    rooms = {room_of(name) for name in module_graph() if name.startswith("gateway.")}
    assert rooms <= set(GATEWAY_ROOMS), rooms - set(GATEWAY_ROOMS)


def test_gateway_rooms_import_only_downward() -> None:
    rank = {room: position for position, room in enumerate(GATEWAY_ROOMS)}
    upward = sorted(
        f"{module} -> {imported}"
        for module, imported_modules in module_graph().items()
        if (room := room_of(module)) is not None
        for imported in imported_modules
        if (target := room_of(imported)) is not None and rank[target] > rank[room]
    )
    assert upward == []


@pytest.mark.parametrize("room", ["api", "cli"])
def test_only_the_rooms_above_import_the_api_and_the_cli(room: str) -> None:
    """Spelled out: domains never import api/, and only stack.py and cli/ itself import cli/."""
    allowed = {"api": {"api", "banner", "stack", "cli"}, "cli": {"cli", "stack"}}[room]
    importers = {
        room_of(module)
        for module, imported_modules in module_graph().items()
        if any(room_of(imported) == room for imported in imported_modules)
    }
    assert importers <= allowed
