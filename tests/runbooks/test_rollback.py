"""The rollback runbook as a real Prefect flow against the local Kubernetes API, Docker Engine
and Vercel servers; assertions are on the requests those servers received."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from rich.console import Console

from flows.drills.rollback import IMAGES, HealthApp
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.prometheus import free_port
from flows.drills.sandbox.saas import SaasSandbox
from flows.prefect_api import PrefectAPI
from integrations.docker import DockerTarget
from integrations.errors import ApprovalRequired, ConfigError
from integrations.kubernetes import KubernetesOperator, KubernetesTarget
from integrations.service import HttpEndpoint, Service
from runbooks.engine import live
from runbooks.engine.guard import _mint, approved_scope
from runbooks.engine.model import Action, Outcome, Plan, Risk
from runbooks.remedies.rollback import RollbackAction
from runbooks.rollback import RollbackParams
from tests.approvals import sealed_resume
from tests.support.docker_api import DockerApiServer

pytestmark = pytest.mark.usefixtures("prefect_api")

TOKEN = "kube-token-e41b"
DEPLOYMENT = "/apis/apps/v1/namespaces/prod/deployments/api"


def _params(**overrides: Any) -> RollbackParams:
    values = dict(
        lookback_minutes=30,
        approval_timeout_seconds=60,
        verify_timeout_seconds=10,
        verify_hold_seconds=1,
    )
    return RollbackParams(**{**values, **overrides})


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    """Deployment prod/api whose latest revision (1.4.2) crash-loops, deployed 5 min ago."""
    with KubeApiServer(token=TOKEN, namespace="prod") as server:
        server.crashing_images.add(IMAGES[2])
        server.seed_deployment("api", IMAGES, deployed_ago=timedelta(minutes=5))
        yield server


@pytest.fixture
def health(kube: KubeApiServer) -> Iterator[HealthApp]:
    with HealthApp(kube, "api") as app:
        yield app


def _kube_service(kube: KubeApiServer, health: HealthApp | None = None, **extra: Any) -> Service:
    target = KubernetesTarget(
        api_url=kube.url, token=SecretStr(TOKEN), namespace="prod", deployment="api", **extra
    )
    http = [HttpEndpoint(name="health", url=f"{health.url}/health")] if health else []
    return Service(name="api", kubernetes=target, http=http)


def _image(kube: KubeApiServer) -> str:
    return kube.get("deployments", "api")["spec"]["template"]["spec"]["containers"][0]["image"]


async def _until_gate(coro: Any, prefect_api: str) -> tuple[asyncio.Task, dict]:
    """Starts the flow and returns (task, gate) once the run is Paused at its gate."""
    seen: dict = {}
    event = asyncio.Event()

    def listener(kind: str, data: dict) -> None:
        if kind == "gate":
            seen.update(data)
            event.set()

    live.subscribe(listener)
    task = asyncio.create_task(coro)
    try:
        await asyncio.wait_for(event.wait(), 60)
    finally:
        live.unsubscribe(listener)
    with PrefectAPI(prefect_api) as api:
        for _ in range(100):
            if api.flow_run(seen["flow_run_id"])["state"]["type"] == "PAUSED":
                break
            await asyncio.sleep(0.1)
    return task, seen


async def _decide(prefect_api: str, run_id: str, approved: bool) -> dict:
    """Resumes the run with a sealed decision, off the event loop: the paused flow runs on
    this loop and must store its input schema while the resume waits for it."""
    return await asyncio.to_thread(sealed_resume, prefect_api, run_id, approved)


# -- Kubernetes ------------------------------------------------------------------------------


async def test_dry_run_previews_the_exact_rollback_and_sends_no_write(kube, health):
    from flows.runbook_flows import rollback

    report = await rollback(service=_kube_service(kube, health), params=_params(), dry_run=True)
    assert report.outcome is Outcome.DRY_RUN and report.exit_code == 1
    [action] = report.plan.actions
    assert action.risk is Risk.RISKY
    assert action.preview.splitlines()[0] == (
        f"deployment api: revision 3 (image {IMAGES[2]}) → revision 2 (image {IMAGES[1]})"
    )
    assert "--to-revision=2" in action.preview
    assert action.undo.startswith("kubectl rollout undo deployment/api -n prod --to-revision=3")
    checks = {f.check: f.status for f in report.findings}
    assert checks["kubernetes_deploys"] == checks["http_endpoints"] == checks["pods"] == "critical"
    assert kube.writes() == [] and _image(kube) == IMAGES[2]


async def test_approved_rollback_sends_exactly_the_previewed_patch_and_verifies(kube, health):
    from flows.runbook_flows import rollback

    report = await rollback(
        service=_kube_service(kube, health), params=_params(), approve_as="alice"
    )
    assert report.outcome is Outcome.FIXED and report.exit_code == 0
    [patch] = kube.writes()
    assert (patch.method, patch.path, patch.content_type) == (
        "PATCH",
        DEPLOYMENT,
        "application/json-patch+json",
    )
    test_op, template, _ = patch.body
    assert test_op["op"] == "test" and test_op["path"] == "/metadata/resourceVersion"
    assert template["path"] == "/spec/template"
    assert [c["image"] for c in template["value"]["spec"]["containers"]] == [IMAGES[1]]
    assert _image(kube) == IMAGES[1] and health.status()[0] == 200
    [result] = report.results
    assert result.status == "done" and "to the template of revision 2" in result.detail
    assert any("--to-revision=3" in note for note in report.notes), "the undo is recorded"
    assert all(not f.status.is_problem for f in report.verification)


async def test_rejected_rollback_sends_no_write(kube, health, prefect_api):
    from flows.runbook_flows import rollback

    task, gate = await _until_gate(
        rollback(service=_kube_service(kube, health), params=_params()), prefect_api
    )
    assert (await _decide(prefect_api, gate["flow_run_id"], approved=False))["status"] == "ACCEPT"
    report = await asyncio.wait_for(task, 60)
    assert report.outcome is Outcome.REJECTED and report.exit_code == 1
    assert kube.writes() == [] and _image(kube) == IMAGES[2]


async def test_timed_out_gate_sends_no_write(kube):
    from flows.runbook_flows import rollback

    report = await rollback(service=_kube_service(kube), params=_params(approval_timeout_seconds=5))
    assert report.outcome is Outcome.TIMED_OUT and report.approvals[0].channel == "timeout"
    assert kube.writes() == []


async def test_a_deploy_landing_after_the_plan_is_not_overwritten(kube, prefect_api):
    from flows.runbook_flows import rollback

    task, gate = await _until_gate(
        rollback(service=_kube_service(kube), params=_params(verify_timeout_seconds=0)),
        prefect_api,
    )
    with KubernetesOperator(_kube_service(kube).kubernetes) as op:
        op.set_memory_limit("api", "app", "300Mi")  # someone else changes the deployment
    before = len(kube.writes())
    await _decide(prefect_api, gate["flow_run_id"], approved=True)
    report = await asyncio.wait_for(task, 60)
    assert kube.writes()[before:] == [], "nothing is written over the newer change"
    assert report.results[0].status == "skipped" and "changed since the plan" in (
        report.results[0].detail
    )
    assert _image(kube) == IMAGES[2]


async def test_no_known_good_revision_says_so_and_changes_nothing():
    from flows.runbook_flows import rollback

    with KubeApiServer(token=TOKEN, namespace="prod") as kube:
        kube.crashing_images.add(IMAGES[0])
        kube.seed_deployment("api", IMAGES[:1], deployed_ago=timedelta(minutes=5))
        report = await rollback(service=_kube_service(kube), params=_params(), approve_as="alice")
        assert kube.writes() == []
    [deploys] = [f for f in report.findings if f.check == "kubernetes_deploys"]
    assert deploys.status == "critical" and deploys.evidence["last_good"] is None
    assert "nothing to roll back to" in deploys.summary
    assert report.plan.actions == [] and report.approvals == []
    assert any("only deploy" in note and "nothing was changed" in note for note in report.notes)
    assert report.outcome is Outcome.PROBLEM_REMAINS


async def test_an_old_deploy_is_not_rolled_back(kube):
    from flows.runbook_flows import rollback

    report = await rollback(
        service=_kube_service(kube), params=_params(lookback_minutes=5, grace_minutes=0)
    )
    assert report.plan.actions == [] and kube.writes() == []
    assert any("no recent deploy is implicated" in note for note in report.notes)


async def test_kubernetes_api_down_is_unreachable_exit_3():
    from flows.runbook_flows import rollback

    target = KubernetesTarget(api_url=f"http://127.0.0.1:{free_port()}", deployment="api")
    report = await rollback(service=Service(name="gone", kubernetes=target), params=_params())
    assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3
    assert all(f.status == "error" for f in report.findings)


async def test_refused_token_and_server_errors_are_error_findings(kube):
    from flows.runbook_flows import rollback

    service = _kube_service(kube)
    service.kubernetes = service.kubernetes.model_copy(update={"token": SecretStr("stale")})
    report = await rollback(service=service, params=_params())
    assert {f.evidence["error"] for f in report.findings} == {"AuthError"}
    assert all(f.status == "error" for f in report.findings) and report.plan.actions == []
    kube.fail_next("GET", "/deployments/api", code=500, times=10)
    report = await rollback(service=_kube_service(kube), params=_params())
    assert {f.evidence["error"] for f in report.findings} == {"ProviderError"}
    assert kube.writes() == []


async def test_a_service_without_a_platform_is_a_config_error():
    from flows.runbook_flows import rollback

    with pytest.raises(ConfigError, match="none of kubernetes, docker, vercel configured"):
        await rollback(service=Service(name="bare"), params=_params())


async def test_remediations_and_their_undo_refuse_to_run_without_an_approval_record(kube):
    from runbooks.rollback import RUNBOOK

    action = Action(
        id="rollback-kubernetes",
        kind=RollbackAction.KUBERNETES,
        target="t",
        title="t",
        risk=Risk.RISKY,
        preview="",
        items=[{"deployment": "api", "to_revision": 2}],
    )
    for remedy in RUNBOOK.executors.values():
        for executor in (remedy.run, remedy.undo):
            with pytest.raises(ApprovalRequired):
                await executor(action, service=_kube_service(kube))
    assert kube.writes() == []


async def test_a_bad_version_redeployed_within_the_hold_window_is_mitigated(kube, health):
    """The rollback worked, then something put 1.4.2 back: not fixed, and it says why."""
    from flows.runbook_flows import rollback

    def redeploy_on_first_recovery(kind: str, data: dict) -> None:
        if kind == "verifying" and data["healthy"] and _image(kube) == IMAGES[1]:
            with KubernetesOperator(_kube_service(kube).target(KubernetesTarget)) as op:
                op.rollout_undo("api", 3)  # a CD pipeline re-applies the bad revision

    live.subscribe(redeploy_on_first_recovery)
    try:
        report = await rollback(
            service=_kube_service(kube, health),
            params=_params(verify_hold_seconds=30),
            approve_as="alice",
        )
    finally:
        live.unsubscribe(redeploy_on_first_recovery)
    assert report.results[0].status == "done" and _image(kube) == IMAGES[2]
    assert report.outcome is Outcome.MITIGATED and report.exit_code == 1
    judgement = report.judgement
    assert judgement is not None and judgement.verdict == "mitigated"
    assert judgement.reason.startswith("the rollback was undone within 30s: the rolled-back")
    assert IMAGES[2] in judgement.reason
    assert "pause it, roll back again" in (judgement.next_step or "")
    assert any(n.startswith("next step: something put the bad version back") for n in report.notes)


async def test_the_roll_forward_undoes_the_rollback_and_only_that(kube, health):
    from runbooks.rollback import RUNBOOK

    report = await _approved_rollback(kube, health)
    [action] = report.plan.actions
    undo = RUNBOOK.executors[RollbackAction.KUBERNETES].undo
    before = len(kube.writes())
    with _approved(action):
        result = await undo(action, service=_kube_service(kube))
    assert result.status == "done" and _image(kube) == IMAGES[2]
    assert "to the template of revision 3" in result.detail
    with _approved(action):  # idempotent: already rolled forward
        again = await undo(action, service=_kube_service(kube))
    assert again.status == "done" and len(kube.writes()) == before + 1


async def _approved_rollback(kube: KubeApiServer, health: HealthApp) -> Any:
    from flows.runbook_flows import rollback

    report = await rollback(
        service=_kube_service(kube, health), params=_params(), approve_as="alice"
    )
    assert report.outcome is Outcome.FIXED and _image(kube) == IMAGES[1]
    return report


@contextmanager
def _approved(action: Action) -> Iterator[None]:
    """What the gate hands a remediation after an approval of a plan with this one action."""
    plan = Plan(runbook="rollback", target="t", actions=[action])
    with approved_scope(_mint(plan, approved=True, approver="alice", channel="cli")):
        yield


# -- Docker ----------------------------------------------------------------------------------

WEB = ["ghcr.io/acme/web:1.1", "ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]


async def test_docker_rollback_recreates_each_container_with_the_previous_image():
    from flows.runbook_flows import rollback
    from runbooks.rollback import RUNBOOK

    with DockerApiServer() as engine:
        engine.crashing_images.add(WEB[2])
        engine.seed_compose_service("shop", "web", WEB, replicas=2)
        target = DockerTarget(
            base_url=engine.base_url, compose_project="shop", compose_service="web"
        )
        service = Service(name="shop", docker=target)
        report = await rollback(service=service, params=_params(lookback_minutes=90), dry_run=True)
        assert report.outcome is Outcome.DRY_RUN and engine.writes() == []
        [action] = report.plan.actions
        assert action.preview.splitlines()[:2] == [
            f"container shop-web-1: image {WEB[2]} → {WEB[1]}",
            f"container shop-web-2: image {WEB[2]} → {WEB[1]}",
        ]
        report = await rollback(
            service=service, params=_params(lookback_minutes=90), approve_as="alice"
        )
        creates = [w for w in engine.writes() if w.path == "/containers/create"]
        images = {c["Name"].lstrip("/"): c["Config"]["Image"] for c in engine.containers()}
        [action] = report.plan.actions
        with _approved(action):  # the undo: the roll-forward to the rolled-back image
            forward = await RUNBOOK.executors[RollbackAction.DOCKER].undo(action, service=service)
        after_undo = {c["Name"].lstrip("/"): c["Config"]["Image"] for c in engine.containers()}
    assert report.outcome is Outcome.FIXED and report.results[0].status == "done"
    assert forward.status == "done" and after_undo == {"shop-web-1": WEB[2], "shop-web-2": WEB[2]}
    assert [(w.query["name"], w.body["Image"]) for w in creates] == [
        ("shop-web-1", WEB[1]),
        ("shop-web-2", WEB[1]),
    ]
    assert images == {"shop-web-1": WEB[1], "shop-web-2": WEB[1]}
    assert all(w.body["Labels"]["org.oncall-runbooks.previous-image"] == WEB[2] for w in creates)
    assert any(f"with image {WEB[2]} again" in note for note in report.notes)


# -- Vercel ----------------------------------------------------------------------------------


async def test_vercel_rollback_promotes_exactly_the_previous_deployment():
    from flows.runbook_flows import rollback
    from runbooks.rollback import RUNBOOK

    with SaasSandbox() as saas:
        service = Service(name="web", vercel=saas.vercel_target())
        report = await rollback(
            service=service, params=_params(lookback_minutes=90), approve_as="alice"
        )
        writes = [r for r in saas.received("vercel") if r.method != "GET"]
        live_now = saas.production_id
        [action] = report.plan.actions
        with _approved(action):  # the undo: the roll-forward to the rolled-back deployment
            forward = await RUNBOOK.executors[RollbackAction.VERCEL].undo(action, service=service)
        after_undo = saas.production_id
    assert forward.status == "done" and after_undo == "dpl_sandbox2"
    assert action.preview.startswith("Vercel production: dpl_sandbox2 (created ")
    assert "→ dpl_sandbox1 (created " in action.preview.splitlines()[0]
    assert [(w.method, w.path) for w in writes] == [
        ("POST", "/v10/projects/prj_sandbox/promote/dpl_sandbox1")
    ]
    assert live_now == "dpl_sandbox1" and report.outcome is Outcome.FIXED
    assert "promote dpl_sandbox2 again" in action.undo


# -- the drill --------------------------------------------------------------------------------


def test_drill_runs_end_to_end_and_passes():
    from flows.drills.registry import load

    card = load("rollback")(
        approve_as="ci", console=Console(file=io.StringIO()), interactive=False, show=False
    )
    # Declared P1, raised to P0 by its findings (0/3 pods ready), as the incident would be.
    assert card.passed and card.outcome == "fixed" and card.severity == "P0"
    assert card.sla_s["first_finding"] == 120 and card.verdicts["first_finding"] == "met"
    assert card.actions[0].startswith("Roll back deployment api to revision 2: done")
