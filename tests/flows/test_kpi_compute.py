"""The KPI arithmetic on hand-made facts, and Prefect's JSON read into facts (no server)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.findings import Severity
from checks.sla import DEFAULT_SLA, Sla
from flows.config import OncallConfig
from flows.kpi.build import figures
from flows.kpi.compute import recurrence
from flows.kpi.facts import (
    Coverage,
    DrillRecord,
    IncidentFacts,
    Postmortem,
    RunbookRun,
    Snapshot,
)
from flows.kpi.figures import percentile
from flows.kpi.parse import (
    coverage_from,
    drills_from,
    gates_from,
    incident_from_run,
    notifications_from,
    postmortem_from,
)
from flows.kpi.render import duration, period, report_markdown, table

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=7)
P1 = DEFAULT_SLA[Severity.P1]  # ack 5 min, first update 15 min, resolve 4 h


def _at(seconds: float, base: datetime = SINCE) -> datetime:
    return base + timedelta(seconds=seconds)


def _inc(n: int, opened: datetime, **kw) -> IncidentFacts:
    values = dict(
        id=f"INC-{n}",
        run_id=f"run-{n}",
        severity=Severity.P1,
        service="api",
        status="resolved",
        open=False,
        opened_at=opened,
        sla=P1,
        updates=[],
    )
    return IncidentFacts(**{**values, **kw})


def _snap(incidents, **kw) -> Snapshot:
    values = dict(
        now=NOW,
        since=SINCE,
        coverage=Coverage(events_since=SINCE - timedelta(days=1)),
        incidents=incidents,
        runbooks=["db-connections", "rollback", "database-down"],
        drill_scenarios=["db-connections", "rollback"],
    )
    return Snapshot(**{**values, **kw})


def _report(snap: Snapshot, service: str | None = None):
    return figures(snap, OncallConfig(), service)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=60))
def test_percentiles_are_linear_between_closest_ranks(values):
    assert percentile(values, 50) == pytest.approx(statistics.median(values))
    expected = statistics.quantiles(values, n=10, method="inclusive")[8]
    assert percentile(values, 90) == pytest.approx(expected)


def test_one_value_is_its_own_median_and_p90_and_none_is_none():
    assert percentile([7.0], 90) == 7.0 and percentile([], 50) is None


def test_response_times_and_verdicts_per_severity():
    acks = [60, 200, 400]  # the last misses its 5 minutes
    incidents = [
        _inc(i, _at(3600 * i), acked_at=_at(3600 * i + a), resolved_at=_at(3600 * i + 1800))
        for i, a in enumerate(acks)
    ]
    # Never acknowledged, resolved after 10 min: the resolution answered the page (late).
    incidents.append(_inc(9, _at(40_000), resolved_at=_at(40_600)))
    # Still open, acknowledged on time, resolution pending.
    incidents.append(
        _inc(10, NOW - timedelta(minutes=30), acked_at=NOW - timedelta(minutes=29), open=True)
    )
    p1 = _report(_snap(incidents)).severities[1]
    assert (p1.severity, p1.incidents, p1.open, p1.resolved) == (Severity.P1, 5, 1, 4)
    took = [60, 200, 400, 600, 60]
    assert p1.ack.n == 5 and p1.ack.median == statistics.median(took)
    assert p1.ack.p90 == pytest.approx(statistics.quantiles(took, n=10, method="inclusive")[8])
    assert (p1.ack_sla.met, p1.ack_sla.missed, p1.ack_sla.pending) == (3, 2, 0)
    assert p1.resolve.n == 4 and p1.resolve.median == 1800
    assert (p1.resolve_sla.met, p1.resolve_sla.missed, p1.resolve_sla.pending) == (4, 0, 1)
    assert p1.ack_target_s == 300 and p1.resolve_target_s == 14_400
    assert sum(p1.per_day) == 5 and len(p1.per_day) == 8


def test_first_update_and_cadence_and_incidents_too_old_for_events():
    sent = [_at(60), _at(900), _at(3000)]  # 900 → 3000 is a 35-minute silence
    told = _inc(1, _at(0), acked_at=_at(30), resolved_at=_at(3600), updates=sent)
    silent = _inc(2, _at(7200), acked_at=_at(7230), resolved_at=_at(7300), updates=[])
    unknown = _inc(3, _at(9000), resolved_at=_at(9100), updates=None)
    p1 = _report(_snap([told, silent, unknown])).severities[1]
    assert p1.first_update.n == 1 and p1.first_update.median == 60
    # The silent one was resolved within its 15 minutes: met, and counted as silent.
    assert (p1.first_update_sla.met, p1.first_update_sla.missed) == (2, 0)
    assert p1.silent == 1 and p1.updates_unknown == 1
    assert p1.cadence.n == 1 and p1.cadence.median == 2100  # 900 → 3000
    assert (p1.cadence_sla.met, p1.cadence_sla.missed) == (0, 1)  # limit 2 × 15 min
    assert p1.cadence_every_s == 900 and p1.first_update_target_s == 900


def test_recurrence_by_fingerprint_or_service_and_runbook_within_30_days():
    base = NOW - timedelta(days=40)
    old = _inc(1, base, fingerprint="fp:a")
    same_fp = _inc(2, base + timedelta(days=29), fingerprint="fp:a")  # 29 days after INC-1
    far = _inc(3, base + timedelta(days=35, hours=1), fingerprint="fp:b", runbooks=["rollback"])
    by_runbook = _inc(4, base + timedelta(days=36), fingerprint="fp:c", runbooks=["rollback"])
    other_service = _inc(5, base + TD(37), fingerprint="fp:d", service="web", runbooks=["rollback"])
    late_fp = _inc(6, base + timedelta(days=38), fingerprint="fp:e")
    again_late = _inc(7, base + timedelta(days=38 + 31), fingerprint="fp:e")
    everything = [old, same_fp, far, by_runbook, other_service, late_fp, again_late]
    found = recurrence(everything, everything)
    assert {(r.incident, r.earlier) for r in found.repeats} == {
        ("INC-2", "INC-1"),
        ("INC-4", "INC-3"),
    }
    why = {r.incident: r.why for r in found.repeats}
    assert why == {"INC-2": "same fingerprint", "INC-4": "same service and runbook rollback"}
    assert found.rate == pytest.approx(2 / 7)


def TD(days: float) -> timedelta:  # noqa: N802 - reads like a unit
    return timedelta(days=days)


def test_drills_runs_and_other_services_stay_out_of_the_response_figures():
    mine = _inc(1, _at(0), resolved_at=_at(60))
    drill = _inc(2, _at(10), resolved_at=_at(20), drill=True)
    theirs = _inc(3, _at(20), resolved_at=_at(30), service="web", fingerprint="fp:x")
    report = _report(_snap([mine, drill, theirs]), service="api")
    assert report.severities[1].incidents == 1 and report.recurrence.incidents == 1
    assert _report(_snap([mine, drill, theirs])).severities[1].incidents == 2


def test_postmortem_completion_for_resolved_p0_and_p1():
    done = Postmortem(blanks=0, open_items=[], closed_items=3)
    draft = Postmortem(blanks=4, open_items=["Add PgBouncer"], closed_items=0)
    incidents = [
        _inc(1, _at(0), resolved_at=_at(60), postmortem=done),
        _inc(2, _at(100), resolved_at=_at(160), postmortem=draft, severity=Severity.P0),
        _inc(3, _at(200), resolved_at=_at(260)),
        _inc(4, _at(300), open=True),  # not resolved: not due yet
        _inc(5, _at(400), resolved_at=_at(460), severity=Severity.P2),  # P2: not counted
    ]
    pm = _report(_snap(incidents)).postmortems
    assert (pm.due, pm.drafted, pm.completed, pm.open_items) == (3, 2, 1, 1)
    assert pm.missing == ["INC-3"] and pm.incomplete == ["INC-2"]


def _event(name: str, at: datetime, run: str, **payload) -> dict:
    return {
        "event": name,
        "occurred": at.isoformat(),
        "related": [
            {"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.role": "flow-run"}
        ],
        "resource": {"prefect.resource.id": "oncall.incident.INC-1"},
        "payload": payload,
    }


def _gate(at: datetime, plan: str, run: str = "r1") -> dict:
    return _event(
        "oncall.gate.waiting",
        at,
        run,
        plan_id=plan,
        runbook="db-connections",
        waiting_since=at.isoformat(),
    )


def _decision(at: datetime, plan: str, approved: bool, channel: str, approver: str = "ann") -> dict:
    name = "oncall.approval." + ("approved" if approved else "rejected")
    return _event(
        name,
        at,
        "r1",
        plan_id=plan,
        approved=approved,
        channel=channel,
        approver=approver,
        decided_at=at.isoformat(),
    )


def test_gates_pair_with_their_decisions_round_by_round():
    events = [
        _decision(_at(0), "p0", True, "cli-preapproved"),  # pre-approved: never waited
        _gate(_at(1), "p0"),  # its second approver is awaited
        _decision(_at(61), "p0", True, "cli", approver="bob"),
        _gate(_at(100), "p1"),
        _decision(_at(400), "p1", False, "timeout", approver="nobody"),
        _gate(_at(500), "p2"),
        _decision(_at(530), "p2", False, "incident", approver="oncall"),
        _gate(_at(600), "p3"),
        _decision(_at(610), "p3", False, "ui"),
        _gate(_at(700), "p4"),  # still waiting
        _decision(_at(800), "gone", False, "cli"),  # its gate is older than the events kept
        _decision(_at(900), "p5", True, "policy", approver="policy"),
    ]
    gates, immediate = gates_from(reversed(events))  # the order they arrive in does not matter
    assert [(g.plan_id, g.decision, g.waited_s(_at(1000))) for g in gates] == [
        ("p0", "approved", 60),
        ("p1", "timeout", 300),
        ("p2", "cancelled", 30),
        ("p3", "rejected", 10),
        ("p4", None, 300),
    ]
    assert [(g.channel, g.decision) for g in immediate] == [
        ("cli-preapproved", "approved"),
        ("policy", "approved"),
    ]
    ap = _report(_snap([], gates=gates, immediate=immediate, now=_at(1000))).approvals
    assert (ap.gates, ap.decided, ap.waiting) == (5, 4, 1)
    assert (ap.approved, ap.rejected, ap.timed_out, ap.cancelled) == (1, 1, 1, 1)
    assert ap.wait.median == statistics.median([60, 300, 30, 10])
    assert ap.immediate == {"cli-preapproved": 1, "policy": 1}


def test_remediations_by_verdict_and_drill_freshness():
    def run(n: int, outcome: str | None, remediated: bool, **kw) -> RunbookRun:
        return RunbookRun(
            run_id=f"rb-{n}",
            runbook="db-connections",
            started_at=_at(n),
            outcome=outcome,
            remediated=remediated,
            **kw,
        )

    runs = [
        run(1, "fixed", True),
        run(2, "mitigated", True),
        run(3, "problem_remains", True),
        run(4, "problem_remains", False),  # found nothing to do about it: no remediation
        run(5, "rejected", False),
        run(6, "timed_out", False),
        run(7, "healthy", False),
        run(8, "fixed", True, drill=True),  # a drill: counted in its own section
    ]
    drills = {
        "db-connections": DrillRecord(scenario="db-connections", at=NOW - TD(40), result="passed"),
    }
    report = _report(_snap([], runbook_runs=runs, drills=drills))
    db = next(r for r in report.runbooks if r.runbook == "db-connections")
    assert (db.runs, db.remediations, db.fixed, db.mitigated, db.not_recovered) == (7, 3, 1, 1, 1)
    assert (db.rejected, db.timed_out, db.healthy) == (1, 1, 1)
    assert db.drill.stale and not db.drill.failing and db.drill.age_s == 40 * 86400
    rollback = next(r for r in report.runbooks if r.runbook == "rollback")
    assert rollback.drill.stale and rollback.drill.last_at is None  # never drilled
    assert next(r for r in report.runbooks if r.runbook == "database-down").drill.scenario is None
    fresh = {"rollback": DrillRecord(scenario="rollback", at=NOW - TD(3), result="failed")}
    rb = next(r for r in _report(_snap([], drills=fresh)).runbooks if r.runbook == "rollback")
    assert rb.drill.failing and not rb.drill.stale


# --- Prefect's JSON into facts ---------------------------------------------------------------


def _run(**kw) -> dict:
    run = {
        "id": "6cf311cc",
        "name": "INC-7 P1 checkout slow",
        "tags": [
            "oncall",
            "incident",
            "INC-7",
            "severity:P1",
            "service:api",
            "status:resolved",
            "fp:abc",
            "acked",
        ],
        "labels": {
            "oncall.opened_at": "2026-12-01T10:00:00+00:00",
            "oncall.acked_at": "2026-12-01T10:02:00+00:00",
            "oncall.mitigated_at": "",
            "oncall.resolved_at": "2026-12-01T11:00:00+00:00",
            "oncall.sla.acknowledge_s": "60",
            "oncall.sla.investigate_s": "none",
            "oncall.sla.status_update_s": "900",
            "oncall.sla.resolve_s": "14400",
        },
        "state": {"type": "COMPLETED"},
        "start_time": "2026-12-01T09:59:59Z",
        "end_time": "2026-12-01T11:00:02Z",
        "parameters": {"alert": {"source": "alertmanager", "received_at": "2026-12-01T09:59:58Z"}},
    }
    return run | kw


def test_an_incident_run_reads_back_from_its_labels_and_tags():
    inc = incident_from_run(_run())
    assert (inc.id, inc.severity, inc.service, inc.status, inc.fingerprint) == (
        "INC-7",
        "P1",
        "api",
        "resolved",
        "abc",
    )
    assert inc.acked_at == datetime(2026, 12, 1, 10, 2, tzinfo=UTC) and inc.mitigated_at is None
    assert inc.sla == Sla(acknowledge=60, status_update=900, resolve=14_400)  # its own targets
    assert (inc.source, inc.open, inc.drill) == ("alertmanager", False, False)
    assert incident_from_run(_run(tags=["oncall", "incident"])) is None  # not numbered yet


def test_a_run_from_before_the_labels_falls_back_to_its_times_and_the_table():
    inc = incident_from_run(_run(labels={}))
    assert inc.opened_at == datetime(2026, 12, 1, 9, 59, 59, tzinfo=UTC)
    assert inc.resolved_at == datetime(2026, 12, 1, 11, 0, 2, tzinfo=UTC)
    assert inc.sla.acknowledge is None  # acked, but when was not kept
    assert inc.sla.resolve == DEFAULT_SLA[Severity.P1].resolve


def test_notifications_split_into_updates_and_failures():
    events = [
        _event("oncall.incident.notify", _at(1), "r1", channel="slack", ok=True, text="posted"),
        _event("oncall.incident.notify", _at(2), "r1", channel="pagerduty", ok=True, text="paged"),
        _event("oncall.incident.notify", _at(3), "r1", channel="statuspage", ok=True, text="page"),
        _event(
            "oncall.incident.notify", _at(4), "r1", channel="slack", ok=False, text="slack failed"
        ),
    ]
    updates, failures = notifications_from(events)["r1"]
    assert updates == [_at(1), _at(3)]  # PagerDuty pages people; it is no update
    assert [(f.channel, f.text, f.incident) for f in failures] == [
        ("slack", "slack failed", "INC-1")
    ]


def test_postmortem_blanks_and_action_items():
    text = (
        "- Users affected: _to be filled in_\n## Action Items\n\n"
        "1. [ ] Add PgBouncer - Owner: _TBD_ - Due: 2026-12-08\n"
        "2. [x] Alert on pool use - Owner: ann - Due: 2026-12-08\n"
    )
    pm = postmortem_from({"data": text, "updated": "2026-12-02T00:00:00Z"})
    assert pm.blanks == 2 and not pm.completed and pm.closed_items == 1
    assert pm.open_items == ["Add PgBouncer - Owner: _TBD_ - Due: 2026-12-08"]


def test_drills_and_coverage_from_artifacts_and_settings():
    artifacts = [
        {
            "key": "drill-app-down",
            "description": "drill app-down: failed",
            "updated": "2026-11-30T03:00:00Z",
        },
        {"key": "drill-game-day", "description": "Game day", "updated": "2026-11-30T03:00:00Z"},
    ]
    assert drills_from(artifacts) == {
        "app-down": DrillRecord(
            scenario="app-down", at=datetime(2026, 11, 30, 3, tzinfo=UTC), result="failed"
        )
    }
    settings = {
        "server": {
            "events": {"retention_period": "P7D"},
            "services": {
                "db_vacuum": {"enabled": ["events", "flow_runs"], "retention_period": "P30D"}
            },
        }
    }
    cov = coverage_from(settings, NOW)
    assert cov.events_since == NOW - TD(7) and cov.run_retention_s == 30 * 86400
    assert coverage_from(None, NOW).run_retention_s is None  # unreadable: Prefect's defaults


def test_the_markdown_has_every_section_and_readable_durations():
    incidents = [_inc(1, _at(0), acked_at=_at(90), resolved_at=_at(4000), updates=[_at(5)])]
    text = report_markdown(_report(_snap(incidents, coverage=Coverage(events_since=NOW - TD(1)))))
    for heading in (
        "Response times",
        "Keeping people informed",
        "Recurrence",
        "Post-mortems",
        "Approvals",
        "Runbooks",
        "What these figures cannot see",
    ):
        assert f"## {heading}" in text, heading
    assert "| P1  | 1         | 0    | 1m 30s / 1m 30s |" in text
    assert [duration(s) for s in (None, 42, 250, 7500, 90_000)] == [
        "—",
        "42s",
        "4m 10s",
        "2h 05m",
        "1d 01h",
    ]
    periods = [period(s) for s in (30 * 86400, 86400, 7200, 60, 5)]
    assert periods == ["30 days", "1 day", "2 hours", "1 minute", "5 seconds"]


def test_hostile_labels_events_and_titles_neither_crash_the_report_nor_break_its_tables():
    """Anyone who reaches the Prefect API can write labels, events and run names."""
    labels = {
        "oncall.opened_at": "yesterday",
        "oncall.acked_at": "2026-12-01T10:02:00",  # no zone: read as UTC
        "oncall.sla.acknowledge_s": "soon",
        "oncall.sla.resolve_s": "-5",
        "oncall.sla.status_update_s": "nan",
    }
    inc = incident_from_run(_run(labels=labels, name="INC-7 P1 a | b\n# heading"))
    assert inc.opened_at == datetime(2026, 12, 1, 9, 59, 59, tzinfo=UTC)  # the run's start
    assert inc.acked_at == datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
    assert inc.sla.acknowledge == DEFAULT_SLA[Severity.P1].acknowledge
    assert inc.sla.resolve == DEFAULT_SLA[Severity.P1].resolve
    assert inc.sla.status_update == DEFAULT_SLA[Severity.P1].status_update
    events = [
        _event("oncall.incident.notify", _at(1), "r1", channel=None, ok="yes"),
        _event("oncall.gate.waiting", _at(2), "r1", plan_id="p", waiting_since="never"),
        _event("oncall.approval.approved", _at(3), "r1", plan_id=None, decided_at=42),
        {"event": "oncall.incident.notify", "occurred": "not a time", "payload": {}},
    ]
    notifications_from(events)
    gates, immediate = gates_from(events)
    assert gates == [] and immediate == []
    lines = table(["title"], [["a | b\n# heading"]])
    assert len(lines) == 3 and all(line.count("|") == 2 for line in lines)


def test_the_handoff_asks_the_receiver_itself_whether_it_answers():
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flows.config import ReceiverConfig
    from flows.kpi.handoff import receiver_health

    class Healthz(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok", "prefect_reachable": True, "pending": 2}).encode()
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_port
        said = receiver_health(OncallConfig(receiver=ReceiverConfig(host="0.0.0.0", port=port)))
        assert (
            said
            == f"answering at http://127.0.0.1:{port}/healthz (prefect_reachable True, pending 2)"
        )
    finally:
        server.shutdown()
        server.server_close()
    gone = receiver_health(OncallConfig(receiver=ReceiverConfig(port=port)))
    assert gone.startswith(f"not answering at http://127.0.0.1:{port}/healthz")
