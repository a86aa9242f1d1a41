"""Severity: every spelling in the seeds, and every default rule at and around its threshold."""

from __future__ import annotations

import pytest

from checks.findings import Severity as FindingsSeverity
from checks.severity import (
    DEFAULT_RULES,
    Classification,
    SeverityRule,
    classify,
    severity_for_metric,
)
from integrations.alerts import Alert, Severity, parse_alerts

P0, P1, P2, P3 = Severity.P0, Severity.P1, Severity.P2, Severity.P3

SPELLINGS = [
    # seed 000 / 002: P0-P3, and their headings
    ("P0", P0),
    ("P1", P1),
    ("P2", P2),
    ("P3", P3),
    ("p2", P2),
    ("P0 (Critical) - Complete Outage / Data Loss", P0),
    ("P1 (High) - Major Feature Broken / Security Risk", P1),
    ("P0 - Critical", P0),
    ("P3 - Low (Minimal Impact)", P3),
    # seed 001: Sev 1-4
    ("Sev 1", P0),
    ("Sev 2", P1),
    ("Sev 3", P2),
    ("Sev 4", P3),
    ("SEV 1", P0),
    ("Sev 1 - Critical", P0),
    ("Sev 4 - Low", P3),
    # seed 003: SEV1-4
    ("SEV1", P0),
    ("SEV2", P1),
    ("SEV3", P2),
    ("SEV4", P3),
    ("SEV2 - High", P1),
    # seed 004: SEV-1..SEV-4, and its templates
    ("SEV-1", P0),
    ("SEV-2", P1),
    ("SEV-3", P2),
    ("SEV-4", P3),
    ("SEV-1: Critical", P0),
    ("[SEV-1]", P0),
    ("[SEV-2] Incident: login not working", P1),
    ("severity 2", P1),
    # words
    ("critical", P0),
    ("Critical", P0),
    ("high", P1),
    ("medium", P2),
    ("low", P3),
    # Alertmanager severity labels
    ("page", P0),
    ("error", P1),
    ("warning", P2),
    ("info", P3),
    # not severities
    ("SEV-X", None),
    ("P1 - Low", None),  # contradicts itself
    ("P4", None),
    ("SEV5", None),
    ("sev1x", None),
    ("none", None),
    ("", None),
    (None, None),
    (1, None),  # Sev 1 or P1? ambiguous
]


@pytest.mark.parametrize(("text", "expected"), SPELLINGS, ids=[repr(t) for t, _ in SPELLINGS])
def test_every_seed_spelling(text, expected) -> None:
    assert Severity.parse(text) is expected


def test_findings_reexports_the_same_severity() -> None:
    assert FindingsSeverity is Severity
    assert [s.label for s in Severity] == ["Critical", "High", "Medium", "Low"]
    assert P2.raise_to(P0) is P0 and P0.raise_to(None) is P0 and P1.more_severe_than(P2)


# Every default rule at, just below and just above its threshold.
THRESHOLDS = [
    ("error_rate", 0.1001, P0),
    ("error_rate", 0.12, P0),
    ("error_rate", 0.10, P1),  # Part H: "> 10%" is P0, 10 % itself is in "5-10%"
    ("error_rate", 0.0999, P1),
    ("error_rate", 0.0501, P1),
    ("error_rate", 0.05, P1),
    ("error_rate", 0.0499, P2),
    ("error_rate", 0.01, P2),
    ("error_rate", 0.0099, None),
    ("db_reachable", 0, P0),
    ("db_reachable", 1, None),
    ("video_failure_rate", 0.2001, P1),
    ("video_failure_rate", 0.20, None),
    ("video_failure_rate", 0.1999, None),
    ("db_cpu_pct", 90.01, P1),
    ("db_cpu_pct", 90, P2),
    ("db_cpu_pct", 89.99, P2),
    ("db_cpu_pct", 70, P2),
    ("db_cpu_pct", 69.99, None),
    ("p95_seconds", 6, P1),
    ("p95_seconds", 5.01, P1),
    ("p95_seconds", 5, P2),
    ("p95_seconds", 2.01, P2),
    ("p95_seconds", 2, None),
    ("p95_seconds", 1.99, None),
    ("queue_depth", 10_001, P2),
    ("queue_depth", 10_000, None),
    ("memory_pct", 80.01, P2),
    ("memory_pct", 80, None),
    ("memory_pct", 79.99, None),
    ("cpu_seconds", 1e9, None),  # no rule for it
    ("error_rate", float("nan"), None),
]


@pytest.mark.parametrize(("metric", "value", "expected"), THRESHOLDS)
def test_each_default_rule_at_its_threshold(metric, value, expected) -> None:
    severity, reason = severity_for_metric(metric, value)
    assert severity is expected
    assert (reason is None) == (expected is None)
    result = classify(metrics={metric: value})
    if expected is None:
        assert result == Classification(
            severity=P2, reasons=["no rule matched; default P2"], matched=[]
        )
    else:
        assert result.severity is expected and result.reasons == [reason]
        assert result.matched[0].startswith(f"{metric}={value:g} ")


def test_rule_reasons_cite_the_seeds() -> None:
    assert severity_for_metric("error_rate", 0.12) == (
        P0,
        "error rate above 10 % (seed 000 Part H: P0)",
    )
    assert severity_for_metric("p95_seconds", 6)[1] == (
        "p95 response time above 5 s (seed 000 Incident 6 and Part H: P1)"
    )
    assert "seed 004" in severity_for_metric("queue_depth", 20_000)[1]
    assert all("seed 00" in rule.reason for rule in DEFAULT_RULES)
    covered = {rule.metric for rule in DEFAULT_RULES}
    assert covered == {
        "error_rate",
        "db_reachable",
        "video_failure_rate",
        "db_cpu_pct",
        "p95_seconds",
        "queue_depth",
        "memory_pct",
    }


def test_most_severe_wins_and_every_reason_is_recorded() -> None:
    result = classify(metrics={"p95_seconds": 6.0, "db_cpu_pct": 75, "db_reachable": 0})
    assert result.severity is P0
    # One reason per metric (its most severe rule), most severe first.
    assert result.reasons == [
        "database unreachable (seed 000 Part H: P0)",
        "p95 response time above 5 s (seed 000 Incident 6 and Part H: P1)",
        "database CPU 70 % or more (seed 000 Part H: P2, 70-90 %)",
    ]
    assert result.matched == [
        "db_reachable=0 == 0 → P0",
        "p95_seconds=6 > 5 → P1",
        "db_cpu_pct=75 >= 70 → P2",
        "p95_seconds=6 > 2 → P2",
    ]


def alert(**fields) -> Alert:
    return Alert(**{"source": "alertmanager", "service": "api", "title": "t", **fields})


@pytest.mark.parametrize(
    ("label", "expected", "reason"),
    [
        ("critical", P0, "alert says critical (label severity=critical)"),
        ("page", P0, "alert says critical (label severity=page)"),
        ("warning", P2, "alert says medium (label severity=warning)"),
        ("info", P3, "alert says low (label severity=info)"),
        ("SEV-2", P1, "alert says high (label severity=SEV-2)"),
    ],
)
def test_the_alerts_own_severity_is_a_reason(label, expected, reason) -> None:
    result = classify(alert(severity=Severity.parse(label), labels={"severity": label}))
    assert (result.severity, result.reasons) == (expected, [reason])
    assert result.matched == [f"alert label severity={label} → {expected}"]


def test_rules_raise_an_alert_that_understates_itself() -> None:
    result = classify(
        alert(severity=P2, labels={"severity": "warning"}, metrics={"error_rate": 0.2})
    )
    assert result.severity is P0
    assert result.reasons == [
        "error rate above 10 % (seed 000 Part H: P0)",
        "alert says medium (label severity=warning)",
    ]


def test_an_alert_says_more_than_the_rules() -> None:
    result = classify(
        alert(severity=P0, labels={"severity": "critical"}, metrics={"p95_seconds": 3})
    )
    assert result.severity is P0
    assert result.reasons == [
        "alert says critical (label severity=critical)",
        "p95 response time above 2 s (seed 000 Incident 6: P2)",
    ]


def test_explicit_metrics_override_the_alerts() -> None:
    result = classify(alert(metrics={"error_rate": 0.2}), metrics={"error_rate": 0.02})
    assert result.severity is P2


def test_default_when_nothing_matches() -> None:
    assert classify(alert()).reasons == ["no rule matched; default P2"]
    result = classify(metrics={"error_rate": 0.001}, default=P3)
    assert (result.severity, result.reasons, result.matched) == (
        P3,
        ["no rule matched; default P3"],
        [],
    )
    assert classify().severity is P2


def test_custom_rules() -> None:
    rules = [
        SeverityRule(metric="free_disk_pct", op="<", value=5, severity=P1, reason="disk < 5 %"),
        SeverityRule(metric="free_disk_pct", op="<=", value=10, severity=P3, reason="disk <= 10 %"),
    ]
    assert classify(metrics={"free_disk_pct": 4}, rules=rules).reasons == ["disk < 5 %"]
    assert severity_for_metric("free_disk_pct", 10, rules) == (P3, "disk <= 10 %")
    assert severity_for_metric("error_rate", 0.5, rules) == (None, None)


def test_classifying_parsed_alerts_end_to_end() -> None:
    doc = {
        "version": "4",
        "status": "firing",
        "groupKey": "{}:{}",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "PostgresDown", "service": "db", "severity": "warning"},
                "annotations": {"value": "0"},
                "fingerprint": "aa",
            },
            {
                "status": "firing",
                "labels": {"alertname": "HighLatency", "service": "api"},
                "annotations": {"p95": "2.5s"},
                "fingerprint": "bb",
            },
        ],
    }
    db, api = (classify(a) for a in parse_alerts(doc))
    assert db.severity is P0 and db.reasons[0] == "database unreachable (seed 000 Part H: P0)"
    assert api.severity is P2 and api.reasons == [
        "p95 response time above 2 s (seed 000 Incident 6: P2)"
    ]
    [sentry] = parse_alerts(
        {"action": "triggered", "data": {"event": {"issue_id": "9", "level": "fatal"}}}
    )
    assert classify(sentry).reasons == ["alert says high (Sentry level fatal)"]
