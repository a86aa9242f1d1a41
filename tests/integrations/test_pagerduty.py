"""PagerDuty Events API v2 and V3 webhooks against their documented shapes."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import ConfigError, ProviderError, Timeout
from integrations.pagerduty import (
    PagerDutyEvents,
    PagerDutyTarget,
    parse_v3_webhook,
    pd_severity,
    verify_pagerduty_signature,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pagerduty"
KEY = "k" * 31 + "Z"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox(pd_routing_key=KEY) as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


@pytest.fixture
def mocked():
    router = respx.Router(base_url="https://events.pagerduty.com", assert_all_called=False)
    return router, httpx.MockTransport(router.async_handler)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def test_our_severities_map_onto_pagerduty_levels() -> None:
    assert [pd_severity(s) for s in ("P0", "P1", "P2", "P3")] == [
        "critical",
        "error",
        "warning",
        "info",
    ]
    assert pd_severity("SEV-1") == "critical" and pd_severity("sev4") == "info"
    assert pd_severity("warning") == "warning" and pd_severity("high") == "error"
    with pytest.raises(ConfigError):
        pd_severity("apocalyptic")


async def test_trigger_sends_the_documented_event_body(mocked) -> None:
    router, transport = mocked
    route = router.post("/v2/enqueue").mock(
        return_value=httpx.Response(
            202, json={"status": "success", "message": "Event processed", "dedup_key": "inc-42"}
        )
    )
    target = PagerDutyTarget(routing_key=SecretStr(KEY))
    when = datetime(2026, 1, 15, 14, 30, tzinfo=UTC)
    async with PagerDutyEvents(target, transport=transport) as pd:
        said = await pd.trigger(
            "inc-42",
            "DB connections at 97% on orders-db",
            "orders-db.prod",
            "P1",
            {"utilisation": 0.97},
            {"Runbook": "https://runbooks.example/db"},
            component="postgres",
            group="orders",
            event_class="db-connections",
            timestamp=when,
        )
    assert said == "triggered PagerDuty alert inc-42 (error): DB connections at 97% on orders-db"
    sent = json.loads(route.calls.last.request.content)
    documented = fixture("trigger_event.json")
    assert set(sent) == {"routing_key", "event_action", "dedup_key", "payload", "links"}
    assert set(sent) <= set(documented)
    assert set(sent["payload"]) == set(documented["payload"])
    assert sent == {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "inc-42",
        "payload": {
            "summary": "DB connections at 97% on orders-db",
            "source": "orders-db.prod",
            "severity": "error",
            "timestamp": "2026-01-15T14:30:00+00:00",
            "component": "postgres",
            "group": "orders",
            "class": "db-connections",
            "custom_details": {"utilisation": 0.97},
        },
        "links": [{"href": "https://runbooks.example/db", "text": "Runbook"}],
    }


async def test_trigger_acknowledge_resolve_round_trip(sandbox: SaasSandbox) -> None:
    async with PagerDutyEvents(sandbox.pagerduty_target()) as pd:
        await pd.trigger("inc-7", "API down", "api.prod", "P0")
        assert sandbox.pd_alerts["inc-7"]["status"] == "triggered"
        assert await pd.acknowledge("inc-7") == "acknowledged PagerDuty alert inc-7"
        assert sandbox.pd_alerts["inc-7"]["status"] == "acknowledged"
        assert await pd.resolve("inc-7") == "resolved PagerDuty alert inc-7"
        assert await pd.resolve("inc-7") == "resolved PagerDuty alert inc-7"
    assert sandbox.pd_alerts["inc-7"]["status"] == "resolved"
    bodies = [r.body for r in sandbox.received("pagerduty")]
    assert [b["event_action"] for b in bodies] == ["trigger", "acknowledge", "resolve", "resolve"]
    assert bodies[1] == {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "inc-7"}


async def test_400_becomes_provider_error_with_pagerdutys_message(sandbox: SaasSandbox) -> None:
    short = PagerDutyTarget(routing_key=SecretStr("tooshortkey"), base_url=sandbox.url)
    async with PagerDutyEvents(short) as pd:
        with pytest.raises(ProviderError) as caught:
            await pd.trigger("inc-1", "x", "y", "P2")
    assert caught.value.status == 400
    assert str(caught.value) == (
        "PagerDuty rejected the event: Event object is invalid "
        "(Length of 'routing_key' is incorrect (should be 32 characters))"
    )
    assert "tooshortkey" not in str(caught.value)
    assert len(sandbox.received("pagerduty")) == 1  # a 400 is never retried


async def test_429_with_retry_after_is_retried(sandbox: SaasSandbox) -> None:
    sandbox.fault("pagerduty", status=429, retry_after=0.05, times=2)
    async with PagerDutyEvents(sandbox.pagerduty_target(backoff=0.01)) as pd:
        said = await pd.trigger("inc-9", "queue backlog", "rabbit", "P2")
    assert said.startswith("triggered PagerDuty alert inc-9")
    assert len(sandbox.received("pagerduty")) == 3
    assert sandbox.pd_alerts["inc-9"]["severity"] == "warning"


async def test_5xx_is_retried_then_raised(sandbox: SaasSandbox) -> None:
    sandbox.fault("pagerduty", status=503)
    async with PagerDutyEvents(sandbox.pagerduty_target(retries=2, backoff=0.01)) as pd:
        with pytest.raises(ProviderError) as caught:
            await pd.resolve("inc-9")
    assert caught.value.status == 503
    assert len(sandbox.received("pagerduty")) == 3
    assert KEY not in str(caught.value)


async def test_slow_answers_become_timeouts(sandbox: SaasSandbox) -> None:
    sandbox.fault("pagerduty", delay=1.0)
    target = sandbox.pagerduty_target(timeout=0.2, retries=0)
    async with PagerDutyEvents(target) as pd:
        with pytest.raises(Timeout):
            await pd.acknowledge("inc-1")


async def test_preflight_checks_key_shape_and_reachability(sandbox: SaasSandbox) -> None:
    async with PagerDutyEvents(sandbox.pagerduty_target()) as pd:
        found = await pd.preflight()
    assert found["routing_key"] is True and found["events_api"] is True
    # No Events API call checks a key without sending an event: said, not guessed.
    assert found["accepted"].kind == "unverified"
    (probe,) = sandbox.received("pagerduty")
    assert probe.body == {}  # the probe never carries the key, so it opens nothing
    assert sandbox.pd_alerts == {}
    bad = PagerDutyTarget(routing_key=SecretStr("short"), base_url="http://127.0.0.1:9")
    async with PagerDutyEvents(bad) as pd:
        result = await pd.preflight()
    assert result["routing_key"] == "routing key has 5 chars, not 32"
    assert "cannot connect" in result["events_api"] and result["events_api"].kind == "unreachable"
    dashed = PagerDutyTarget(routing_key=SecretStr("R0-" + "a" * 29), base_url=sandbox.url)
    async with PagerDutyEvents(dashed) as pd:
        assert (await pd.preflight())[
            "routing_key"
        ] == "routing key must be letters and digits only"


def test_secrets_stay_out_of_repr() -> None:
    target = PagerDutyTarget(routing_key=SecretStr(KEY))
    assert KEY not in repr(target) and KEY not in repr(PagerDutyEvents(target))


def sign(secret: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_v3_signature_single_and_rotated() -> None:
    body = (FIXTURES / "v3_incident_priority_updated.json").read_bytes()
    assert verify_pagerduty_signature("s3cret", body, sign("s3cret", body))
    rotating = f"{sign('old-secret', body)},{sign('new-secret', body)}"
    assert verify_pagerduty_signature(SecretStr("new-secret"), body, rotating)
    assert verify_pagerduty_signature(["nope", "old-secret"], body, rotating)


def test_v3_signature_rejects_bad_input() -> None:
    body = (FIXTURES / "v3_incident_priority_updated.json").read_bytes()
    good = sign("s3cret", body)
    assert not verify_pagerduty_signature("s3cret", body + b" ", good)
    assert not verify_pagerduty_signature("other", body, good)
    assert not verify_pagerduty_signature("s3cret", body, good.replace("v1=", "v2="))
    assert not verify_pagerduty_signature("s3cret", body, "")
    assert not verify_pagerduty_signature("", body, good)


def test_parse_v3_incident_event() -> None:
    event = parse_v3_webhook((FIXTURES / "v3_incident_priority_updated.json").read_bytes())
    assert (event.event_type, event.incident_id, event.title) == (
        "incident.priority_updated",
        "PGR0VU2",
        "A little bump in the road",
    )
    assert (event.urgency, event.priority, event.service, event.status) == (
        "high",
        "P1",
        "API Service",
        "triggered",
    )
    assert event.incident_key == "d3640fbd41094207a1c11e58e46b1662"
    assert event.url == "https://acme.pagerduty.com/incidents/PGR0VU2"


def test_parse_v3_note_event_points_at_its_incident() -> None:
    event = parse_v3_webhook(fixture("v3_incident_annotated.json"))
    assert event.event_type == "incident.annotated"
    assert event.incident_id == "PGR0VU2" and event.title == "A little bump in the road"
    assert event.status is None and event.urgency is None


def test_parse_v3_rejects_other_payloads() -> None:
    for body in (b"{}", b"not json", {"event": {"event_type": "x", "data": {}}}, b"[]"):
        with pytest.raises(ConfigError):
            parse_v3_webhook(body)
