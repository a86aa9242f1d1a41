"""The SLA table (seed 000 Part D) and the one verdict function every view uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from checks.findings import Finding, Severity, Status
from checks.severity import incident_severity, suggested_severity
from checks.sla import DEFAULT_SLA, Sla, SlaVerdict, assess_incident, judge, overall, verdict

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
MET, BREACHED, PENDING = SlaVerdict.MET, SlaVerdict.BREACHED, SlaVerdict.PENDING


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_table_is_seed_000_part_d():
    minutes = {
        sev: {k: v / 60 if v is not None else None for k, v in sla.model_dump().items()}
        for sev, sla in DEFAULT_SLA.items()
    }
    assert minutes == {
        Severity.P0: {"acknowledge": 2, "investigate": 5, "status_update": 15, "resolve": 60},
        Severity.P1: {"acknowledge": 5, "investigate": 10, "status_update": 30, "resolve": 240},
        Severity.P2: {"acknowledge": 30, "investigate": 60, "status_update": 60, "resolve": 1440},
        Severity.P3: {
            "acknowledge": 60,
            "investigate": None,
            "status_update": None,
            "resolve": None,
        },
    }


@pytest.mark.parametrize(
    ("target", "took", "waited", "expected"),
    [
        (300, 300, 900, MET),  # done exactly at the target is within it
        (300, 301, 900, BREACHED),
        (300, None, 299, PENDING),
        (300, None, 300, PENDING),
        (300, None, 301, BREACHED),
        (None, 10_000, 10_000, None),  # no SLA for this measure
        (None, None, 10_000, None),
    ],
)
def test_judge_at_and_around_the_target(target, took, waited, expected):
    assert judge(target, took, waited) is expected


def test_verdict_from_timestamps():
    assert verdict(120, start=T0, done=_at(90), now=_at(4000)) is MET
    assert verdict(120, start=T0, done=None, now=_at(100)) is PENDING
    assert verdict(120, start=T0, done=None, now=_at(121)) is BREACHED


def test_overall_is_the_worst_measure():
    assert overall([MET, PENDING, None]) is PENDING
    assert overall([MET, BREACHED, PENDING]) is BREACHED
    assert overall([None, MET]) is MET and overall([]) is MET


P1 = DEFAULT_SLA[Severity.P1]  # acknowledge 5 min, resolve 4 h


def test_a_late_acknowledgement_breaches_even_when_resolved_on_time():
    judged = assess_incident(P1, opened=T0, acked=_at(400), resolved=_at(1800), now=_at(9000))
    assert judged.row("acknowledge").verdict is BREACHED
    assert judged.row("resolve").verdict is MET
    assert judged.verdict is BREACHED


def test_a_resolution_answers_an_unacknowledged_page():
    quick = assess_incident(P1, opened=T0, resolved=_at(200), now=_at(9000))
    assert quick.verdict is MET and quick.row("acknowledge").took_s == 200
    slow = assess_incident(P1, opened=T0, resolved=_at(600), now=_at(9000))
    assert slow.row("acknowledge").verdict is BREACHED and slow.verdict is BREACHED


def test_a_resolved_incident_is_never_pending():
    judged = assess_incident(P1, opened=T0, acked=_at(60), resolved=_at(120), now=_at(121))
    assert [r.verdict for r in judged.rows] == [MET, MET, MET] and judged.next_due is None
    assert judged.row("mitigate").took_s == 120


def test_an_open_incident_is_pending_until_its_next_deadline():
    judged = assess_incident(P1, opened=T0, now=_at(200))
    assert judged.verdict is PENDING and judged.next_due == _at(300)
    acked = assess_incident(P1, opened=T0, acked=_at(100), now=_at(200))
    assert acked.verdict is PENDING and acked.next_due == _at(14_400)
    late = assess_incident(P1, opened=T0, now=_at(301))
    assert late.verdict is BREACHED and late.row("acknowledge").due is None


def test_p3_has_no_resolution_sla():
    judged = assess_incident(DEFAULT_SLA[Severity.P3], opened=T0, acked=_at(60), now=_at(10**7))
    assert judged.row("resolve").verdict is None and judged.verdict is MET


def test_an_sla_refuses_unknown_measures():
    with pytest.raises(ValueError, match="acknowlege"):
        Sla.model_validate({"acknowlege": 60})


def _finding(status: Status, severity: Severity | None) -> Finding:
    return Finding(check="c", target="t", status=status, summary="s", severity=severity)


def test_findings_raise_a_declared_severity_and_never_lower_it():
    findings = [
        _finding(Status.WARN, Severity.P2),
        _finding(Status.CRITICAL, Severity.P0),
        _finding(Status.OK, None),
    ]
    assert suggested_severity(findings) is Severity.P0
    assert incident_severity(Severity.P1, findings) is Severity.P0
    assert incident_severity(Severity.P0, [_finding(Status.WARN, Severity.P3)]) is Severity.P0
    assert suggested_severity([]) is None


def test_only_problem_findings_suggest_a_severity():
    quiet = [_finding(Status.OK, Severity.P0), _finding(Status.ERROR, Severity.P0)]
    assert suggested_severity(quiet) is None
