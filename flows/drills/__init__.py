"""Game days: build a sandbox, inject the fault, run the runbook for real, score it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from checks.findings import Severity
from checks.severity import incident_severity
from checks.sla import DEFAULT_SLA, judge

__all__ = ["DRILLS", "PHASE_SLA", "Scorecard", "score"]

# Which SLA of checks/sla.py each drill phase is held to.
PHASE_SLA = {"detect": "acknowledge", "diagnose": "investigate", "verify": "resolve"}


class Scorecard(BaseModel):
    """How a drill went, against the severity's SLA."""

    scenario: str
    severity: Severity = Field(description="The scenario's, raised to what the findings say")
    outcome: str
    passed: bool
    times_s: dict[str, float] = Field(description="Seconds from fault injection")
    sla_s: dict[str, float | None] = Field(description="Target per phase, from checks/sla.py")
    verdicts: dict[str, str] = Field(description="met, breached, pending, or no SLA")
    findings: int
    actions: list[str]
    approvals: list[str]
    flow_run_id: str | None = None
    notes: list[str] = Field(default_factory=list)


def score(
    scenario: str, severity: Severity, report: Any, started_after_fault_s: float
) -> Scorecard:
    """Builds the scorecard from a runbook report; times are from the moment of the fault.

    ``severity`` is the scenario's; the findings raise it as they would raise the incident's
    (:func:`checks.severity.incident_severity`), and the SLA is that severity's.
    """
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
    severity = incident_severity(severity, report.findings)
    sla = DEFAULT_SLA[severity]
    # The drill is over: a phase it never reached has waited as long as the drill ran.
    waited = started_after_fault_s + max(t.values(), default=0.0)
    limits = {phase: getattr(sla, measure) for phase, measure in PHASE_SLA.items()}
    verdicts = {}
    for phase, limit in limits.items():
        found = judge(limit, times.get(phase), waited)
        verdicts[phase] = "no SLA" if found is None else str(found)
    passed = report.outcome == "fixed" and all(v in ("met", "no SLA") for v in verdicts.values())
    return Scorecard(
        scenario=scenario,
        severity=severity,
        outcome=str(report.outcome),
        passed=passed,
        times_s=times,
        sla_s=limits,
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
