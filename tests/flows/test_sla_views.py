"""Every view of one incident gives the same severity and SLA verdict (checks/sla.py).

The post-mortem judges the incident it holds; ``oncall incidents`` judges the flow run that
Prefect stores (name, tags, ``oncall.*`` labels, start and end times that differ from the
incident's own); a drill scorecard judges a runbook report. No Prefect server is needed:
the run is built from the same functions the incident flow writes it with.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from checks.findings import Finding, Severity, Status
from checks.severity import suggested_severity
from checks.sla import DEFAULT_SLA, Sla
from flows.cli_incident import _summary
from flows.config import OncallConfig
from flows.drills.scorecard import score
from flows.incident_model import (
    Incident,
    IncidentStatus,
    incident_labels,
    incident_tags,
    sla_of_run,
)
from flows.postmortem import postmortem_markdown
from runbooks.engine.model import Outcome, RunbookReport

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else T0 + timedelta(seconds=seconds)


def _incident(severity: Severity, acked: float | None, resolved: float | None) -> Incident:
    return Incident(
        id="INC-7",
        title="checkout failing",
        service="api",
        severity=severity,
        fingerprint="fp",
        opened_at=T0,
        acked_at=_at(acked),
        acked_by="alice" if acked is not None else None,
        resolved_at=_at(resolved),
        status=IncidentStatus.RESOLVED if resolved is not None else IncidentStatus.INVESTIGATING,
    )


def _stored_run(inc: Incident, sla: Sla) -> dict:
    """The flow run as Prefect returns it: its own times are a little off the incident's."""
    return {
        "id": "8c1d5a52-0000-4000-8000-000000000007",
        "name": inc.run_name,
        "tags": incident_tags(inc),
        "labels": incident_labels(inc, sla),
        "state": {"type": "COMPLETED" if inc.resolved_at else "RUNNING"},
        "start_time": (T0 - timedelta(seconds=2)).isoformat(),
        "end_time": (inc.resolved_at + timedelta(seconds=40)).isoformat()
        if inc.resolved_at
        else None,
    }


ROW = r"^\| (acknowledge|mitigate|resolve) \|.*\| ([\w ]+?)(?: \(due .*\))? \|$"


def _postmortem_verdict(text: str) -> str:
    return re.search(r"^- Status: .*; SLA: (\w+)$", text, re.M).group(1)


CASES = {
    # acked at 6 min against 5: the post-mortem says breached; the list used to say met
    "late ack, resolved in time": (Severity.P1, 360, 1800, 9000, None, "breached"),
    "on time": (Severity.P1, 60, 1800, 9000, None, "met"),
    "open, acked, resolution pending": (Severity.P1, 60, None, 900, None, "pending"),
    "open, nobody acked": (Severity.P0, None, None, 121, None, "breached"),
    "resolved before anyone acked": (Severity.P2, None, 600, 9000, None, "met"),
    "oncall.yaml's own targets": (
        Severity.P1,
        120,
        600,
        9000,
        {"acknowledge": "1m", "resolve": "4h"},
        "breached",
    ),
    "P3 resolved within its week (seed 002)": (Severity.P3, 60, 6 * 86400, 10**6, None, "met"),
    "P3 resolved after a week": (Severity.P3, 60, 8 * 86400, 10**6, None, "breached"),
}


@pytest.mark.parametrize("case", CASES)
def test_post_mortem_and_incident_list_agree(case):
    severity, acked, resolved, now_s, override, expected = CASES[case]
    config = OncallConfig.model_validate({"sla": {str(severity): override}} if override else {})
    sla = config.sla_for(severity)
    inc = _incident(severity, acked, resolved)
    now = _at(now_s)
    run = _stored_run(inc, sla)
    text = postmortem_markdown(inc, sla, now=now)
    in_list = _summary(run, now=now)["sla"]
    assert (_postmortem_verdict(text), in_list) == (expected, expected)
    table = re.findall(ROW, text, re.M)
    from_run = [(r.measure, str(r.verdict or "no SLA")) for r in sla_of_run(run, now).rows]
    assert table == from_run


def test_the_list_still_judges_runs_from_before_the_labels():
    inc = _incident(Severity.P1, 60, 1800)
    run = _stored_run(inc, DEFAULT_SLA[Severity.P1]) | {"labels": {}}
    row = _summary(run, now=_at(9000))
    assert row["sla"] == "met" and row["sla_due"] is None


def test_the_list_names_the_next_deadline_of_an_open_incident():
    inc = _incident(Severity.P1, None, None)
    row = _summary(_stored_run(inc, DEFAULT_SLA[Severity.P1]), now=_at(100))
    assert row["sla"] == "pending" and row["sla_due"] == _at(300).isoformat()


def _report(findings: list[Finding]) -> RunbookReport:
    return RunbookReport(
        runbook="rollback",
        target="api",
        findings=findings,
        outcome=Outcome.FIXED,
        severity=suggested_severity(findings),
        timings={"first_finding": 0.5, "diagnosis": 0.6, "mitigation": 2.0, "verified": 5.0},
    )


def test_a_scorecard_takes_the_severity_its_findings_say():
    """The rollback drill's scorecard said P1 while its findings said P0."""
    crash = Finding(
        check="kubernetes_deploys",
        target="api",
        status=Status.CRITICAL,
        summary="suspect: revision 3 crash-loops",
        severity=Severity.P0,
    )
    report = _report([crash])
    card = score("rollback", Severity.P1, report, started_after_fault_s=1.0)
    assert card.severity == report.severity == Severity.P0
    assert card.sla_s == {"first_finding": 120, "diagnose": 300, "verify": 3600}
    assert card.verdicts == {"first_finding": "met", "diagnose": "met", "verify": "met"}
    assert card.passed and card.result == "fixed"


def test_a_scorecard_never_lowers_the_scenario_severity():
    report = _report(
        [Finding(check="c", target="t", status=Status.WARN, summary="s", severity=Severity.P3)]
    )
    assert score("x", Severity.P1, report, 0.0).severity == Severity.P1


def test_a_phase_the_drill_never_reached_fails_it():
    report = _report([]).model_copy(
        update={"timings": {"first_finding": 0.5, "diagnosis": 0.6}, "outcome": Outcome.FIXED}
    )
    card = score("x", Severity.P0, report, started_after_fault_s=400.0)
    assert card.verdicts == {
        "first_finding": "breached",
        "diagnose": "breached",
        "verify": "pending",
    }
    assert not card.passed
