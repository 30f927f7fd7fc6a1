"""What keeps workflow code deterministic now that it runs outside Temporal's sandbox
(`gateway.orchestration.temporal.WORKER_OPTIONS`): a scan of every module in
``workflows/`` for the imports and calls that would make a replay take another path.
The replay tests on recorded histories (test_incident_replay.py) check the other half:
that the code takes the recorded path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

#: The standard library modules workflow code may import: no clock, randomness, I/O,
#: environment or threads among them (temporalio's ``workflow`` module gives those).
ALLOWED_STDLIB = frozenset(
    {
        "__future__",
        "asyncio",
        "collections",
        "collections.abc",
        "contextlib",
        "dataclasses",
        "datetime",
        "enum",
        "functools",
        "itertools",
        "math",
        "typing",
    }
)
#: Methods that read the machine's clock or event loop, unless called on ``workflow``.
CLOCK_CALLS = frozenset({"now", "utcnow", "today", "time", "monotonic", "get_event_loop"})
#: Builtins that reach outside the workflow's history.
FORBIDDEN_BUILTINS = frozenset({"open", "input", "hash", "id", "exec", "eval"})


def violations(source: str) -> list[str]:
    """What in ``source`` could make a workflow behave differently on replay."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        for name in names:
            top = name.split(".")[0]
            if top not in {"temporalio", "workflows"} and name not in ALLOWED_STDLIB:
                found.append(f"line {getattr(node, 'lineno', '?')}: imports {name}")
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in CLOCK_CALLS
                and not (isinstance(func.value, ast.Name) and func.value.id == "workflow")
            ):
                found.append(f"line {node.lineno}: calls .{func.attr}()")
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                found.append(f"line {node.lineno}: calls {func.id}()")
    return found


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.py")), ids=lambda p: p.name)
def test_workflow_modules_use_only_the_workflows_clock_and_no_io(path: Path) -> None:
    assert violations(path.read_text()) == []


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import time\n", "imports time"),
        ("import random\n", "imports random"),
        ("from uuid import uuid4\n", "imports uuid"),
        ("import os.path\n", "imports os.path"),
        ("from datetime import datetime\nx = datetime.now()\n", "calls .now()"),
        ("import asyncio\nasyncio.get_event_loop()\n", "calls .get_event_loop()"),
        ("with open('f') as f:\n    pass\n", "calls open()"),
        ("x = hash('case')\n", "calls hash()"),
    ],
)
def test_the_scan_finds_what_replay_would_trip_on(snippet: str, expected: str) -> None:
    assert any(expected in v for v in violations(snippet)), violations(snippet)


def test_the_scan_accepts_the_workflows_own_clock() -> None:
    source = (
        "from datetime import timedelta\n"
        "from temporalio import workflow\n"
        "now = workflow.now() + timedelta(seconds=1)\n"
    )
    assert violations(source) == []
