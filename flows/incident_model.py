"""The incident as the parent flow keeps it: status, timeline, SLA state (no Prefect here).

Prefect is the system of record: the incident flow run carries the state in its
name and tags (``INC-7``, ``severity:P1``, ``service:api``, ``status:identified``,
``acked``), its timeline as events and a markdown artifact, its post-mortem as
an artifact. These helpers turn one into the other.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from checks.findings import Severity
from flows.config import Sla

__all__ = [
    "Incident",
    "IncidentStatus",
    "SlaState",
    "TimelineEntry",
    "incident_tags",
    "sla_state",
    "slug",
    "summary_from_run",
]


class IncidentStatus(StrEnum):
    """Statuspage's and the seeds' vocabulary."""

    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


class SlaState(StrEnum):
    ON_TIME = "on time"
    AT_RISK = "at risk"
    BREACHED = "breached"
    MET = "met"


class TimelineEntry(BaseModel):
    """One thing that happened, in UTC."""

    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    kind: str = Field(description="alert, declared, severity, notify, escalate, ack, finding …")
    text: str
    data: dict[str, Any] = Field(default_factory=dict)


class Incident(BaseModel):
    """The incident's live state inside its flow run."""

    id: str = Field(description="INC-<n>")
    title: str
    service: str
    severity: Severity
    severity_reasons: list[str] = Field(default_factory=list)
    status: IncidentStatus = IncidentStatus.INVESTIGATING
    fingerprint: str
    opened_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    acked_at: datetime | None = None
    acked_by: str | None = None
    mitigated_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution_note: str = ""
    flow_run_id: str | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    runbooks: list[str] = Field(default_factory=list)
    reports: list[dict[str, Any]] = Field(default_factory=list)
    escalated_to: list[str] = Field(default_factory=list)
    alerts: int = 0
    alert_states: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="fingerprint -> status (firing/resolved), source, title"
    )
    skipped: list[dict[str, str]] = Field(
        default_factory=list,
        description="runbooks routed but not started: runbook, service, kind (cooldown, run"
        " cap, invalid) and the reason",
    )

    @property
    def number(self) -> int:
        return int(self.id.split("-")[1])

    @property
    def run_name(self) -> str:
        return f"{self.id} {self.severity} {self.title}"[:200]

    def add(self, kind: str, text: str, **data: Any) -> TimelineEntry:
        entry = TimelineEntry(kind=kind, text=text, data=data)
        self.timeline.append(entry)
        return entry

    def elapsed(self, now: datetime | None = None) -> float:
        end = self.resolved_at or now or datetime.now(UTC)
        return (end - self.opened_at).total_seconds()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


def fingerprint_tag(fingerprint: str) -> str:
    return "fp:" + hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def incident_tags(incident: Incident) -> list[str]:
    tags = [
        "oncall",
        "incident",
        incident.id,
        f"severity:{incident.severity}",
        f"service:{incident.service}",
        f"status:{incident.status}",
        fingerprint_tag(incident.fingerprint),
    ]
    if incident.acked_at:
        tags.append("acked")
    return tags


def sla_state(
    sla: Sla, *, elapsed_s: float, acked: bool, resolved: bool, ack_s: float | None = None
) -> SlaState:
    """Where an incident stands against its severity's response and resolution SLAs."""
    if resolved:
        if sla.resolve is not None and elapsed_s > sla.resolve:
            return SlaState.BREACHED
        if sla.acknowledge is not None and ack_s is not None and ack_s > sla.acknowledge:
            return SlaState.BREACHED
        return SlaState.MET
    if sla.resolve is not None and elapsed_s > sla.resolve:
        return SlaState.BREACHED
    if not acked and sla.acknowledge is not None:
        if elapsed_s > sla.acknowledge:
            return SlaState.BREACHED
        if elapsed_s > 0.75 * sla.acknowledge:
            return SlaState.AT_RISK
    if acked and ack_s is not None and sla.acknowledge is not None and ack_s > sla.acknowledge:
        return SlaState.BREACHED
    if sla.resolve is not None and elapsed_s > 0.75 * sla.resolve:
        return SlaState.AT_RISK
    return SlaState.ON_TIME


def summary_from_run(run: dict[str, Any]) -> dict[str, Any]:
    """What a flow run's name and tags say about its incident (for ``oncall incidents``)."""
    tags = run.get("tags") or []

    def tag(prefix: str) -> str | None:
        return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)

    inc = next((t for t in tags if re.fullmatch(r"INC-\d+", t)), None)
    name = run.get("name") or ""
    title = name.split(" ", 2)[2] if inc and name.startswith(inc) and name.count(" ") >= 2 else name
    state = (run.get("state") or {}).get("type")
    status = tag("status:") or ("resolved" if state == "COMPLETED" else "investigating")
    if state in ("CRASHED", "FAILED", "CANCELLED") and status != "resolved":
        status = f"{status} (run {state.lower()})"
    return {
        "id": inc,
        "title": title,
        "severity": tag("severity:"),
        "service": tag("service:"),
        "status": status,
        "acked": "acked" in tags,
        "flow_run_id": run.get("id"),
        "started": run.get("start_time") or run.get("expected_start_time"),
        "ended": run.get("end_time"),
        "state": state,
    }
