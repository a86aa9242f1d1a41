"""The figures of the report, as data: what ``oncall report --json`` prints and render shows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from checks.findings import Severity
from checks.sla import SlaVerdict
from flows.kpi.facts import Coverage

__all__ = [
    "RECURRENCE_TARGET",
    "RECURRENCE_WINDOW",
    "ApprovalKpis",
    "DrillStatus",
    "PostmortemKpis",
    "Recurrence",
    "Repeat",
    "Report",
    "RunbookKpis",
    "SeverityKpis",
    "Stat",
    "Tally",
    "percentile",
]

RECURRENCE_WINDOW = timedelta(days=30)
RECURRENCE_TARGET = 0.05  # seed 002: "Recurrence rate: <5% (same incident within 30 days)"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Stat(BaseModel):
    """Median and p90 of some seconds."""

    n: int
    median: float | None
    p90: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        found = list(values)
        return cls(n=len(found), median=percentile(found, 50), p90=percentile(found, 90))


class Tally(BaseModel):
    """How many met their target, missed it, or still can meet it."""

    met: int = 0
    missed: int = 0
    pending: int = 0

    def add(self, verdict: SlaVerdict | None) -> None:
        if verdict is SlaVerdict.MET:
            self.met += 1
        elif verdict is SlaVerdict.BREACHED:
            self.missed += 1
        elif verdict is SlaVerdict.PENDING:
            self.pending += 1


class SeverityKpis(BaseModel):
    severity: Severity
    incidents: int = 0
    open: int = 0
    resolved: int = 0
    ack: Stat
    ack_target_s: float | None = None
    ack_sla: Tally = Field(default_factory=Tally)
    resolve: Stat
    resolve_target_s: float | None = None
    resolve_sla: Tally = Field(default_factory=Tally)
    first_update: Stat
    first_update_target_s: float | None = None
    first_update_sla: Tally = Field(default_factory=Tally)
    silent: int = Field(default=0, description="Incidents that sent no update at all")
    updates_unknown: int = Field(default=0, description="Older than the events kept")
    cadence: Stat = Field(description="Each incident's longest silence after its first update")
    cadence_every_s: float | None = None
    cadence_sla: Tally = Field(default_factory=Tally)
    per_day: list[int] = Field(default_factory=list, description="Incidents opened each day")


class Repeat(BaseModel):
    incident: str
    earlier: str
    why: str
    days_apart: float


class Recurrence(BaseModel):
    incidents: int
    recurrent: int
    rate: float | None
    target: float = RECURRENCE_TARGET
    repeats: list[Repeat] = Field(default_factory=list)


class PostmortemKpis(BaseModel):
    due: int = Field(description="Resolved P0/P1 incidents")
    drafted: int = 0
    completed: int = 0
    missing: list[str] = Field(default_factory=list, description="No post-mortem at all")
    incomplete: list[str] = Field(default_factory=list, description="Blanks left")
    open_items: int = 0


class ApprovalKpis(BaseModel):
    gates: int = 0
    decided: int = 0
    waiting: int = 0
    wait: Stat
    approved: int = 0
    rejected: int = 0
    timed_out: int = 0
    cancelled: int = 0
    immediate: dict[str, int] = Field(default_factory=dict)


class DrillStatus(BaseModel):
    scenario: str | None = Field(description="None: no drill scenario exists for it")
    last_at: datetime | None = None
    result: str | None = None
    age_s: float | None = None
    stale: bool = False
    failing: bool = False


class RunbookKpis(BaseModel):
    runbook: str
    runs: int = 0
    remediations: int = 0
    fixed: int = 0
    mitigated: int = 0
    not_recovered: int = 0
    rejected: int = 0
    timed_out: int = 0
    healthy: int = 0
    drill: DrillStatus


class Report(BaseModel):
    """``oncall report``: every figure, and what it could not see."""

    generated_at: datetime
    since: datetime
    service: str | None = None
    coverage: Coverage
    freshness_s: float
    severities: list[SeverityKpis]
    recurrence: Recurrence
    postmortems: PostmortemKpis
    approvals: ApprovalKpis
    runbooks: list[RunbookKpis]
    notes: list[str] = Field(default_factory=list)
