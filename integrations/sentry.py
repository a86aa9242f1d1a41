"""Sentry integration-platform webhooks: signature check and issue-alert parsing.

Sources:
- headers (``Sentry-Hook-Resource``, ``Sentry-Hook-Signature``: HMAC-SHA256 hex of the body
  keyed with the integration's client secret):
  https://docs.sentry.io/organization/integrations/integration-platform/webhooks/
- issue alert payload (resource ``event_alert``: ``data.event``, ``data.triggered_rule``):
  https://docs.sentry.io/organization/integrations/integration-platform/webhooks/issue-alerts/
- issue payload (resource ``issue``: ``data.issue`` with project, firstSeen, lastSeen):
  https://docs.sentry.io/organization/integrations/integration-platform/webhooks/issues/
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from integrations.errors import ConfigError

__all__ = ["parse_issue_alert", "verify_sentry_signature"]

# The event's API url names the project: /api/0/projects/{org}/{project}/events/{id}/
_PROJECT_IN_URL = re.compile(r"/projects/(?P<org>[^/]+)/(?P<project>[^/]+)/")


def verify_sentry_signature(
    client_secret: str | SecretStr, body: bytes | str, signature: str
) -> bool:
    """True when ``Sentry-Hook-Signature`` is the HMAC-SHA256 hex of the raw body."""
    secret = (
        client_secret.get_secret_value() if isinstance(client_secret, SecretStr) else client_secret
    )
    if not secret or not signature:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.strip().lower())


def _tags(raw: Any) -> dict[str, str]:
    # Events carry tags as [key, value] pairs; some serialisations use {"key", "value"}.
    tags: dict[str, str] = {}
    for item in raw or []:
        if isinstance(item, list | tuple) and len(item) == 2:
            tags[str(item[0])] = str(item[1])
        elif isinstance(item, Mapping) and "key" in item:
            tags[str(item["key"])] = str(item.get("value"))
    return tags


def parse_issue_alert(body: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """Reads an ``event_alert`` or ``issue`` webhook into plain fields for alert intake.

    Returns service, title, level, fingerprint (``sentry:<issue id>``, stable across events
    of one issue), url, tags, culprit, first_seen, last_seen, rule, action and resource.
    """
    try:
        doc = json.loads(body) if isinstance(body, bytes | str) else dict(body)
        data = doc["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a Sentry webhook payload ({exc})") from exc
    if isinstance(data.get("event"), Mapping):
        return _from_event(doc, data["event"], data.get("triggered_rule"))
    if isinstance(data.get("issue"), Mapping):
        return _from_issue(doc, data["issue"])
    raise ConfigError("Sentry webhook has neither data.event nor data.issue")


def _from_event(doc: Mapping[str, Any], event: Mapping[str, Any], rule: Any) -> dict[str, Any]:
    tags = _tags(event.get("tags"))
    match = _PROJECT_IN_URL.search(str(event.get("url") or ""))
    project = match.group("project") if match else str(event.get("project", ""))
    issue_id = event.get("issue_id") or event.get("event_id")
    return {
        "resource": "event_alert",
        "action": doc.get("action", "triggered"),
        # A 'service' tag set by the SDK names the service better than the project slug.
        "service": tags.get("service") or project,
        "project": project,
        "title": str(event.get("title") or event.get("message") or ""),
        "culprit": event.get("culprit"),
        "level": str(event.get("level") or tags.get("level") or "error"),
        "fingerprint": f"sentry:{issue_id}",
        "url": event.get("web_url") or event.get("issue_url") or event.get("url"),
        "tags": tags,
        "first_seen": event.get("datetime"),
        "last_seen": event.get("datetime"),
        "environment": tags.get("environment") or event.get("environment"),
        "rule": rule,
    }


def _from_issue(doc: Mapping[str, Any], issue: Mapping[str, Any]) -> dict[str, Any]:
    project = issue.get("project") or {}
    slug = str(project.get("slug") or project.get("name") or "")
    return {
        "resource": "issue",
        "action": doc.get("action"),
        "service": slug,
        "project": slug,
        "title": str(issue.get("title") or ""),
        "culprit": issue.get("culprit"),
        "level": str(issue.get("level") or "error"),
        "fingerprint": f"sentry:{issue.get('id')}",
        "url": issue.get("web_url") or issue.get("permalink") or issue.get("url"),
        "tags": _tags(issue.get("tags")),
        "first_seen": issue.get("firstSeen"),
        "last_seen": issue.get("lastSeen"),
        "environment": None,
        "status": issue.get("status"),
        "rule": None,
    }
