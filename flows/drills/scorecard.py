"""How a drill went: times from the fault, the SLA verdicts, and fixed vs mitigated.

Every time is in seconds from the moment the fault was injected:

- ``detect``: the fault was visible and the runbook started (what an alert would do);
- ``first_finding``: the runbook's first finding arrived;
- ``diagnose``: every check had answered;
- ``decide``: the plan was approved (or rejected);
- ``mitigate``: the approved actions had run;
- ``verify``: the checks showed recovery.

``result`` reads the runbook report's outcome: ``fixed`` (the cause is gone), ``mitigated``
(the symptom went, the cause did not) or ``not fixed`` with the outcome. A scenario expects
``fixed``; ``mitigated`` where the fault it injects outlives anything the runbook may do (a
restart of a version that still leaks: calling that fixed would be the bug the drill is
there to catch); or ``fixed-or-mitigated`` where the cause ends on its own (a provider's
outage that recovers while the drill watches).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from checks.findings import Severity
from checks.severity import incident_severity
from checks.sla import DEFAULT_SLA, judge

__all__ = ["ACCEPTED", "PHASE_SLA", "Expect", "Scorecard", "result_of", "score"]

Expect = Literal["fixed", "mitigated", "fixed-or-mitigated"]
# What each expectation accepts.
ACCEPTED: dict[str, frozenset[str]] = {
    "fixed": frozenset({"fixed"}),
    "mitigated": frozenset({"mitigated"}),
    "fixed-or-mitigated": frozenset({"fixed", "mitigated"}),
}

# Which SLA of checks/sla.py (seed 000 Part D) each phase is held to: acknowledged with
# evidence (the first finding), investigated, resolved.
PHASE_SLA = {"first_finding": "acknowledge", "diagnose": "investigate", "verify": "resolve"}

# scorecard phase -> the runbook report's timing key
_PHASES = (
    ("first_finding", "first_finding"),
    ("diagnose", "diagnosis"),
    ("decide", "decision"),
    ("mitigate", "mitigation"),
    ("verify", "verified"),
)


class Scorecard(BaseModel):
    """How a drill went, against the severity's SLA."""

    scenario: str
    severity: Severity = Field(description="The scenario's, raised to what the findings say")
    outcome: str = Field(description="The runbook report's outcome, as it said it")
    result: str = Field(
        default="not fixed", description="fixed, mitigated, or 'not fixed (<outcome>)'"
    )
    expect: Expect = "fixed"
    passed: bool
    times_s: dict[str, float] = Field(description="Seconds from fault injection")
    sla_s: dict[str, float | None] = Field(description="Target per phase, from checks/sla.py")
    verdicts: dict[str, str] = Field(description="met, breached, pending, or no SLA")
    findings: int
    actions: list[str]
    approvals: list[str]
    flow_run_id: str | None = None
    notes: list[str] = Field(default_factory=list)

    @property
    def sla_met(self) -> bool:
        """Every phase with an SLA reached within it."""
        return all(v in ("met", "no SLA") for v in self.verdicts.values())


def result_of(outcome: str) -> str:
    """Fixed vs mitigated, from the report's outcome; anything else is not fixed.

    ``healthy`` is not fixed either: in a drill the fault is there, so a runbook that saw
    nothing wrong missed it.
    """
    if outcome in ("fixed", "mitigated"):
        return outcome
    return f"not fixed ({outcome})"


def score(
    scenario: str,
    severity: Severity,
    report: Any,
    started_after_fault_s: float,
    expect: Expect = "fixed",
) -> Scorecard:
    """Builds the scorecard from a runbook report; times are from the moment of the fault.

    ``severity`` is the scenario's; the findings raise it as they would raise the incident's
    (:func:`checks.severity.incident_severity`), and the SLA is that severity's.
    """
    t = report.timings
    times = {"detect": round(started_after_fault_s, 2)}
    times |= {name: round(started_after_fault_s + t[key], 2) for name, key in _PHASES if key in t}
    severity = incident_severity(severity, report.findings)
    sla = DEFAULT_SLA[severity]
    # The drill is over: a phase it never reached has waited as long as the drill ran.
    waited = started_after_fault_s + max(t.values(), default=0.0)
    limits = {phase: getattr(sla, measure) for phase, measure in PHASE_SLA.items()}
    verdicts = {}
    for phase, limit in limits.items():
        found = judge(limit, times.get(phase), waited)
        verdicts[phase] = "no SLA" if found is None else str(found)
    outcome = str(getattr(report.outcome, "value", report.outcome))
    result = result_of(outcome)
    card = Scorecard(
        scenario=scenario,
        severity=severity,
        outcome=outcome,
        result=result,
        expect=expect,
        passed=False,
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
    card.passed = result in ACCEPTED[expect] and card.sla_met
    return card
