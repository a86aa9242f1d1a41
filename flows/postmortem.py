"""The post-mortem draft, in the seeds' template (seed 000 Part C step 6, seeds 001/002/004).

Everything is derived from what the incident flow recorded: timeline, findings,
approvals, actions, SLA figures. What only people know (users affected, data
lost) is left as a visible blank to fill in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from checks.sla import Sla, SlaVerdict
from flows.incident_model import Incident, sla_assessment
from runbooks.engine.model import Approval

__all__ = ["PREVENTION", "postmortem_markdown", "root_cause"]

# The seeds' "Prevention" lists, by runbook.
PREVENTION: dict[str, list[str]] = {
    "db-connections": [
        "Add a connection pooling layer (PgBouncer) and cap connections per API instance",
        "Alert on connection pool usage before it is exhausted (> 70 % of max_connections)",
        "Set idle_in_transaction_session_timeout and statement timeouts",
        "Review the code path that leaves transactions open (connection cleanup in error paths)",
    ],
    "memory-leak": [
        "Alert on memory > 80 % of the limit and on steady growth",
        "Review recent changes for unbounded caches, listeners and unclosed connections",
        "Load test before deployment",
    ],
    "high-error-rate": [
        "Alert on the error-rate threshold in staging as well as production",
        "Integration tests with realistic data for the failing endpoints",
    ],
    "performance-degradation": [
        "Alert on p95 response time increase; review slow queries and missing indexes",
        "Performance test before deployment",
    ],
    "queue-backlog": [
        "Alert on queue depth and the age of the oldest message",
        "Autoscale workers on backlog; route poison messages to a dead-letter queue",
    ],
    "hms-failures": [
        "Monitor 100ms management-token expiry and rotate it before it expires",
        "Alert when concurrent rooms approach the plan's limit",
    ],
    "rollback": [
        "Find and fix the change that was rolled back before re-deploying it",
        "Gradual rollouts and automatic rollback on error-rate regression",
    ],
    "app-down": ["Health-check based restarts and resource limits sized from real usage"],
    "provider-outage": [
        "Graceful degradation and a circuit breaker for the provider",
        "Subscribe to the provider's status page",
    ],
}


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return str(timedelta(seconds=round(seconds)))


def root_cause(incident: Incident) -> str:
    """The strongest finding across the runbooks: critical before warn, first seen first."""
    ranked = []
    for report in incident.reports:
        for finding in report.get("findings", []):
            if finding["status"] in ("critical", "warn"):
                ranked.append(
                    (0 if finding["status"] == "critical" else 1, report["runbook"], finding)
                )
    if not ranked:
        return "Not determined by the runbooks; to be filled in by the responders."
    ranked.sort(key=lambda item: item[0])
    _, runbook, finding = ranked[0]
    return f"{finding['summary']} (found by {runbook}/{finding['check']})"


def _verdict(approval: dict[str, Any]) -> str:
    """approved / rejected / refused / not-counted / timed-out, as the gate recorded it."""
    return Approval.model_validate(approval).verdict


def _approvals(incident: Incident) -> list[dict[str, Any]]:
    return [a | {"runbook": r["runbook"]} for r in incident.reports for a in r.get("approvals", [])]


def _actions(incident: Incident) -> list[dict[str, Any]]:
    return [a | {"runbook": r["runbook"]} for r in incident.reports for a in r.get("results", [])]


def postmortem_markdown(incident: Incident, sla: Sla, now: datetime | None = None) -> str:
    """The draft post-mortem for one incident, its SLA judged by :mod:`checks.sla`."""
    now = now or datetime.now(UTC)
    ack_s = (incident.acked_at - incident.opened_at).total_seconds() if incident.acked_at else None
    elapsed = incident.elapsed(now)
    judged = sla_assessment(incident, sla, now)
    end = f"{incident.resolved_at:%Y-%m-%d %H:%M:%S} UTC" if incident.resolved_at else "ongoing"
    out = [
        f"# Incident Post-Mortem: {incident.title}",
        "",
        "## Incident Details",
        f"- ID: {incident.id}",
        f"- Severity: {incident.severity} ({'; '.join(incident.severity_reasons) or 'declared'})",
        f"- Service: {incident.service}",
        f"- Start: {incident.opened_at:%Y-%m-%d %H:%M:%S} UTC",
        f"- End: {end}",
        f"- Duration: {_fmt(elapsed)}",
        f"- Status: {incident.status}; SLA: {judged.verdict}",
    ]
    if incident.acked_by:
        out.append(f"- Acknowledged by: {incident.acked_by} after {_fmt(ack_s)}")
    if incident.resolved_by:
        out.append(
            f"- Resolved by: {incident.resolved_by}"
            + (f" — {incident.resolution_note}" if incident.resolution_note else "")
        )
    out += ["", "## Timeline (UTC)", "", "| time | event |", "|---|---|"]
    for entry in incident.timeline:
        out.append(f"| {entry.at:%H:%M:%S} | {entry.text.replace('|', '/')} |")
    out += ["", "## Root Cause", "", f"Hypothesis from the diagnostics: {root_cause(incident)}", ""]
    findings = [
        (r["runbook"], f)
        for r in incident.reports
        for f in r.get("findings", [])
        if f["status"] in ("critical", "warn", "error")
    ]
    if findings:
        out += ["Evidence:", ""]
        out += [
            f"- [{f['status']}] {runbook}/{f['check']}: {f['summary']}" for runbook, f in findings
        ]
        out.append("")
    approvals = _approvals(incident)
    out += ["## Approvals", ""]
    if approvals:
        out += [
            "| runbook | decision | approver | channel | identity | reason | at |",
            "|---|---|---|---|---|---|---|",
        ]
        for a in approvals:
            out.append(
                f"| {a['runbook']} | {_verdict(a)} "
                f"| {a['approver']} | {a['channel']} | {a.get('identity') or ''} "
                f"| {(a.get('why') or a.get('reason', '')).replace('|', '/')}"
                f" | {str(a['decided_at'])[11:19]} |"
            )
    else:
        out.append("_No change was proposed or decided._")
    out += ["", "## Actions taken", ""]
    actions = _actions(incident)
    out += [f"- {a['runbook']}: **{a['title']}** — {a['status']}: {a['detail']}" for a in actions]
    if not actions:
        out.append("_No remediation was executed by the runbooks._")
    out += [
        "",
        "## Impact",
        "- Users affected: _to be filled in_",
        f"- Services affected: {incident.service}",
        f"- Duration: {_fmt(elapsed)}",
        "- Data lost: _to be filled in_",
        "",
        "## SLA",
        "",
        "| measure | actual | target | verdict |",
        "|---|---|---|---|",
    ]
    for row in judged.rows:
        verdict = row.verdict or "no SLA"
        if row.verdict is SlaVerdict.PENDING and row.due is not None:
            verdict = f"pending (due {row.due:%H:%M:%S} UTC)"
        out.append(f"| {row.measure} | {_fmt(row.took_s)} | {_fmt(row.target_s)} | {verdict} |")
    mitigate_s = judged.row("mitigate").took_s if incident.mitigated_at else None
    well: list[str] = []
    better: list[str] = []
    acked = judged.row("acknowledge")
    if ack_s is not None and acked.verdict is not None:
        (well if acked.verdict is SlaVerdict.MET else better).append(
            f"Acknowledged in {_fmt(ack_s)} against a {_fmt(acked.target_s)} SLA"
        )
    elif ack_s is None:
        better.append("Nobody acknowledged the incident")
    if mitigate_s is not None:
        well.append(f"Mitigated by an approved runbook action {_fmt(mitigate_s)} after opening")
    failures = [e for e in incident.timeline if e.kind == "notify" and not e.data.get("ok", True)]
    if failures:
        better.append(f"{len(failures)} notification(s) failed: {failures[0].text}")
    if incident.escalated_to:
        better.append(f"Escalated to {', '.join(incident.escalated_to)} before a response")
    rejected = [a for a in approvals if not a["approved"] and a.get("counted", True)]
    if rejected:
        better.append(f"{len(rejected)} plan(s) rejected or timed out at the gate")
    better += [s["reason"] for s in incident.skipped]
    refused = [a for a in approvals if not a.get("counted", True)]
    if refused:
        better.append(f"{len(refused)} decision(s) refused or not counted at the gate (audit)")
    out += ["", "## What Went Well", ""] + [f"- {w}" for w in well or ["_to be filled in_"]]
    out += ["", "## What Didn't Go Well", ""] + [f"- {b}" for b in better or ["_to be filled in_"]]
    due = (incident.resolved_at or incident.opened_at) + timedelta(days=7)
    items = [p for r in incident.runbooks for p in PREVENTION.get(r, [])]
    # Only an alert no route matched asks for a runbook; one held back (cooldown, run cap)
    # exists and is said so above, and invents no action item.
    missing = not incident.runbooks and not incident.skipped
    items = list(dict.fromkeys(items)) or (
        ["Write the missing runbook for this incident"] if missing else []
    )
    out += ["", "## Action Items", ""]
    if not items:
        out.append("_to be filled in by the responders_")
    out += [
        f"{i}. [ ] {item} - Owner: _TBD_ - Due: {due:%Y-%m-%d}" for i, item in enumerate(items, 1)
    ]
    out += [
        "",
        "## Prevention",
        "",
        "How do we prevent this in the future? See the action items;"
        " schedule the post-mortem meeting within 24 hours (seed 000 Part C step 6).",
        "",
    ]
    return "\n".join(out)
