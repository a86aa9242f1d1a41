"""What the report and the handoff know, as read from Prefect: plain models, no I/O.

:mod:`flows.kpi.reader` fills them from flow runs, events and artifacts;
:mod:`flows.kpi.compute` and :mod:`flows.kpi.handoff` turn them into figures. Tests build
them by hand to check the figures against their own arithmetic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from checks.findings import Severity
from checks.sla import Sla, SlaAssessment, assess_incident

__all__ = [
    "Coverage",
    "DrillRecord",
    "Gate",
    "IncidentFacts",
    "NotifyFailure",
    "Postmortem",
    "RunbookRun",
    "Snapshot",
]

_FROZEN = ConfigDict(frozen=True)


class NotifyFailure(BaseModel):
    """A notification that failed after its retries (the incident's timeline says so)."""

    model_config = _FROZEN

    at: datetime
    channel: str
    text: str
    incident: str | None = None


class Postmortem(BaseModel):
    """The latest version of an incident's post-mortem artifact (``inc-<n>-postmortem``)."""

    model_config = _FROZEN

    updated: datetime | None = None
    blanks: int = Field(description="'_to be filled in_' and '_TBD_' left by the draft")
    open_items: list[str] = Field(default_factory=list, description="Action items '[ ]'")
    closed_items: int = Field(default=0, description="Action items ticked '[x]'")

    @property
    def completed(self) -> bool:
        """Every blank the draft left has been filled in by the responders."""
        return self.blanks == 0


class IncidentFacts(BaseModel):
    """One incident flow run: its labels (times, SLA targets), tags and what events add."""

    model_config = _FROZEN

    id: str
    run_id: str
    title: str = ""
    severity: Severity
    service: str = ""
    status: str = Field(description="investigating … resolved, as `oncall incidents` says")
    open: bool = Field(description="Its flow run is still running (or waiting)")
    drill: bool = Field(default=False, description="Run inside a drill (tagged drill)")
    fingerprint: str | None = Field(default=None, description="The run's fp: tag")
    source: str | None = Field(default=None, description="The first alert's source")
    received_at: datetime | None = Field(default=None, description="When it was received")
    opened_at: datetime
    acked_at: datetime | None = None
    mitigated_at: datetime | None = None
    resolved_at: datetime | None = None
    sla: Sla = Field(description="The targets it was opened under (its oncall.sla.* labels)")
    runbooks: list[str] = Field(default_factory=list, description="Runbooks it ran")
    updates: list[datetime] | None = Field(
        default=None,
        description="When an update reached Slack or the status page; None when the"
        " incident is older than the events the server keeps",
    )
    failures: list[NotifyFailure] = Field(default_factory=list)
    postmortem: Postmortem | None = None

    def assess(self, now: datetime) -> SlaAssessment:
        """Acknowledge, mitigate and resolve against its own targets (checks/sla.py)."""
        return assess_incident(
            self.sla,
            opened=self.opened_at,
            acked=self.acked_at,
            mitigated=self.mitigated_at,
            resolved=self.resolved_at,
            now=now,
        )


class RunbookRun(BaseModel):
    """One run of a runbook flow and the outcome its report artifact states."""

    model_config = _FROZEN

    run_id: str
    runbook: str
    service: str | None = None
    incident: str | None = None
    drill: bool = False
    started_at: datetime
    state: str | None = None
    outcome: str | None = Field(default=None, description="None: no report (yet)")
    remediated: bool = Field(default=False, description="Approved actions were executed")


Decision = Literal["approved", "rejected", "timeout", "cancelled"]


class Gate(BaseModel):
    """One pause of a runbook run for a decision, and the decision that ended it."""

    model_config = _FROZEN

    plan_id: str
    runbook: str
    run_id: str | None = None
    waiting_since: datetime = Field(description="When it paused (decided_at: never waited)")
    decided_at: datetime | None = None
    decision: Decision | None = None
    approver: str | None = None
    channel: str | None = Field(default=None, description="Where the decision came from")

    def waited_s(self, now: datetime) -> float:
        return ((self.decided_at or now) - self.waiting_since).total_seconds()


class DrillRecord(BaseModel):
    """The latest drill of a scenario (its ``drill-<scenario>`` artifact)."""

    model_config = _FROZEN

    scenario: str
    at: datetime
    result: str = Field(description="passed, failed or error")


class Coverage(BaseModel):
    """How far back the server still holds what the figures are made of."""

    model_config = _FROZEN

    events_since: datetime = Field(description="Older events are gone (server retention)")
    event_retention_s: float | None = None
    run_retention_s: float | None = Field(
        default=None, description="Runs that ended longer ago are deleted (db vacuum)"
    )


class Snapshot(BaseModel):
    """Everything one report is computed from."""

    model_config = _FROZEN

    now: datetime
    since: datetime
    coverage: Coverage
    incidents: list[IncidentFacts] = Field(
        description="Incidents opened since ``since`` minus the recurrence window"
    )
    runbook_runs: list[RunbookRun] = Field(default_factory=list)
    gates: list[Gate] = Field(default_factory=list)
    immediate: list[Gate] = Field(
        default_factory=list,
        description="Decisions made without a pause (cli-preapproved, policy)",
    )
    runbooks: list[str] = Field(default_factory=list, description="Every runbook in the catalog")
    drill_scenarios: list[str] = Field(default_factory=list)
    drills: dict[str, DrillRecord] = Field(default_factory=dict)
