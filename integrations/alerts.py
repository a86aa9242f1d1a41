"""One alert model for every source, and the severity vocabulary alerts and checks share.

Payload shapes:
- Alertmanager webhook v4 (``version``, ``groupKey``, ``status``, ``alerts[]`` with labels,
  annotations, startsAt/endsAt, generatorURL, fingerprint):
  https://prometheus.io/docs/alerting/latest/configuration/#webhook_config, and the payload
  recorded from Alertmanager 0.25.0 in ``tests/fixtures/prometheus/alertmanager_webhook.json``.
- Sentry issue alerts and issues: :func:`integrations.sentry.parse_issue_alert`.
- PagerDuty V3 webhooks (``event.event_type``, ``event.data`` of type ``incident``):
  :func:`integrations.pagerduty.parse_v3_webhook`,
  https://developer.pagerduty.com/docs/webhooks/v3-overview/
- generic JSON (ours): ``{service, title, severity?, status?, labels?, annotations?,
  fingerprint?, metrics?, url?, starts_at?, ends_at?}`` or a list of those.

``Severity`` lives in ``integrations._severity``, the lowest layer that needs it; this module
and ``checks.findings`` re-export it. Metric reading is in ``_alert_metrics`` and the checks of
sender-supplied fields in ``_alert_fields``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from integrations._alert_fields import (
    alert_status,
    alert_time,
    kind_of,
    shown,
    string_map,
)
from integrations._alert_metrics import read_metrics, strict_metrics
from integrations._severity import Severity
from integrations.errors import ConfigError
from integrations.pagerduty import parse_v3_webhook
from integrations.sentry import parse_issue_alert

__all__ = ["MAX_ALERT_BYTES", "Alert", "AlertSource", "Severity", "parse_alerts"]

MAX_ALERT_BYTES = 1_000_000

AlertSource = Literal[
    "alertmanager", "sentry", "pagerduty", "generic", "health-check", "person", "drill"
]
_SOURCES: tuple[str, ...] = get_args(AlertSource)


def _fingerprint(service: str, title: str, alertname: str | None = None) -> str:
    # Identity for sources without one: the same service+title joins the same incident.
    key = "\n".join([service, title] + ([alertname] if alertname else []))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Alert(BaseModel):
    """One alert from any source, normalised; ``fingerprint`` decides which incident it joins."""

    model_config = ConfigDict(frozen=True)

    source: AlertSource
    status: Literal["firing", "resolved"] = "firing"
    service: str = Field(min_length=1, description="Service the alert is about (routes runbooks)")
    title: str = Field(min_length=1, description="One line for a person")
    fingerprint: str = Field(
        default="", description="Stable identity; sha256(service+title) when not given"
    )
    severity: Severity | None = Field(default=None, description="Severity the alert itself states")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    url: str | None = None
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="error_rate and video_failure_rate (0..1), p95_seconds, db_cpu_pct, "
        "memory_pct (0..100), queue_depth, db_reachable (0/1)",
    )
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="before")
    @classmethod
    def _identity(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("fingerprint"):
            labels = data.get("labels")
            name = labels.get("alertname") if isinstance(labels, dict) else None
            if isinstance(data.get("service"), str) and isinstance(data.get("title"), str):
                data = {**data, "fingerprint": _fingerprint(data["service"], data["title"], name)}
        return data


def parse_alerts(
    payload: dict[str, Any] | list[Any] | str | bytes, source: str | None = None
) -> list[Alert]:
    """Reads an Alertmanager v4, Sentry, PagerDuty V3 or generic payload into Alerts.

    ``source`` skips autodetection. Anything malformed raises ConfigError with one line naming
    the problem. PagerDuty events that carry no incident state (pings, notes, service changes)
    give an empty list.
    """
    if source is not None and source not in _SOURCES:
        raise ConfigError(f"unknown alert source {source!r}; expected one of {', '.join(_SOURCES)}")
    doc = _load(payload)
    kind = source or _detect(doc)
    try:
        if kind == "alertmanager":
            return _alertmanager(doc)
        if kind == "sentry":
            return _sentry(doc)
        if kind == "pagerduty":
            return _pagerduty(doc)
        return _generic(doc, kind if source else None)
    except ValidationError as exc:  # a value our checks let through but the model refuses
        raise ConfigError(_one_line(exc, f"{kind} alert")) from exc


def _reused(parse: Any, doc: Any, where: str) -> Any:
    """Calls the Sentry/PagerDuty parser, keeping its errors to one ConfigError line."""
    try:
        return parse(doc)
    except ConfigError as exc:
        raise ConfigError(_one_line(exc, where)) from exc
    except (TypeError, AttributeError, KeyError, ValueError) as exc:  # fields of the wrong type
        raise ConfigError(f"{where}: unexpected shape ({_one_line(exc, where)})") from exc


def _one_line(exc: BaseException, where: str) -> str:
    cause = exc if isinstance(exc, ValidationError) else exc.__cause__
    if isinstance(cause, ValidationError):
        first = cause.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "payload"
        return f"{where}: {field}: {first['msg']}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _load(payload: Any) -> Any:
    if isinstance(payload, str | bytes | bytearray):
        raw = payload.encode() if isinstance(payload, str) else bytes(payload)
        _check_size(len(raw))
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not JSON: invalid UTF-8 at byte {exc.start}") from exc
        except RecursionError as exc:
            raise ConfigError("not JSON: nested too deeply") from exc
    elif isinstance(payload, dict | list):
        try:
            _check_size(len(json.dumps(payload, default=str).encode()))
        except (ValueError, RecursionError) as exc:  # circular or absurdly deep structures
            raise ConfigError(f"alert payload cannot be serialised: {exc}") from exc
        doc = payload
    else:
        raise ConfigError(f"alert payload must be JSON text or an object, not {kind_of(payload)}")
    if not isinstance(doc, dict | list):
        raise ConfigError(f"alert payload: expected a JSON object or array, got {kind_of(doc)}")
    return doc


def _check_size(size: int) -> None:
    if size > MAX_ALERT_BYTES:
        raise ConfigError(f"alert payload is {size:,} bytes; the limit is {MAX_ALERT_BYTES:,}")


def _detect(doc: dict[str, Any] | list[Any]) -> str:
    if isinstance(doc, list):
        return "generic"
    if "alerts" in doc:
        return "alertmanager"
    if isinstance(doc.get("event"), dict) and "event_type" in doc["event"]:
        return "pagerduty"
    if isinstance(doc.get("data"), dict) and {"event", "issue"} & doc["data"].keys():
        return "sentry"
    if "service" in doc or "title" in doc:
        return "generic"
    raise ConfigError(
        "unrecognised payload: expected an Alertmanager v4, Sentry, PagerDuty v3 or generic alert"
    )


def _alertmanager(doc: Any) -> list[Alert]:
    if not isinstance(doc, dict):
        raise ConfigError(f"alert payload: expected an Alertmanager object, got {kind_of(doc)}")
    version = doc.get("version")
    if version is None:
        raise ConfigError("alert payload: missing 'version' (Alertmanager webhooks send \"4\")")
    if str(version) != "4":
        raise ConfigError(
            f'alert payload: webhook version {shown(version)} is not supported; expected "4"'
        )
    alerts = doc.get("alerts")
    if not isinstance(alerts, list):
        raise ConfigError(f"alert payload: alerts must be a list, got {kind_of(alerts)}")
    group_status, external = doc.get("status"), doc.get("externalURL")
    return [
        _alertmanager_one(item, f"alerts[{i}]", group_status, external)
        for i, item in enumerate(alerts)
    ]


def _alertmanager_one(item: Any, at: str, group_status: Any, external: Any) -> Alert:
    where = f"alert payload: {at}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object, got {kind_of(item)}")
    if "labels" not in item:
        raise ConfigError(f"{where}.labels is missing")
    labels = string_map(item["labels"], f"{where}.labels")
    annotations = string_map(item.get("annotations"), f"{where}.annotations")
    status = alert_status(item.get("status", group_status), f"{where}.status")
    fingerprint = item.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ConfigError(f"{where}.fingerprint must be a string, got {kind_of(fingerprint)}")
    if not fingerprint:  # older Alertmanagers sent none; the label set is the identity
        fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    service = next(
        (labels[k] for k in ("service", "job", "app", "namespace", "alertname") if labels.get(k)),
        "unknown",
    )
    url = item.get("generatorURL") or external
    return Alert(
        source="alertmanager",
        status=status,
        service=service,
        title=annotations.get("summary") or labels.get("alertname") or service,
        fingerprint=fingerprint,
        severity=Severity.parse(labels.get("severity") or labels.get("priority")),
        labels=labels,
        annotations=annotations,
        starts_at=alert_time(item.get("startsAt"), f"{where}.startsAt"),
        ends_at=alert_time(item.get("endsAt"), f"{where}.endsAt"),
        url=str(url) if url else None,
        metrics=read_metrics(labels, annotations),
    )


def _sentry(doc: Any) -> list[Alert]:
    fields = _reused(parse_issue_alert, doc if isinstance(doc, dict) else {}, "Sentry webhook")
    if fields["fingerprint"] == "sentry:None":
        raise ConfigError("Sentry webhook: the event names no issue_id or event_id")
    # The 'user' tag is an IP or e-mail address: it stays in Sentry, not in Slack or PD.
    tags = {k: v for k, v in fields["tags"].items() if k != "user"}
    extra = {k: fields.get(k) for k in ("project", "environment", "rule", "resource", "action")}
    labels = {**tags, **{k: str(v) for k, v in extra.items() if v}}
    labels.setdefault("level", fields["level"])
    annotations = {
        k: str(fields[k]) for k in ("culprit", "first_seen", "last_seen") if fields.get(k)
    }
    resolved = fields["resource"] == "issue" and fields.get("action") == "resolved"
    return [
        Alert(
            source="sentry",
            status="resolved" if resolved else "firing",
            service=fields["service"] or "unknown",
            title=fields["title"] or f"Sentry issue {fields['fingerprint'][7:]}",
            fingerprint=fields["fingerprint"],
            severity=_SENTRY_LEVELS.get(fields["level"].lower()),
            labels=labels,
            annotations=annotations,
            starts_at=alert_time(fields.get("first_seen"), "Sentry webhook: first_seen"),
            url=fields.get("url"),
            metrics=read_metrics(labels),
        )
    ]


# Sentry's level is the log level of one event, not an incident severity: a new error issue
# is "isolated feature errors" (seed 000 Part H: P2), a crash (fatal) a broken feature (P1).
_SENTRY_LEVELS = {
    "fatal": Severity.P1,
    "error": Severity.P2,
    "warning": Severity.P3,
    "info": Severity.P3,
    "debug": Severity.P3,
}


def _pagerduty(doc: Any) -> list[Alert]:
    event = doc.get("event") if isinstance(doc, dict) else None
    if not isinstance(event, dict):
        raise ConfigError("PagerDuty webhook: missing the 'event' object")
    data = event.get("data")
    if not str(event.get("event_type", "")).startswith("incident.") or not isinstance(data, dict):
        return []
    if data.get("type") != "incident":  # notes, responders, status updates: no incident state
        return []
    parsed = _reused(parse_v3_webhook, doc, "PagerDuty webhook")
    resolved = parsed.event_type == "incident.resolved" or parsed.status == "resolved"
    extra = {
        "event_type": parsed.event_type,
        "incident_id": parsed.incident_id,
        "incident_key": parsed.incident_key,
        "incident_number": data.get("number"),
        "priority": parsed.priority,
        "urgency": parsed.urgency,
        "status": parsed.status,
    }
    labels = {k: str(v) for k, v in extra.items() if v is not None}
    return [
        Alert(
            source="pagerduty",
            status="resolved" if resolved else "firing",
            service=parsed.service or "unknown",
            title=parsed.title or f"PagerDuty incident {parsed.incident_id}",
            # The incident key is the Events API dedup_key: our own triggers come back joined.
            fingerprint=parsed.incident_key or f"pagerduty:{parsed.incident_id}",
            severity=Severity.parse(parsed.priority) or Severity.parse(parsed.urgency),
            labels=labels,
            starts_at=alert_time(data.get("created_at"), "PagerDuty webhook: created_at"),
            ends_at=alert_time(parsed.occurred_at, "PagerDuty webhook: occurred_at")
            if resolved
            else None,
            url=parsed.url,
        )
    ]


def _generic(doc: Any, source: str | None) -> list[Alert]:
    if isinstance(doc, list):
        return [_generic_one(item, f"generic alert [{i}]", source) for i, item in enumerate(doc)]
    return [_generic_one(doc, "generic alert", source)]


def _generic_one(item: Any, where: str, source: str | None) -> Alert:
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object, got {kind_of(item)}")
    for key in ("service", "title"):
        if key not in item or item[key] is None:
            raise ConfigError(f"{where}: missing {key!r}")
        if not isinstance(item[key], str) or not item[key].strip():
            raise ConfigError(f"{where}: {key!r} must be a non-empty string")
    severity = None
    if item.get("severity") is not None:
        severity = Severity.parse(item["severity"])
        if severity is None:
            raise ConfigError(
                f"{where}: unknown severity {shown(item['severity'])}; "
                "use P0-P3, SEV1-SEV4 or critical/high/medium/low"
            )
    labels = string_map(item.get("labels"), f"{where}: labels")
    if severity is not None:  # keep the sender's spelling, as Alertmanager's label does
        labels.setdefault("severity", str(item["severity"]))
    annotations = string_map(item.get("annotations"), f"{where}: annotations")
    for key in ("fingerprint", "url"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise ConfigError(f"{where}: {key!r} must be a string, got {kind_of(item[key])}")
    scalars = {k: v for k, v in item.items() if isinstance(v, str | int | float)}
    metrics = read_metrics(labels, annotations, scalars)
    metrics.update(strict_metrics(item.get("metrics"), f"{where}: metrics"))
    claimed = item.get("source")
    return Alert(
        source=source or (claimed if claimed in _SOURCES else "generic"),
        status=alert_status(item.get("status", "firing"), f"{where}: status"),
        service=item["service"].strip(),
        title=item["title"].strip(),
        fingerprint=item.get("fingerprint") or "",
        severity=severity,
        labels=labels,
        annotations=annotations,
        starts_at=alert_time(item.get("starts_at", item.get("startsAt")), f"{where}: starts_at"),
        ends_at=alert_time(item.get("ends_at", item.get("endsAt")), f"{where}: ends_at"),
        url=item.get("url"),
        metrics=metrics,
    )
