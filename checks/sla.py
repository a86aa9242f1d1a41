"""Response and resolution SLAs per severity, and the one verdict every view prints.

The table is seed 000 Part D ("Response SLAs"): acknowledge, start investigating, post a
status update, resolve. Seed 002's KPIs (White Room: acknowledge P0 < 5 min, P1 30 min,
P2 2 h, P3 1 day; resolve 1 h, 4 h, 1 day, 1 week; first update < 15 min for P0/P1) are
reconciled into it measure by measure, the stricter target winning: seed 000 is stricter
on every acknowledgement and equal on P0–P2 resolution; seed 002 adds what 000 lacks or
sets looser: P3 resolution within a week, and the P1 first update within 15 minutes.
``oncall.yaml`` may override it per severity (``sla:``). Findings, runbook reports, drill
scorecards, ``oncall incidents``, post-mortems and ``oncall report`` all judge time against
it through :func:`verdict` / :func:`assess_incident` / :func:`assess_updates`, so they
cannot disagree.

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
    "UPDATE_GAP_FACTOR",
    "UpdateAssessment",
    "assess_incident",
    "assess_updates",
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
    # First update: seed 002's 15 min for P0/P1 (seed 000 says 30 for P1).
    Severity.P1: Sla(acknowledge=300, investigate=600, status_update=900, resolve=14_400),
    Severity.P2: Sla(acknowledge=1_800, investigate=3_600, status_update=3_600, resolve=86_400),
    # Seed 000: "Investigation start: within business day; no SLA on resolution";
    # seed 002: resolved within a week.
    Severity.P3: Sla(acknowledge=3_600, resolve=604_800),
}

# Seed 002: "Regular updates: every 15-30 minutes" against a 15-minute cadence (seed 000
# Part C step 4): an update is late once the silence is twice the configured interval.
UPDATE_GAP_FACTOR = 2.0


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


class UpdateAssessment(BaseModel):
    """How an incident's stakeholders were kept informed: the first update and the cadence."""

    model_config = ConfigDict(frozen=True)

    updates: int = Field(description="Updates sent while the incident was open")
    first_s: float | None = Field(description="Seconds from opening to the first update")
    first: SlaVerdict | None = Field(description="The first update against ``status_update``")
    longest_gap_s: float | None = Field(
        description="The longest silence after the first update: between two updates, or from"
        " the last one until the resolution (or now, while open); None without updates"
    )
    cadence: SlaVerdict | None = Field(
        description="The longest silence against the cadence limit; None without a cadence"
        " or without updates"
    )


def assess_updates(
    sla: Sla,
    *,
    every_s: float | None,
    opened: datetime,
    updates: Iterable[datetime],
    now: datetime,
    resolved: datetime | None = None,
) -> UpdateAssessment:
    """The first update against ``sla.status_update``, the cadence against ``every_s``.

    As for the other measures, a resolution stops the clock: a first update not sent by then
    is judged at the resolution. The cadence holds while no silence after the first update
    lasts more than :data:`UPDATE_GAP_FACTOR` × ``every_s`` (the configured interval).
    Updates after the resolution do not count.
    """
    end = resolved or now
    sent = sorted(u for u in updates if opened <= u <= end)
    first = sent[0] if sent else None
    done = first if first is not None else resolved
    first_verdict = verdict(sla.status_update, start=opened, done=done, now=now)
    if not sent:
        return UpdateAssessment(
            updates=0, first_s=None, first=first_verdict, longest_gap_s=None, cadence=None
        )
    gaps = [(b - a).total_seconds() for a, b in zip(sent, [*sent[1:], end], strict=True)]
    longest = max(gaps)
    cadence = None
    if every_s:
        limit = every_s * UPDATE_GAP_FACTOR
        if longest > limit:
            cadence = SlaVerdict.BREACHED
        else:
            cadence = SlaVerdict.MET if resolved is not None else SlaVerdict.PENDING
    return UpdateAssessment(
        updates=len(sent),
        first_s=(sent[0] - opened).total_seconds(),
        first=first_verdict,
        longest_gap_s=longest,
        cadence=cadence,
    )
