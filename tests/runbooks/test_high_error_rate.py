"""The high-error-rate runbook as a real Prefect flow on a real Prometheus and faulty apps.

Apps (module-scoped): ``flaky`` starts failing 30 % of requests behind a "feature flag" (its
/control ``error_rate``, switched off by a configured HTTP action); ``regressed`` starts
failing with the deploy of v2; ``surged`` starts failing with a traffic surge, under a local
Kubernetes API server that can scale it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flows.drills.sandbox.apps import SandboxApp
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.prometheus import PrometheusProcess, SandboxUnavailable, free_port
from integrations.errors import ApprovalRequired
from integrations.kubernetes import KubernetesTarget
from integrations.postgres import PostgresTarget
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.service import ConfiguredAction, HttpCall, HttpEndpoint, Service
from runbooks.engine.model import Action, Outcome, Risk
from runbooks.high_error_rate import HighErrorRateParams
from tests.oncall_proc import oncall
from tests.runbooks.test_app_down import _on_first_recovery
from tests.runbooks.test_db_connections import _decide, _until_gate

pytestmark = pytest.mark.usefixtures("prefect_api")


async def _samples(url: str, job: str) -> float:
    async with PrometheusClient(PrometheusTarget(url=url, retries=0)) as c:
        found = await c.query(f'count_over_time(app_build_info{{job="{job}"}}[1m])')
        return found.value or 0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[dict[str, Any]]:
    try:
        prom = PrometheusProcess()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    apps = {
        "flaky": SandboxApp("faulty", latency=0.01),
        "regressed": SandboxApp("faulty", latency=0.01),
        "surged": SandboxApp("faulty", latency=0.01, rps=5),
    }
    kube = KubeApiServer().start()
    try:
        for app in apps.values():
            app.start()
        for app in apps.values():
            app.wait_ready()
        began = time.monotonic()
        kube.seed_deployment("surged", ["surged:1.0"], replicas=2)
        prom.set_targets({job: [app.address] for job, app in apps.items()})
        with prom:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and asyncio.run(_samples(prom.url, "surged")) < 6:
                time.sleep(0.3)
            # The apps' own start is a deploy too: keep it well before the injected rise.
            time.sleep(max(0.0, began + 12 - time.monotonic()))
            apps["flaky"].control(error_rate=0.3)
            apps["regressed"].control(version="v2", error_rate=0.2)
            apps["surged"].control(rps=40, error_rate=0.1)
            time.sleep(6)
            yield {"prom": prom, "apps": apps, "kube": kube}
    finally:
        kube.stop()
        for app in apps.values():
            app.stop()


def _params(**overrides: Any) -> HighErrorRateParams:
    values = dict(
        window_seconds=5,
        verify_window_seconds=5,
        lookback_seconds=60,
        step_seconds=1,
        # wider than the rise's lag after a deploy, narrower than the time since the apps began
        deploy_window_seconds=6,
        approval_timeout_seconds=60,
        verify_timeout_seconds=20,
        verify_hold_seconds=3,
    )
    return HighErrorRateParams(**{**values, **overrides})


def _prom(sandbox) -> PrometheusTarget:
    return PrometheusTarget(url=sandbox["prom"].url, retries=0)


def _flaky(sandbox, pgdb=None) -> Service:
    app = sandbox["apps"]["flaky"]
    flag = ConfiguredAction(
        description="Disable the flaky feature",
        risk="safe",
        http=HttpCall(method="POST", url=f"{app.url}/control", json={"error_rate": 0}),
        undo=f"POST {app.url}/control with the feature's old error_rate",
    )
    return Service(
        name="flaky",
        prometheus=_prom(sandbox),
        actions={"disable_feature_flag": flag},
        postgres=PostgresTarget(name="db", dsn=pgdb.dsn) if pgdb else None,
        http=[HttpEndpoint(name="health", url=f"{app.url}/health")],
    )


def _error_rates(app: SandboxApp) -> set[float]:
    return {e["error_rate"] for e in app.state()["endpoints"].values()}


def _by_check(findings) -> dict[str, Any]:
    return {f.check: f for f in findings}


async def test_dry_run_diagnoses_a_p0_and_switches_nothing_off(sandbox, pgdb):
    from flows.runbook_flows import high_error_rate

    app = sandbox["apps"]["flaky"]
    report = await high_error_rate(service=_flaky(sandbox, pgdb), params=_params(), dry_run=True)
    found = _by_check(report.findings)
    assert report.outcome is Outcome.DRY_RUN
    assert found["error_rate"].evidence["error_ratio"] == pytest.approx(0.3, abs=0.07)
    assert (found["error_rate"].status, found["error_rate"].severity) == ("critical", "P0")
    assert report.severity == "P0"
    assert found["top_failing_endpoints"].status == "warn"
    assert found["deploy_coincidence"].status == "ok"  # the flag, not a deploy
    assert found["traffic_spike"].status == "ok"
    assert found["external_call"].status == "ok" and found["top_statements"].check
    [action] = report.plan.actions
    assert action.kind == "configured" and action.risk is Risk.SAFE
    assert action.preview.startswith(f"POST {app.url}/control body {{'error_rate': 0}}")
    assert _error_rates(app) == {0.3}


async def test_rejected_and_timed_out_plans_switch_nothing_off(sandbox, prefect_api):
    from flows.runbook_flows import high_error_rate

    app = sandbox["apps"]["flaky"]
    task, gate = await _until_gate(
        high_error_rate(service=_flaky(sandbox), params=_params()), prefect_api
    )
    await asyncio.to_thread(_decide, prefect_api, gate["flow_run_id"], approved=False)
    rejected = await asyncio.wait_for(task, 60)
    timed_out = await high_error_rate(
        service=_flaky(sandbox), params=_params(approval_timeout_seconds=5)
    )
    assert rejected.outcome is Outcome.REJECTED and rejected.results == []
    assert timed_out.outcome is Outcome.TIMED_OUT and timed_out.results == []
    assert _error_rates(app) == {0.3}


async def test_remediations_are_refused_without_an_approval_record(sandbox):
    from runbooks.remedies.configured import run_configured_action
    from runbooks.remedies.scale import scale_out

    flag = Action(
        id="disable-feature-flag",
        kind="configured",
        target="t",
        title="t",
        risk=Risk.SAFE,
        preview="",
        params={"name": "disable_feature_flag"},
    )
    scale = Action(
        id="scale-out",
        kind="kubernetes.scale",
        target="t",
        title="t",
        risk=Risk.RISKY,
        preview="",
        params={"mechanism": "kubernetes"},
    )
    writes = len(sandbox["kube"].writes())
    with pytest.raises(ApprovalRequired):
        await run_configured_action(flag, service=_flaky(sandbox))
    with pytest.raises(ApprovalRequired):
        await scale_out(scale, service=_flaky(sandbox))
    assert _error_rates(sandbox["apps"]["flaky"]) == {0.3}
    assert len(sandbox["kube"].writes()) == writes


async def test_a_deploy_made_rise_is_handed_to_rollback(sandbox):
    from flows.runbook_flows import high_error_rate

    service = Service(name="regressed", prometheus=_prom(sandbox))
    report = await high_error_rate(service=service, params=_params())
    found = _by_check(report.findings)
    assert found["deploy_coincidence"].status == "warn"
    assert found["deploy_coincidence"].evidence["deploy"]["what"] == "version v2"
    assert report.plan.actions == []
    assert [s["action"] for s in report.plan.spared] == ["rollback"]
    assert any("hand over to the rollback runbook" in n for n in report.notes)
    assert report.outcome is Outcome.PROBLEM_REMAINS


async def test_a_traffic_surge_gets_a_scale_out_of_exactly_the_preview(sandbox):
    from flows.runbook_flows import high_error_rate

    kube = sandbox["kube"]
    service = Service(
        name="surged",
        prometheus=_prom(sandbox),
        kubernetes=KubernetesTarget(deployment="surged", api_url=kube.url),
    )
    report = await high_error_rate(
        service=service, params=_params(verify_timeout_seconds=1), approve_as="alice"
    )
    assert _by_check(report.findings)["traffic_spike"].status == "warn"
    [action] = report.plan.actions
    assert action.preview.startswith("kubectl scale deployment/surged -n default --replicas=4")
    assert action.undo == "kubectl scale deployment/surged -n default --replicas=2"
    [result] = report.results
    assert result.status == "done", result.detail
    assert kube.get("deployments", "surged")["spec"]["replicas"] == 4
    [write] = [w for w in kube.writes() if "surged" in w.path]
    assert write.method == "PATCH" and write.path.endswith("/deployments/surged/scale")
    # more fake replicas do not help the real app: honestly not fixed
    assert report.outcome is Outcome.PROBLEM_REMAINS
    assert report.judgement is not None and report.judgement.verdict == "not_recovered"
    assert report.judgement.reason.startswith("still unhealthy: ")


async def test_prometheus_down_or_failing_is_unreachable_exit_3(sandbox):
    from flows.runbook_flows import high_error_rate

    down = Service(
        name="gone", prometheus=PrometheusTarget(url=f"http://127.0.0.1:{free_port()}", retries=0)
    )
    broken = Service(name="flaky", prometheus=_prom(sandbox), promql={"selector": 'job="x"}('})
    for service in (down, broken):
        report = await high_error_rate(service=service, params=_params())
        assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3
        assert report.findings and all(f.status == "error" for f in report.findings)
    assert "bad_data" in report.findings[0].summary


async def test_errors_that_come_back_within_the_hold_are_mitigated_not_fixed(sandbox):
    """The flag goes off and the error rate drops under 1 %, then a config push turns the
    feature back on inside the hold window: the symptom went away, the cause did not."""
    from flows.runbook_flows import high_error_rate

    app = sandbox["apps"]["flaky"]
    app.control(error_rate=0.3)  # whatever an earlier test left, the fault is on
    with _on_first_recovery(lambda: app.control(error_rate=0.3)):  # the config push
        report = await high_error_rate(
            service=_flaky(sandbox), params=_params(verify_hold_seconds=15), approve_as="alice"
        )
    assert [r.status for r in report.results] == ["done"]
    assert report.outcome is Outcome.MITIGATED and report.exit_code == 1
    judgement = report.judgement
    assert judgement is not None and judgement.verdict == "mitigated"
    assert judgement.reason.startswith("the error rate came back within 15s of the fix: ")
    assert "of requests fail (5xx)" in judgement.reason
    assert "oncall run rollback" in (judgement.next_step or "")
    assert f"next step: {judgement.next_step}" in report.notes
    assert "verified" in report.timings  # it was healthy once: the relapse came after
    assert _error_rates(app) == {0.3}


def test_runs_by_service_name_from_oncall_yaml(sandbox, tmp_path):
    config = tmp_path / "oncall.yaml"
    config.write_text(
        "services:\n"
        f"  flaky:\n    prometheus:\n      url: {sandbox['prom'].url}\n"
        "  bare:\n    http:\n      - {name: health, url: http://127.0.0.1:1/health}\n"
    )
    window = ["-p", "window_seconds=5", "-p", "lookback_seconds=60", "-p", "step_seconds=1"]
    args = ["run", "high-error-rate", "--config", str(config), "--dry-run", "--json", *window]
    result = oncall(*args, "--service", "flaky")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["target"], report["outcome"]) == ("flaky", "dry_run")
    [rate] = [f for f in report["findings"] if f["check"] == "error_rate"]
    assert rate["status"] == "critical"
    bare = oncall(*args, "--service", "bare")
    assert bare.returncode == 2 and "high-error-rate needs prometheus" in bare.stderr


async def test_approved_flag_switch_off_fixes_it_and_is_verified(sandbox):
    from flows.runbook_flows import high_error_rate

    app = sandbox["apps"]["flaky"]
    report = await high_error_rate(service=_flaky(sandbox), params=_params(), approve_as="alice")
    assert report.outcome is Outcome.FIXED and report.exit_code == 0, report.verification
    assert report.judgement is not None and report.judgement.verdict == "fixed"
    [result] = report.results
    assert result.detail == f"POST {app.url}/control answered 200"
    assert _error_rates(app) == {0.0}
    after = _by_check(report.verification)
    assert set(after) == {"error_rate", "top_failing_endpoints"}
    assert after["error_rate"].evidence["error_ratio"] < 0.01


def test_drill_runs_end_to_end_and_passes():
    import io

    from rich.console import Console

    from flows.drills.registry import load
    from runbooks.catalog import require

    shown = io.StringIO()
    card = load("high-error-rate")(
        approve_as="ci", console=Console(file=shown, width=200), interactive=False, show=True
    )
    assert card.passed and card.outcome == "fixed" and card.severity == "P0", card
    assert card.verdicts["first_finding"] == "met" and len(card.actions) == 1
    assert card.approvals == ["approved by ci via cli-preapproved"]
    # The drill proposes the flag at the risk the README and `oncall runbooks` state.
    changes = {c.what: c.risk for c in require("high-error-rate").changes}
    declared = changes["disable the configured feature flag"]
    assert f"risk: {declared}" in shown.getvalue() and declared == "risky", shown.getvalue()
