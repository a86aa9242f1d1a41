"""The incident as the parent flow keeps it: status, timeline, SLA state (no Prefect here).

Prefect is the system of record: the incident flow run carries the state in its
name and tags (``INC-7``, ``severity:P1``, ``service:api``, ``status:identified``,
``acked``), the times and SLA targets its verdict needs in ``oncall.*`` labels, its
timeline as events and a markdown artifact, its post-mortem as an artifact. These
helpers turn one into the other.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from checks.findings import Severity
from checks.sla import DEFAULT_SLA, Sla, SlaAssessment, assess_incident

__all__ = [
    "Incident",
    "IncidentStatus",
    "TimelineEntry",
    "incident_labels",
    "incident_tags",
    "sla_assessment",
    "sla_of_run",
    "slug",
    "summary_from_run",
]


class IncidentStatus(StrEnum):
    """Statuspage's and the seeds' vocabulary."""

    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


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


def sla_assessment(incident: Incident, sla: Sla, now: datetime | None = None) -> SlaAssessment:
    """The incident against its SLAs (checks/sla.py): the post-mortem's and the list's verdict."""
    return assess_incident(
        sla,
        opened=incident.opened_at,
        acked=incident.acked_at,
        mitigated=incident.mitigated_at,
        resolved=incident.resolved_at,
        now=now or datetime.now(UTC),
    )


# Flow run labels that carry what the SLA verdict needs and the run itself does not show:
# when it was acknowledged, mitigated, resolved, and the targets oncall.yaml gave it.
_TIMES = ("opened_at", "acked_at", "mitigated_at", "resolved_at")
_TARGETS = ("acknowledge", "investigate", "status_update", "resolve")


def incident_labels(incident: Incident, sla: Sla) -> dict[str, str]:
    """The ``oncall.*`` labels :func:`sla_of_run` reads back (every key, so updates overwrite)."""
    labels = {
        f"oncall.{name}": value.isoformat() if (value := getattr(incident, name)) else ""
        for name in _TIMES
    }
    for name in _TARGETS:
        target = getattr(sla, name)
        labels[f"oncall.sla.{name}_s"] = "none" if target is None else f"{target:g}"
    return labels


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    found = datetime.fromisoformat(str(value))
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def sla_of_run(run: dict[str, Any], now: datetime | None = None) -> SlaAssessment:
    """The SLA verdict of an incident flow run, judged exactly as its post-mortem judges it.

    Runs from before the ``oncall.*`` labels fall back to the run's own times and the
    default table of their severity tag.
    """
    info = summary_from_run(run)
    labels = run.get("labels") or {}
    if "oncall.opened_at" in labels:
        raw = {name: str(labels.get(f"oncall.sla.{name}_s", "none")) for name in _TARGETS}
        sla = Sla(**{name: None if v in ("none", "") else float(v) for name, v in raw.items()})
        times = {name: _when(labels.get(f"oncall.{name}")) for name in _TIMES}
    else:
        severity = Severity.parse(info["severity"]) or Severity.P2
        sla = DEFAULT_SLA[severity]
        if info["acked"]:  # acknowledged, but when is not recorded: that measure is unknown
            sla = sla.model_copy(update={"acknowledge": None})
        ended = _when(info["ended"]) if info["status"] == "resolved" else None
        times = {"opened_at": _when(info["started"]), "resolved_at": ended}
    now = now or datetime.now(UTC)
    return assess_incident(
        sla,
        opened=times.get("opened_at") or now,
        acked=times.get("acked_at"),
        mitigated=times.get("mitigated_at"),
        resolved=times.get("resolved_at"),
        now=now,
    )


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
