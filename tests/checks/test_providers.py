"""Provider status pages: down, degraded and operational told apart on real Statuspage answers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from checks.findings import Severity, Status, timed
from checks.providers import our_incident, provider_state, provider_status
from flows.drills.sandbox.saas import SaasSandbox
from integrations.statuspage import (
    StatuspageIncidents,
    StatuspageManage,
    StatuspagePage,
    StatuspagePublic,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "statuspage"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox() as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


async def _check(page: StatuspagePage, dependents: tuple = ("api",), **kwargs) -> list:
    dependents = list(dependents)
    async with StatuspagePublic(page) as public:
        return await timed(
            "provider_status",
            page.name,
            lambda: provider_status(public, dependents=dependents, **kwargs),
        )


async def test_operational_provider_is_ok_and_names_its_dependents(sandbox: SaasSandbox):
    [finding] = await _check(sandbox.status_page("Supabase"), dependents=["api", "worker"])
    assert finding.status is Status.OK and finding.severity is None
    assert finding.evidence["state"] == "operational"
    assert finding.evidence["dependents"] == ["api", "worker"]
    assert finding.evidence["indicator"] == "none" and finding.evidence["incidents"] == []
    assert finding.target == "Supabase"
    assert [r.path for r in sandbox.received("status")] == ["/api/v2/summary.json"]


async def test_degraded_provider_warns_one_level_milder_than_its_outage(sandbox: SaasSandbox):
    sandbox.set_provider("degraded")
    [finding] = await _check(sandbox.status_page("Supabase"), down_severity=Severity.P0)
    assert finding.status is Status.WARN and finding.severity is Severity.P1
    assert finding.evidence["state"] == "degraded"
    assert finding.evidence["affected_components"] == [
        {"name": "API", "status": "degraded_performance"}
    ]
    assert [i["name"] for i in finding.evidence["incidents"]] == ["Service degraded"]
    assert "Supabase is degraded" in finding.summary
    assert "API degraded_performance" in finding.summary


async def test_down_provider_is_critical_with_its_outage_severity(sandbox: SaasSandbox):
    sandbox.set_provider("down")
    [finding] = await _check(sandbox.status_page("Stripe"), down_severity=Severity.P0)
    assert finding.status is Status.CRITICAL and finding.severity is Severity.P0
    assert finding.evidence["state"] == "down" and finding.evidence["indicator"] == "critical"
    assert {c["status"] for c in finding.evidence["affected_components"]} == {"major_outage"}
    assert "Stripe is down" in finding.summary and "api depends on it" in finding.summary


async def test_only_components_we_use_count(sandbox: SaasSandbox):
    sandbox.set_provider("degraded")  # only "API" is degraded
    [unused] = await _check(sandbox.status_page("Vercel"), components=["Dashboard"])
    [used] = await _check(sandbox.status_page("Vercel"), components=["api"])
    assert unused.status is Status.OK and unused.evidence["affected_components"] == []
    assert "API degraded_performance is not a component api uses" in unused.summary
    assert used.status is Status.WARN and used.severity is Severity.P2


async def test_a_recorded_github_page_reads_degraded_without_group_components():
    doc = json.loads((FIXTURES / "summary_degraded.json").read_text())
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=doc))
    page = StatuspagePage(name="GitHub", url="https://www.githubstatus.com")
    async with StatuspagePublic(page, transport=transport) as public:
        [finding] = await provider_status(public, dependents=["ci"])
    assert finding.status is Status.WARN
    assert [c["name"] for c in finding.evidence["affected_components"]] == [
        "API Requests",
        "Actions",
    ]
    [incident] = finding.evidence["incidents"]
    assert incident["status"] == "identified"
    assert incident["latest_update"] == "We've identified the cause and are rolling out a fix."


async def test_unreachable_page_is_an_error_finding():
    with SaasSandbox() as gone:
        page = gone.status_page("Neon", retries=0)
    [finding] = await _check(page)
    assert finding.status is Status.ERROR and finding.unreachable
    assert finding.check == "provider_status"


async def test_a_failing_status_page_is_an_error_but_not_unreachable(sandbox: SaasSandbox):
    sandbox.fault("status", status=502)
    [finding] = await _check(sandbox.status_page("OpenAI", retries=0))
    assert finding.status is Status.ERROR and not finding.unreachable
    assert "502" in finding.summary


def test_state_rules():
    from integrations.statuspage import Component, ProviderStatus

    def status(indicator: str, *components: tuple[str, str]) -> ProviderStatus:
        return ProviderStatus(
            name="p",
            page_url="u",
            indicator=indicator,
            description="d",
            degraded_components=[Component(name=n, status=s) for n, s in components],
        )

    assert provider_state(status("critical")) == "down"
    assert provider_state(status("minor", ("Auth", "major_outage"))) == "down"
    assert provider_state(status("minor", ("Auth", "major_outage")), ["Database"]) == "operational"
    assert provider_state(status("major", ("Auth", "partial_outage")), ["auth"]) == "degraded"
    assert provider_state(status("none")) == "operational"


async def test_our_incident_says_whether_our_users_see_the_message(sandbox: SaasSandbox):
    target = sandbox.statuspage_target()
    name = "Degraded service: Supabase outage"
    async with StatuspageIncidents(target) as page:
        [before] = await our_incident(page, [name])
    async with StatuspageManage(target) as manage:
        await manage.create_incident(name, "identified", "We are working around it.")
    async with StatuspageIncidents(target) as page:
        [after] = await our_incident(page, [name.upper(), "another"])
    assert before.status is Status.UNKNOWN and not before.status.is_problem
    assert after.status is Status.OK and f"'{name}' (identified)" in after.summary
    assert sandbox.statuspage_api_key not in after.model_dump_json()
    assert [r.method for r in sandbox.received("statuspage")].count("POST") == 1


def test_the_incident_reader_has_no_write_method():
    writes = {"create_incident", "update_incident", "resolve_incident"}
    assert writes <= set(dir(StatuspageManage))
    assert not writes & {m for m in dir(StatuspageIncidents) if not m.startswith("_")}
