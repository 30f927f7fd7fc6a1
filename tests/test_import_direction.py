"""Which way the imports go (docs/ARCHITECTURE.md): partners and workflows never
import gateway; workflows import only temporalio, the standard library and
themselves; nothing imports partners from gateway or workflows."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


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
