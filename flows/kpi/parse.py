"""Prefect's JSON (flow runs, events, artifacts, settings) into :mod:`flows.kpi.facts` (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError

from checks.findings import Severity
from checks.sla import DEFAULT_SLA, Sla
from flows.incident_model import summary_from_run
from flows.kpi.facts import (
    Coverage,
    DrillRecord,
    Gate,
    IncidentFacts,
    NotifyFailure,
    Postmortem,
    RunbookRun,
)

__all__ = [
    "OPEN_STATES",
    "UPDATE_CHANNELS",
    "coverage_from",
    "drills_from",
    "gates_from",
    "incident_from_run",
    "notifications_from",
    "outcome_of",
    "postmortem_from",
    "runbook_run_from",
    "when",
]

OPEN_STATES = ("RUNNING", "PAUSED", "PENDING", "SCHEDULED")
UPDATE_CHANNELS = ("slack", "statuspage")  # what people read; PagerDuty pages, it does not tell
DEFAULT_EVENT_RETENTION = timedelta(days=7)  # Prefect's own default
_TARGETS = ("acknowledge", "investigate", "status_update", "resolve")
_ITEM = re.compile(r"^\d+\. \[([ xX])\] (.+)$", re.M)
_BLANKS = ("_to be filled in_", "_TBD_")
_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def when(value: Any) -> datetime | None:
    """An ISO time from Prefect (always with a zone in UTC); None for empty."""
    if not value:
        return None
    try:
        found = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def _tag(tags: list[str], prefix: str) -> str | None:
    return next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)


def _sla(labels: dict[str, Any], severity: Severity, acked: bool) -> Sla:
    if "oncall.opened_at" not in labels:  # a run from before the labels: today's table
        default = DEFAULT_SLA[severity]
        return default.model_copy(update={"acknowledge": None}) if acked else default
    values: dict[str, float | None] = {}
    for name in _TARGETS:
        raw = str(labels.get(f"oncall.sla.{name}_s", "none"))
        try:
            target = None if raw in ("none", "") else float(raw)
        except ValueError:  # anyone who reaches the API can write labels: not a number
            target = getattr(DEFAULT_SLA[severity], name)
        if target is not None and not 0 <= target < float("inf"):
            target = getattr(DEFAULT_SLA[severity], name)
        values[name] = target
    return Sla(**values)


def incident_from_run(run: dict[str, Any]) -> IncidentFacts | None:
    """The incident a flow run records; None for a run that is not (yet) an incident."""
    info = summary_from_run(run)
    if info["id"] is None:
        return None
    tags = run.get("tags") or []
    labels = run.get("labels") or {}
    severity = Severity.parse(info["severity"] or "") or Severity.P2
    opened = when(labels.get("oncall.opened_at")) or when(info["started"])
    if opened is None:
        return None
    resolved = when(labels.get("oncall.resolved_at"))
    if resolved is None and "oncall.opened_at" not in labels and info["status"] == "resolved":
        resolved = when(info["ended"])
    alert = (run.get("parameters") or {}).get("alert") or {}
    return IncidentFacts(
        id=info["id"],
        run_id=run["id"],
        title=info["title"],
        severity=severity,
        service=info["service"] or "",
        status=info["status"],
        open=info["state"] in OPEN_STATES,
        drill="drill" in tags,
        fingerprint=_tag(tags, "fp:"),
        source=alert.get("source") if isinstance(alert, dict) else None,
        received_at=when(alert.get("received_at")) if isinstance(alert, dict) else None,
        opened_at=opened,
        acked_at=when(labels.get("oncall.acked_at")),
        mitigated_at=when(labels.get("oncall.mitigated_at")),
        resolved_at=resolved,
        sla=_sla(labels, severity, bool(info["acked"])),
    )


def outcome_of(artifact: dict[str, Any] | None) -> tuple[str | None, bool]:
    """(outcome, remediated) from a runbook's report artifact."""
    if artifact is None:
        return None, False
    match = re.search(r": (\w+)$", str(artifact.get("description") or ""))
    outcome = match.group(1) if match else None
    acted = "\n## Actions executed\n" in str(artifact.get("data") or "")
    return outcome, acted or outcome in ("fixed", "mitigated")


def runbook_run_from(run: dict[str, Any], report: dict[str, Any] | None) -> RunbookRun | None:
    tags = run.get("tags") or []
    runbook = _tag(tags, "runbook:")
    started = when(run.get("start_time")) or when(run.get("expected_start_time"))
    if runbook is None or started is None:
        return None
    outcome, remediated = outcome_of(report)
    return RunbookRun(
        run_id=run["id"],
        runbook=runbook,
        service=_tag(tags, "target:"),
        incident=_tag(tags, "incident:"),
        drill="drill" in tags,
        started_at=started,
        state=(run.get("state") or {}).get("type"),
        outcome=outcome,
        remediated=remediated,
    )


def _run_of(event: dict[str, Any]) -> str | None:
    for related in event.get("related") or []:
        rid = str(related.get("prefect.resource.id", ""))
        if related.get("prefect.resource.role") == "flow-run" and rid.startswith(
            "prefect.flow-run."
        ):
            return rid.removeprefix("prefect.flow-run.")
    return None


def notifications_from(
    events: Iterable[dict[str, Any]],
) -> dict[str, tuple[list[datetime], list[NotifyFailure]]]:
    """Per incident run id: when updates went out, and which notifications failed."""
    found: dict[str, tuple[list[datetime], list[NotifyFailure]]] = {}
    for event in events:
        run_id, at = _run_of(event), when(event.get("occurred"))
        payload = event.get("payload") or {}
        if run_id is None or at is None:
            continue
        updates, failures = found.setdefault(run_id, ([], []))
        channel = str(payload.get("channel") or "?")
        if payload.get("ok") is False:
            name = str((event.get("resource") or {}).get("prefect.resource.id", ""))
            failures.append(
                NotifyFailure(
                    at=at,
                    channel=channel,
                    text=str(payload.get("text") or "")[:300],
                    incident=name.removeprefix("oncall.incident.") or None,
                )
            )
        elif channel in UPDATE_CHANNELS:
            updates.append(at)
    return found


def gates_from(events: Iterable[dict[str, Any]]) -> tuple[list[Gate], list[Gate]]:
    """Gates paired with the decisions that ended them; decisions that never waited."""
    gates: list[Gate] = []
    immediate: list[Gate] = []
    for event in sorted(events, key=lambda e: str(e.get("occurred"))):
        payload = event.get("payload") or {}
        plan_id = str(payload.get("plan_id") or "")
        if str(event.get("event")) == "oncall.gate.waiting":
            since = when(payload.get("waiting_since"))
            if since is not None and plan_id:
                gates.append(
                    Gate(
                        plan_id=plan_id,
                        runbook=str(payload.get("runbook") or "?"),
                        run_id=_run_of(event),
                        waiting_since=since,
                    )
                )
            continue
        decided = when(payload.get("decided_at")) or when(event.get("occurred"))
        channel = str(payload.get("channel") or "")
        if decided is None or not str(event.get("event")).startswith("oncall.approval."):
            continue
        # The newest undecided pause of this plan: each approval round has its own.
        waiting = next(
            (
                i
                for i in range(len(gates) - 1, -1, -1)
                if gates[i].plan_id == plan_id and gates[i].decided_at is None
            ),
            None,
        )
        if waiting is None:
            if channel in ("cli-preapproved", "policy"):
                immediate.append(
                    Gate(
                        plan_id=plan_id,
                        runbook="?",
                        run_id=_run_of(event),
                        waiting_since=decided,
                        decided_at=decided,
                        decision="approved" if payload.get("approved") else "rejected",
                        approver=payload.get("approver"),
                        channel=channel,
                    )
                )
            continue  # else its pause is older than the events kept
        decision = (
            "approved"
            if payload.get("approved")
            else {"timeout": "timeout", "incident": "cancelled"}.get(channel, "rejected")
        )
        gates[waiting] = gates[waiting].model_copy(
            update={
                "decided_at": decided,
                "decision": decision,
                "approver": payload.get("approver"),
                "channel": channel,
            }
        )
    return gates, immediate


def postmortem_from(artifact: dict[str, Any]) -> Postmortem:
    text = str(artifact.get("data") or "")
    items = _ITEM.findall(text)
    return Postmortem(
        updated=when(artifact.get("updated")) or when(artifact.get("created")),
        blanks=sum(text.count(blank) for blank in _BLANKS),
        open_items=[item for mark, item in items if mark == " "],
        closed_items=sum(1 for mark, _ in items if mark != " "),
    )


def drills_from(artifacts: Iterable[dict[str, Any]]) -> dict[str, DrillRecord]:
    """The latest drill per scenario from ``drill-<scenario>`` artifacts."""
    found: dict[str, DrillRecord] = {}
    for artifact in artifacts:
        key = str(artifact.get("key") or "")
        match = re.search(r": (passed|failed|error)$", str(artifact.get("description") or ""))
        at = when(artifact.get("updated")) or when(artifact.get("created"))
        if not key.startswith("drill-") or match is None or at is None:
            continue
        scenario = key.removeprefix("drill-")
        if scenario not in found or found[scenario].at < at:
            found[scenario] = DrillRecord(scenario=scenario, at=at, result=match.group(1))
    return found


def _duration(value: Any) -> float | None:
    try:
        return _DURATION.validate_python(value).total_seconds()
    except ValidationError:
        return None


def coverage_from(settings: dict[str, Any] | None, now: datetime) -> Coverage:
    """What the server keeps, from its settings (Prefect's defaults when unreadable)."""
    server = (settings or {}).get("server") or {}
    events = _duration((server.get("events") or {}).get("retention_period"))
    events = events if events is not None else DEFAULT_EVENT_RETENTION.total_seconds()
    vacuum = (server.get("services") or {}).get("db_vacuum") or {}
    runs = None
    if "flow_runs" in (vacuum.get("enabled") or []):
        runs = _duration(vacuum.get("retention_period"))
    return Coverage(
        events_since=now - timedelta(seconds=events),
        event_retention_s=events,
        run_retention_s=runs,
    )
