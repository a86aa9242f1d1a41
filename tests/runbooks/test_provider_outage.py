"""The provider-outage runbook as a real Prefect flow against local Statuspage servers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from checks.findings import Finding, Severity, Status
from flows.drills.sandbox.saas import SaasSandbox
from integrations.errors import ApprovalRequired
from integrations.service import ConfiguredAction, Service
from runbooks.engine import live
from runbooks.engine.model import Action, Outcome, Risk
from runbooks.engine.verify import Verdict
from runbooks.provider_outage import ProviderOutageParams
from tests.runbooks.test_rollback import _decide, _until_gate

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def worlds():
    with SaasSandbox() as supabase, SaasSandbox() as vercel, SaasSandbox() as ours:
        yield supabase, vercel, ours


@pytest.fixture
def supabase(worlds) -> SaasSandbox:
    worlds[0].reset()
    return worlds[0]


@pytest.fixture
def vercel(worlds) -> SaasSandbox:
    worlds[1].reset()
    return worlds[1]


@pytest.fixture
def ours(worlds) -> SaasSandbox:
    worlds[2].reset()
    return worlds[2]


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    return tmp_path / "degraded-mode"


def _service(supabase, vercel, ours, flag: Path, **extra) -> Service:
    write = f"import pathlib; pathlib.Path({str(flag)!r}).write_text('on')"
    fields = dict(
        name="checkout-api",
        providers=[supabase.status_page("Supabase"), vercel.status_page("Vercel")],
        statuspage=ours.statuspage_target(),
        actions={
            "enable_degradation_flag": ConfiguredAction(
                description="Serve cached pages and queue writes",
                risk="risky",
                command=[sys.executable, "-c", write],
                undo="run disable_degradation_flag",
            )
        },
    )
    return Service(**{**fields, **extra})


def _params(**overrides) -> ProviderOutageParams:
    values = dict(approval_timeout_seconds=60, verify_timeout_seconds=1, verify_hold_seconds=1)
    return ProviderOutageParams(**{**values, **overrides})


def _writes(sandbox: SaasSandbox) -> list:
    return [r for r in sandbox.received("statuspage") if r.method != "GET"]


async def test_operational_providers_are_healthy_and_nothing_is_planned(
    supabase, vercel, ours, flag
):
    from flows.runbook_flows import provider_outage

    report = await provider_outage(service=_service(supabase, vercel, ours, flag), params=_params())
    assert report.outcome is Outcome.HEALTHY and report.exit_code == 0
    assert [f.check for f in report.findings] == [
        "provider_status.supabase",
        "provider_status.vercel",
    ]
    assert report.plan.actions == []
    assert any("check our API key" in n for n in report.notes)
    assert ours.received("statuspage") == [] and not flag.exists()


async def test_down_and_degraded_providers_dry_run_changes_nothing(supabase, vercel, ours, flag):
    from flows.runbook_flows import provider_outage

    supabase.set_provider("down")
    vercel.set_provider("degraded")
    report = await provider_outage(
        service=_service(supabase, vercel, ours, flag), params=_params(), dry_run=True
    )
    by = {f.target: f for f in report.findings}
    assert (by["Supabase"].status, by["Supabase"].severity) == (Status.CRITICAL, Severity.P0)
    assert (by["Vercel"].status, by["Vercel"].severity) == (Status.WARN, Severity.P2)
    assert by["Supabase"].evidence["dependents"] == ["checkout-api"]
    assert report.severity is Severity.P0 and report.outcome is Outcome.DRY_RUN
    post, degrade = report.plan.actions
    assert (post.kind, post.risk, degrade.risk) == ("statuspage.post", Risk.SAFE, Risk.RISKY)
    title = "Degraded service: Supabase and Vercel outage"
    assert f"open incident '{title}' as identified" in post.preview
    assert "update every 5 minutes" in post.preview  # P0: every 5 minutes (seed 000 Part C)
    assert degrade.preview.startswith("Serve cached pages and queue writes: $ ")
    assert any("Supabase itself" in n and "nothing to change there" in n for n in report.notes)
    assert ours.received("statuspage") == [] and not flag.exists()


async def test_approval_posts_once_turns_degradation_on_and_leaves_providers_alone(
    supabase, vercel, ours, flag, prefect_api
):
    from flows.runbook_flows import provider_outage

    supabase.set_provider("down")
    service = _service(supabase, vercel, ours, flag)
    task, gate = await _until_gate(provider_outage(service=service, params=_params()), prefect_api)
    assert _writes(ours) == [] and not flag.exists(), "nothing before the decision"
    await _decide(prefect_api, gate["flow_run_id"], approved=True)
    report = await asyncio.wait_for(task, 60)

    [created] = _writes(ours)
    assert (created.method, created.path) == ("POST", f"/v1/pages/{ours.page_id}/incidents")
    sent = created.body["incident"]
    assert sent["name"] == "Degraded service: Supabase outage" and sent["status"] == "identified"
    assert sent["body"] == report.plan.actions[0].items[0]["body"]
    assert flag.read_text() == "on"
    assert [r.status for r in report.results] == ["done", "done"]
    assert all(r.method == "GET" for r in supabase.received() + vercel.received())
    # Supabase is still down and our users are told: mitigated (the cause is theirs), not fixed.
    assert report.outcome is Outcome.MITIGATED and report.exit_code == 1
    after = {f.check: f for f in report.verification}
    assert after["provider_status.supabase"].status is Status.CRITICAL
    assert after["users_informed"].status is Status.OK
    assert "'Degraded service: Supabase outage' (identified)" in after["users_informed"].summary
    judgement = report.judgement
    assert judgement is not None and judgement.verdict is Verdict.MITIGATED
    assert "users are informed" in judgement.reason and "Supabase down" in judgement.reason
    assert judgement.next_step.startswith(f"wait for Supabase to recover ({supabase.url})")
    assert "every 5 minutes" in judgement.next_step  # P0 cadence (seed 000 Part C)
    assert any(n.startswith("next step: wait for Supabase") for n in report.notes)

    again = await provider_outage(service=service, params=_params(), approve_as="alice")
    assert [r.method for r in _writes(ours)] == ["POST"], "the open incident is not duplicated"
    assert "already identified with that message" in again.results[0].detail


async def test_provider_recovering_during_verification_is_fixed(supabase, vercel, ours, flag):
    from flows.runbook_flows import provider_outage

    supabase.set_provider("down")

    def recovers(kind: str, data: dict) -> None:  # Supabase ships its fix once we acted
        if kind == "result" and data["result"].action_id == "degradation-flag":
            supabase.set_provider("operational")

    live.subscribe(recovers)
    try:
        report = await provider_outage(
            service=_service(supabase, vercel, ours, flag),
            params=_params(verify_timeout_seconds=5, verify_hold_seconds=2),
            approve_as="alice",
        )
    finally:
        live.unsubscribe(recovers)
    assert [r.status for r in report.results] == ["done", "done"]
    assert report.outcome is Outcome.FIXED and report.exit_code == 0
    assert report.judgement is not None and report.judgement.verdict is Verdict.FIXED
    after = {f.check: f for f in report.verification}
    assert after["provider_status.supabase"].status is Status.OK
    assert after["users_informed"].status is Status.OK  # resolving it is the incident's job


async def test_degradation_without_telling_users_is_not_a_mitigation(supabase, vercel, ours, flag):
    from flows.runbook_flows import provider_outage

    vercel.set_provider("down")
    service = _service(supabase, vercel, ours, flag, statuspage=None)
    report = await provider_outage(service=service, params=_params(), approve_as="alice")
    assert [a.id for a in report.plan.actions] == ["degradation-flag"]
    assert flag.read_text() == "on"
    assert report.outcome is Outcome.PROBLEM_REMAINS and report.exit_code == 1
    judgement = report.judgement
    assert judgement is not None and judgement.verdict is Verdict.NOT_RECOVERED
    assert "post on our status page by hand" in (judgement.next_step or "")
    assert "users_informed" not in {f.check for f in report.verification}


async def test_runs_by_service_name_from_oncall_yaml(
    supabase, vercel, ours, flag, tmp_path, monkeypatch
):
    """What a deployment run or the Prefect UI does: the service is a name in oncall.yaml."""
    from flows.runbook_flows import provider_outage

    supabase.set_provider("down")
    config = tmp_path / "oncall.yaml"
    config.write_text(
        "services:\n"
        "  checkout:\n"
        f"    providers: [{{name: Supabase, url: '{supabase.url}'}}]\n"
        "    statuspage:\n"
        "      api_key: ${OUR_STATUSPAGE_KEY}\n"
        f"      page_id: {ours.page_id}\n"
        f"      base_url: {ours.url}/v1\n"
        "  bare:\n"
        f"    providers: [{{name: Vercel, url: '{vercel.url}'}}]\n"
    )
    monkeypatch.setenv("OUR_STATUSPAGE_KEY", ours.statuspage_api_key)
    monkeypatch.setenv("ONCALL_CONFIG", str(config))
    full = await provider_outage(service="checkout", params=_params(), dry_run=True)
    bare = await provider_outage(service="bare", params=_params(), dry_run=True)
    assert full.target == "checkout" and full.outcome is Outcome.DRY_RUN
    assert [a.id for a in full.plan.actions] == ["status-page"]
    assert bare.target == "bare" and bare.outcome is Outcome.HEALTHY
    assert ours.statuspage_api_key not in full.model_dump_json()
    assert _writes(ours) == []


async def test_rejected_and_timed_out_plans_touch_nothing(
    supabase, vercel, ours, flag, prefect_api
):
    from flows.runbook_flows import provider_outage

    supabase.set_provider("down")
    service = _service(supabase, vercel, ours, flag)
    task, gate = await _until_gate(provider_outage(service=service, params=_params()), prefect_api)
    await _decide(prefect_api, gate["flow_run_id"], approved=False)
    rejected = await asyncio.wait_for(task, 60)
    timed_out = await provider_outage(service=service, params=_params(approval_timeout_seconds=5))
    assert rejected.outcome is Outcome.REJECTED and timed_out.outcome is Outcome.TIMED_OUT
    assert _writes(ours) == [] and not flag.exists()


async def test_provider_recovering_before_approval_is_not_announced(
    supabase, vercel, ours, flag, prefect_api
):
    from flows.runbook_flows import provider_outage

    supabase.set_provider("down")
    service = _service(supabase, vercel, ours, flag)
    task, gate = await _until_gate(provider_outage(service=service, params=_params()), prefect_api)
    supabase.set_provider("operational")
    await _decide(prefect_api, gate["flow_run_id"], approved=True)
    report = await asyncio.wait_for(task, 60)
    assert [r.status for r in report.results] == ["skipped", "skipped"]
    assert "operational again" in report.results[0].detail
    assert _writes(ours) == [] and not flag.exists()
    assert report.outcome is Outcome.FIXED


async def test_without_status_page_or_flag_only_advice_is_given(supabase, vercel, ours, flag):
    from flows.runbook_flows import provider_outage

    vercel.set_provider("down")
    service = _service(supabase, vercel, ours, flag, statuspage=None, actions={})
    report = await provider_outage(service=service, params=_params())
    assert report.plan.actions == []
    assert report.outcome is Outcome.PROBLEM_REMAINS and report.exit_code == 1
    notes = " ".join(report.notes)
    assert "no statuspage configured" in notes and "'enable_degradation_flag'" in notes


async def test_unreachable_status_pages_exit_3():
    from flows.runbook_flows import provider_outage

    with SaasSandbox() as gone:
        page = gone.status_page("Neon", retries=0)
    report = await provider_outage(service=Service(name="x", providers=[page]), params=_params())
    assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3
    assert all(f.status is Status.ERROR for f in report.findings)


async def test_remediations_refuse_without_an_approval_record(supabase, vercel, ours, flag):
    from runbooks.provider_outage import enable_degradation
    from runbooks.remedies.statuspage import post_status

    supabase.set_provider("down")
    service = _service(supabase, vercel, ours, flag)
    providers = [{"name": "Supabase", "url": supabase.url, "components": [], "state": "down"}]
    post = Action(
        id="status-page",
        kind="statuspage.post",
        target="t",
        title="t",
        risk=Risk.SAFE,
        preview="",
        items=[{"name": "n", "status": "identified", "body": "b", "providers": providers}],
    )
    flip = post.model_copy(
        update={
            "id": "degradation-flag",
            "items": [{"action": "enable_degradation_flag", "providers": providers}],
        }
    )
    with pytest.raises(ApprovalRequired):
        await post_status(post, service=service)
    with pytest.raises(ApprovalRequired):
        await enable_degradation(flip, service=service)
    assert _writes(ours) == [] and not flag.exists()


def test_plan_moves_to_monitoring_once_the_provider_monitors_its_fix(supabase, vercel, ours, flag):
    from runbooks.provider_outage import plan_remediation

    incident = {"id": "i1", "name": "DB outage", "status": "monitoring"}
    finding = Finding(
        check="provider_status.supabase",
        target="Supabase",
        status=Status.WARN,
        summary="s",
        severity=Severity.P1,
        evidence={
            "provider": "Supabase",
            "page_url": "https://status.supabase.com",
            "state": "degraded",
            "indicator": "major",
            "description": "Partial outage",
            "incidents": [incident],
            "components_we_use": ["Database"],
        },
    )
    service = _service(supabase, vercel, ours, flag)
    plan = plan_remediation(service, [finding], _params(our_components=["cmp1"]))
    post = plan.actions[0]
    item = post.items[0]
    assert item["status"] == "monitoring" and "report a fix is in place" in item["body"]
    assert item["component_status"] == "degraded_performance" and item["component_ids"] == ["cmp1"]
    assert item["providers"][0]["components"] == ["Database"]
    assert "every 15 minutes" in item["body"]


def test_the_verdict_never_calls_an_unread_provider_page_fixed():
    from runbooks.engine.verify import Sample
    from runbooks.provider_outage import RUNBOOK

    def page(status: Status) -> Finding:
        evidence = {
            "provider": "Neon",
            "state": "down",
            "page_url": "https://neonstatus.com",
            "indicator": "critical",
            "description": "Major outage",
        }
        return Finding(
            check="provider_status.neon",
            target="Neon",
            status=status,
            summary=f"Neon {status}",
            evidence=evidence if status is not Status.ERROR else {},
            severity=Severity.P0 if status is Status.CRITICAL else None,
        )

    told = Finding(check="users_informed", target="ours", status=Status.OK, summary="told")
    flag = Finding(check="other", target="x", status=Status.WARN, summary="still wrong")
    params = _params(verify_hold_seconds=1)

    def judge(*rounds: list[Finding]) -> tuple[Verdict, str]:
        samples = [Sample(at_s=float(i), findings=r) for i, r in enumerate(rounds)]
        judgement = RUNBOOK.verify.judge(samples, params)
        return judgement.verdict, judgement.reason

    unread = [page(Status.ERROR)]
    assert judge(unread, unread)[0] is Verdict.NOT_RECOVERED  # healthy-looking, but unseen
    assert judge(unread + [told], unread + [told])[0] is Verdict.MITIGATED
    assert "recovery not confirmed" in judge(unread, unread)[1]
    down = [page(Status.CRITICAL), told]
    assert judge(down, down) == (
        Verdict.MITIGATED,
        "users are informed (told); still Neon down: the cause is on the provider's side",
    )
    # Something besides the provider is still wrong: not the provider's alone to fix.
    assert judge(down + [flag], down + [flag])[0] is Verdict.NOT_RECOVERED
    up = [page(Status.OK), told]
    assert judge(up, up)[0] is Verdict.FIXED


# -- the drill --------------------------------------------------------------------------------


def test_drill_provider_recovers_only_after_our_mitigation(tmp_path):
    import time as clock

    from flows.drills.provider_outage import ProviderFix

    with SaasSandbox() as provider, SaasSandbox() as ours:
        provider.set_provider("down")
        flag = tmp_path / "degraded-mode"
        fix = ProviderFix(provider, ours, flag, after=0.3)
        fix.start()
        try:
            clock.sleep(0.8)
            assert provider.provider_state == "down" and fix.mitigated_at is None
            flag.write_text("on")  # degradation alone is not the whole mitigation
            clock.sleep(0.8)
            assert provider.provider_state == "down" and fix.mitigated_at is None
            ours.incidents["i1"] = {"status": "identified"}
            deadline = clock.monotonic() + 5
            while provider.provider_state == "down" and clock.monotonic() < deadline:
                clock.sleep(0.05)
        finally:
            fix.stop()
        assert provider.provider_state == "operational"
        assert fix.recovered_at - fix.mitigated_at >= 0.3


def test_drill_runs_end_to_end_and_passes():
    import io

    from rich.console import Console

    from flows.drills.provider_outage import RECOVERY_S
    from flows.drills.registry import load

    card = load("provider-outage")(
        approve_as="ci", console=Console(file=io.StringIO()), interactive=False, show=False
    )
    # Nothing the runbook does removes the cause: mitigated is enough, fixed once the
    # provider's own fix lands and verification sees it.
    assert card.passed and card.expect == "fixed-or-mitigated", card
    assert card.result in ("fixed", "mitigated") and card.severity == "P0"
    status, flag = card.actions
    assert status.startswith("Post 'Degraded service: Supabase outage' (identified)")
    assert ": done (" in status and ": done (" in flag
    assert flag.startswith("Turn on graceful degradation (enable_degradation_flag)")
    assert card.times_s["verify"] - card.times_s["mitigate"] >= RECOVERY_S - 0.5
    assert card.approvals == ["approved by ci via cli-preapproved"]
