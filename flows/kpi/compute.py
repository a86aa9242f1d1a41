"""The KPIs of the seeds' improvement loop, computed from a :class:`Snapshot` (pure).

Definitions (the report prints them; tests recompute them from the same timestamps):

- **MTTA / MTTR** per severity: seconds from opening to the acknowledgement / resolution, as
  :func:`checks.sla.assess_incident` measures them (a resolution answers a page nobody
  acknowledged), each judged against the targets the incident was opened under (its
  ``oncall.sla.*`` labels): met, missed (breached) or pending. Median and p90 by linear
  interpolation between closest ranks.
- **First update and cadence**: an update is a notification that reached Slack or the status
  page; :func:`checks.sla.assess_updates` judges the first one against ``status_update`` and
  the longest silence after it against the configured interval
  (``notifications.update_every``).
- **Recurrence**: an incident recurs when an earlier one (within 30 days before it) had the
  same fingerprint, or the same service and a runbook in common. Seed 002: under 5 %.
- **Post-mortems** of resolved P0/P1 incidents: drafted (the artifact exists) and completed
  (no blank of the draft left). Seed 002: 100 %.
- **Approvals**: time from a gate opening to its decision; rejections, timeouts, plans
  cancelled by their incident; decisions that never waited (pre-approved, policy).
- **Remediations** per runbook: runs whose approved actions ran, by verdict (fixed,
  mitigated, not recovered); **drills**: the last one, its result, stale past the freshness.

Drill runs (tagged ``drill``) are left out of the response figures: they are game days.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from checks.findings import Severity
from checks.sla import Sla, assess_updates
from flows.kpi.facts import IncidentFacts, RunbookRun, Snapshot
from flows.kpi.figures import (
    RECURRENCE_WINDOW,
    ApprovalKpis,
    DrillStatus,
    PostmortemKpis,
    Recurrence,
    Repeat,
    Report,
    RunbookKpis,
    SeverityKpis,
    Stat,
)

__all__ = ["compute", "drill_status", "recurrence"]

POSTMORTEM_SEVERITIES = (Severity.P0, Severity.P1)


def _days(since: datetime, now: datetime) -> list[datetime]:
    first = since.replace(hour=0, minute=0, second=0, microsecond=0)
    count = (now.date() - first.date()).days + 1
    return [first + timedelta(days=i) for i in range(max(1, count))]


def _severity(
    severity: Severity,
    incidents: list[IncidentFacts],
    snap: Snapshot,
    sla: Sla,
    every_s: float | None,
) -> SeverityKpis:
    now = snap.now
    acks, resolves, firsts, gaps = [], [], [], []
    row = SeverityKpis(
        severity=severity,
        incidents=len(incidents),
        ack=Stat.of([]),
        resolve=Stat.of([]),
        first_update=Stat.of([]),
        cadence=Stat.of([]),
        ack_target_s=sla.acknowledge,
        resolve_target_s=sla.resolve,
        first_update_target_s=sla.status_update,
        cadence_every_s=every_s,
    )
    days = _days(snap.since, now)
    row.per_day = [0] * len(days)
    for inc in incidents:
        index = (inc.opened_at.date() - days[0].date()).days
        if 0 <= index < len(row.per_day):
            row.per_day[index] += 1
        row.open += inc.open
        row.resolved += inc.resolved_at is not None
        judged = inc.assess(now)
        ack, resolve = judged.row("acknowledge"), judged.row("resolve")
        if ack.took_s is not None:
            acks.append(ack.took_s)
        if inc.resolved_at is not None and resolve.took_s is not None:
            resolves.append(resolve.took_s)
        row.ack_sla.add(ack.verdict)
        row.resolve_sla.add(resolve.verdict)
        if inc.updates is None:
            row.updates_unknown += 1
            continue
        told = assess_updates(
            inc.sla,
            every_s=every_s,
            opened=inc.opened_at,
            updates=inc.updates,
            now=now,
            resolved=inc.resolved_at,
        )
        row.first_update_sla.add(told.first)
        row.silent += told.updates == 0
        if told.first_s is not None:
            firsts.append(told.first_s)
        if told.longest_gap_s is not None and told.cadence is not None:
            gaps.append(told.longest_gap_s)
            row.cadence_sla.add(told.cadence)
    row.ack, row.resolve = Stat.of(acks), Stat.of(resolves)
    row.first_update, row.cadence = Stat.of(firsts), Stat.of(gaps)
    return row


def _keys(inc: IncidentFacts) -> list[tuple[str, ...]]:
    """What makes another incident the same one: its fingerprint, or service and a runbook."""
    keys: list[tuple[str, ...]] = [("fp", inc.fingerprint)] if inc.fingerprint else []
    return keys + [("runbook", inc.service, runbook) for runbook in inc.runbooks]


def recurrence(subjects: list[IncidentFacts], history: list[IncidentFacts]) -> Recurrence:
    """Which of ``subjects`` repeat an incident of ``history`` from the 30 days before them:
    for each, the latest earlier one sharing a key (looked up by key, not pair by pair)."""
    index: dict[tuple[str, ...], list[IncidentFacts]] = {}
    for other in sorted(history, key=lambda i: i.opened_at):
        for key in _keys(other):
            index.setdefault(key, []).append(other)
    opened = {key: [i.opened_at for i in found] for key, found in index.items()}
    repeats = []
    for inc in subjects:
        latest: IncidentFacts | None = None
        for key in _keys(inc):
            at = bisect_left(opened[key], inc.opened_at) - 1  # the last one opened before it
            if at >= 0 and (latest is None or index[key][at].opened_at > latest.opened_at):
                latest = index[key][at]
        if latest is None or latest.opened_at < inc.opened_at - RECURRENCE_WINDOW:
            continue
        if inc.fingerprint and latest.fingerprint == inc.fingerprint:
            why = "same fingerprint"
        else:
            shared = sorted(set(inc.runbooks) & set(latest.runbooks))
            why = f"same service and runbook {', '.join(shared)}"
        days = (inc.opened_at - latest.opened_at).total_seconds() / 86400
        repeats.append(Repeat(incident=inc.id, earlier=latest.id, why=why, days_apart=days))
    rate = len(repeats) / len(subjects) if subjects else None
    return Recurrence(incidents=len(subjects), recurrent=len(repeats), rate=rate, repeats=repeats)


def _postmortems(subjects: list[IncidentFacts]) -> PostmortemKpis:
    due = [i for i in subjects if i.severity in POSTMORTEM_SEVERITIES and i.resolved_at is not None]
    out = PostmortemKpis(due=len(due))
    for inc in due:
        if inc.postmortem is None:
            out.missing.append(inc.id)
            continue
        out.drafted += 1
        out.open_items += len(inc.postmortem.open_items)
        if inc.postmortem.completed:
            out.completed += 1
        else:
            out.incomplete.append(inc.id)
    return out


def _approvals(snap: Snapshot, runs: set[str] | None) -> ApprovalKpis:
    gates = [
        g
        for g in snap.gates
        if g.waiting_since >= snap.since and (runs is None or g.run_id in runs)
    ]
    decided = [g for g in gates if g.decision is not None]
    immediate = Counter(
        str(g.channel)
        for g in snap.immediate
        if g.waiting_since >= snap.since and (runs is None or g.run_id in runs)
    )
    out = ApprovalKpis(
        gates=len(gates),
        decided=len(decided),
        waiting=len(gates) - len(decided),
        wait=Stat.of(g.waited_s(snap.now) for g in decided),
        immediate=dict(immediate),
    )
    decisions = Counter(g.decision for g in decided)
    out.approved, out.rejected = decisions["approved"], decisions["rejected"]
    out.timed_out, out.cancelled = decisions["timeout"], decisions["cancelled"]
    return out


def drill_status(runbook: str, snap: Snapshot, freshness_s: float) -> DrillStatus:
    """The last drill of a runbook against the freshness; no scenario: nothing to judge."""
    if runbook not in snap.drill_scenarios:
        return DrillStatus(scenario=None)
    last = snap.drills.get(runbook)
    if last is None:
        return DrillStatus(scenario=runbook, stale=True)
    age = (snap.now - last.at).total_seconds()
    return DrillStatus(
        scenario=runbook,
        last_at=last.at,
        result=last.result,
        age_s=age,
        stale=age > freshness_s,
        failing=last.result != "passed",
    )


# A runbook run's outcome → its column; "problem_remains" counts only after a remediation.
_BUCKETS = {
    "fixed": "fixed",
    "mitigated": "mitigated",
    "problem_remains": "not_recovered",
    "rejected": "rejected",
    "timed_out": "timed_out",
    "healthy": "healthy",
}


def _runbooks(snap: Snapshot, runs: list[RunbookRun], freshness_s: float) -> list[RunbookKpis]:
    names = list(dict.fromkeys([*snap.runbooks, *(r.runbook for r in runs)]))
    rows = {
        name: RunbookKpis(runbook=name, drill=drill_status(name, snap, freshness_s))
        for name in names
    }
    for run in runs:
        row = rows[run.runbook]
        row.runs += 1
        row.remediations += run.remediated
        bucket = _BUCKETS.get(run.outcome or "")
        # "not recovered" is a remediation that did not work: a run that acted.
        if bucket is not None and (bucket != "not_recovered" or run.remediated):
            setattr(row, bucket, getattr(row, bucket) + 1)
    return list(rows.values())


def compute(
    snap: Snapshot,
    *,
    sla_for: Callable[[Severity], Sla],
    update_every: Callable[[Severity], float | None],
    freshness_s: float,
    service: str | None = None,
) -> Report:
    """Every figure of the report; ``sla_for``/``update_every`` give today's targets."""
    real = [i for i in snap.incidents if not i.drill]
    subjects = [
        i for i in real if i.opened_at >= snap.since and (service is None or i.service == service)
    ]
    runs = [
        r
        for r in snap.runbook_runs
        if not r.drill and r.started_at >= snap.since and (service is None or r.service == service)
    ]
    severities = [
        _severity(
            sev,
            [i for i in subjects if i.severity is sev],
            snap,
            sla_for(sev),
            update_every(sev),
        )
        for sev in Severity
    ]
    notes = []
    if snap.coverage.events_since > snap.since:
        notes.append(
            f"Updates, notification failures and approval waits come from events, which this"
            f" server keeps since {snap.coverage.events_since:%Y-%m-%d %H:%M} UTC: older"
            " incidents and gates are counted without them."
        )
    if snap.coverage.run_retention_s is not None:
        kept = snap.coverage.run_retention_s / 86400
        if kept < (snap.now - snap.since + RECURRENCE_WINDOW).total_seconds() / 86400:
            notes.append(
                f"This server deletes runs {kept:g} days after they end (with their artifacts):"
                " older incidents, drills and post-mortems are no longer there to count."
            )
    return Report(
        generated_at=snap.now,
        since=snap.since,
        service=service,
        coverage=snap.coverage,
        freshness_s=freshness_s,
        severities=severities,
        recurrence=recurrence(subjects, real),
        postmortems=_postmortems(subjects),
        approvals=_approvals(snap, None if service is None else {r.run_id for r in runs}),
        runbooks=_runbooks(snap, runs, freshness_s),
        notes=notes,
    )
