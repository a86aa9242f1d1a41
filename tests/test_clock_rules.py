"""No test reads the wall clock at import time.

A ``NOW = datetime.now(UTC)`` at module level is taken at collection; a test that compares it
with a ``now()`` taken when it runs fails once the suite reaches it minutes later
(tests/checks/test_deploys.py did). Freeze an instant as a constant, or read the clock inside
the test or fixture that needs it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CLOCK = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "perf_counter"}
CLOCK_OWNERS = {"datetime", "date", "time", "dt"}


def _clock_calls(node: ast.AST) -> Iterator[ast.Call]:
    """Clock reads evaluated when ``node`` is: not inside lambdas or nested functions."""
    if isinstance(node, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in CLOCK_OWNERS
    ):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _clock_calls(child)


def _evaluated_at_import(tree: ast.Module) -> Iterator[ast.AST]:
    """Module and class bodies, and the defaults and decorators of every function."""
    bodies: list[list[ast.stmt]] = [tree.body]
    while bodies:
        for stmt in bodies.pop():
            if isinstance(stmt, ast.ClassDef):
                bodies.append(stmt.body)
                yield from stmt.decorator_list
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from stmt.decorator_list
                yield from stmt.args.defaults
                yield from (d for d in stmt.args.kw_defaults if d is not None)
            else:
                yield stmt


def offenders(source: str) -> list[int]:
    tree = ast.parse(source)
    return sorted(call.lineno for node in _evaluated_at_import(tree) for call in _clock_calls(node))


def test_no_test_module_reads_the_clock_at_import():
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(ROOT.rglob("*.py"))
        if (lines := offenders(path.read_text()))
    }
    assert found == {}


def test_the_rule_sees_what_it_must_and_nothing_else():
    stale = "from datetime import UTC, datetime\nNOW = datetime.now(UTC)\n"
    default = "import time\ndef f(at=time.time()):\n    return at\n"
    fine = (
        "import time\nfrom datetime import UTC, datetime\n"
        "T0 = datetime(2026, 11, 23, tzinfo=UTC)\n"
        "stamp = lambda: time.time()\n"
        "def f():\n    return datetime.now(UTC)\n"
    )
    assert offenders(stale) == [2] and offenders(default) == [2] and offenders(fine) == []
