"""Slack: Block Kit builders, webhook posting, signed interactions (docs cited in the module)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import respx
from pydantic import SecretStr

from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import ConfigError, NotFound, ProviderError, Timeout
from integrations.slack import (
    SlackWebhook,
    SlackWebhookTarget,
    approval_decided,
    approval_request,
    incident_declared,
    incident_resolved,
    incident_update,
    parse_approval_value,
    parse_interaction,
    verify_slack_signature,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slack"
HOOK = "https://hooks.slack.com/services/T000/B000/s3cr3tw3bh00kt0k3n"
RUN_ID = "0b8f2c1e-5d6a-4e0f-9c3b-7a1d2e3f4a5b"

# Slack's worked example from "Verifying requests from Slack".
DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOC_TS = "1531420618"
DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
    "channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
    "command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
    "commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    "trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOC_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox() as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


@pytest.fixture
def mocked():
    """A respx router in front of the webhook host, handed to clients as their transport."""
    router = respx.Router(base_url="https://hooks.slack.com", assert_all_called=False)
    return router, httpx.MockTransport(router.async_handler)


def hook_target(**extra) -> SlackWebhookTarget:
    return SlackWebhookTarget(webhook_url=SecretStr(HOOK), backoff=0.01, **extra)


def texts(message: dict) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def test_incident_declared_follows_the_seed_template() -> None:
    started = datetime(2026, 1, 15, 14, 30, tzinfo=UTC)
    message = incident_declared(
        "INC-1234",
        "P0",
        "JUCE Backend",
        "Service Down - High error rate",
        started_at=started,
        impact=["Users unable to access audio engine"],
        on_call="@alice",
        channel="#incident-2026-01-15-juce-backend",
        next_update=started + timedelta(minutes=15),
        links={"Runbook": "https://runbooks.example/service-down"},
    )
    blocks = message["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "🚨 INCIDENT DECLARED — INC-1234"},
    }
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields[:4] == [
        "*Severity:*\nP0 - Critical",
        "*Service:*\nJUCE Backend",
        "*Issue:*\nService Down - High error rate",
        "*Started:*\n2026-01-15 14:30 UTC",
    ]
    assert "*On-Call:*\n@alice" in fields
    assert "Next update: 2026-01-15 14:45 UTC" in texts(message)
    assert "• Users unable to access audio engine" in texts(message)
    assert blocks[-1]["elements"][0]["text"] == "<https://runbooks.example/service-down|Runbook>"
    assert message["text"].startswith("🚨 INCIDENT DECLARED INC-1234: P0 - Critical")


def test_builders_escape_mrkdwn_and_respect_block_limits() -> None:
    message = incident_update(
        "INC-7",
        "investigating",
        actions=["pool <max> & friends"],
        impact="x" * 5000,
        at="14:45 UTC",
        elapsed=timedelta(minutes=75),
    )
    assert "pool &lt;max&gt; &amp; friends" in texts(message)
    assert "1 h 15 min elapsed" in texts(message)
    for block in message["blocks"]:
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
    long_header = incident_declared("I" * 300, "P1", "svc", "t")["blocks"][0]["text"]["text"]
    assert len(long_header) == 150


def test_incident_resolved_lists_resolution_and_verification() -> None:
    message = incident_resolved(
        "INC-1234",
        severity="P0",
        resolved_at=datetime(2026, 1, 15, 15, 30, tzinfo=UTC),
        duration=timedelta(hours=1),
        root_cause="Recent deployment introduced memory leak",
        resolution=["Rolled back to previous version"],
        verification=["Error rates back to normal"],
        postmortem="Scheduled for 2026-01-16 10:00 UTC",
    )
    body = texts(message)
    assert message["blocks"][0]["text"]["text"] == "✅ INCIDENT RESOLVED — INC-1234"
    assert "*Duration:*\\n1 h 0 min" in body
    assert "• Rolled back to previous version" in body
    assert "*Post-Mortem*" in body


def test_approval_request_buttons_carry_the_flow_run_id() -> None:
    message = approval_request(
        RUN_ID,
        runbook="db-connections",
        action="Terminate 3 idle-in-transaction backends",
        risk="destructive",
        severity="P1",
        preview=["pid 4242  app=api  idle in transaction 00:42:10"],
        evidence=["max_connections 97% used"],
    )
    actions = message["blocks"][-1]
    assert actions["type"] == "actions"
    approve, reject = actions["elements"]
    assert (approve["action_id"], approve["value"]) == (f"approve:{RUN_ID}", f"approve:{RUN_ID}")
    assert (reject["action_id"], reject["value"]) == (f"reject:{RUN_ID}", f"reject:{RUN_ID}")
    assert approve["style"] == "primary" and reject["style"] == "danger"
    assert approve["confirm"]["confirm"]["text"] == "Approve"
    assert "pid 4242" in texts(message)
    assert parse_approval_value(approve["value"]) == ("approve", RUN_ID)
    safe = approval_request(RUN_ID, runbook="r", action="a", risk="safe")
    assert "confirm" not in safe["blocks"][-1]["elements"][0]
    with pytest.raises(ConfigError):
        approval_request("x" * 300, runbook="r", action="a", risk="safe")
    with pytest.raises(ConfigError):
        parse_approval_value("maybe:run")


async def test_post_sends_the_block_kit_message_to_the_webhook(sandbox: SaasSandbox) -> None:
    message = incident_declared("INC-1", "P2", "checkout", "Slow payments")
    async with SlackWebhook(sandbox.slack_target()) as slack:
        said = await slack.post(message)
    assert said.startswith("posted to Slack (slack): 🚨 INCIDENT DECLARED INC-1")
    (received,) = sandbox.received("slack")
    assert received.method == "POST" and received.path == sandbox.slack_path
    assert received.body == message
    assert received.headers["content-type"] == "application/json"
    assert sandbox.slack_messages == [message]


async def test_respond_replaces_the_original_message(sandbox: SaasSandbox) -> None:
    answer = approval_decided(RUN_ID, decision="approve", approver="jtorrance", reason="go")
    async with SlackWebhook(sandbox.slack_target()) as slack:
        said = await slack.respond(f"{sandbox.url}/actions/A1/123/tok", answer)
    assert said == "updated the Slack message"
    (received,) = sandbox.received("slack")
    assert received.path == "/actions/A1/123/tok"
    assert received.body["replace_original"] is True
    assert "Approved by jtorrance" in received.body["blocks"][0]["text"]["text"]


async def test_post_refuses_empty_messages_without_sending(sandbox: SaasSandbox) -> None:
    async with SlackWebhook(sandbox.slack_target()) as slack:
        with pytest.raises(ConfigError):
            await slack.post({"text": ""})
        with pytest.raises(ConfigError):
            await slack.post({"blocks": [{"type": "divider"}] * 51})
    assert sandbox.received("slack") == []


async def test_preflight_probes_without_posting(sandbox: SaasSandbox) -> None:
    async with SlackWebhook(sandbox.slack_target()) as slack:
        assert await slack.preflight() == {"webhook_url": True, "webhook": True}
    url = sandbox.url + "/services/T0AAA/B0BBB/revokedtoken"
    async with SlackWebhook(SlackWebhookTarget(webhook_url=SecretStr(url))) as slack:
        result = await slack.preflight()
    assert result["webhook_url"] is True
    assert "404" in result["webhook"] and "revokedtoken" not in result["webhook"]
    assert result["webhook"].kind == "auth"  # 404 no_service: the webhook is gone
    assert sandbox.slack_messages == []


async def test_preflight_says_when_the_url_is_not_a_webhook(sandbox: SaasSandbox) -> None:
    target = SlackWebhookTarget(webhook_url=SecretStr(sandbox.url + "/hooks/abc"))
    async with SlackWebhook(target) as slack:
        result = await slack.preflight()
    assert result["webhook_url"].kind == "error"
    assert "not an incoming-webhook URL" in result["webhook_url"] and "abc" not in str(result)


async def test_429_with_retry_after_is_retried(mocked) -> None:
    router, transport = mocked
    route = router.post("/services/T000/B000/s3cr3tw3bh00kt0k3n").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "0.2"}, text="rate_limited"),
            httpx.Response(200, text="ok"),
        ]
    )
    started = time.monotonic()
    async with SlackWebhook(hook_target(), transport=transport) as slack:
        await slack.post({"text": "hello"})
    assert route.call_count == 2
    assert time.monotonic() - started >= 0.2
    assert json.loads(route.calls.last.request.content) == {"text": "hello"}


async def test_5xx_is_retried_then_raised_without_the_webhook_token(mocked) -> None:
    router, transport = mocked
    route = router.post("/services/T000/B000/s3cr3tw3bh00kt0k3n").mock(
        return_value=httpx.Response(500, text=f"rollup_error for {HOOK}")
    )
    async with SlackWebhook(hook_target(retries=2), transport=transport) as slack:
        with pytest.raises(ProviderError) as caught:
            await slack.post({"text": "hello"})
    assert route.call_count == 3
    assert caught.value.status == 500
    assert "s3cr3tw3bh00kt0k3n" not in str(caught.value)


async def test_revoked_webhook_and_timeouts_map_to_our_errors(mocked) -> None:
    router, transport = mocked
    path = "/services/T000/B000/s3cr3tw3bh00kt0k3n"
    router.post(path).mock(return_value=httpx.Response(404, text="no_service"))
    async with SlackWebhook(hook_target(retries=0), transport=transport) as slack:
        with pytest.raises(NotFound, match="no_service"):
            await slack.post({"text": "x"})
    router.routes.clear()
    router.post(path).mock(side_effect=httpx.ReadTimeout("slow"))
    async with SlackWebhook(hook_target(retries=1), transport=transport) as slack:
        with pytest.raises(Timeout):
            await slack.post({"text": "x"})


def test_secrets_stay_out_of_repr_and_str() -> None:
    target = hook_target()
    client = SlackWebhook(target)
    for text in (repr(target), str(target), repr(client), str(target.model_dump())):
        assert "s3cr3tw3bh00kt0k3n" not in text


def test_signature_matches_slacks_documented_example() -> None:
    now = int(DOC_TS)
    assert verify_slack_signature(DOC_SECRET, DOC_TS, DOC_BODY, DOC_SIG, now=now)
    assert verify_slack_signature(
        SecretStr(DOC_SECRET), int(DOC_TS), DOC_BODY.encode(), DOC_SIG, now
    )


def test_signature_rejects_tampering_wrong_secret_and_stale_timestamps() -> None:
    now = int(DOC_TS)
    assert not verify_slack_signature(DOC_SECRET, DOC_TS, DOC_BODY + "&x=1", DOC_SIG, now=now)
    assert not verify_slack_signature("other-secret", DOC_TS, DOC_BODY, DOC_SIG, now=now)
    assert not verify_slack_signature(DOC_SECRET, DOC_TS, DOC_BODY, DOC_SIG, now=now + 301)
    assert not verify_slack_signature(DOC_SECRET, DOC_TS, DOC_BODY, DOC_SIG, now=now - 301)
    assert verify_slack_signature(DOC_SECRET, DOC_TS, DOC_BODY, DOC_SIG, now=now + 299)
    assert not verify_slack_signature(DOC_SECRET, "not-a-number", DOC_BODY, DOC_SIG, now=now)
    assert not verify_slack_signature("", DOC_TS, DOC_BODY, DOC_SIG, now=now)


def test_parse_interaction_reads_the_documented_block_actions_payload() -> None:
    payload = json.loads((FIXTURES / "block_actions.json").read_text())
    click = parse_interaction(urlencode({"payload": json.dumps(payload)}).encode())
    assert (click.value, click.user_id, click.user_name, click.team_id) == (
        f"approve:{RUN_ID}",
        "UA8RXUSPL",
        "jtorrance",
        "T9TK3CUKW",
    )
    assert click.decision == "approve" and click.flow_run_id == RUN_ID
    assert click.team_domain == "example" and click.channel_id == "CBR2V3XEX"
    assert click.response_url.startswith("https://hooks.slack.com/actions/")


def test_parse_interaction_rejects_other_bodies() -> None:
    for body in (b"", b"payload=not-json", b"token=abc", urlencode({"payload": "{}"})):
        with pytest.raises(ConfigError):
            parse_interaction(body)


@pytest.mark.parametrize(
    "mangle",
    [
        {"team": "T9TK3CUKW"},  # a string where Slack sends an object
        {"team": {"id": "\ud800", "domain": "example"}},  # a lone surrogate, JSON-escaped
        {"user": ["UA8RXUSPL"]},
    ],
    ids=["team-not-an-object", "lone-surrogate", "user-not-an-object"],
)
def test_parse_interaction_rejects_mangled_documented_payloads(mangle) -> None:
    """Found by the receiver's fuzz test: these used to raise past the parser (a 500)."""
    payload = {**json.loads((FIXTURES / "block_actions.json").read_text()), **mangle}
    with pytest.raises(ConfigError):
        parse_interaction(urlencode({"payload": json.dumps(payload)}).encode())


def test_signed_click_round_trip_names_run_and_approver() -> None:
    """A button we built, clicked, signed by Slack, verified and parsed back."""
    message = approval_request(RUN_ID, runbook="rollback", action="Promote dpl_1", risk="risky")
    reject = message["blocks"][-1]["elements"][1]
    payload = json.loads((FIXTURES / "block_actions.json").read_text())
    payload["actions"] = [{**payload["actions"][0], **reject}]
    body = urlencode({"payload": json.dumps(payload)})
    ts = str(int(time.time()))
    secret = "signing-secret-for-tests"
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    assert verify_slack_signature(secret, ts, body, f"v0={digest}")
    click = parse_interaction(body)
    assert (click.decision, click.flow_run_id, click.user_name) == ("reject", RUN_ID, "jtorrance")
