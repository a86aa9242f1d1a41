"""Response and resolution SLAs per severity, and the one verdict every view prints.

The table is seed 000 Part D ("Response SLAs"): acknowledge, start investigating, post a
status update, resolve. ``oncall.yaml`` may override it per severity (``sla:``). Findings,
runbook reports, drill scorecards, ``oncall incidents`` and post-mortems all judge time
against it through :func:`verdict` / :func:`assess_incident`, so they cannot disagree.

A measure is **met** when it was done within its target, **breached** when it was done late
or is still not done after its target, **pending** while it is not done and time remains.
Once an incident is resolved every measure counts as done at the latest then: resolving it
answered the page and mitigated it, and a stopped clock cannot still be pending.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from checks.findings import Severity

__all__ = [
    "DEFAULT_SLA",
    "Sla",
    "SlaAssessment",
    "SlaRow",
    "SlaVerdict",
    "assess_incident",
    "judge",
    "overall",
    "verdict",
]


class Sla(BaseModel):
    """Response SLAs of one severity (seed 000 Part D), in seconds; None means no SLA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    acknowledge: float | None = Field(default=None, description="Someone acknowledges the page")
    investigate: float | None = Field(default=None, description="Investigation has started")
    status_update: float | None = Field(default=None, description="The first status update is out")
    resolve: float | None = Field(default=None, description="The incident is resolved")


DEFAULT_SLA: dict[Severity, Sla] = {
    Severity.P0: Sla(acknowledge=120, investigate=300, status_update=900, resolve=3_600),
    Severity.P1: Sla(acknowledge=300, investigate=600, status_update=1_800, resolve=14_400),
    Severity.P2: Sla(acknowledge=1_800, investigate=3_600, status_update=3_600, resolve=86_400),
    # "Investigation start: within business day; no SLA on resolution."
    Severity.P3: Sla(acknowledge=3_600),
}


class SlaVerdict(StrEnum):
    """Where one measure, or a whole incident, stands against its SLA."""

    MET = "met"
    BREACHED = "breached"
    PENDING = "pending"


def judge(target_s: float | None, took_s: float | None, waited_s: float) -> SlaVerdict | None:
    """The verdict from durations: ``took_s`` when done (else None), ``waited_s`` so far.

    None when there is no target (no SLA for this measure at this severity).
    """
    if target_s is None:
        return None
    if took_s is not None:
        return SlaVerdict.MET if took_s <= target_s else SlaVerdict.BREACHED
    return SlaVerdict.BREACHED if waited_s > target_s else SlaVerdict.PENDING


def verdict(
    target_s: float | None, *, start: datetime, done: datetime | None, now: datetime
) -> SlaVerdict | None:
    """The verdict from timestamps: the clock runs from ``start`` to ``done`` (or ``now``)."""
    took = (done - start).total_seconds() if done is not None else None
    return judge(target_s, took, (now - start).total_seconds())


def overall(verdicts: Iterable[SlaVerdict | None]) -> SlaVerdict:
    """Breached if any measure is, else pending if any is, else met (also for none)."""
    found = {v for v in verdicts if v is not None}
    for worst in (SlaVerdict.BREACHED, SlaVerdict.PENDING):
        if worst in found:
            return worst
    return SlaVerdict.MET


class SlaRow(BaseModel):
    """One measure of an incident against its target."""

    model_config = ConfigDict(frozen=True)

    measure: str = Field(description="acknowledge, mitigate or resolve")
    target_s: float | None
    took_s: float | None = Field(description="Seconds from opening until done; None if not yet")
    verdict: SlaVerdict | None = Field(description="None when the severity has no such SLA")
    due: datetime | None = Field(default=None, description="When a pending measure breaches")


class SlaAssessment(BaseModel):
    """An incident against its severity's SLAs: one row per measure and the overall verdict."""

    model_config = ConfigDict(frozen=True)

    rows: list[SlaRow]

    @property
    def verdict(self) -> SlaVerdict:
        return overall(row.verdict for row in self.rows)

    @property
    def next_due(self) -> datetime | None:
        """The earliest deadline still pending, if any."""
        return min((row.due for row in self.rows if row.due is not None), default=None)

    def row(self, measure: str) -> SlaRow:
        return next(row for row in self.rows if row.measure == measure)


def assess_incident(
    sla: Sla,
    *,
    opened: datetime,
    now: datetime,
    acked: datetime | None = None,
    mitigated: datetime | None = None,
    resolved: datetime | None = None,
) -> SlaAssessment:
    """Acknowledge, mitigate and resolve, each against its target, from the incident's times.

    Mitigation is held to the resolution target (the seeds set none of its own); a
    resolution counts as the acknowledgement and the mitigation when those did not happen.
    """
    rows = []
    for measure, target, done in (
        ("acknowledge", sla.acknowledge, acked),
        ("mitigate", sla.resolve, mitigated),
        ("resolve", sla.resolve, resolved),
    ):
        if resolved is not None and (done is None or done > resolved):
            done = resolved
        found = verdict(target, start=opened, done=done, now=now)
        rows.append(
            SlaRow(
                measure=measure,
                target_s=target,
                took_s=None if done is None else (done - opened).total_seconds(),
                verdict=found,
                due=(
                    opened + timedelta(seconds=target)
                    if found is SlaVerdict.PENDING and target is not None
                    else None
                ),
            )
        )
    return SlaAssessment(rows=rows)
