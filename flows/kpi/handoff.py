"""``oncall handoff``: the seeds' on-call handoff, built from what Prefect holds right now.

Seed 000 Part D: review current issues, review recent incidents, walk through the runbooks,
verify alerting works, acknowledge the transfer. So, in that order: open incidents and the
gates waiting for a decision; the incidents of the period with their outcome and the open
action items of their post-mortems; runbooks whose drill is stale or failing; when the
receiver last got an alert, when the health sweep last ran, which notifications failed;
and the line that acknowledges the transfer — an ``oncall.handoff.acknowledged`` event.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field

from flows.kpi.compute import drill_status
from flows.kpi.facts import IncidentFacts, NotifyFailure, RunbookRun, Snapshot
from flows.kpi.figures import DrillStatus
from flows.kpi.parse import (
    coverage_from,
    drills_from,
    incident_from_run,
    notifications_from,
    postmortem_from,
    when,
)
from flows.kpi.reader import events_since, latest_artifacts, runbook_runs, server_settings
from flows.prefect_api import PrefectAPI

__all__ = [
    "ACK_EVENT",
    "RECEIVER_SOURCES",
    "Handoff",
    "ack_event",
    "read_handoff",
    "receiver_health",
]

ACK_EVENT = "oncall.handoff.acknowledged"
RECEIVER_SOURCES = ("alertmanager", "sentry", "pagerduty", "generic")


class IncidentLine(BaseModel):
    id: str
    severity: str
    service: str
    status: str
    title: str
    opened_at: datetime
    age_s: float
    sla: str
    acked: bool
    resolved_in_s: float | None = None
    outcomes: list[str] = Field(default_factory=list, description="runbook: outcome")
    open_items: list[str] = Field(default_factory=list)


class WaitingGate(BaseModel):
    run_id: str
    runbook: str
    incident: str | None
    plan: str
    risk: str | None
    waiting_since: datetime | None
    timeout_at: datetime | None


class Alerting(BaseModel):
    last_alert: dict[str, datetime] = Field(
        default_factory=dict, description="Per source: the newest alert that opened an incident"
    )
    last_joined: datetime | None = Field(default=None, description="Newest alert event")
    receiver: str = Field(description="What the receiver's /healthz said")
    sweep_last_run: datetime | None = None
    sweep_last_state: str | None = None
    sweep_last_completed: datetime | None = None
    sweep_schedule: str = Field(description="The health-sweep deployment: active, paused, none")
    failures: list[NotifyFailure] = Field(default_factory=list)


class Handoff(BaseModel):
    generated_at: datetime
    since: datetime
    open: list[IncidentLine]
    waiting: list[WaitingGate]
    recent: list[IncidentLine]
    drills: dict[str, DrillStatus]
    freshness_s: float
    alerting: Alerting
    last_ack: dict[str, Any] | None = None

    @property
    def attention(self) -> dict[str, DrillStatus]:
        return {n: d for n, d in self.drills.items() if d.scenario and (d.stale or d.failing)}


def _line(inc: IncidentFacts, runs: list[RunbookRun], now: datetime) -> IncidentLine:
    judged = inc.assess(now)
    end = inc.resolved_at or now
    return IncidentLine(
        id=inc.id,
        severity=str(inc.severity),
        service=inc.service,
        status=inc.status,
        title=inc.title,
        opened_at=inc.opened_at,
        age_s=(end - inc.opened_at).total_seconds(),
        sla=str(judged.verdict),
        acked=inc.acked_at is not None,
        resolved_in_s=judged.row("resolve").took_s if inc.resolved_at else None,
        outcomes=[f"{r.runbook}: {r.outcome or r.state or '?'}" for r in runs],
        open_items=list(inc.postmortem.open_items) if inc.postmortem else [],
    )


def receiver_health(config: Any) -> str:
    """The receiver's own word on itself, from its /healthz (where oncall.yaml says it is)."""
    rc = config.receiver
    host = "127.0.0.1" if rc.host in ("0.0.0.0", "::") else rc.host
    url = f"http://{host}:{rc.port}/healthz"
    try:
        answer = httpx.get(url, timeout=2.0)
    except httpx.HTTPError as exc:
        return f"not answering at {url} ({type(exc).__name__})"
    if answer.status_code != 200:
        return f"{url} answered HTTP {answer.status_code}"
    try:
        body = answer.json()
    except ValueError:
        body = {}
    extra = ", ".join(
        f"{k} {body[k]}" for k in ("prefect_reachable", "pending", "quarantined") if k in body
    )
    return f"answering at {url}" + (f" ({extra})" if extra else "")


def _gates(api: PrefectAPI) -> list[WaitingGate]:
    found = []
    for run in api.paused_runs():
        gate = api.gate(run) or {}
        tags = run.get("tags") or []
        found.append(
            WaitingGate(
                run_id=run["id"],
                runbook=str(gate.get("runbook") or run.get("name") or "?"),
                incident=next((t[9:] for t in tags if t.startswith("incident:")), None),
                plan=str(gate.get("summary") or "(no oncall gate record)"),
                risk=gate.get("risk"),
                waiting_since=when(gate.get("waiting_since") or run.get("start_time")),
                timeout_at=when(gate.get("timeout_at")),
            )
        )
    return found


def _sweep(api: PrefectAPI) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    body: dict[str, Any] = {
        "flows": {"name": {"any_": ["health-sweep"]}},
        "flow_runs": {"state": {"type": {"not_any_": ["SCHEDULED", "PENDING"]}}},
        "sort": "START_TIME_DESC",
        "limit": 1,
    }
    last = next(iter(api.flow_runs(body)), None)
    body["flow_runs"] = {"state": {"type": {"any_": ["COMPLETED"]}}}
    done = next(iter(api.flow_runs(body)), None)
    deployment = api.deployment("health-sweep/health-sweep")
    if deployment is None:
        schedule = "no health-sweep deployment (is `oncall serve` running?)"
    elif deployment.get("paused"):
        schedule = "deployment paused (oncall serve stopped?)"
    else:
        schedule = f"deployment {str(deployment.get('status') or '?').lower()}"
    return last, done, schedule


def read_handoff(
    api: PrefectAPI,
    config: Any,
    *,
    since: datetime,
    now: datetime,
    runbooks: list[str],
    drill_scenarios: list[str],
) -> Handoff:
    """The handoff from live state: ``since`` bounds the recent incidents and failures."""
    coverage = coverage_from(server_settings(api), now)
    open_runs = api.incident_runs(open_only=True)
    recent_runs = api.all_flow_runs(
        {
            "flows": {"name": {"any_": ["incident"]}},
            "flow_runs": {
                "tags": {"all_": ["incident"]},
                "expected_start_time": {"after_": since.isoformat()},
            },
            "sort": "EXPECTED_START_TIME_DESC",
        }
    )
    incidents: dict[str, IncidentFacts] = {}
    for run in [*open_runs, *recent_runs]:
        if (inc := incident_from_run(run)) is not None and not inc.drill:
            incidents[inc.run_id] = inc
    earliest = min([since, *(i.opened_at for i in incidents.values())])
    by_incident: dict[str, list[RunbookRun]] = {}
    for r in runbook_runs(api, runbooks, earliest):
        if r.incident and not r.drill:
            by_incident.setdefault(r.incident, []).append(r)
    keys = [f"{i.id.lower()}-postmortem" for i in incidents.values()]
    postmortems = {str(a.get("key")): a for a in latest_artifacts(api, keys)}
    lines: dict[str, IncidentLine] = {}
    for run_id, inc in incidents.items():
        artifact = postmortems.get(f"{inc.id.lower()}-postmortem")
        if artifact is not None and artifact.get("flow_run_id") in (None, run_id):
            inc = inc.model_copy(update={"postmortem": postmortem_from(artifact)})
        lines[run_id] = _line(inc, by_incident.get(inc.id, []), now)
    notify = events_since(api, ["oncall.incident.notify"], since, now)
    failures = [f for _, fails in notifications_from(notify).values() for f in fails]
    joined = events_since(api, ["oncall.incident.alert"], since, now)
    acks = events_since(api, [ACK_EVENT], coverage.events_since, now)
    last_alert: dict[str, datetime] = {}
    for run in api.incident_runs(limit=200):  # newest first: the last alert of each source
        inc = incident_from_run(run)
        if inc and inc.source and inc.received_at and inc.source not in last_alert:
            last_alert[inc.source] = inc.received_at
    last, done, schedule = _sweep(api)
    snap = Snapshot(
        now=now,
        since=since,
        coverage=coverage,
        incidents=[],
        runbooks=runbooks,
        drill_scenarios=drill_scenarios,
        drills=drills_from(latest_artifacts(api, [f"drill-{s}" for s in drill_scenarios])),
    )
    freshness = config.drills.freshness
    open_ids = {r["id"] for r in open_runs}
    return Handoff(
        generated_at=now,
        since=since,
        open=[line for rid, line in lines.items() if rid in open_ids],
        waiting=_gates(api),
        recent=sorted(
            (line for rid, line in lines.items() if rid not in open_ids),
            key=lambda line: line.opened_at,
            reverse=True,
        ),
        drills={name: drill_status(name, snap, freshness) for name in runbooks},
        freshness_s=freshness,
        alerting=Alerting(
            last_alert=last_alert,
            last_joined=max((t for e in joined if (t := when(e.get("occurred")))), default=None),
            receiver=receiver_health(config),
            sweep_last_run=when((last or {}).get("start_time")),
            sweep_last_state=((last or {}).get("state") or {}).get("type"),
            sweep_last_completed=when((done or {}).get("end_time")),
            sweep_schedule=schedule,
            failures=failures,
        ),
        last_ack=(acks[-1].get("payload") | {"at": acks[-1].get("occurred")}) if acks else None,
    )


def ack_event(h: Handoff, by: str, identity: str) -> dict[str, Any]:
    """The ``oncall.handoff.acknowledged`` event: who took over, and what was handed over."""
    return {
        "id": str(uuid.uuid4()),
        "occurred": h.generated_at.isoformat(),
        "event": ACK_EVENT,
        "resource": {
            "prefect.resource.id": "oncall.handoff",
            "prefect.resource.name": "on-call handoff",
        },
        "related": [],
        "payload": {
            "by": by,
            "identity": identity,
            "since": h.since.isoformat(),
            "open_incidents": [i.id for i in h.open],
            "waiting_approvals": [g.run_id for g in h.waiting],
            "drills_to_look_at": sorted(h.attention),
            "notification_failures": len(h.alerting.failures),
        },
    }
