"""100ms: management tokens as documented, and the read-only REST client with measurements."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
import respx
from pydantic import SecretStr, ValidationError

from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import AuthError, ConfigError, NotFound, ProviderError, Timeout
from integrations.hms import HmsClient, HmsTarget, management_token, token_expiry

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hms"
SECRET = "app-secret-for-tests-0123456789abcdef"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox(hms_app_secret=SECRET) as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


def test_management_token_has_exactly_the_documented_claims() -> None:
    token = management_token("ak-123", SecretStr(SECRET), now=1_700_000_000, ttl=86400)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert set(claims) == {"access_key", "type", "version", "iat", "nbf", "exp", "jti"}
    assert (claims["access_key"], claims["type"], claims["version"]) == ("ak-123", "management", 2)
    assert claims["iat"] == claims["nbf"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_000 + 86400
    assert uuid.UUID(claims["jti"]).version == 4
    again = management_token("ak-123", SECRET, now=1_700_000_000)
    assert (
        jwt.decode(again, SECRET, ["HS256"], options={"verify_exp": False})["jti"] != claims["jti"]
    )
    with pytest.raises(ConfigError):
        management_token("", SECRET)


def test_token_expiry_reads_exp_without_the_secret() -> None:
    token = management_token("ak", "a-secret-we-do-not-know-later-0123456", now=1_000_000, ttl=7200)
    fresh = token_expiry(token, now=1_000_000)
    assert (fresh.expired, fresh.expiring_soon, fresh.seconds_left) == (False, False, 7200)
    assert fresh.token_type == "management" and fresh.access_key == "ak"
    soon = token_expiry(SecretStr(token), now=1_000_000 + 7200 - 600)
    assert soon.expiring_soon and not soon.expired and soon.sentence.endswith(", soon")
    gone = token_expiry(token, now=1_000_000 + 7201)
    assert gone.expired and gone.sentence.startswith("token expired at 1970-01-12")
    with pytest.raises(ConfigError):
        token_expiry("not-a-jwt")


def test_target_needs_credentials_and_hides_them() -> None:
    with pytest.raises(ValidationError):
        HmsTarget(access_key="ak")
    target = HmsTarget(access_key="ak", app_secret=SecretStr(SECRET))
    token = management_token("ak", SECRET)
    stored = HmsTarget(management_token=SecretStr(token))
    for text in (repr(target), str(target), repr(stored), repr(HmsClient(stored))):
        assert SECRET not in text and token not in text


async def test_rooms_and_concurrent_room_usage(sandbox: SaasSandbox) -> None:
    sandbox.hms_activate(5, peers=3)
    async with HmsClient(sandbox.hms_target()) as hms:
        rooms = await hms.list_rooms(limit=10)
        usage = await hms.room_usage()
    assert len(rooms) == 5 and rooms[0]["name"] == "room-0"
    assert (usage.active_rooms, usage.active_peers, usage.limit) == (5, 15, 100)
    assert usage.utilisation == 0.05 and not usage.over_limit
    first = sandbox.received("hms")[0]
    assert first.path == "/v2/rooms" and first.query == {"limit": "10"}
    assert "authorization" not in first.headers
    assert [(c.endpoint, c.status) for c in hms.calls] == [("/rooms", 200), ("/sessions", 200)]
    assert all(c.latency_ms >= 0 for c in hms.calls)


async def test_sessions_follow_pagination_and_limit_is_checked(sandbox: SaasSandbox) -> None:
    sandbox.hms_activate(25, peers=1)
    async with HmsClient(sandbox.hms_target(room_limit=20)) as hms:
        usage = await hms.room_usage()
        sessions = await hms.active_sessions(page_size=10)
    assert usage.active_rooms == 25 and usage.over_limit
    assert len(sessions) == 25
    pages = [r.query for r in sandbox.received("hms") if r.path == "/v2/sessions"]
    assert [(p["limit"], "start" in p) for p in pages] == [
        ("20", False),
        ("20", True),
        ("10", False),
        ("10", True),
        ("10", True),
    ]
    assert all(p["active"] == "true" for p in pages)


async def test_active_room_reads_session_peers(sandbox: SaasSandbox) -> None:
    sandbox.hms_activate(1, peers=2)
    room_id = sandbox.rooms[0]["id"]
    async with HmsClient(sandbox.hms_target()) as hms:
        room = await hms.active_room(room_id)
        with pytest.raises(NotFound):
            await hms.active_room(sandbox.rooms[2]["id"])
    assert room["id"] == room_id and len(room["session"]["peers"]) == 2
    assert hms.calls[-1].status == 404


async def test_documented_payloads_parse(sandbox: SaasSandbox) -> None:
    router = respx.Router(base_url="https://api.100ms.live/v2", assert_all_called=False)
    router.get("/rooms").mock(
        return_value=httpx.Response(
            200, json=json.loads((FIXTURES / "list_rooms.json").read_text())
        )
    )
    sessions = json.loads((FIXTURES / "list_sessions_active.json").read_text())
    route = router.get("/sessions").mock(return_value=httpx.Response(200, json=sessions))
    router.get("/active-rooms/631a0f990e6ffae22efa610c").mock(
        return_value=httpx.Response(
            200, json=json.loads((FIXTURES / "active_room.json").read_text())
        )
    )
    target = HmsTarget(access_key="ak", app_secret=SecretStr(SECRET))
    async with HmsClient(target, transport=httpx.MockTransport(router.async_handler)) as hms:
        rooms = await hms.list_rooms()
        usage = await hms.room_usage()
        room = await hms.active_room("631a0f990e6ffae22efa610c")
    assert [r["name"] for r in rooms] == ["test-room", "4b2705aa-0000-0000-0000-f470c06d0c03"]
    assert (usage.active_rooms, usage.active_peers) == (2, 2)  # the peer who left is not counted
    assert len(room["session"]["peers"]) == 3
    sent = route.calls.last.request
    assert sent.url.params["active"] == "true"
    bearer = sent.headers["Authorization"].removeprefix("Bearer ")
    assert jwt.decode(bearer, SECRET, ["HS256"])["type"] == "management"


async def test_expired_token_is_an_auth_error_that_says_so(sandbox: SaasSandbox) -> None:
    expired = sandbox.management_token(ttl=-60)
    target = sandbox.hms_target(management_token=SecretStr(expired))
    async with HmsClient(target) as hms:
        with pytest.raises(AuthError) as caught:
            await hms.list_rooms()
        report = await hms.preflight()
    message = str(caught.value)
    assert caught.value.status == 401 and "token is expired" in message
    assert "management token rejected; token expired at" in message
    assert expired not in message and SECRET not in message
    assert hms.calls[0].status == 401 and hms.calls[0].error == message
    assert str(report["token"]).startswith("token expired at")
    assert "401" in str(report["rooms"]) and "401" in str(report["sessions"])


async def test_token_signed_with_the_wrong_secret_is_refused(sandbox: SaasSandbox) -> None:
    target = sandbox.hms_target(app_secret=SecretStr("not-the-app-secret-xyz-0123456789abcdef"))
    async with HmsClient(target) as hms:
        with pytest.raises(AuthError, match="invalid token"):
            await hms.list_rooms()
        assert await hms.preflight() != {"token": True, "rooms": True, "sessions": True}
    async with HmsClient(sandbox.hms_target()) as hms:
        assert await hms.preflight() == {"token": True, "rooms": True, "sessions": True}


async def test_429_with_retry_after_is_retried(sandbox: SaasSandbox) -> None:
    sandbox.fault("hms", status=429, retry_after=0.2, times=1)
    started = time.monotonic()
    async with HmsClient(sandbox.hms_target(backoff=0.01)) as hms:
        assert len(await hms.list_rooms()) == 3
    assert time.monotonic() - started >= 0.2
    assert len(sandbox.received("hms")) == 2
    assert [c.status for c in hms.calls] == [200]


async def test_5xx_is_retried_then_a_provider_error(sandbox: SaasSandbox) -> None:
    sandbox.fault("hms", status=503)
    async with HmsClient(sandbox.hms_target(retries=2, backoff=0.01)) as hms:
        with pytest.raises(ProviderError) as caught:
            await hms.list_rooms()
    assert caught.value.status == 503 and len(sandbox.received("hms")) == 3
    assert hms.calls[-1].status == 503


async def test_latency_is_measured_and_slow_calls_time_out(sandbox: SaasSandbox) -> None:
    sandbox.fault("hms", delay=0.25)
    async with HmsClient(sandbox.hms_target()) as hms:
        await hms.list_rooms()
    assert hms.calls[0].latency_ms >= 250
    sandbox.fault("hms", delay=1.0)
    async with HmsClient(sandbox.hms_target(timeout=0.2, retries=0)) as hms:
        with pytest.raises(Timeout):
            await hms.list_rooms()
    assert hms.calls[0].status is None and "no answer in time" in str(hms.calls[0].error)
