"""The hms-failures runbook as a real Prefect flow against local 100ms, Kubernetes and Docker."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime

import httpx
import jwt
import pytest

from checks.findings import Severity, Status
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.saas import SaasSandbox
from flows.server import auth_headers
from integrations.docker import DockerTarget
from integrations.errors import ApprovalRequired
from integrations.kubernetes import KubernetesTarget
from integrations.service import Service
from runbooks.engine import live
from runbooks.engine.model import Action, Outcome, Risk
from runbooks.engine.verify import Verdict
from runbooks.hms_failures import HmsFailuresParams
from tests.runbooks.test_rollback import _decide, _until_gate
from tests.support.docker_api import DockerApiServer

pytestmark = pytest.mark.usefixtures("prefect_api")
SECRET, KEY = "hms-credentials", "HMS_MANAGEMENT_TOKEN"
SECRET_PATH = f"/api/v1/namespaces/default/secrets/{SECRET}"
DEPLOYMENT_PATH = "/apis/apps/v1/namespaces/default/deployments/video-api"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox() as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


@pytest.fixture
def kube(sandbox: SaasSandbox):
    """The app: a deployment whose secret holds a token that expired ten minutes ago."""
    with KubeApiServer() as server:
        server.seed_deployment("video-api", ["video-api:1.4.1", "video-api:1.4.2"], replicas=2)
        server.seed_secret(SECRET, {KEY: sandbox.management_token(ttl=-600)})
        yield server


def _service(sandbox: SaasSandbox, kube: KubeApiServer | None, **extra) -> Service:
    if kube is not None:
        extra.setdefault("kubernetes", KubernetesTarget(deployment="video-api", api_url=kube.url))
    extra.setdefault("hms", sandbox.hms_target())
    return Service(name="video", **extra)


def _params(**overrides) -> HmsFailuresParams:
    values = dict(
        probe_calls=3,
        approval_timeout_seconds=60,
        verify_timeout_seconds=5,
        verify_hold_seconds=1,
    )
    return HmsFailuresParams(**{**values, **overrides})


def _stored(kube: KubeApiServer) -> str:
    return base64.b64decode(kube.get("secrets", SECRET)["data"][KEY]).decode()


async def test_dry_run_diagnoses_the_expired_token_and_touches_nothing(sandbox, kube):
    from flows.runbook_flows import hms_failures

    before = _stored(kube)
    report = await hms_failures(service=_service(sandbox, kube), params=_params(), dry_run=True)
    by = {f.check: f for f in report.findings}
    assert (
        by["management_token"].status is Status.CRITICAL
        and by["management_token"].evidence["expired"]
    )
    assert by["api_calls"].evidence["error_kind"] == "auth"
    assert by["hms_status_page"].status is Status.OK
    assert report.severity is Severity.P1 and report.outcome is Outcome.DRY_RUN
    [action] = report.plan.actions
    assert (action.id, action.risk) == ("rotate-token", Risk.RISKY)
    assert re.match(
        rf"secret {SECRET} key {KEY}: new token valid until \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\n",
        action.preview,
    )
    assert "rollout restart deployment default/video-api: replace its 2 pods" in action.preview
    assert kube.writes() == [] and _stored(kube) == before
    assert sandbox.received("statuspage") == []


async def test_approved_rotation_is_exactly_the_preview_and_its_token_never_shows(
    sandbox, kube, prefect_api
):
    from flows.runbook_flows import hms_failures
    from runbooks.engine.report import report_markdown

    old = _stored(kube)
    pods_before = {p["metadata"]["name"] for p in kube.objects("pods")}
    report = await hms_failures(service=_service(sandbox, kube), params=_params(), approve_as="al")
    assert report.outcome is Outcome.FIXED and report.exit_code == 0

    [action] = report.plan.actions
    patch, restart = kube.writes()
    assert (patch.method, patch.path) == ("PATCH", SECRET_PATH)
    new = _stored(kube)
    assert patch.body == {"data": {KEY: base64.b64encode(new.encode()).decode()}}
    assert (restart.method, restart.path) == ("PATCH", DEPLOYMENT_PATH)
    assert list(restart.body["spec"]["template"]["metadata"]["annotations"]) == [
        "kubectl.kubernetes.io/restartedAt"
    ]
    claims = jwt.decode(new, sandbox.hms_app_secret, ["HS256"])
    expires = datetime.fromtimestamp(claims["exp"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"new token valid until {expires}\n" in action.preview, "the token is the one previewed"
    assert claims["type"] == "management" and claims["access_key"] == sandbox.hms_access_key
    assert {p["metadata"]["name"] for p in kube.objects("pods")}.isdisjoint(pods_before)
    verified = {f.check: f for f in report.verification}
    assert verified["api_calls"].evidence["counts"] == {"ok": 3}
    assert verified["management_token"].status is Status.OK
    assert [r.status for r in report.results] == ["done"]

    # The tokens and the app secret are nowhere: report, artifact, logs, events, parameters.
    run_id = report.flow_run_id
    api = httpx.Client(base_url=prefect_api, timeout=10, headers=auth_headers(prefect_api))
    texts = [report.model_dump_json(), report_markdown(report)]
    texts.append(api.get(f"/flow_runs/{run_id}").text)
    texts.append(
        api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).text
    )
    body = {
        "filter": {
            "related": {"id": [f"prefect.flow-run.{run_id}"]},
            "event": {"prefix": ["oncall."]},
        },
        "limit": 50,
    }
    for _ in range(100):  # logs and events reach the server in batches
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}).json()
        events = api.post("/events/filter", json=body).json()["events"]
        if any("hms-failures on video: fixed" in e["message"] for e in logs) and any(
            e["event"].startswith("oncall.action.") for e in events
        ):
            break
        await asyncio.sleep(0.2)
    assert any("hms-failures on video: fixed" in entry["message"] for entry in logs)
    assert any(e["event"] == "oncall.action.done" for e in events)
    texts += [str(logs), str(events)]
    for text in texts:
        for secret in (new, old, sandbox.hms_app_secret):
            assert secret not in text


async def test_rejected_and_timed_out_plans_touch_nothing(sandbox, kube, prefect_api):
    from flows.runbook_flows import hms_failures

    service = _service(sandbox, kube)
    task, gate = await _until_gate(hms_failures(service=service, params=_params()), prefect_api)
    await _decide(prefect_api, gate["flow_run_id"], approved=False)
    rejected = await asyncio.wait_for(task, 60)
    timed_out = await hms_failures(service=service, params=_params(approval_timeout_seconds=5))
    assert rejected.outcome is Outcome.REJECTED and timed_out.outcome is Outcome.TIMED_OUT
    assert kube.writes() == []


async def test_a_token_rotated_by_someone_else_meanwhile_is_kept(sandbox, kube, prefect_api):
    from flows.runbook_flows import hms_failures

    task, gate = await _until_gate(
        hms_failures(service=_service(sandbox, kube), params=_params()), prefect_api
    )
    theirs = sandbox.management_token()
    kube.seed_secret(SECRET, {KEY: theirs})
    await _decide(prefect_api, gate["flow_run_id"], approved=True)
    report = await asyncio.wait_for(task, 60)
    [only] = kube.writes()
    assert only.path == DEPLOYMENT_PATH, "their token stays; the app is still restarted"
    assert _stored(kube) == theirs
    assert "already holds a token 100ms accepts" in report.results[0].items[0]["outcome"]
    assert report.outcome is Outcome.FIXED


async def test_remediation_refuses_without_an_approval_record(sandbox, kube):
    from runbooks.hms_failures import rotate_token

    action = Action(
        id="rotate-token",
        kind="hms.rotate_token",
        target="t",
        title="t",
        risk=Risk.RISKY,
        preview="",
        items=[{"kind": "kubernetes", "secret": SECRET, "key": KEY, "deployment": "video-api"}],
    )
    with pytest.raises(ApprovalRequired):
        await rotate_token(action, service=_service(sandbox, kube))
    assert kube.writes() == []


async def test_100ms_down_gets_fallback_messaging_only_after_approval(sandbox, kube, prefect_api):
    from flows.runbook_flows import hms_failures

    kube.seed_secret(SECRET, {KEY: sandbox.management_token()})
    sandbox.set_provider("down")
    service = _service(sandbox, kube, statuspage=sandbox.statuspage_target())
    params = _params(verify_timeout_seconds=1)
    task, gate = await _until_gate(hms_failures(service=service, params=params), prefect_api)
    assert [r for r in sandbox.received("statuspage") if r.method != "GET"] == []
    await _decide(prefect_api, gate["flow_run_id"], approved=True)
    report = await asyncio.wait_for(task, 60)
    [post] = [r for r in sandbox.received("statuspage") if r.method != "GET"]
    assert post.path == f"/v1/pages/{sandbox.page_id}/incidents"
    incident = post.body["incident"]
    assert incident["name"] == "Video sessions unavailable"
    assert incident["status"] == "identified" and "100ms reports an outage" in incident["body"]
    assert kube.writes() == [], "a provider outage is not fixed by rotating our token"
    # 100ms is still down and our users are told: mitigated, with the wait named.
    assert report.severity is Severity.P1 and report.outcome is Outcome.MITIGATED
    after = {f.check: f for f in report.verification}
    assert after["hms_status_page"].status is Status.CRITICAL
    assert "'Video sessions unavailable' (identified)" in after["users_informed"].summary
    assert after["management_token"].status is Status.OK and "room_usage" not in after
    judgement = report.judgement
    assert judgement is not None and judgement.verdict is Verdict.MITIGATED
    assert "users are informed" in judgement.reason and "100ms down" in judgement.reason
    assert (judgement.next_step or "").startswith(f"wait for 100ms to recover ({sandbox.url})")
    assert any(n.startswith("100ms itself: an outage on 100ms's side") for n in report.notes)


async def test_room_limit_reached_is_advice_not_action(sandbox, kube):
    from flows.runbook_flows import hms_failures

    kube.seed_secret(SECRET, {KEY: sandbox.management_token()})
    sandbox.hms_activate(3)
    service = _service(sandbox, kube, hms=sandbox.hms_target(room_limit=3))
    report = await hms_failures(service=service, params=_params(), approve_as="al")
    [rooms] = [f for f in report.findings if f.check == "room_usage"]
    assert rooms.status is Status.CRITICAL and rooms.evidence["active_rooms"] == 3
    assert report.plan.actions == [] and kube.writes() == []
    assert any("upgrade the 100ms plan" in n for n in report.notes)
    assert report.outcome is Outcome.PROBLEM_REMAINS


async def test_server_errors_after_a_recent_deploy_point_to_the_rollback_runbook(sandbox, kube):
    from flows.runbook_flows import hms_failures

    kube.seed_secret(SECRET, {KEY: sandbox.management_token()})
    sandbox.fault("hms", status=500)
    report = await hms_failures(service=_service(sandbox, kube), params=_params())
    [calls] = [f for f in report.findings if f.check == "api_calls"]
    assert calls.evidence["error_kind"] == "server_error" and calls.severity is Severity.P1
    assert report.plan.actions == []
    [advice] = [n for n in report.notes if "`rollback` runbook" in n]
    assert advice.startswith("deployment default/video-api (image video-api:1.4.2)")


async def test_rate_limits_get_backoff_advice(sandbox, kube):
    from flows.runbook_flows import hms_failures

    kube.seed_secret(SECRET, {KEY: sandbox.management_token()})
    sandbox.fault("hms", status=429, retry_after=20)
    report = await hms_failures(service=_service(sandbox, kube), params=_params())
    [calls] = [f for f in report.findings if f.check == "api_calls"]
    assert (calls.status, calls.severity) == (Status.WARN, Severity.P2)
    assert report.plan.actions == [] and any("exponential" in n for n in report.notes)


async def test_docker_app_gets_the_new_token_in_its_environment(sandbox):
    from flows.runbook_flows import hms_failures

    with DockerApiServer() as engine:
        engine.add_image("video-api:1.4.2")
        expired = sandbox.management_token(ttl=-60)
        engine.add_container("video-api", "video-api:1.4.2", env=[f"{KEY}={expired}"])
        docker = DockerTarget(base_url=engine.base_url, container="video-api")
        report = await hms_failures(
            service=_service(sandbox, None, docker=docker), params=_params(), approve_as="al"
        )
        env = dict(e.split("=", 1) for e in engine.container("video-api")["Config"]["Env"])
        writes = [(w.method, w.path.split("/")[-1]) for w in engine.writes()]
    [action] = report.plan.actions
    assert action.preview.startswith(f"environment variable {KEY} of container(s) video-api:")
    assert jwt.decode(env[KEY], sandbox.hms_app_secret, ["HS256"])["type"] == "management"
    assert ("POST", "create") in writes and len([w for w in writes if w[1] == "create"]) == 1
    assert report.outcome is Outcome.FIXED
    assert env[KEY] not in report.model_dump_json()


async def test_runs_by_service_name_on_kubernetes_and_on_docker(
    sandbox, kube, tmp_path, monkeypatch
):
    """What a deployment run or the Prefect UI does: the service is a name in oncall.yaml."""
    from flows.runbook_flows import hms_failures

    with DockerApiServer() as engine:
        engine.add_image("video-api:1.4.2")
        expired = sandbox.management_token(ttl=-60)
        engine.add_container("video-api", "video-api:1.4.2", env=[f"{KEY}={expired}"])
        hms = (
            f"    hms: {{access_key: {sandbox.hms_access_key}, app_secret: '${{HMS_SECRET}}',"
            f" api_base: '{sandbox.url}/v2', status_page: '{sandbox.url}'}}\n"
        )
        config = tmp_path / "oncall.yaml"
        config.write_text(
            "services:\n"
            "  video-kube:\n"
            + hms
            + f"    kubernetes: {{deployment: video-api, api_url: '{kube.url}'}}\n"
            "  video-docker:\n"
            + hms
            + f"    docker: {{base_url: '{engine.base_url}', container: video-api}}\n"
        )
        monkeypatch.setenv("HMS_SECRET", sandbox.hms_app_secret)
        monkeypatch.setenv("ONCALL_CONFIG", str(config))
        on_kube = await hms_failures(service="video-kube", params=_params(), dry_run=True)
        on_docker = await hms_failures(service="video-docker", params=_params(), dry_run=True)
        assert engine.writes() == []
    assert kube.writes() == []
    for report, where in ((on_kube, "secret hms-credentials"), (on_docker, "environment")):
        assert report.outcome is Outcome.DRY_RUN
        [action] = report.plan.actions
        assert action.id == "rotate-token" and action.preview.startswith(where)
        assert sandbox.hms_app_secret not in report.model_dump_json()


async def test_calls_failing_again_after_the_rotation_are_mitigated(sandbox, kube):
    from flows.runbook_flows import hms_failures

    seen: list[bool] = []

    def breaks_again(kind: str, data: dict) -> None:  # 100ms answers, then fails again
        if kind == "verifying":
            seen.append(data["healthy"])
            if data["healthy"] and len(seen) == 1:
                sandbox.fault("hms", status=500)

    live.subscribe(breaks_again)
    try:
        report = await hms_failures(
            service=_service(sandbox, kube),
            params=_params(verify_hold_seconds=3),
            approve_as="al",
        )
    finally:
        live.unsubscribe(breaks_again)
    assert [r.status for r in report.results] == ["done"]
    assert seen[0] is True and seen[-1] is False
    assert report.outcome is Outcome.MITIGATED and report.exit_code == 1
    judgement = report.judgement
    assert judgement is not None and judgement.verdict is Verdict.MITIGATED
    assert judgement.reason.startswith("100ms calls failed again within 3s of the fix")
    assert "api_calls" in (judgement.next_step or "")


async def test_unreachable_100ms_exits_3():
    from flows.runbook_flows import hms_failures

    with SaasSandbox() as gone:
        target = gone.hms_target()
    report = await hms_failures(service=Service(name="video", hms=target), params=_params())
    assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3
    assert all(f.status is Status.ERROR for f in report.findings)
    assert any("not visible to oncall" in n for n in report.notes)


def test_drill_runs_end_to_end_and_scores_p1():
    import io

    from rich.console import Console

    from flows.drills.registry import load

    card = load("hms-failures")(
        approve_as="ci", console=Console(file=io.StringIO()), interactive=False, show=False
    )
    assert card.passed and card.outcome == "fixed" and card.severity is Severity.P1
    assert card.actions and card.actions[0].startswith("Regenerate the 100ms management token")
    assert {"detect", "diagnose", "mitigate", "verify"} <= set(card.times_s)
