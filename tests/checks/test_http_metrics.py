"""checks/http_metrics against a real Prometheus scraping faulty sandbox apps.

One Prometheus and five apps start with the module (the first scrape comes ~5 s after
Prometheus is ready): ``steady`` fails on two endpoints, ``healthy`` does not, ``slow`` is
slow on one endpoint, ``deploy`` starts failing with a deploy and ``surge`` starts failing
with a traffic surge. The pure tests run while it warms up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from checks import http_metrics as hm
from checks.findings import Severity, Status
from flows.drills.sandbox.apps import SandboxApp
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.prometheus import PrometheusProcess, SandboxUnavailable, free_port
from integrations.docker import DockerReader, DockerTarget
from integrations.kubernetes import KubernetesReader, KubernetesTarget
from integrations.postgres import PostgresReader, PostgresTarget
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.service import HttpEndpoint, Service
from tests.support.docker_api import DockerApiServer

WINDOW = 5.0
STEADY = {"/api/sessions": 0.4, "/api/users": 0.1, "/api/rooms": 0.0}  # overall 1/6


async def _samples(prom: PrometheusProcess, job: str) -> float:
    async with PrometheusClient(PrometheusTarget(url=prom.url, retries=0)) as c:
        result = await c.query(f'count_over_time(app_build_info{{job="{job}"}}[1m])')
        return result.value or 0


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    """The apps, a Prometheus scraping them, and the moments faults were injected."""
    try:
        prom = PrometheusProcess()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    apps = {
        "steady": SandboxApp(
            "faulty", latency=0.01, endpoints={e: {"error_rate": r} for e, r in STEADY.items()}
        ),
        "healthy": SandboxApp("faulty", latency=0.01),
        "slow": SandboxApp("faulty", latency=0.01, endpoints={"/api/rooms": {"latency_s": 2.6}}),
        "deploy": SandboxApp("faulty", latency=0.01),
        "surge": SandboxApp("faulty", latency=0.01, rps=5),
    }
    try:
        for app in apps.values():
            app.start()
        for app in apps.values():
            app.wait_ready()
        prom.set_targets({job: [app.address] for job, app in apps.items()})
        with prom:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # clean history first, so a rise has a start
                if asyncio.run(_samples(prom, "surge")) >= 4:
                    break
                time.sleep(0.3)
            apps["deploy"].control(version="v2", error_rate=0.3)
            deployed = time.time()
            apps["surge"].control(rps=40, error_rate=0.2)
            time.sleep(WINDOW)
            yield {"prom": prom, "apps": apps, "deployed": deployed}
    finally:
        for app in apps.values():
            app.stop()


def _client(stack: dict[str, Any]) -> PrometheusClient:
    return PrometheusClient(PrometheusTarget(url=stack["prom"].url, retries=0))


def _q(job: str, **promql: str) -> hm.PromQL:
    return hm.PromQL.for_service(Service(name=job, promql=promql), WINDOW)


# --- pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "status", "severity"),
    [
        ("error_rate", 0.12, Status.CRITICAL, Severity.P0),  # seed 000 Part H: > 10 % P0
        ("error_rate", 0.07, Status.CRITICAL, Severity.P1),  # 5-10 % P1
        ("error_rate", 0.03, Status.WARN, Severity.P2),  # 1-5 % P2
        ("error_rate", 0.005, Status.OK, None),
        ("p95_seconds", 6.0, Status.CRITICAL, Severity.P1),  # seed 000 Incident 6: > 5 s P1
        ("p95_seconds", 3.0, Status.WARN, Severity.P2),  # > 2 s P2
        ("p95_seconds", 0.8, Status.OK, None),
    ],
)
def test_thresholds_map_to_the_seed_severities(metric, value, status, severity):
    warn, critical = (0.01, 0.05) if metric == "error_rate" else (2.0, 5.0)
    assert hm.judge(metric, value, warn, critical) == (status, severity)


def test_rise_start_is_the_last_upward_crossing():
    points = [(0, 0.0), (1, 0.2), (2, 0.0), (3, 0.0), (4, 0.3), (5, 0.4)]
    assert hm.rise_start(points, 0.1) == hm.Rise(state="at", at=4, current=0.4)
    assert hm.rise_start(points[:4], 0.1).state == "none"
    assert hm.rise_start([(0, 0.5), (1, 0.6)], 0.1).state == "before_window"
    assert hm.rise_start([(0, float("nan")), (1, 0.6)], 0.1).state == "before_window"


def test_promql_defaults_and_overrides():
    q = _q("api")
    assert q.render("http_requests", "endpoint") == (
        'sum by (endpoint) (rate(http_requests_total{job="api"}[5s]))'
    )
    assert "sum by (le) (" in q.quantile(0.95)
    custom = _q(
        "api",
        selector='app="api",env="prod"',
        http_requests="sum by ($by) (rate(requests{$selector}[$window]))",
    )
    assert custom.render("http_requests") == 'sum by () (rate(requests{app="api",env="prod"}[5s]))'
    assert 'app="api",env="prod",status=~"5.."' in custom.error_ratio()


# --- on real data ---------------------------------------------------------------------------


async def test_error_rate_and_the_failing_endpoints(stack):
    async with _client(stack) as prom:
        [steady] = await hm.error_rate(prom, _q("steady"), warn=0.01, critical=0.05, target="s")
        [healthy] = await hm.error_rate(prom, _q("healthy"), warn=0.01, critical=0.05, target="h")
        [top] = await hm.top_endpoints(
            prom,
            _q("steady"),
            signal="error_ratio",
            label="endpoint",
            warn=0.01,
            limit=5,
            target="s",
        )
    assert steady.evidence["error_ratio"] == pytest.approx(1 / 6, abs=0.04)
    assert (steady.status, steady.severity) == (Status.CRITICAL, Severity.P0)
    assert (healthy.status, healthy.severity, healthy.evidence["error_ratio"]) == (
        Status.OK,
        None,
        0.0,
    )
    rows = top.evidence["endpoints"]
    assert [r["endpoint"] for r in rows] == ["/api/sessions", "/api/users", "/api/rooms"]
    assert rows[0]["error_ratio"] == pytest.approx(0.4, abs=0.06)
    assert top.status is Status.WARN and top.summary.startswith(
        "2 endpoint(s) above 1.0%: /api/sessions"
    )


async def test_latency_and_the_slowest_endpoint(stack):
    async with _client(stack) as prom:
        for _ in range(40):  # 2.6 s requests only show up once they finish
            [slow] = await hm.latency(prom, _q("slow"), warn_s=2.0, critical_s=5.0, target="s")
            if slow.status.is_problem:
                break
            await asyncio.sleep(0.5)
        [fast] = await hm.latency(prom, _q("healthy"), warn_s=2.0, critical_s=5.0, target="h")
        [top] = await hm.top_endpoints(
            prom, _q("slow"), signal="p95", label="endpoint", warn=2.0, limit=5, target="s"
        )
    assert (slow.status, slow.severity) == (Status.WARN, Severity.P2), slow.summary
    assert 2.0 < slow.evidence["p95_s"] <= 3.0
    assert fast.status is Status.OK and fast.evidence["p95_s"] < 0.1
    assert top.evidence["endpoints"][0]["endpoint"] == "/api/rooms" and top.status is Status.WARN


async def test_a_rise_that_follows_a_deploy_is_pinned_on_it(stack):
    async with _client(stack) as prom:
        deploy, traffic = await hm.change_timeline(
            prom,
            _q("deploy"),
            signal="error_ratio",
            threshold=0.01,
            lookback_s=60,
            step_s=1,
            deploy_window_s=30,
            traffic_ratio=2.0,
            target="d",
        )
    assert deploy.status is Status.WARN, deploy.summary
    assert deploy.evidence["deploy"]["what"] == "version v2"
    assert deploy.evidence["deploy"]["at"] == pytest.approx(stack["deployed"], abs=1.5)
    # a new 5xx series needs two scrapes before rate() sees it, plus the step's alignment
    assert 0 <= deploy.evidence["rise"]["at"] - stack["deployed"] <= 4
    assert "rollback runbook" in deploy.summary
    assert traffic.status is Status.OK


async def test_a_rise_with_a_traffic_surge_says_scale(stack):
    async with _client(stack) as prom:
        deploy, traffic = await hm.change_timeline(
            prom,
            _q("surge"),
            signal="error_ratio",
            threshold=0.01,
            lookback_s=60,
            step_s=1,
            deploy_window_s=3,  # the app's own start is a deploy too, ~10 s before the surge
            traffic_ratio=2.0,
            target="s",
        )
        quiet = await hm.change_timeline(
            prom,
            _q("healthy"),
            signal="error_ratio",
            threshold=0.01,
            lookback_s=60,
            step_s=1,
            deploy_window_s=30,
            traffic_ratio=2.0,
            target="h",
        )
    assert deploy.status is Status.OK and deploy.evidence["deploy"] is None
    assert traffic.status is Status.WARN and traffic.evidence["traffic_ratio"] > 3
    assert [f.status for f in quiet] == [Status.OK, Status.OK]
    assert "no rise" in quiet[0].summary


async def test_external_calls_measure_real_endpoints(stack):
    slow, healthy = stack["apps"]["slow"], stack["apps"]["healthy"]
    endpoints = [
        HttpEndpoint(name="rooms", url=f"{slow.url}/api/rooms", max_latency_ms=1000),
        HttpEndpoint(name="health", url=f"{healthy.url}/health"),
        HttpEndpoint(name="gone", url=f"http://127.0.0.1:{free_port()}/", timeout_s=2),
        HttpEndpoint(name="missing", url=f"{healthy.url}/nope"),
    ]
    found = {f.target: f for f in await hm.external_calls(endpoints)}
    assert found["rooms"].status is Status.WARN and found["rooms"].evidence["latency_ms"] > 2000
    assert found["health"].status is Status.OK and found["health"].evidence["status_code"] == 200
    assert found["gone"].status is Status.CRITICAL and "cannot connect" in found["gone"].summary
    assert found["missing"].status is Status.CRITICAL
    assert found["missing"].evidence["status_code"] == 404


async def test_prometheus_down_or_failing_is_an_unreachable_error(stack):
    down = PrometheusClient(PrometheusTarget(url=f"http://127.0.0.1:{free_port()}", retries=0))
    broken = _q("steady", selector='job="steady"}(')  # Prometheus answers bad_data
    async with down, _client(stack) as prom:
        for client, q in ((down, _q("steady")), (prom, broken)):
            check = hm.metrics_check(
                client,
                "error_rate",
                "s",
                lambda c=client, q=q: hm.error_rate(c, q, warn=0.01, critical=0.05, target="s"),
            )
            [finding] = await check()
            assert finding.status is Status.ERROR and finding.unreachable
            assert finding.evidence["metrics_unavailable"] is True
    assert "bad_data" in finding.summary


class _Statements:
    """A reader whose pg_stat_statements holds one slow statement (the extension is not
    preloaded on this machine's PostgreSQL, so its rows cannot be produced for real)."""

    target = PostgresTarget(name="db", dsn="postgresql://x@127.0.0.1:1/x")

    async def fetch(self, query: str, params: dict | None = None) -> list[dict]:
        if "pg_extension" in query:
            return [{"?column?": 1}]
        row = {"queryid": "1", "calls": 9, "total_ms": 9000.0, "mean_ms": 1000.0, "rows": 9}
        return [{**row, "query": "SELECT * FROM sessions WHERE user_id = $1"}]


async def test_slow_statements_count_only_while_the_symptom_lasts(stack, pgdb):
    async with _client(stack) as prom:
        [during] = await hm.slow_queries(
            _Statements(),
            prom,
            _q("steady"),
            slow_mean_ms=500,
            signal="error_ratio",
            threshold=0.01,
        )
        [after] = await hm.slow_queries(
            _Statements(),
            prom,
            _q("healthy"),
            slow_mean_ms=500,
            signal="error_ratio",
            threshold=0.01,
        )
        async with PostgresReader(PostgresTarget(name="real", dsn=pgdb.dsn)) as db:
            [real] = await hm.slow_queries(
                db, prom, _q("steady"), slow_mean_ms=500, signal="error_ratio", threshold=0.01
            )
    assert (during.status, during.severity) == (Status.WARN, Severity.P2)
    assert after.status is Status.OK and "within target now" in after.summary
    assert real.check == "top_statements" and real.status in (Status.UNKNOWN, Status.OK)


async def test_capacity_reads_kubernetes_and_compose_replicas():
    with KubeApiServer() as kube, DockerApiServer() as docker:
        kube.seed_deployment("api", ["api:1.0"], replicas=3)
        docker.seed_compose_service("shop", "web", ["web:1", "web:2"], replicas=2)
        k = KubernetesTarget(deployment="api", api_url=kube.url)
        d = DockerTarget(base_url=docker.base_url, compose_project="shop", compose_service="web")
        async with KubernetesReader(k) as kr, DockerReader(d) as dr:
            [on_kube] = await hm.capacity(kube=kr, target="api")
            [on_docker] = await hm.capacity(docker=dr, target="web")
    assert on_kube.evidence == {
        "mechanism": "kubernetes",
        "name": "api",
        "namespace": "default",
        "replicas": 3,
        "ready": 3,
    }
    assert on_docker.evidence["replicas"] == 2 and on_docker.evidence["mechanism"] == "docker"
    assert on_kube.status is on_docker.status is Status.OK
