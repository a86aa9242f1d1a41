"""PagerDuty: Events API v2 (trigger / acknowledge / resolve) and V3 webhook intake.

Sources:
- event body and field limits: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
- answers (202 success, 400 invalid event with ``errors``, 429 throttled, 5xx retry):
  https://developer.pagerduty.com/docs/events-api-v2/overview/#response-codes--retry-logic
- V3 webhook envelope (``event.event_type``, ``event.data`` incident):
  https://developer.pagerduty.com/docs/webhooks/v3-overview/
- signatures (``X-PagerDuty-Signature: v1=<hex>[,v1=<hex>]``, HMAC-SHA256 of the raw body):
  https://developer.pagerduty.com/docs/webhooks/webhook-signatures/
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from integrations.errors import ConfigError, ProviderError, TargetError
from integrations.http import (
    TargetClient,
    backoff_field,
    request,
    retries_field,
    timeout_field,
)
from integrations.preflight import Shortfall, shortfall
from integrations.redact import scrub

__all__ = [
    "PagerDutyEvents",
    "PagerDutyTarget",
    "PagerDutyWebhookEvent",
    "parse_v3_webhook",
    "pd_severity",
    "verify_pagerduty_signature",
]

EVENTS_URL = "https://events.pagerduty.com"
PD_SEVERITIES = ("critical", "error", "warning", "info")
# Our P0-P3 onto PD's four levels; PD urgency rules key off these.
_FROM_OURS = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
_WORDS = {"high": "error", "medium": "warning", "low": "info", "page": "critical"}


def pd_severity(severity: str) -> str:
    """Maps P0-P3 (or SEV1-4, or a PD severity) to critical/error/warning/info."""
    text = str(severity).strip().lower().replace(" ", "").replace("-", "")
    if text in PD_SEVERITIES:
        return text
    if text in _WORDS:
        return _WORDS[text]
    if text.upper() in _FROM_OURS:
        return _FROM_OURS[text.upper()]
    if text.startswith("sev") and text[3:].isdigit() and 1 <= int(text[3:]) <= 4:
        return _FROM_OURS[f"P{int(text[3:]) - 1}"]
    raise ConfigError(f"unknown severity {severity!r}; use P0-P3 or critical/error/warning/info")


class PagerDutyTarget(BaseModel):
    """One Events API v2 integration; the routing (integration) key is a secret."""

    name: str = Field(default="pagerduty", description="Short name shown in reports")
    routing_key: SecretStr = Field(description="32-character Events API v2 integration key")
    base_url: str = Field(default=EVENTS_URL, description="Events API host")
    timeout: float = timeout_field()
    retries: int = retries_field(3, most=6)
    backoff: float = backoff_field()


class PagerDutyEvents(TargetClient[PagerDutyTarget]):
    """Sends alert events to one PD service. ``async with PagerDutyEvents(target) as pd``."""

    _shown = ("base_url",)

    def _open(self) -> httpx.AsyncClient:
        return self._async_client(self.target.base_url)

    async def _enqueue(self, event: dict[str, Any]) -> dict[str, Any]:
        key = self.target.routing_key.get_secret_value()
        try:
            response = await self._send_to_target(
                "POST", "/v2/enqueue", json={"routing_key": key, **event}
            )
        except ProviderError as exc:
            if exc.status == 400:
                raise ProviderError(
                    scrub(f"PagerDuty rejected the event: {_pd_errors(str(exc))}", [key]),
                    target=self.target.name,
                    status=400,
                ) from exc
            exc.args = (scrub(str(exc), [key]),)
            raise
        except TargetError as exc:
            exc.args = (scrub(str(exc), [key]),)
            raise
        try:
            return response.json()
        except ValueError:
            return {}

    async def trigger(
        self,
        dedup_key: str,
        summary: str,
        source: str,
        severity: str,
        custom_details: Mapping[str, Any] | None = None,
        links: Sequence[Mapping[str, str]] | Mapping[str, str] = (),
        *,
        component: str | None = None,
        group: str | None = None,
        event_class: str | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        """Opens (or re-triggers, same dedup_key) a PD alert and says so."""
        if not dedup_key or len(dedup_key) > 255:
            raise ConfigError("dedup_key must be 1-255 characters")
        payload: dict[str, Any] = {
            "summary": summary[:1024],
            "source": source,
            "severity": pd_severity(severity),
            "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
        }
        optional = {"component": component, "group": group, "class": event_class}
        payload.update({k: v for k, v in optional.items() if v})
        if custom_details:
            payload["custom_details"] = dict(custom_details)
        event: dict[str, Any] = {"event_action": "trigger", "dedup_key": dedup_key}
        event["payload"] = payload
        pd_links = _links(links)
        if pd_links:
            event["links"] = pd_links
        answer = await self._enqueue(event)
        key = answer.get("dedup_key", dedup_key)
        return f"triggered PagerDuty alert {key} ({payload['severity']}): {summary[:80]}"

    async def acknowledge(self, dedup_key: str) -> str:
        """Acknowledges the alert with this dedup_key (PD drops it if none is open)."""
        await self._enqueue({"event_action": "acknowledge", "dedup_key": dedup_key})
        return f"acknowledged PagerDuty alert {dedup_key}"

    async def resolve(self, dedup_key: str) -> str:
        """Resolves the alert with this dedup_key (PD drops it if already resolved)."""
        await self._enqueue({"event_action": "resolve", "dedup_key": dedup_key})
        return f"resolved PagerDuty alert {dedup_key}"

    async def preflight(self) -> dict[str, bool | str]:
        """Checks the key's shape and that the Events API answers, without raising an alert.

        The Events API v2 has no read call: nothing proves a well-formed routing key is
        accepted short of sending an event, so ``accepted`` stays unverified.
        """
        key = self.target.routing_key.get_secret_value()
        shape_ok = len(key) == 32 and key.isascii() and key.isalnum()
        result: dict[str, bool | str] = {
            "routing_key": True
            if shape_ok
            else Shortfall(
                f"routing key has {len(key)} chars, not 32"
                if len(key) != 32
                else "routing key must be letters and digits only",
                "error",
            )
        }
        client = self._http()
        # An empty event (no key sent) must come back 400 "invalid event": reachable, nothing made.
        try:
            await request(client, "POST", "/v2/enqueue", target=self.target.name, json={})
            result["events_api"] = True
        except TargetError as exc:
            if exc.status == 400:
                result["events_api"] = True
            else:
                failed = shortfall(exc)
                result["events_api"] = Shortfall(scrub(str(failed), [key]), failed.kind)
        result["accepted"] = Shortfall(
            "the Events API has no call that checks a key without sending an event:"
            " the first notification proves it",
            "unverified",
        )
        return result


def _links(links: Sequence[Mapping[str, str]] | Mapping[str, str]) -> list[dict[str, str]]:
    if isinstance(links, Mapping):
        return [{"href": href, "text": text} for text, href in links.items()]
    return [dict(link) for link in links]


def _pd_errors(message: str) -> str:
    # raise_for_status puts the first 200 characters of PD's JSON answer after the status.
    _, _, detail = message.partition(": ")
    try:
        body = json.loads(detail)
    except ValueError:
        return detail or message
    if not isinstance(body, dict):
        return detail
    errors = "; ".join(str(e) for e in body.get("errors") or [])
    return f"{body.get('message', 'invalid event')}" + (f" ({errors})" if errors else "")


def verify_pagerduty_signature(
    secrets: str | SecretStr | Sequence[str | SecretStr], body: bytes | str, header: str
) -> bool:
    """True when any ``v1=`` signature in the header matches any of our signing secrets."""
    if isinstance(secrets, str | SecretStr):
        secrets = [secrets]
    raw = body.encode() if isinstance(body, str) else body
    given = [part.strip()[3:] for part in (header or "").split(",") if part.strip()[:3] == "v1="]
    for secret in secrets:
        text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not text:
            continue
        expected = hmac.new(text.encode(), raw, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, sig) for sig in given):
            return True
    return False


class PagerDutyWebhookEvent(BaseModel):
    """What we read from a V3 webhook about an incident."""

    model_config = ConfigDict(frozen=True)

    event_type: str
    incident_id: str
    title: str
    urgency: str | None = None
    priority: str | None = None
    service: str | None = None
    status: str | None = None
    incident_key: str | None = None
    url: str | None = None
    occurred_at: str | None = None


def parse_v3_webhook(body: bytes | str | Mapping[str, Any]) -> PagerDutyWebhookEvent:
    """Reads the documented V3 envelope; non-incident payloads reference their incident."""
    try:
        doc = json.loads(body) if isinstance(body, bytes | str) else dict(body)
        event = doc["event"]
        data = event.get("data") or {}
        # incident.annotated / responder / status_update events carry an incident_reference.
        incident = data if data.get("type") == "incident" else (data.get("incident") or {})
        incident_id = incident.get("id") or data.get("id")
        if not incident_id:
            raise KeyError("incident id")
        priority = incident.get("priority") or {}
        return PagerDutyWebhookEvent(
            event_type=str(event["event_type"]),
            incident_id=str(incident_id),
            title=str(incident.get("title") or incident.get("summary") or ""),
            urgency=incident.get("urgency"),
            priority=priority.get("summary") if isinstance(priority, dict) else None,
            service=(incident.get("service") or {}).get("summary"),
            status=incident.get("status"),
            incident_key=incident.get("incident_key"),
            url=incident.get("html_url"),
            occurred_at=event.get("occurred_at"),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"not a PagerDuty V3 webhook payload ({exc})") from exc
