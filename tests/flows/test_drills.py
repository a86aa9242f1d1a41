"""The drill room: every runbook has a scenario, `oncall drill --help` lists them, a game day
runs several and prints one table, each scorecard is kept in Prefect, and the room has no
import cycle. The drills themselves are tested with their runbooks (tests/runbooks)."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from flows.drills.registry import DRILLS, help_text
from flows.server import auth_headers
from runbooks.catalog import RUNBOOKS
from tests.oncall_proc import oncall

ROOT = Path(__file__).resolve().parents[2]
NO_RABBIT = "amqp://guest:guest@127.0.0.1:1/"


def test_every_runbook_has_a_drill_and_every_drill_a_module_with_a_runbook():
    assert set(DRILLS) == set(RUNBOOKS)
    for scenario in DRILLS.values():
        path = ROOT / (scenario.module.replace(".", "/") + ".py")
        assert path.is_file(), f"{scenario.name}: no {path}"


def test_drill_help_lists_every_scenario_with_one_line_each():
    result = oncall("drill", "--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ["all", *DRILLS]:
        [line] = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 2, f"{name} has no description: {line!r}"
    assert help_text().count("\n") == len(DRILLS) + 2  # "\b", the heading, all, one per drill


def test_drill_all_with_something_missing_says_exactly_what_and_exits_2_before_anything(
    tmp_path,
):
    env = {**os.environ, "PATH": str(tmp_path), "ONCALL_DRILL_AMQP_URL": NO_RABBIT}
    env.pop("ONCALL_PROMETHEUS_BIN", None)
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "drill", "all", "--approve-as", "ci"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    for name in ("memory-leak", "high-error-rate", "performance-degradation"):
        assert f"drill {name} needs `prometheus` (apt-get install prometheus" in line
    assert "drill queue-backlog needs RabbitMQ at 127.0.0.1:1" in line
    assert "Traceback" not in result.stderr and result.stdout == ""


def _drill_events(api: str, scenarios: list[str], since: str) -> list[dict]:
    body = {
        "filter": {
            "occurred": {"since": since},
            "event": {"prefix": ["oncall.drill."]},
            "resource": {"id": [f"oncall.drill.{s}" for s in scenarios]},
            "order": "ASC",
        },
        "limit": 50,
    }
    return httpx.post(
        f"{api}/events/filter", json=body, timeout=30, headers=auth_headers(api)
    ).json()["events"]


def _latest_artifact(api: str, key: str) -> dict | None:
    found = httpx.post(
        f"{api}/artifacts/latest/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "limit": 1},
        timeout=30,
        headers=auth_headers(api),
    ).json()
    return found[0] if found else None


def test_a_game_day_runs_each_drill_prints_one_table_and_keeps_each_scorecard(
    prefect_api, monkeypatch, capsys
):
    from datetime import UTC, datetime

    from flows.drills.console import run_and_show
    from flows.drills.gameday import COLUMNS

    since = datetime.now(UTC).isoformat()
    monkeypatch.setenv("ONCALL_DRILL_AMQP_URL", NO_RABBIT)  # queue-backlog cannot run
    names = ["app-down", "queue-backlog", "provider-outage"]
    console = Console(file=io.StringIO(), width=200)
    passed = run_and_show(names, approve_as="ci", console=console, json_out=True)
    day = json.loads(capsys.readouterr().out)
    assert passed is False and day["passed"] is False  # one scenario could not run
    assert [c["scenario"] for c in day["scorecards"]] == ["app-down", "provider-outage"]
    assert all(c["passed"] for c in day["scorecards"])
    assert list(day["errors"]) == ["queue-backlog"]
    assert "needs RabbitMQ at 127.0.0.1:1" in day["errors"]["queue-backlog"]

    # The game day's table: one row per scenario, the columns.
    table = _latest_artifact(prefect_api, "drill-game-day")
    assert table is not None and table["type"] == "table"
    rows = json.loads(table["data"])
    assert [r["scenario"] for r in rows] == ["app-down", "provider-outage", "queue-backlog"]
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["fixed vs mitigated"] == "fixed" and rows[0]["drill"] == "passed"
    assert rows[0]["SLA"] == "met" and float(rows[0]["first finding"]) < 120
    assert rows[2]["drill"].startswith("ERROR: needs RabbitMQ")
    assert "| app-down | P0 |" in table["description"]

    # One event per scenario run, with the scorecard as its payload.
    deadline = time.monotonic() + 20
    events: list[dict] = []
    while time.monotonic() < deadline and len(events) < 3:
        events = _drill_events(prefect_api, names, since)
        time.sleep(0.5)
    by_scenario = {e["resource"]["prefect.resource.name"]: e for e in events}
    assert set(by_scenario) == set(names), events
    down = by_scenario["app-down"]
    assert down["event"] == "oncall.drill.passed"
    assert down["payload"]["trigger"] == "cli" and down["payload"]["result"] == "passed"
    card = down["payload"]["scorecard"]
    assert card["scenario"] == "app-down" and card["result"] == "fixed" and card["passed"]
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in down["related"]}
    assert related["runbook"] == "oncall.runbook.app-down"
    assert related["runbook-run"] == f"prefect.flow-run.{card['flow_run_id']}"
    error = by_scenario["queue-backlog"]
    assert error["event"] == "oncall.drill.error" and error["payload"]["scorecard"] is None
    assert "needs RabbitMQ" in error["payload"]["error"]

    # Each scenario's own artifact, on the runbook's run (its history is the drill history).
    own = _latest_artifact(prefect_api, "drill-app-down")
    assert own is not None and own["flow_run_id"] == card["flow_run_id"]
    assert own["description"] == "drill app-down: passed"
    assert "| app-down | P0 |" in own["data"]


# --- the room's rules ----------------------------------------------------------------------


def _imported(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (lazy imports count; those
    only a type checker sees do not)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_drill_room_has_no_import_cycle():
    room = sorted((ROOT / "flows" / "drills").rglob("*.py"))
    module = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in room}
    module = {p: m.removesuffix(".__init__") for p, m in module.items()}
    known = set(module.values())
    graph = {module[p]: {m for m in _imported(p) if m in known} for p in room}
    # Importing a module imports its packages first.
    for name in list(graph):
        for dep in list(graph[name]):
            parts = dep.split(".")
            graph[name] |= {".".join(parts[:i]) for i in range(2, len(parts))} & known
        graph[name].discard(name)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, nxt]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for name in graph if (c := cycle_from(name))]
    assert cycles == []
    assert graph["flows.drills"] == set(), "the package imports nothing (fast --help)"


def test_nothing_in_the_wheel_imports_the_tests():
    offenders = [
        str(p.relative_to(ROOT))
        for package in ("flows", "runbooks", "checks", "integrations")
        for p in (ROOT / package).rglob("*.py")
        if any(m == "tests" or m.startswith("tests.") for m in _imported(p))
    ]
    assert offenders == []


# --- drills on a schedule (the scheduler itself: tests/flows/test_schedule.py) ---------------


def test_a_drill_that_cannot_run_opens_a_p3_incident_through_the_intake(prefect_api, monkeypatch):
    from flows.config import OncallConfig
    from flows.drills import schedule

    opened: list = []

    async def opener(alert):  # the intake calls it once no open incident matches
        opened.append(alert)
        return "incident-run-id"

    monkeypatch.setenv("ONCALL_DRILL_AMQP_URL", NO_RABBIT)
    schedule.set_opener(opener)
    try:
        result = schedule.drills(config=OncallConfig(), scenarios=["queue-backlog"])
    finally:
        schedule.set_opener(None)
    assert result["passed"] is False and list(result["errors"]) == ["queue-backlog"]
    assert result["incidents"]["queue-backlog"] == {
        "action": "opened",
        "incident_run_id": "incident-run-id",
        "reason": "",
    }
    [alert] = opened
    assert alert.title == "runbook queue-backlog failed its drill"
    assert alert.severity == "P3" and alert.source == "drill"
    assert alert.service == "runbook:queue-backlog" and alert.labels["runbook"] == "queue-backlog"
    assert "could not run: needs RabbitMQ at 127.0.0.1:1" in alert.annotations["summary"]
    assert alert.url and "/runs/flow-run/" in alert.url
    # Next month's failure of the same runbook has the same identity: it joins, not opens.
    again = schedule.drill_alert("queue-backlog", "still broken", alert.starts_at)
    assert again.fingerprint == alert.fingerprint
    assert schedule.drill_alert("app-down", "x", alert.starts_at).fingerprint != alert.fingerprint


def test_a_drill_that_ran_and_failed_says_why_in_its_incident():
    from types import SimpleNamespace

    from checks.findings import Severity
    from flows.drills.schedule import _why
    from flows.drills.scorecard import score

    report = SimpleNamespace(
        outcome="problem_remains",
        timings={"first_finding": 0.2, "diagnosis": 0.3, "decision": 0.4, "mitigation": 0.9},
        findings=[],
        results=[],
        approvals=[],
        flow_run_id=None,
        notes=[],
    )
    card = score("app-down", Severity.P0, report, 400.0)  # after the 120 s and 300 s SLAs
    assert not card.passed and card.result == "not fixed (problem_remains)"
    assert _why(card) == (
        "expected fixed, got not fixed (problem_remains); first finding: SLA breached;"
        " diagnose: SLA breached; verify: never reached"
    )
    mitigated = score("provider-outage", Severity.P0, report, 1.0, expect="fixed-or-mitigated")
    assert _why(mitigated).startswith(
        "expected fixed-or-mitigated, got not fixed (problem_remains)"
    )
