"""Game days: build a sandbox, inject the fault, run the runbook for real, score it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from checks.findings import Severity

__all__ = ["DRILLS", "SLA", "Scorecard", "score"]

# Seed 000 Part D "Response SLAs" (acknowledge / resolution target), in seconds.
SLA: dict[Severity, dict[str, float | None]] = {
    Severity.P0: {"acknowledge_s": 120, "investigate_s": 300, "resolve_s": 3_600},
    Severity.P1: {"acknowledge_s": 300, "investigate_s": 600, "resolve_s": 14_400},
    Severity.P2: {"acknowledge_s": 1_800, "investigate_s": 3_600, "resolve_s": 86_400},
    Severity.P3: {"acknowledge_s": 3_600, "investigate_s": None, "resolve_s": None},
}


class Scorecard(BaseModel):
    """How a drill went, against the severity's SLA."""

    scenario: str
    severity: Severity
    outcome: str
    passed: bool
    times_s: dict[str, float] = Field(description="Seconds from fault injection")
    sla_s: dict[str, float | None]
    verdicts: dict[str, str]
    findings: int
    actions: list[str]
    approvals: list[str]
    flow_run_id: str | None = None
    notes: list[str] = Field(default_factory=list)


def score(
    scenario: str, severity: Severity, report: Any, started_after_fault_s: float
) -> Scorecard:
    """Builds the scorecard from a runbook report; times are from the moment of the fault."""
    t = report.timings
    times = {
        name: round(started_after_fault_s + t[key], 2)
        for name, key in (
            ("detect", "first_finding"),
            ("diagnose", "diagnosis"),
            ("decide", "decision"),
            ("mitigate", "mitigation"),
            ("verify", "verified"),
        )
        if key in t
    }
    sla = SLA[severity]
    verdicts = {}
    for name, limit_key in (
        ("detect", "acknowledge_s"),
        ("diagnose", "investigate_s"),
        ("verify", "resolve_s"),
    ):
        limit = sla[limit_key]
        if name not in times:
            verdicts[name] = "missed (never reached)"
        elif limit is None:
            verdicts[name] = "no SLA"
        else:
            verdicts[name] = "within SLA" if times[name] <= limit else "SLA missed"
    passed = report.outcome == "fixed" and all(
        v != "SLA missed" and "never" not in v for v in verdicts.values()
    )
    return Scorecard(
        scenario=scenario,
        severity=severity,
        outcome=str(report.outcome),
        passed=passed,
        times_s=times,
        sla_s=sla,
        verdicts=verdicts,
        findings=sum(1 for f in report.findings if f.status.is_problem),
        actions=[f"{r.title}: {r.status} ({r.detail})" for r in report.results],
        approvals=[
            f"{'approved' if a.approved else 'rejected'} by {a.approver} via {a.channel}"
            for a in report.approvals
        ],
        flow_run_id=report.flow_run_id,
        notes=list(report.notes),
    )


def _db_connections(**kwargs: Any) -> Scorecard:
    from flows.drills.db_connections import drill

    return drill(**kwargs)


def _rollback(**kwargs: Any) -> Scorecard:
    from flows.drills.rollback import drill

    return drill(**kwargs)


def _hms_failures(**kwargs: Any) -> Scorecard:
    from flows.drills.hms_failures import drill

    return drill(**kwargs)


def _memory_leak(**kwargs: Any) -> Scorecard:
    from flows.drills.memory_leak import drill

    return drill(**kwargs)


def _high_error_rate(**kwargs: Any) -> Scorecard:
    from flows.drills.high_error_rate import drill

    return drill(**kwargs)


def _queue_backlog(**kwargs: Any) -> Scorecard:
    from flows.drills.queue_backlog import drill

    return drill(**kwargs)


# name -> drill(approve_as=, console=, interactive=, show=) -> Scorecard; imported on use
DRILLS: dict[str, Callable[..., Scorecard]] = {
    "hms-failures": _hms_failures,
    "db-connections": _db_connections,
    "rollback": _rollback,
    "memory-leak": _memory_leak,
    "high-error-rate": _high_error_rate,
    "queue-backlog": _queue_backlog,
}
