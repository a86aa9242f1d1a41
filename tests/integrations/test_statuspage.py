"""Statuspage: public page reads and manage-API incident writes against documented shapes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import AuthError, ConfigError, ProviderError, Timeout
from integrations.statuspage import (
    StatuspageManage,
    StatuspageManageTarget,
    StatuspagePage,
    StatuspagePublic,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "statuspage"
API_KEY = "sp-api-key-0123456789abcdef"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox(statuspage_api_key=API_KEY) as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def router_for(base: str) -> tuple[respx.Router, httpx.MockTransport]:
    router = respx.Router(base_url=base, assert_all_called=False)
    return router, httpx.MockTransport(router.async_handler)


async def test_summary_reads_a_documented_degraded_page() -> None:
    router, transport = router_for("https://www.githubstatus.com")
    route = router.get("/api/v2/summary.json").mock(
        return_value=httpx.Response(200, json=fixture("summary_degraded.json"))
    )
    page = StatuspagePage(name="GitHub", url="https://www.githubstatus.com")
    async with StatuspagePublic(page, transport=transport) as public:
        status = await public.summary()
    assert route.called
    assert (status.indicator, status.description) == ("minor", "Partially Degraded Service")
    assert [(c.name, c.status) for c in status.degraded_components] == [
        ("API Requests", "degraded_performance"),
        ("Actions", "partial_outage"),
    ]
    (incident,) = status.incidents
    assert incident.name == "Incident with Actions and API Requests"
    assert incident.status == "identified" and incident.impact == "minor"
    assert incident.latest_update == "We've identified the cause and are rolling out a fix."
    assert incident.shortlink == "https://stspg.io/pjzcvkr9d4lh"
    assert not status.healthy
    assert "API Requests degraded_performance" in status.sentence


async def test_each_public_endpoint_is_read_from_its_documented_path(
    sandbox: SaasSandbox,
) -> None:
    async with StatuspagePublic(sandbox.status_page("100ms")) as public:
        assert await public.status() == {
            "indicator": "none",
            "description": "All Systems Operational",
        }
        assert {c.status for c in await public.components()} == {"operational"}
        assert await public.unresolved_incidents() == []
        assert (await public.summary()).healthy
    paths = [r.path for r in sandbox.received("status")]
    assert paths == [
        "/api/v2/status.json",
        "/api/v2/components.json",
        "/api/v2/incidents/unresolved.json",
        "/api/v2/summary.json",
    ]


@pytest.mark.parametrize(
    ("state", "indicator", "component_status"),
    [("degraded", "minor", "degraded_performance"), ("down", "critical", "major_outage")],
)
async def test_provider_switch_shows_degraded_and_down(
    sandbox: SaasSandbox, state: str, indicator: str, component_status: str
) -> None:
    sandbox.set_provider(state)  # type: ignore[arg-type]
    async with StatuspagePublic(sandbox.status_page("100ms")) as public:
        status = await public.summary()
    assert status.indicator == indicator
    assert component_status in {c.status for c in status.degraded_components}
    assert status.incidents[0].latest_update == "We are investigating elevated errors."
    assert not status.healthy


async def test_public_page_errors_and_timeouts(sandbox: SaasSandbox) -> None:
    sandbox.fault("status", status=502)
    async with StatuspagePublic(sandbox.status_page(retries=1, backoff=0.01)) as public:
        with pytest.raises(ProviderError):
            await public.summary()
        assert "502" in str((await public.preflight())["status_page"])
    assert len(sandbox.received("status")) == 4
    sandbox.fault("status", delay=1.0)
    async with StatuspagePublic(sandbox.status_page(timeout=0.2, retries=0)) as public:
        with pytest.raises(Timeout):
            await public.status()


async def test_create_incident_sends_the_documented_body_and_oauth_header() -> None:
    router, transport = router_for("https://api.statuspage.io")
    router.get("/v1/pages/gytm3ptyqdpw/incidents/unresolved").mock(
        return_value=httpx.Response(200, json=[])
    )
    create = router.post("/v1/pages/gytm3ptyqdpw/incidents").mock(
        return_value=httpx.Response(201, json=fixture("incident.json"))
    )
    target = StatuspageManageTarget(api_key=SecretStr(API_KEY), page_id="gytm3ptyqdpw")
    async with StatuspageManage(target, transport=transport) as manage:
        incident, said = await manage.create_incident(
            "API Down",
            "investigating",
            "We are aware of an issue affecting the API.",
            component_ids=["8kbf7d35c070"],
            impact_override="critical",
        )
    sent = create.calls.last.request
    assert sent.headers["Authorization"] == f"OAuth {API_KEY}"
    assert json.loads(sent.content) == {
        "incident": {
            "name": "API Down",
            "status": "investigating",
            "body": "We are aware of an issue affecting the API.",
            "component_ids": ["8kbf7d35c070"],
            "components": {"8kbf7d35c070": "major_outage"},
            "impact_override": "critical",
        }
    }
    assert incident.id == "p31zjtct2jer" and incident.shortlink == "http://stspg.io/p31zjtct2jer"
    assert said == "opened incident 'API Down' (p31zjtct2jer) as investigating"


async def test_incident_lifecycle_is_idempotent(sandbox: SaasSandbox) -> None:
    async with StatuspageManage(sandbox.statuspage_target()) as manage:
        incident, said = await manage.create_incident("Video down", body="Investigating")
        again, said_again = await manage.create_incident("Video down", body="Investigating")
        assert again.id == incident.id
        assert said_again == f"incident 'Video down' is already open ({incident.id})"
        steps = [
            await manage.update_incident(incident.id, "identified", "Token expired"),
            await manage.update_incident(incident.id, "identified", "Token expired"),
            await manage.update_incident(incident.id, "identified", "Rotating the token"),
            await manage.resolve_incident(incident.id, "Resolved"),
            await manage.resolve_incident(incident.id, "Resolved again"),
        ]
    assert steps == [
        f"moved incident {incident.id} from investigating to identified",
        f"incident {incident.id} is already identified with that message",
        f"posted an update on incident {incident.id}; status stays identified",
        f"moved incident {incident.id} from identified to resolved",
        f"incident {incident.id} is already resolved",
    ]
    writes = [r for r in sandbox.received("statuspage") if r.method in ("POST", "PATCH")]
    assert [r.method for r in writes] == ["POST", "PATCH", "PATCH", "PATCH"]
    assert writes[1].body == {"incident": {"status": "identified", "body": "Token expired"}}
    assert all("authorization" not in r.headers for r in sandbox.received())
    updates = sandbox.incidents[incident.id]["incident_updates"]
    assert [u["status"] for u in updates] == [
        "resolved",
        "identified",
        "identified",
        "investigating",
    ]


async def test_our_open_incident_shows_on_the_public_page(sandbox: SaasSandbox) -> None:
    async with StatuspageManage(sandbox.statuspage_target()) as manage:
        incident, _ = await manage.create_incident(
            "Checkout slow", body="Looking", component_ids=["cmp0"]
        )
        async with StatuspagePublic(sandbox.status_page()) as public:
            during = await public.summary()
            await manage.resolve_incident(incident.id, "Fixed")
            after = await public.summary()
    assert during.indicator == "minor" and during.incidents[0].name == "Checkout slow"
    assert ("API", "major_outage") in [(c.name, c.status) for c in during.degraded_components]
    assert after.healthy


async def test_wrong_key_is_an_auth_error_without_the_key(sandbox: SaasSandbox) -> None:
    target = sandbox.statuspage_target(api_key=SecretStr("wrong-key-abcdef"))
    async with StatuspageManage(target) as manage:
        with pytest.raises(AuthError) as caught:
            await manage.unresolved()
        result = await manage.preflight()
    assert caught.value.status == 401 and "wrong-key-abcdef" not in str(caught.value)
    # Refused credentials are said once, not once per capability.
    assert "401" in result["page"] and result["page"].kind == "auth"
    assert "incidents" not in result and "wrong-key-abcdef" not in str(result)
    async with StatuspageManage(sandbox.statuspage_target()) as manage:
        assert await manage.preflight() == {"page": True, "incidents": True}


async def test_statuses_are_validated_before_any_call(sandbox: SaasSandbox) -> None:
    async with StatuspageManage(sandbox.statuspage_target()) as manage:
        with pytest.raises(ConfigError):
            await manage.create_incident("x", status="on fire")
        with pytest.raises(ConfigError):
            await manage.update_incident("abc", "fixed", "done")
    assert sandbox.received("statuspage") == []


async def test_429_with_retry_after_is_retried(sandbox: SaasSandbox) -> None:
    sandbox.fault("statuspage", status=429, retry_after=0.05, times=1)
    async with StatuspageManage(sandbox.statuspage_target(backoff=0.01)) as manage:
        assert await manage.unresolved() == []
    assert len(sandbox.received("statuspage")) == 2


def test_secrets_stay_out_of_repr() -> None:
    target = StatuspageManageTarget(api_key=SecretStr(API_KEY), page_id="p")
    assert API_KEY not in repr(target) and API_KEY not in repr(StatuspageManage(target))
