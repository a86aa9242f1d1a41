"""Vercel: deployments listing and promote (rollback) against the documented REST shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import AuthError, NotFound, ProviderError, Timeout
from integrations.vercel import VercelClient, VercelOperator, VercelTarget

FIXTURES = Path(__file__).parents[1] / "fixtures" / "vercel"
TOKEN = "vercel-token-0123456789abcdef"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox(vercel_token=TOKEN) as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


async def test_deployments_sends_documented_query_and_reads_the_list() -> None:
    router = respx.Router(base_url="https://api.vercel.com", assert_all_called=False)
    route = router.get("/v6/deployments").mock(
        return_value=httpx.Response(
            200, json=json.loads((FIXTURES / "deployments.json").read_text())
        )
    )
    target = VercelTarget(token=SecretStr(TOKEN), project="prj_docs", team_id="team_acme")
    transport = httpx.MockTransport(router.async_handler)
    async with VercelClient(target, transport=transport) as vercel:
        newest, older = await vercel.deployments(limit=5)
    sent = route.calls.last.request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert dict(sent.url.params) == {
        "projectId": "prj_docs",
        "limit": "5",
        "target": "production",
        "teamId": "team_acme",
    }
    assert newest.uid == "dpl_2euZBFqxYdDMDG1jTrHFnNZ2eUVa"
    assert newest.url == "docs-9jaeg38me.vercel.app"
    assert newest.created == datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
    assert (newest.state, newest.target, newest.commit_ref) == ("READY", "production", "main")
    assert newest.commit_sha.startswith("c1c1c1c")
    assert newest.label == (
        "dpl_2euZBFqxYdDMDG1jTrHFnNZ2eUVa (created 2024-05-02 10:00 UTC, commit c1c1c1c "
        "'Add search')"
    )
    assert older.commit_message == "Fix typo"


async def test_current_production_comes_from_the_project_target(sandbox: SaasSandbox) -> None:
    async with VercelClient(sandbox.vercel_target()) as vercel:
        current = await vercel.current_production()
        listed = await vercel.deployments()
    assert current is not None and current.uid == "dpl_sandbox2"
    assert [d.uid for d in listed] == ["dpl_sandbox2", "dpl_sandbox1", "dpl_sandbox0"]
    assert sandbox.received("vercel")[0].path == "/v9/projects/prj_sandbox"
    assert not hasattr(vercel, "promote")  # the reader has no write method


async def test_a_project_name_is_resolved_to_its_id_once(sandbox: SaasSandbox) -> None:
    async with VercelClient(sandbox.vercel_target(project="sandbox-app")) as vercel:
        await vercel.deployments(limit=2)
        await vercel.deployments(limit=2)
    calls = [(r.path, r.query.get("projectId")) for r in sandbox.received("vercel")]
    assert calls == [
        ("/v9/projects/sandbox-app", None),
        ("/v6/deployments", "prj_sandbox"),
        ("/v6/deployments", "prj_sandbox"),
    ]


async def test_promote_previews_moves_production_and_is_idempotent(sandbox: SaasSandbox) -> None:
    async with VercelOperator(sandbox.vercel_target()) as vercel:
        plan = await vercel.preview_promote("dpl_sandbox1")
        said = await vercel.promote("dpl_sandbox1")
        again = await vercel.promote("dpl_sandbox1")
    assert not plan.already_current
    assert plan.current is not None and plan.current.uid == "dpl_sandbox2"
    assert plan.text.startswith("production moves from dpl_sandbox2 (created ")
    assert "commit c3d4e5f 'release 2'" in plan.text and "commit b2c3d4e 'release 1'" in plan.text
    assert said == f"promoted to production: {plan.text}"
    assert again.endswith("is already the production deployment")
    assert sandbox.production_id == "dpl_sandbox1"
    posts = [r for r in sandbox.received("vercel") if r.method == "POST"]
    assert [r.path for r in posts] == ["/v10/projects/prj_sandbox/promote/dpl_sandbox1"]


async def test_promote_of_unknown_deployment_is_not_found(sandbox: SaasSandbox) -> None:
    async with VercelOperator(sandbox.vercel_target()) as vercel:
        with pytest.raises(NotFound):
            await vercel.promote("dpl_missing")
    assert sandbox.production_id == "dpl_sandbox2"
    assert not [r for r in sandbox.received("vercel") if r.method == "POST"]


async def test_bad_token_is_an_auth_error_without_the_token(sandbox: SaasSandbox) -> None:
    bad = "wrong-vercel-token-9876543210"
    async with VercelClient(sandbox.vercel_target(token=SecretStr(bad))) as vercel:
        with pytest.raises(AuthError) as caught:
            await vercel.project()
        report = await vercel.preflight()
    assert caught.value.status == 403 and bad not in str(caught.value)
    assert "403" in str(report["project"]) and "403" in str(report["deployments"])
    async with VercelClient(sandbox.vercel_target()) as vercel:
        assert await vercel.preflight() == {"project": True, "deployments": True}


async def test_429_retried_5xx_raised_and_timeouts(sandbox: SaasSandbox) -> None:
    sandbox.fault("vercel", status=429, retry_after=0.05, times=1)
    async with VercelClient(sandbox.vercel_target(backoff=0.01)) as vercel:
        assert len(await vercel.deployments()) == 3
    assert len(sandbox.received("vercel")) == 2
    sandbox.fault("vercel", status=500)
    async with VercelClient(sandbox.vercel_target(retries=1, backoff=0.01)) as vercel:
        with pytest.raises(ProviderError):
            await vercel.deployments()
    assert len(sandbox.received("vercel")) == 4
    sandbox.fault("vercel", delay=1.0)
    async with VercelClient(sandbox.vercel_target(timeout=0.2, retries=0)) as vercel:
        with pytest.raises(Timeout):
            await vercel.project()


def test_secrets_stay_out_of_repr() -> None:
    target = VercelTarget(token=SecretStr(TOKEN), project="p")
    for text in (repr(target), repr(VercelClient(target)), repr(VercelOperator(target))):
        assert TOKEN not in text
