"""Reads a :class:`Snapshot` from Prefect's REST API (no ``import prefect``: the CLI stays fast).

Where each fact comes from (nothing outside Prefect):

- incidents: the ``incident`` flow runs — tags (``INC-n``, ``severity:``, ``service:``,
  ``status:``, ``fp:``, ``drill``), labels (``oncall.opened_at`` … ``oncall.sla.*_s``, written
  by the incident flow's ``sync_run``) and the first alert (its ``alert`` parameter);
- runbooks an incident ran, and remediations: runbook flow runs (tags ``runbook:``,
  ``target:``, ``incident:``, ``drill``) and each run's report artifact, whose description
  ends with the outcome and whose body lists the actions executed;
- updates and notification failures: the incidents' ``oncall.incident.notify`` events
  (``channel``, ``ok``); gates: ``oncall.gate.waiting`` and ``oncall.approval.*`` events;
- post-mortems: the latest ``inc-<n>-postmortem`` artifacts; drills: the latest
  ``drill-<scenario>`` artifacts (flows/drills/record.py);
- what the server still keeps: its settings (event retention, the run vacuum).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from checks.findings import Severity
from flows.kpi.facts import RunbookRun, Snapshot
from flows.kpi.figures import RECURRENCE_WINDOW
from flows.kpi.parse import (
    coverage_from,
    drills_from,
    gates_from,
    incident_from_run,
    notifications_from,
    outcome_of,
    postmortem_from,
    runbook_run_from,
)
from flows.prefect_api import PrefectAPI
from integrations.errors import NotFound, ProviderError

__all__ = [
    "events_since",
    "latest_artifacts",
    "read_runs",
    "read_snapshot",
    "runbook_runs",
    "server_settings",
]

_BATCH = 200  # the most ids or keys one filter call carries (Prefect's page size)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


def _all_artifacts(api: PrefectAPI, body: dict[str, Any]) -> list[dict[str, Any]]:
    found, offset = [], 0
    while True:
        batch = api.artifacts({**body, "limit": _BATCH, "offset": offset})
        found += batch
        if len(batch) < _BATCH:
            return found
        offset += _BATCH


def latest_artifacts(api: PrefectAPI, keys: list[str]) -> list[dict[str, Any]]:
    found = []
    for chunk in _chunks(keys):
        found += api.latest_artifacts({"artifacts": {"key": {"any_": chunk}}, "limit": _BATCH})
    return found


def read_runs(api: PrefectAPI, flow_names: list[str], after: datetime) -> list[dict[str, Any]]:
    return api.all_flow_runs(
        {
            "flows": {"name": {"any_": flow_names}},
            "flow_runs": {"expected_start_time": {"after_": after.isoformat()}},
            "sort": "EXPECTED_START_TIME_ASC",
        }
    )


def runbook_runs(api: PrefectAPI, runbooks: list[str], after: datetime) -> list[RunbookRun]:
    """Runbook runs since ``after`` with the outcome of their report artifacts."""
    runs = read_runs(api, runbooks, after)
    reports: dict[str, dict[str, Any]] = {}
    for chunk in _chunks([r["id"] for r in runs]):
        body = {"artifacts": {"flow_run_id": {"any_": chunk}, "type": {"any_": ["markdown"]}}}
        for artifact in _all_artifacts(api, body):
            if outcome_of(artifact)[0] is not None and " on " in str(artifact.get("description")):
                reports[str(artifact.get("flow_run_id"))] = artifact
    return [r for run in runs if (r := runbook_run_from(run, reports.get(run["id"]))) is not None]


def events_since(api: PrefectAPI, prefixes: list[str], since: datetime, until: datetime) -> list:
    return api.all_events(
        {
            "occurred": {"since": since.isoformat(), "until": until.isoformat()},
            "event": {"prefix": prefixes},
            "order": "ASC",
        }
    )


def server_settings(api: PrefectAPI) -> dict[str, Any] | None:
    try:
        return api.server_settings()
    except (NotFound, ProviderError):  # an API behind a proxy that hides /admin: defaults
        return None


def read_snapshot(
    api: PrefectAPI,
    *,
    since: datetime,
    now: datetime,
    runbooks: list[str],
    drill_scenarios: list[str],
) -> Snapshot:
    """Everything ``oncall report`` computes from, read from the server at ``api``.

    The independent reads go out side by side (the server answers them concurrently); the
    post-mortems wait for the incidents that name them.
    """
    first = since - RECURRENCE_WINDOW
    with ThreadPoolExecutor(max_workers=4) as pool:
        settings = pool.submit(server_settings, api)
        incident_runs = pool.submit(read_runs, api, ["incident"], first)
        runbook_reads = pool.submit(runbook_runs, api, runbooks, first)
        drill_keys = [f"drill-{s}" for s in drill_scenarios]
        drill_reads = pool.submit(latest_artifacts, api, drill_keys)
        coverage = coverage_from(settings.result(), now)
        from_events = max(since, coverage.events_since)
        notify = pool.submit(events_since, api, ["oncall.incident.notify"], from_events, now)
        gate_prefixes = ["oncall.gate.waiting", "oncall.approval."]
        gate_events = pool.submit(events_since, api, gate_prefixes, from_events, now)
        incidents = [i for r in incident_runs.result() if (i := incident_from_run(r))]
        due = [
            f"{i.id.lower()}-postmortem"
            for i in incidents
            if i.opened_at >= since and i.severity in (Severity.P0, Severity.P1)
        ]
        postmortem_reads = pool.submit(latest_artifacts, api, due)
        runs = runbook_reads.result()
        told = notifications_from(notify.result())
        gates, immediate = gates_from(gate_events.result())
        postmortems = {str(a.get("key")): a for a in postmortem_reads.result()}
        drills = drills_from(drill_reads.result())
    by_incident: dict[str, list[str]] = {}
    for run in runs:
        if run.incident:
            by_incident.setdefault(run.incident, []).append(run.runbook)
    enriched = []
    for inc in incidents:
        updates, failures = told.get(inc.run_id, ([], []))
        artifact = postmortems.get(f"{inc.id.lower()}-postmortem")
        if artifact is not None and artifact.get("flow_run_id") not in (None, inc.run_id):
            artifact = None  # the number was reused after the vacuum: not this incident's
        enriched.append(
            inc.model_copy(
                update={
                    "runbooks": sorted(set(by_incident.get(inc.id, []))),
                    "updates": updates if inc.opened_at >= from_events else None,
                    "failures": failures,
                    "postmortem": postmortem_from(artifact) if artifact else None,
                }
            )
        )
    return Snapshot(
        now=now,
        since=since,
        coverage=coverage,
        incidents=enriched,
        runbook_runs=runs,
        gates=gates,
        immediate=immediate,
        runbooks=runbooks,
        drill_scenarios=drill_scenarios,
        drills=drills,
    )
