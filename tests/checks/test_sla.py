"""The SLA table (seed 000 Part D reconciled with seed 002's KPIs) and the one verdict every
view uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from checks.findings import Finding, Severity, Status
from checks.severity import incident_severity, suggested_severity
from checks.sla import (
    DEFAULT_SLA,
    Sla,
    SlaVerdict,
    assess_incident,
    assess_updates,
    judge,
    overall,
    verdict,
)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
MET, BREACHED, PENDING = SlaVerdict.MET, SlaVerdict.BREACHED, SlaVerdict.PENDING


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_table_is_seed_000_part_d_with_seed_002_where_stricter_or_missing():
    minutes = {
        sev: {k: v / 60 if v is not None else None for k, v in sla.model_dump().items()}
        for sev, sla in DEFAULT_SLA.items()
    }
    assert minutes == {
        Severity.P0: {"acknowledge": 2, "investigate": 5, "status_update": 15, "resolve": 60},
        # First update 15 min for P0/P1: seed 002 (seed 000 says 30 for P1).
        Severity.P1: {"acknowledge": 5, "investigate": 10, "status_update": 15, "resolve": 240},
        Severity.P2: {"acknowledge": 30, "investigate": 60, "status_update": 60, "resolve": 1440},
        Severity.P3: {
            "acknowledge": 60,
            "investigate": None,
            "status_update": None,
            "resolve": 7 * 24 * 60,  # seed 002: a week; seed 000 sets none
        },
    }


def test_seed_002_kpi_targets_are_never_looser_in_the_table():
    """Seed 002's acknowledgement and resolution KPIs, in minutes: the table meets them all."""
    seed_002 = {
        Severity.P0: (5, 60),
        Severity.P1: (30, 4 * 60),
        Severity.P2: (2 * 60, 24 * 60),
        Severity.P3: (24 * 60, 7 * 24 * 60),
    }
    for severity, (ack, resolve) in seed_002.items():
        sla = DEFAULT_SLA[severity]
        assert sla.acknowledge is not None and sla.acknowledge <= ack * 60, severity
        assert sla.resolve is not None and sla.resolve <= resolve * 60, severity
    for severity in (Severity.P0, Severity.P1):  # "Initial update: <15 minutes for P0/P1"
        assert (DEFAULT_SLA[severity].status_update or 0) <= 15 * 60


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


def test_p3_is_resolved_within_a_week():
    p3 = DEFAULT_SLA[Severity.P3]
    open_p3 = assess_incident(p3, opened=T0, acked=_at(60), now=_at(6 * 86400))
    assert open_p3.row("resolve").verdict is PENDING and open_p3.next_due == _at(7 * 86400)
    late = assess_incident(p3, opened=T0, acked=_at(60), now=_at(8 * 86400))
    assert late.row("resolve").verdict is BREACHED
    assert DEFAULT_SLA[Severity.P3].investigate is None  # "within business day": no number


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


# --- updates: the first one and the cadence -----------------------------------------------


def test_the_first_update_is_judged_against_status_update():
    p1 = DEFAULT_SLA[Severity.P1]  # first update within 15 min
    on_time = assess_updates(p1, every_s=900, opened=T0, updates=[_at(60)], now=_at(100))
    assert on_time.first is MET and on_time.first_s == 60 and on_time.updates == 1
    late = assess_updates(p1, every_s=900, opened=T0, updates=[_at(901)], now=_at(1000))
    assert late.first is BREACHED and late.first_s == 901
    waiting = assess_updates(p1, every_s=900, opened=T0, updates=[], now=_at(899))
    assert waiting.first is PENDING and waiting.first_s is None and waiting.cadence is None
    silent = assess_updates(p1, every_s=900, opened=T0, updates=[], now=_at(901))
    assert silent.first is BREACHED


def test_a_resolution_stops_the_first_update_clock_but_is_no_update():
    p1 = DEFAULT_SLA[Severity.P1]
    quick = assess_updates(p1, every_s=900, opened=T0, updates=[], resolved=_at(120), now=_at(9e3))
    assert quick.first is MET and quick.updates == 0 and quick.first_s is None
    slow = assess_updates(p1, every_s=900, opened=T0, updates=[], resolved=_at(1000), now=_at(9e3))
    assert slow.first is BREACHED


def test_the_cadence_is_the_longest_silence_up_to_the_resolution():
    p1 = DEFAULT_SLA[Severity.P1]
    sent = [_at(10), _at(900), _at(2700), _at(9000)]  # the last one after the resolution
    judged = assess_updates(
        p1, every_s=900, opened=T0, updates=sent, resolved=_at(3000), now=_at(9e3)
    )
    assert judged.updates == 3 and judged.longest_gap_s == 1800  # 900 → 2700
    assert judged.cadence is MET  # every 15-30 minutes: 30 is still on cadence
    gap = assess_updates(
        p1, every_s=900, opened=T0, updates=sent[:2], resolved=_at(3000), now=_at(9e3)
    )
    assert gap.longest_gap_s == 2100 and gap.cadence is BREACHED  # silent from 900 to 3000


def test_an_open_incident_keeps_its_cadence_until_the_silence_is_too_long():
    p0 = DEFAULT_SLA[Severity.P0]
    ok = assess_updates(p0, every_s=300, opened=T0, updates=[_at(5), _at(300)], now=_at(800))
    assert ok.cadence is PENDING and ok.longest_gap_s == 500
    quiet = assess_updates(p0, every_s=300, opened=T0, updates=[_at(5), _at(300)], now=_at(901))
    assert quiet.cadence is BREACHED
    no_cadence = assess_updates(p0, every_s=None, opened=T0, updates=[_at(5)], now=_at(10**6))
    assert no_cadence.cadence is None and no_cadence.longest_gap_s == 10**6 - 5
