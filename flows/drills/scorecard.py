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
``fixed`` or, where nothing the runbook does can remove the cause (a provider's outage),
``mitigated``: then fixed passes too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from checks.findings import Severity

__all__ = ["ACCEPTED", "SLA", "Expect", "Scorecard", "result_of", "score"]

Expect = Literal["fixed", "mitigated"]
# What each expectation accepts: a scenario expecting mitigation passes when fixed too.
ACCEPTED: dict[str, frozenset[str]] = {
    "fixed": frozenset({"fixed"}),
    "mitigated": frozenset({"fixed", "mitigated"}),
}

# Seed 000 Part D "Response SLAs" (acknowledge / resolution target), in seconds.
SLA: dict[Severity, dict[str, float | None]] = {
    Severity.P0: {"acknowledge_s": 120, "investigate_s": 300, "resolve_s": 3_600},
    Severity.P1: {"acknowledge_s": 300, "investigate_s": 600, "resolve_s": 14_400},
    Severity.P2: {"acknowledge_s": 1_800, "investigate_s": 3_600, "resolve_s": 86_400},
    Severity.P3: {"acknowledge_s": 3_600, "investigate_s": None, "resolve_s": None},
}

# scorecard phase -> the runbook report's timing key
_PHASES = (
    ("first_finding", "first_finding"),
    ("diagnose", "diagnosis"),
    ("decide", "decision"),
    ("mitigate", "mitigation"),
    ("verify", "verified"),
)
# The phases the SLA judges: acknowledged (with evidence), investigated, resolved.
_VERDICTS = (
    ("first_finding", "acknowledge_s"),
    ("diagnose", "investigate_s"),
    ("verify", "resolve_s"),
)


class Scorecard(BaseModel):
    """How a drill went, against the severity's SLA."""

    scenario: str
    severity: Severity
    outcome: str = Field(description="The runbook report's outcome, as it said it")
    result: str = Field(
        default="not fixed", description="fixed, mitigated, or 'not fixed (<outcome>)'"
    )
    expect: Expect = "fixed"
    passed: bool
    times_s: dict[str, float] = Field(description="Seconds from fault injection")
    sla_s: dict[str, float | None]
    verdicts: dict[str, str]
    findings: int
    actions: list[str]
    approvals: list[str]
    flow_run_id: str | None = None
    notes: list[str] = Field(default_factory=list)

    @property
    def sla_met(self) -> bool:
        """No SLA missed and no phase it judges left unreached."""
        return all(v != "SLA missed" and "never" not in v for v in self.verdicts.values())


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
    """Builds the scorecard from a runbook report; times are from the moment of the fault."""
    t = report.timings
    times = {"detect": round(started_after_fault_s, 2)}
    times |= {name: round(started_after_fault_s + t[key], 2) for name, key in _PHASES if key in t}
    sla = SLA[severity]
    verdicts = {}
    for phase, limit_key in _VERDICTS:
        limit = sla[limit_key]
        if phase not in times:
            verdicts[phase] = "missed (never reached)"
        elif limit is None:
            verdicts[phase] = "no SLA"
        else:
            verdicts[phase] = "within SLA" if times[phase] <= limit else "SLA missed"
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
    card.passed = result in ACCEPTED[expect] and card.sla_met
    return card
