"""Sentry integration webhooks: signatures and the documented issue / issue-alert payloads."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from integrations.errors import ConfigError
from integrations.sentry import parse_issue_alert, verify_sentry_signature

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sentry"
CLIENT_SECRET = "sentry-client-secret-0123456789abcdef"


def signed(body: bytes, secret: str = CLIENT_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signature_over_the_raw_body() -> None:
    body = (FIXTURES / "issue_alert.json").read_bytes()
    assert verify_sentry_signature(CLIENT_SECRET, body, signed(body))
    assert verify_sentry_signature(SecretStr(CLIENT_SECRET), body.decode(), signed(body).upper())


def test_signature_rejects_tampering_and_wrong_secrets() -> None:
    body = (FIXTURES / "issue_alert.json").read_bytes()
    assert not verify_sentry_signature(
        CLIENT_SECRET, body.replace(b"error", b"fatal"), signed(body)
    )
    assert not verify_sentry_signature("another-secret", body, signed(body))
    assert not verify_sentry_signature(CLIENT_SECRET, body, "")
    assert not verify_sentry_signature("", body, signed(body, ""))


def test_issue_alert_becomes_plain_fields() -> None:
    alert = parse_issue_alert((FIXTURES / "issue_alert.json").read_bytes())
    assert alert["resource"] == "event_alert" and alert["action"] == "triggered"
    assert (alert["service"], alert["project"]) == ("front-end", "front-end")
    assert alert["title"] == "ReferenceError: heck is not defined"
    assert (alert["level"], alert["culprit"]) == ("error", "?(<anonymous>)")
    assert alert["fingerprint"] == "sentry:1117540176"
    assert alert["url"] == (
        "https://sentry.io/organizations/test-org/issues/1117540176/events/"
        "e4874d664c3540c1a32eab185f12c5ab/"
    )
    assert alert["tags"]["browser"] == "Chrome 75.0.3770" and alert["tags"]["handled"] == "no"
    assert alert["first_seen"] == alert["last_seen"] == "2019-08-19T21:06:17.677000Z"
    assert alert["rule"] == "Very Important Alert Rule!"


def test_events_of_one_issue_share_a_fingerprint_and_a_service_tag_wins() -> None:
    doc = json.loads((FIXTURES / "issue_alert.json").read_text())
    first = parse_issue_alert(doc)
    doc["data"]["event"]["event_id"] = "another-event"
    doc["data"]["event"]["tags"].append(["service", "chat-api"])
    second = parse_issue_alert(doc)
    assert first["fingerprint"] == second["fingerprint"]
    assert second["service"] == "chat-api" and second["project"] == "front-end"


def test_issue_webhook_becomes_plain_fields() -> None:
    issue = parse_issue_alert((FIXTURES / "issue_created.json").read_text())
    assert issue["resource"] == "issue" and issue["action"] == "created"
    assert issue["service"] == "front-end" and issue["status"] == "unresolved"
    assert issue["title"] == "ReferenceError: blooopy is not defined"
    assert issue["fingerprint"] == "sentry:1170820242"
    assert issue["url"] == "https://sentry.io/organizations/test-org/issues/1170820242/"
    assert issue["first_seen"] == "2019-08-19T20:58:37.391000Z"
    assert issue["tags"] == {}


def test_other_bodies_are_config_errors() -> None:
    for body in (b"", b"not json", b"{}", {"data": {"metric_alert": {}}}, b"[]"):
        with pytest.raises(ConfigError):
            parse_issue_alert(body)
