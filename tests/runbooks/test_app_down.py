"""The app-down runbook as a real Prefect flow against the local Kubernetes API and Docker
Engine, a small local app, and the machine's PostgreSQL; assertions are on what they received."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from flows.drills.rollback import IMAGES, HealthApp
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.prometheus import free_port
from flows.prefect_api import PrefectAPI
from integrations.docker import DockerTarget
from integrations.errors import ApprovalRequired
from integrations.kubernetes import KubernetesOperator, KubernetesTarget
from integrations.postgres import PostgresTarget
from integrations.service import ConfiguredAction, HttpCall, HttpEndpoint, Service
from runbooks.app_down import AppDownParams
from runbooks.engine import live
from runbooks.engine.model import Action, Outcome, Risk
from tests.approvals import sealed_resume
from tests.support.docker_api import DockerApiServer

pytestmark = pytest.mark.usefixtures("prefect_api")

DEPLOYMENT = "/apis/apps/v1/namespaces/prod/deployments/api"


def _params(**overrides: Any) -> AppDownParams:
    values = dict(
        lookback_minutes=30,
        approval_timeout_seconds=60,
        verify_timeout_seconds=10,
        verify_hold_seconds=1,
    )
    return AppDownParams(**{**values, **overrides})


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(namespace="prod") as server:
        yield server


def _kube_service(kube: KubeApiServer, health: HealthApp | None = None, **extra: Any) -> Service:
    target = KubernetesTarget(api_url=kube.url, namespace="prod", deployment="api")
    http = [HttpEndpoint(name="health", url=f"{health.url}/health")] if health else []
    return Service(name="api", kubernetes=target, http=http, **extra)


async def test_crash_after_a_recent_deploy_is_rolled_back_with_the_rollback_plan(kube):
    from flows.runbook_flows import app_down

    kube.crashing_images.add(IMAGES[2])
    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(minutes=5))
    with HealthApp(kube, "api", "prod") as health:
        report = await app_down(
            service=_kube_service(kube, health), params=_params(), approve_as="alice"
        )
        assert health.status()[0] == 200
    [action] = report.plan.actions
    assert action.kind == "rollback.kubernetes"
    assert action.preview.splitlines()[0] == (
        f"deployment api: revision 3 (image {IMAGES[2]}) → revision 2 (image {IMAGES[1]})"
    )
    assert any("a recent deploy is the suspect" in s["reason"] for s in report.plan.spared)
    [patch] = kube.writes()
    assert (patch.method, patch.path) == ("PATCH", DEPLOYMENT)
    assert patch.body[1]["value"]["spec"]["containers"][0]["image"] == IMAGES[1]
    assert report.outcome is Outcome.FIXED
    [logs] = [f for f in report.findings if f.check == "logs"]
    assert "FATAL config: missing required setting DATABASE_URL" in logs.evidence["lines"]


async def test_a_deployment_scaled_to_zero_is_scaled_back_up(kube):
    from flows.runbook_flows import app_down

    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(days=1))
    with KubernetesOperator(_kube_service(kube).kubernetes) as op:
        op.scale("api", 0)
    before = len(kube.writes())
    report = await app_down(
        service=_kube_service(kube), params=_params(scale_to=3), approve_as="alice"
    )
    [action] = report.plan.actions
    assert action.preview.startswith("scale deployment prod/api 0 → 3 replicas")
    assert [(w.method, w.path, w.body) for w in kube.writes()[before:]] == [
        ("PATCH", f"{DEPLOYMENT}/scale", {"spec": {"replicas": 3}})
    ]
    assert (
        report.outcome is Outcome.FIXED and kube.get("deployments", "api")["spec"]["replicas"] == 3
    )


async def test_oom_killed_pods_get_a_rolling_restart_and_a_memory_leak_note(kube):
    from flows.runbook_flows import app_down

    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(days=1))
    kube.seed_oom_kills("api", restarts=4)
    report = await app_down(service=_kube_service(kube), params=_params(), approve_as="alice")
    [action] = report.plan.actions
    assert action.kind == "kubernetes.restart" and "rollout restart deployment prod/api" in (
        action.preview
    )
    [patch] = kube.writes()
    assert patch.content_type == "application/strategic-merge-patch+json"
    annotations = patch.body["spec"]["template"]["metadata"]["annotations"]
    assert list(annotations) == ["kubectl.kubernetes.io/restartedAt"]
    assert report.outcome is Outcome.FIXED
    assert any("memory-leak" in note for note in report.notes)


@contextmanager
def _on_first_recovery(relapse: Callable[[], object]) -> Iterator[None]:
    """Runs ``relapse`` once, when verification first sees the app healthy: the next sample
    is the first to see the relapse, whatever the machine's speed."""
    done: list[bool] = []

    def listener(kind: str, data: dict) -> None:
        if kind == "verifying" and data["healthy"] and not done:
            done.append(True)
            relapse()

    live.subscribe(listener)
    try:
        yield
    finally:
        live.unsubscribe(listener)
    assert done, "verification never saw the app healthy"


async def test_a_crash_loop_back_after_the_restart_is_mitigated_with_roll_back_next(kube):
    """The restart brought the pods back, then the version it runs broke again: the restart
    only bought time, the report says so and names the next step, a rollback."""
    from flows.runbook_flows import app_down

    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(days=1))
    kube.seed_oom_kills("api", restarts=4)

    # the new pods are OOM-killed in their turn
    with _on_first_recovery(lambda: kube.seed_oom_kills("api", restarts=4)):
        report = await app_down(
            service=_kube_service(kube), params=_params(verify_hold_seconds=30), approve_as="alice"
        )
    [action] = report.plan.actions
    assert action.kind == "kubernetes.restart" and report.results[0].status == "done"
    assert report.outcome is Outcome.MITIGATED and report.exit_code == 1
    judgement = report.judgement
    assert judgement is not None and judgement.verdict == "mitigated"
    assert judgement.reason.startswith("pods relapsed within 30s of the fix: pods of")
    assert "OOMKilled" in judgement.reason
    assert (judgement.next_step or "").startswith("roll back: the version still running")
    assert any(n.startswith("next step: roll back: the version still") for n in report.notes)


async def test_a_rollback_whose_older_version_fails_too_hands_over_to_escalation(kube):
    """Rolled back, healthy, then the older version crash-loops too: the deploy was not the
    (only) cause, the rollback stays, and the next step says where to look."""
    from flows.runbook_flows import app_down

    kube.crashing_images.add(IMAGES[2])
    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(minutes=5))

    with _on_first_recovery(lambda: kube.seed_oom_kills("api", restarts=4)):
        report = await app_down(
            service=_kube_service(kube), params=_params(verify_hold_seconds=30), approve_as="alice"
        )
    assert [a.kind for a in report.plan.actions] == ["rollback.kubernetes"]
    assert report.outcome is Outcome.MITIGATED
    judgement = report.judgement
    assert judgement is not None and judgement.reason.startswith("pods relapsed within 30s of")
    assert "the rollback" in judgement.reason
    assert "the older version fails too" in (judgement.next_step or "")
    rolled = [f for f in report.verification if f.check == "rolled_back"]
    assert [f.status for f in rolled] == ["ok"], "the good version is still the live one"


async def _paused_at_gate(prefect_api: str) -> str:
    """Waits until a runbook flow reaches its gate and is Paused; returns its run id."""
    seen: dict = {}
    event = asyncio.Event()

    def listener(kind: str, data: dict) -> None:
        if kind == "gate":
            seen.update(data)
            event.set()

    live.subscribe(listener)
    try:
        await asyncio.wait_for(event.wait(), 60)
    finally:
        live.unsubscribe(listener)
    with PrefectAPI(prefect_api) as api:
        for _ in range(100):
            if api.flow_run(seen["flow_run_id"])["state"]["type"] == "PAUSED":
                break
            await asyncio.sleep(0.1)
    return seen["flow_run_id"]


async def test_dry_run_and_rejection_send_no_write(kube, prefect_api):
    from flows.runbook_flows import app_down

    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(days=1))
    kube.seed_oom_kills("api", restarts=4)
    report = await app_down(service=_kube_service(kube), params=_params(), dry_run=True)
    assert report.outcome is Outcome.DRY_RUN and report.plan.actions
    assert kube.writes() == []

    task = asyncio.create_task(app_down(service=_kube_service(kube), params=_params()))
    run_id = await _paused_at_gate(prefect_api)
    answer = await asyncio.to_thread(sealed_resume, prefect_api, run_id, False, reason="no")
    assert answer["status"] == "ACCEPT"
    report = await asyncio.wait_for(task, 60)
    assert report.outcome is Outcome.REJECTED and kube.writes() == []


async def test_a_database_outage_restarts_nothing(kube):
    from flows.runbook_flows import app_down

    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(days=1))
    kube.seed_oom_kills("api", restarts=4)
    db = PostgresTarget(dsn=f"postgresql://app:pw@127.0.0.1:{free_port()}/app", connect_timeout=1)
    report = await app_down(
        service=_kube_service(kube, postgres=db), params=_params(), approve_as="alice"
    )
    [pg] = [f for f in report.findings if f.check == "postgres"]
    assert pg.status == "critical" and pg.severity == "P0"
    assert report.plan.actions == [] and kube.writes() == []
    assert any("postgres" in note and "would not bring it back" in note for note in report.notes)
    assert report.outcome is Outcome.PROBLEM_REMAINS


async def test_a_healthy_app_needs_nothing(kube, pgdb):
    from flows.runbook_flows import app_down

    kube.seed_deployment("api", IMAGES, deployed_ago=timedelta(minutes=5))
    service = _kube_service(
        kube,
        postgres=PostgresTarget(dsn=pgdb.dsn),
        redis_url=SecretStr("redis://127.0.0.1:6379/0"),
    )
    report = await app_down(service=service, params=_params())
    assert report.outcome is Outcome.HEALTHY and report.plan.actions == []
    checks = {f.check for f in report.findings}
    assert {"pods", "logs", "postgres", "redis", "kubernetes_deploys"} <= checks
    assert kube.writes() == []


async def test_kubernetes_api_down_is_unreachable_exit_3():
    from flows.runbook_flows import app_down

    target = KubernetesTarget(api_url=f"http://127.0.0.1:{free_port()}", deployment="api")
    report = await app_down(service=Service(name="gone", kubernetes=target), params=_params())
    assert report.outcome is Outcome.UNREACHABLE and report.exit_code == 3


# -- Docker ----------------------------------------------------------------------------------

WEB = ["ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]
OLD = _params(lookback_minutes=10, grace_minutes=0)  # the 1 h old deploy is not a suspect


@pytest.fixture
def engine() -> Iterator[DockerApiServer]:
    with DockerApiServer() as server:
        server.seed_compose_service("shop", "web", WEB, replicas=2)  # last deploy: 1 h ago
        yield server


async def test_an_exited_container_is_restarted(engine):
    from flows.runbook_flows import app_down

    engine.oom_kill("shop-web-2", exited=True)
    target = DockerTarget(base_url=engine.base_url, container="shop-web-2")
    report = await app_down(
        service=Service(name="web", docker=target), params=OLD, approve_as="alice"
    )
    [action] = report.plan.actions
    assert action.kind == "docker.restart" and "restart container shop-web-2 (exited" in (
        action.preview
    )
    assert [(w.method, w.path) for w in engine.writes()] == [
        ("POST", "/containers/shop-web-2/restart")
    ]
    assert report.outcome is Outcome.FIXED and engine.container("shop-web-2")["State"]["Running"]


async def test_a_compose_service_with_nothing_running_is_started(engine):
    from flows.runbook_flows import app_down

    for name in ("shop-web-1", "shop-web-2"):
        engine.oom_kill(name, exited=True)
    target = DockerTarget(base_url=engine.base_url, compose_project="shop", compose_service="web")
    report = await app_down(
        service=Service(name="web", docker=target), params=OLD, approve_as="alice"
    )
    [action] = report.plan.actions
    assert action.kind == "docker.scale"
    assert action.preview.startswith("scale compose service shop/web 0 → 2 running containers")
    assert sorted((w.method, w.path) for w in engine.writes()) == [
        ("POST", "/containers/shop-web-1/start"),
        ("POST", "/containers/shop-web-2/start"),
    ]
    assert report.outcome is Outcome.FIXED


# -- configured restart ----------------------------------------------------------------------


class _Stuck(BaseHTTPRequestHandler):
    """Answers 503 on /health until POST /restart."""

    protocol_version = "HTTP/1.1"
    healthy = False
    posts: list[tuple[str, Any]] = []

    def _answer(self, code: int) -> None:
        body = b"{}"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200 if _Stuck.healthy else 503)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        _Stuck.posts.append((self.path, json.loads(self.rfile.read(length) or b"null")))
        _Stuck.healthy = True
        self._answer(202)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def stuck() -> Iterator[str]:
    _Stuck.healthy, _Stuck.posts = False, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stuck)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_without_a_platform_the_configured_restart_action_runs(stuck):
    from flows.runbook_flows import app_down

    restart = ConfiguredAction(
        description="restart via the ops API",
        http=HttpCall(url=f"{stuck}/restart", json={"service": "web"}),
    )
    service = Service(
        name="web",
        http=[HttpEndpoint(name="health", url=f"{stuck}/health")],
        actions={"restart": restart},
    )
    dry = await app_down(service=service, params=_params(), dry_run=True)
    assert dry.plan.actions[0].preview == f"POST {stuck}/restart body {{'service': 'web'}}"
    assert _Stuck.posts == []
    report = await app_down(service=service, params=_params(), approve_as="alice")
    assert _Stuck.posts == [("/restart", {"service": "web"})]
    assert report.outcome is Outcome.FIXED


async def test_remediations_and_their_undo_refuse_to_run_without_an_approval_record(kube):
    from runbooks.app_down import RUNBOOK

    kube.seed_deployment("api", IMAGES)
    action = Action(
        id="x", kind="k", target="t", title="t", risk=Risk.RISKY, preview="", items=[{}]
    )
    for remedy in RUNBOOK.executors.values():
        for executor in (remedy.run, remedy.undo) if remedy.reversible else (remedy.run,):
            with pytest.raises(ApprovalRequired):
                await executor(action, service=_kube_service(kube))
    assert kube.writes() == []


# -- the drill --------------------------------------------------------------------------------


def test_drill_supervisor_restarts_a_killed_app_on_the_same_port():
    import httpx

    from flows.drills.app_down import Supervisor
    from flows.drills.sandbox.apps import SandboxApp

    with Supervisor(SandboxApp("faulty", rps=0)) as supervisor:
        app, first = supervisor.app, supervisor.app.pid
        assert httpx.get(f"{app.url}/health", timeout=5).status_code == 200
        supervisor.crash()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{app.url}/health", timeout=2)
        answer = httpx.post(f"{supervisor.url}/restart", json={}, timeout=30)
        assert answer.status_code == 200 and answer.json()["pid"] == app.pid != first
        assert httpx.get(f"{app.url}/health", timeout=5).json()["status"] == "ok"
        assert supervisor.restarts == 1
        assert httpx.post(f"{supervisor.url}/elsewhere", timeout=5).status_code == 404
    assert not app.running  # the sandbox leaves no process behind


def test_drill_runs_end_to_end_and_passes():
    import io

    from rich.console import Console

    from flows.drills.registry import load

    card = load("app-down")(
        approve_as="ci", console=Console(file=io.StringIO()), interactive=False, show=False
    )
    assert card.passed and card.outcome == "fixed" and card.result == "fixed", card
    assert card.severity == "P0" and card.findings == 1
    [action] = card.actions
    assert action.startswith("Restart drill-web: Restart the app through its process supervisor")
    assert action.endswith("/restart answered 200)")
    assert card.approvals == ["approved by ci via cli-preapproved"]
    times = card.times_s
    assert times["detect"] <= times["first_finding"] <= times["decide"] <= times["mitigate"]
    assert times["mitigate"] <= times["verify"]
    assert card.verdicts == {
        "first_finding": "met",
        "diagnose": "met",
        "verify": "met",
    }
