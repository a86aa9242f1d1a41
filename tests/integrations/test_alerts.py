"""Alert intake: every source becomes one Alert model; bad payloads give one-line ConfigErrors."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.alerts import MAX_ALERT_BYTES, Alert, Severity, parse_alerts
from integrations.errors import ConfigError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def load(name: str) -> dict[str, Any] | list[Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def am_payload():
    """Builds an Alertmanager v4 group from (labels, annotations) pairs."""

    def build(*alerts: tuple[dict[str, Any], dict[str, Any]], status: str = "firing") -> dict:
        doc = copy.deepcopy(load("alerts/alertmanager_firing.json"))
        template = doc["alerts"][0]
        doc["status"] = status
        doc["alerts"] = [
            {**template, "labels": labels, "annotations": annotations, "fingerprint": f"fp{i}"}
            for i, (labels, annotations) in enumerate(alerts)
        ]
        return doc

    return build


# --- Alertmanager ---------------------------------------------------------------------------


def test_alertmanager_group_gives_one_alert_per_alert() -> None:
    checkout, search = parse_alerts((FIXTURES / "alerts/alertmanager_firing.json").read_bytes())
    assert (checkout.source, checkout.status, search.status) == ("alertmanager", "firing", "firing")
    assert (checkout.service, search.service) == ("checkout", "search")
    assert (checkout.fingerprint, search.fingerprint) == ("1bf84de7ca5f3bb0", "7e3c21a9d04b5f68")
    assert checkout.title == "Error rate above 10% on checkout"
    assert (checkout.severity, search.severity) == (Severity.P0, Severity.P2)
    assert checkout.labels["instance"] == "checkout-7d9f8b6c5-x2x4k:8080"
    assert checkout.annotations["runbook_url"] == "https://runbooks.example.com/high-error-rate"
    assert checkout.metrics == {"error_rate": pytest.approx(0.12345679)}
    assert search.metrics == {"error_rate": pytest.approx(0.0621)}
    assert checkout.starts_at == datetime(2025, 11, 23, 9, 9, 18, 657000, tzinfo=UTC)
    # Nanosecond timestamps (Go's RFC3339Nano) are cut to microseconds, not rejected.
    assert search.starts_at == datetime(2025, 11, 23, 9, 10, 3, 104981, tzinfo=UTC)
    assert checkout.ends_at is None  # Go's zero time means "still firing"
    assert checkout.url.startswith("http://prometheus.example.com:9090/graph?g0.expr=")


def test_alertmanager_resolved_alert_keeps_its_fingerprint() -> None:
    firing = parse_alerts(load("alerts/alertmanager_firing.json"))[0]
    [resolved] = parse_alerts(load("alerts/alertmanager_resolved.json"))
    assert resolved.status == "resolved" and resolved.fingerprint == firing.fingerprint
    assert resolved.ends_at == datetime(2025, 11, 23, 9, 41, 48, 657000, tzinfo=UTC)


def test_each_alert_in_a_mixed_group_has_its_own_status(am_payload) -> None:
    doc = am_payload(({"alertname": "A"}, {}), ({"alertname": "B"}, {}))
    doc["alerts"][1]["status"] = "resolved"
    assert [a.status for a in parse_alerts(doc)] == ["firing", "resolved"]
    del doc["alerts"][0]["status"]  # falls back to the group's status
    doc["status"] = "resolved"
    assert parse_alerts(doc)[0].status == "resolved"


def test_payload_recorded_from_a_real_alertmanager() -> None:
    [alert] = parse_alerts((FIXTURES / "prometheus/alertmanager_webhook.json").read_text())
    assert (alert.service, alert.severity, alert.fingerprint) == (
        "faulty",
        Severity.P0,
        "1bf84de7ca5f3bb0",
    )
    assert alert.title == "Error rate above 20%" and alert.ends_at is None


@pytest.mark.parametrize(
    ("labels", "service"),
    [
        ({"alertname": "X", "service": "api", "job": "j", "app": "a", "namespace": "n"}, "api"),
        ({"alertname": "X", "job": "j", "app": "a", "namespace": "n"}, "j"),
        ({"alertname": "X", "app": "a", "namespace": "n"}, "a"),
        ({"alertname": "X", "namespace": "n"}, "n"),
        ({"alertname": "X"}, "X"),
        ({"alertname": "X", "service": ""}, "X"),
    ],
)
def test_alertmanager_service_label_order(am_payload, labels, service) -> None:
    [alert] = parse_alerts(am_payload((labels, {})))
    assert alert.service == service
    assert alert.title == "X"  # no summary annotation: the alert's name


def test_alertmanager_without_fingerprint_hashes_the_label_set(am_payload) -> None:
    doc = am_payload(({"alertname": "A", "service": "api"}, {}))
    del doc["alerts"][0]["fingerprint"]
    first = parse_alerts(doc)[0].fingerprint
    doc["alerts"][0]["labels"] = {"service": "api", "alertname": "A"}
    doc["alerts"][0]["annotations"] = {"summary": "changed text"}
    assert parse_alerts(doc)[0].fingerprint == first and len(first) == 16


@pytest.mark.parametrize(
    ("labels", "annotations", "metrics"),
    [
        ({"error_rate": "12%"}, {}, {"error_rate": 0.12}),
        ({}, {"error_rate": "0.12"}, {"error_rate": 0.12}),
        ({}, {"error_rate": "12"}, {"error_rate": 0.12}),
        ({}, {"p95": "5.3s"}, {"p95_seconds": 5.3}),
        ({}, {"p95": "530ms"}, {"p95_seconds": 0.53}),
        ({}, {"p95_ms": "530"}, {"p95_seconds": 0.53}),
        ({}, {"latency_p95": "2m"}, {"p95_seconds": 120.0}),
        ({"db_cpu": "92%"}, {}, {"db_cpu_pct": 92.0}),
        ({}, {"db_cpu_pct": "0.92"}, {"db_cpu_pct": 92.0}),
        ({}, {"memory_pct": "85"}, {"memory_pct": 85.0}),
        ({}, {"queue_depth": "12,500"}, {"queue_depth": 12500.0}),
        ({}, {"db_reachable": "false"}, {"db_reachable": 0.0}),
        ({"db_up": "1"}, {}, {"db_reachable": 1.0}),
        ({}, {"video_failure_rate": "25%"}, {"video_failure_rate": 0.25}),
        ({}, {"error_rate": "n/a"}, {}),
        ({"alertname": "HighErrorRate"}, {"value": "0.5"}, {"error_rate": 0.5}),
        ({"alertname": "PostgresDown"}, {"value": "0"}, {"db_reachable": 0.0}),
        ({"alertname": "DBCPUHigh"}, {"value": "0.95"}, {"db_cpu_pct": 95.0}),
        ({"alertname": "HighLatency"}, {"value": "6.1"}, {"p95_seconds": 6.1}),
        ({"alertname": "EmailQueueBacklog"}, {"value": "1.2e4"}, {"queue_depth": 12000.0}),
        ({"alertname": "VideoFailureRate"}, {"value": "0.3"}, {"video_failure_rate": 0.3}),
        # A count of errors is not a rate, and bytes are not a percentage: no guess.
        ({"alertname": "DatabaseErrors"}, {"value": "12"}, {}),
        ({"alertname": "ContainerMemoryHigh"}, {"value": "1.2e9"}, {}),
        (
            {"alertname": "Anything", "metric": "queue_depth"},
            {"value": "20000"},
            {"queue_depth": 20000.0},
        ),
        # A named metric beats the guess from `value`.
        (
            {"alertname": "HighErrorRate"},
            {"value": "0.5", "error_rate": "7%"},
            {"error_rate": 0.07},
        ),
    ],
)
def test_metrics_read_from_labels_and_annotations(am_payload, labels, annotations, metrics):
    [alert] = parse_alerts(am_payload(({"alertname": "X", **labels}, annotations)))
    assert alert.metrics == pytest.approx(metrics)


# --- Sentry ---------------------------------------------------------------------------------


def test_sentry_issue_alert() -> None:
    [alert] = parse_alerts((FIXTURES / "sentry/issue_alert.json").read_bytes())
    assert (alert.source, alert.status, alert.service) == ("sentry", "firing", "front-end")
    assert alert.fingerprint == "sentry:1117540176"
    assert alert.title == "ReferenceError: heck is not defined"
    assert alert.severity is Severity.P2  # level "error": isolated feature errors
    assert alert.labels["rule"] == "Very Important Alert Rule!"
    assert alert.labels["level"] == "error" and alert.labels["browser.name"] == "Chrome"
    assert "user" not in alert.labels  # an IP address stays in Sentry
    assert alert.annotations["culprit"] == "?(<anonymous>)"
    assert alert.starts_at == datetime(2019, 8, 19, 21, 6, 17, 677000, tzinfo=UTC)
    assert alert.url.startswith("https://sentry.io/organizations/test-org/issues/1117540176/")


def test_sentry_issue_resolved_joins_the_created_issue() -> None:
    [created] = parse_alerts(load("sentry/issue_created.json"))
    [resolved] = parse_alerts(load("alerts/sentry_issue_resolved.json"))
    assert created.status == "firing" and resolved.status == "resolved"
    assert created.fingerprint == resolved.fingerprint == "sentry:1170820242"
    assert resolved.labels["action"] == "resolved"


# --- PagerDuty ------------------------------------------------------------------------------


def test_pagerduty_triggered_and_resolved_share_the_incident_key() -> None:
    [triggered] = parse_alerts(load("alerts/pagerduty_incident_triggered.json"))
    [resolved] = parse_alerts((FIXTURES / "alerts/pagerduty_incident_resolved.json").read_bytes())
    assert (triggered.status, resolved.status) == ("firing", "resolved")
    assert triggered.fingerprint == resolved.fingerprint == "d3640fbd41094207a1c11e58e46b1662"
    assert (triggered.service, triggered.title) == ("API Service", "A little bump in the road")
    assert triggered.severity is Severity.P1  # priority "P1"
    assert triggered.labels["event_type"] == "incident.triggered"
    assert triggered.labels["incident_id"] == "PGR0VU2"
    assert triggered.url == "https://acme.pagerduty.com/incidents/PGR0VU2"
    assert triggered.starts_at == datetime(2020, 4, 9, 15, 16, 27, tzinfo=UTC)
    assert triggered.ends_at is None
    assert resolved.ends_at == datetime(2020, 4, 9, 16, 2, 11, tzinfo=UTC)


def test_pagerduty_urgency_when_no_priority_and_id_when_no_key() -> None:
    doc = load("alerts/pagerduty_incident_triggered.json")
    doc["event"]["data"].update(priority=None, urgency="low", incident_key=None)
    [alert] = parse_alerts(doc)
    assert alert.severity is Severity.P3
    assert alert.fingerprint == "pagerduty:PGR0VU2"


@pytest.mark.parametrize(
    "doc",
    [
        load("pagerduty/v3_incident_annotated.json"),
        {"event": {"event_type": "pagey.ping", "resource_type": "pagey", "data": {"type": "ping"}}},
        {"event": {"event_type": "service.updated", "data": {"id": "PF9KMXH", "type": "service"}}},
    ],
    ids=["note", "ping", "service"],
)
def test_pagerduty_events_without_incident_state_give_no_alert(doc) -> None:
    assert parse_alerts(doc) == []


# --- generic --------------------------------------------------------------------------------


def test_generic_list() -> None:
    slow, queue = parse_alerts((FIXTURES / "alerts/generic.json").read_text())
    assert (slow.source, slow.service, slow.status) == ("generic", "api", "firing")
    assert slow.severity is Severity.P1 and slow.labels["severity"] == "SEV-2"
    assert slow.metrics == pytest.approx({"p95_seconds": 6.2, "error_rate": 0.03})
    expected = hashlib.sha256(b"api\np95 latency 6.2 s on /v1/sessions\nSlowSessions")
    assert slow.fingerprint == expected.hexdigest()[:16]
    assert slow.starts_at == datetime(2025, 11, 23, 9, 12, tzinfo=UTC)
    assert slow.url == "https://grafana.example.com/d/api-latency"
    assert queue.metrics == {"queue_depth": 12500.0} and queue.severity is None
    assert (
        queue.fingerprint == hashlib.sha256(b"email-worker\nEmail queue backed up").hexdigest()[:16]
    )


def test_generic_fingerprint_status_and_source() -> None:
    doc = {"service": "api", "title": "down", "status": "resolved", "fingerprint": "mine"}
    [alert] = parse_alerts(doc, source="health-check")
    assert (alert.source, alert.status, alert.fingerprint) == ("health-check", "resolved", "mine")
    assert parse_alerts({**doc, "source": "person"})[0].source == "person"
    assert parse_alerts({**doc, "source": "nagios"})[0].source == "generic"


def test_alert_built_directly_gets_a_stable_fingerprint() -> None:
    one = Alert(source="health-check", service="db", title="database unreachable")
    two = Alert(source="health-check", service="db", title="database unreachable")
    other = Alert(source="health-check", service="db", title="database CPU 95 %")
    assert one.fingerprint == two.fingerprint != other.fingerprint
    with pytest.raises(ValueError, match="frozen"):
        one.status = "resolved"


def test_empty_groups_give_no_alerts(am_payload) -> None:
    assert parse_alerts(am_payload()) == []
    assert parse_alerts("[]") == []


def test_same_payload_as_dict_text_and_bytes() -> None:
    doc = load("alerts/alertmanager_firing.json")
    text = json.dumps(doc)
    results = [parse_alerts(p) for p in (doc, text, text.encode(), bytearray(text.encode()))]
    dumped = [[a.model_dump(exclude={"received_at"}) for a in r] for r in results]
    assert dumped[0] == dumped[1] == dumped[2] == dumped[3]


# --- bad payloads ---------------------------------------------------------------------------

AM = load("alerts/alertmanager_firing.json")


def am_with(path: str, value: Any, *, delete: bool = False) -> dict[str, Any]:
    """The firing fixture with one field (``alerts.0.labels``) replaced or deleted."""
    doc = copy.deepcopy(AM)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if delete:
        del node[key]
    else:
        node[key] = value
    return doc


GENERIC = {"service": "api", "title": "down"}
BAD = [
    (b"", None, "not JSON: Expecting value at line 1 column 1"),
    (
        "{not json",
        None,
        "not JSON: Expecting property name enclosed in double quotes at line 1 column 2",
    ),
    (b'{"a": "\xff"}', None, "not JSON: invalid UTF-8 at byte 7"),
    (b"[" * 100_000, None, "not JSON: nested too deeply"),
    ("42", None, "alert payload: expected a JSON object or array, got a number"),
    (42, None, "alert payload must be JSON text or an object, not a number"),
    (
        b" " * (MAX_ALERT_BYTES + 1),
        None,
        "alert payload is 1,000,001 bytes; the limit is 1,000,000",
    ),
    (
        {**GENERIC, "pad": "x" * MAX_ALERT_BYTES},
        None,
        "alert payload is 1,000,046 bytes; the limit is 1,000,000",
    ),
    (
        {"foo": 1},
        None,
        "unrecognised payload: expected an Alertmanager v4, Sentry, PagerDuty v3 or generic alert",
    ),
    (
        GENERIC,
        "nagios",
        "unknown alert source 'nagios'; expected one of alertmanager, sentry, pagerduty, "
        "generic, health-check, person, drill",
    ),
    # Alertmanager
    (
        am_with("alerts.1.labels", "x"),
        None,
        "alert payload: alerts[1].labels must be an object, got a string",
    ),
    (am_with("alerts", {}), None, "alert payload: alerts must be a list, got an object"),
    (
        am_with("version", "3"),
        None,
        "alert payload: webhook version '3' is not supported; expected \"4\"",
    ),
    (
        am_with("version", None, delete=True),
        None,
        "alert payload: missing 'version' (Alertmanager webhooks send \"4\")",
    ),
    (am_with("alerts.0", "x"), None, "alert payload: alerts[0] must be an object, got a string"),
    (
        am_with("alerts.0.labels", None, delete=True),
        None,
        "alert payload: alerts[0].labels is missing",
    ),
    (
        am_with("alerts.1.status", "pending"),
        None,
        "alert payload: alerts[1].status must be 'firing' or 'resolved', got 'pending'",
    ),
    (
        am_with("alerts.0.startsAt", "yesterday"),
        None,
        "alert payload: alerts[0].startsAt is not an RFC 3339 time: 'yesterday'",
    ),
    (
        am_with("alerts.0.labels.severity", {"x": 1}),
        None,
        "alert payload: alerts[0].labels.severity must be a string, got an object",
    ),
    (
        am_with("alerts.0.annotations", ["x"]),
        None,
        "alert payload: alerts[0].annotations must be an object, got a list",
    ),
    (
        am_with("alerts.0.fingerprint", 7),
        None,
        "alert payload: alerts[0].fingerprint must be a string, got a number",
    ),
    (
        am_with("alerts.0.labels", {"bad\nkey": [1]}),
        None,
        "alert payload: alerts[0].labels.'bad\\nkey' must be a string, got a list",
    ),
    (
        GENERIC,
        "alertmanager",
        "alert payload: missing 'version' (Alertmanager webhooks send \"4\")",
    ),
    # generic
    ({"title": "down"}, None, "generic alert: missing 'service'"),
    ({"service": "api"}, None, "generic alert: missing 'title'"),
    ({"service": 5, "title": "down"}, None, "generic alert: 'service' must be a non-empty string"),
    (
        {"service": " ", "title": "down"},
        None,
        "generic alert: 'service' must be a non-empty string",
    ),
    (
        {**GENERIC, "severity": "urgent"},
        None,
        "generic alert: unknown severity 'urgent'; "
        "use P0-P3, SEV1-SEV4 or critical/high/medium/low",
    ),
    (
        {**GENERIC, "status": "open"},
        None,
        "generic alert: status must be 'firing' or 'resolved', got 'open'",
    ),
    (
        {**GENERIC, "metrics": {"error_rate": "lots"}},
        None,
        "generic alert: metrics.error_rate must be a number, got 'lots'",
    ),
    (
        {**GENERIC, "metrics": {"error_rate": None}},
        None,
        "generic alert: metrics.error_rate must be a number, got None",
    ),
    (
        {**GENERIC, "metrics": [1]},
        None,
        "generic alert: metrics must be an object, got a list",
    ),
    ({**GENERIC, "labels": "x"}, None, "generic alert: labels must be an object, got a string"),
    ({**GENERIC, "url": 5}, None, "generic alert: 'url' must be a string, got a number"),
    (
        {**GENERIC, "starts_at": "soon"},
        None,
        "generic alert: starts_at is not an RFC 3339 time: 'soon'",
    ),
    ([GENERIC, {"title": "x"}], None, "generic alert [1]: missing 'service'"),
    ([7], None, "generic alert [0] must be an object, got a number"),
    # Sentry
    (
        {"action": "triggered", "data": {"event": {"title": "boom"}}},
        None,
        "Sentry webhook: the event names no issue_id or event_id",
    ),
    ({"data": {}}, "sentry", "Sentry webhook has neither data.event nor data.issue"),
    # PagerDuty
    ({"event": "x"}, "pagerduty", "PagerDuty webhook: missing the 'event' object"),
    (
        {"event": {"event_type": "incident.triggered", "data": {"type": "incident"}}},
        None,
        "not a PagerDuty V3 webhook payload ('incident id')",
    ),
]


@pytest.mark.parametrize(("payload", "source", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_payload_names_the_problem_on_one_line(payload, source, message) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_alerts(payload, source=source)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
KEYS = ["status", "labels", "annotations", "startsAt", "endsAt", "fingerprint", "generatorURL"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), JSON, st.sampled_from([None, "alertmanager", "generic"]))
def test_any_mangled_alertmanager_field_gives_alerts_or_one_config_error(key, value, source):
    doc = copy.deepcopy(AM)
    doc["alerts"][1][key] = value
    _alerts_or_one_line_error(doc, source)


@settings(max_examples=300, deadline=None)
@given(JSON, st.sampled_from([None, "alertmanager", "sentry", "pagerduty", "generic"]))
def test_any_json_gives_alerts_or_one_config_error(doc, source):
    _alerts_or_one_line_error(doc, source)
    _alerts_or_one_line_error(json.dumps(doc), source)


def _alerts_or_one_line_error(payload: Any, source: str | None) -> None:
    try:
        alerts = parse_alerts(payload, source=source)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert all(isinstance(a, Alert) and a.service and a.fingerprint for a in alerts)


NESTED = [
    ("sentry/issue_alert.json", ("data", "event")),
    ("sentry/issue_created.json", ("data", "issue")),
    ("alerts/pagerduty_incident_triggered.json", ("event", "data")),
    ("alerts/pagerduty_incident_triggered.json", ("event",)),
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(NESTED), st.data(), JSON)
def test_any_mangled_sentry_or_pagerduty_field_gives_alerts_or_one_config_error(where, data, value):
    name, path = where
    doc = load(name)
    node = doc
    for part in path:
        node = node[part]
    node[data.draw(st.sampled_from(sorted(node)))] = value
    _alerts_or_one_line_error(doc, None)
