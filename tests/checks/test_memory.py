"""checks/memory against a real Prometheus scraping leaky sandbox apps (real RSS growth).

Six apps start with the module: ``leak`` leaks 5 MiB/s from the start, ``spike`` jumps by
80 MiB once, ``flat`` holds still, ``deployleak`` starts leaking with the deploy of v2,
``reset`` leaks until a test restarts it, and ``relapse`` leaks on after its restart.
Faults are injected once Prometheus holds a few flat samples, so every series has a
"before".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from checks import memory as mem
from checks.findings import Severity, Status
from checks.http_metrics import metrics_check
from flows.drills.sandbox.apps import SandboxApp
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.prometheus import PrometheusProcess, SandboxUnavailable, free_port
from integrations.docker import DockerReader, DockerTarget
from integrations.kubernetes import KubernetesReader, KubernetesTarget
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.service import Service
from tests.support.docker_api import DockerApiServer

MiB = 2**20
LEAK = 5.0  # MiB/s
LIMIT = 1024 * MiB
WINDOW = mem.Window(lookback_s=45, step_s=1)


async def _samples(url: str, job: str) -> float:
    async with PrometheusClient(PrometheusTarget(url=url, retries=0)) as c:
        found = await c.query(f'count_over_time(process_resident_memory_bytes{{job="{job}"}}[1m])')
        return found.value or 0


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    try:
        prom = PrometheusProcess()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    apps = {
        "leak": SandboxApp("leaky", leak_mb_per_s=LEAK, limit_mb=1024),
        "spike": SandboxApp("leaky", paused=True),
        "flat": SandboxApp("leaky", paused=True),
        "deployleak": SandboxApp("leaky", paused=True, limit_mb=1024),
        "reset": SandboxApp("leaky", leak_mb_per_s=10, limit_mb=1024),
        "relapse": SandboxApp("leaky", leak_mb_per_s=LEAK, limit_mb=1024),
    }
    try:
        for app in apps.values():
            app.start()
        for app in apps.values():
            app.wait_ready()
        prom.set_targets({job: [app.address] for job, app in apps.items()})
        with prom:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and asyncio.run(_samples(prom.url, "flat")) < 5:
                time.sleep(0.3)
            apps["spike"].control(spike_mb=80)
            spiked = time.time()
            apps["deployleak"].control(version="v2", leak=True, leak_mb_per_s=6)
            deployed = time.time()
            time.sleep(7)
            yield {"prom": prom, "apps": apps, "spiked": spiked, "deployed": deployed}
    finally:
        for app in apps.values():
            app.stop()


def _client(stack: dict[str, Any]) -> PrometheusClient:
    return PrometheusClient(PrometheusTarget(url=stack["prom"].url, retries=0))


def _q(job: str, **promql: str) -> mem.MemoryQueries:
    return mem.MemoryQueries.for_service(Service(name=job, promql=promql))


def test_growth_start_finds_the_knee():
    flat = [(float(t), 100.0 + (t % 3)) for t in range(20)]
    rising = [(float(t), 100.0 + 10 * (t - 19)) for t in range(20, 40)]
    assert mem.growth_start(flat + rising) == pytest.approx(20, abs=1)
    assert mem.growth_start([(float(t), 5.0 * t) for t in range(40)]) is None  # a plain line
    assert mem.growth_start(flat) is None
    assert mem.growth_start(flat[:5]) is None


def test_queries_follow_the_service():
    from integrations.kubernetes import KubernetesTarget as K

    on_kube = mem.MemoryQueries.for_service(
        Service(name="api", kubernetes=K(deployment="api", namespace="shop", container="app"))
    )
    assert on_kube.memory[0].startswith("sum by (pod) (container_memory_working_set_bytes{")
    assert 'pod=~"api-.*"' in on_kube.memory[0] and 'container="app"' in on_kube.memory[0]
    assert on_kube.memory[1] == 'process_resident_memory_bytes{job="api"}'
    custom = _q("api", memory_bytes="my_heap_bytes", memory_limit_bytes="my_limit")
    assert (custom.memory, custom.limit) == (["my_heap_bytes"], "my_limit")


async def test_leak_spike_and_flat_are_told_apart_on_real_data(stack):
    async with _client(stack) as prom:
        found = {
            job: (await mem.memory_trend(prom, _q(job), WINDOW, horizon_s=3600, target=job))[0]
            for job in ("leak", "spike", "flat")
        }
        rss = stack["apps"]["leak"].rss_bytes()
    leak, spike, flat = found["leak"], found["spike"], found["flat"]
    assert leak.evidence["kind"] == "leak", leak.summary
    assert spike.evidence["kind"] == "spike", spike.summary
    assert flat.evidence["kind"] == "flat", flat.summary
    assert (leak.status, leak.severity) == (Status.CRITICAL, Severity.P1)
    assert (spike.status, flat.status) == (Status.WARN, Status.OK)
    assert leak.evidence["limit_source"] == "app_memory_limit_bytes"
    assert leak.evidence["slope_bytes_per_s"] == pytest.approx(LEAK * MiB, rel=0.2)
    truth = (LIMIT - rss) / (LEAK * MiB)
    assert leak.evidence["seconds_to_limit"] == pytest.approx(truth, rel=0.2)
    assert (
        set(leak.evidence["sparkline"]) <= set("▁▂▃▄▅▆▇█") and len(leak.evidence["sparkline"]) > 10
    )
    assert spike.evidence["event_at"] == pytest.approx(stack["spiked"], abs=1.5)


async def test_growth_that_began_with_a_deploy_is_pinned_on_it(stack):
    async with _client(stack) as prom:
        [trend] = await mem.memory_trend(prom, _q("deployleak"), WINDOW, horizon_s=3600, target="d")
        [deploy] = await mem.deploy_correlation(
            prom, _q("deployleak"), WINDOW, window_s=30, target="d"
        )
        [spike] = await mem.deploy_correlation(prom, _q("spike"), WINDOW, window_s=3, target="s")
        [flat] = await mem.deploy_correlation(prom, _q("flat"), WINDOW, window_s=30, target="f")
    assert trend.evidence["kind"] == "leak" and trend.summary.startswith(
        "memory leak suspected: flat until"
    )
    assert trend.evidence["growth_start"] == pytest.approx(stack["deployed"], abs=2.5)
    # the leak alone is fitted: 6 MiB/s, not diluted by the flat part before it
    assert trend.evidence["slope_bytes_per_s"] == pytest.approx(6 * MiB, rel=0.2)
    assert deploy.status is Status.WARN and deploy.evidence["deploy"]["what"] == "version v2"
    assert "rollback runbook" in deploy.summary
    assert spike.status is Status.OK and "no deploy" in spike.summary
    assert flat.status is Status.OK and flat.summary == "no growth or jump to explain"


async def test_usage_against_the_limit_follows_the_seed(stack):
    async with _client(stack) as prom:
        now = (await prom.query('process_resident_memory_bytes{job="flat"}')).value
        results = {}
        for share in (0.5, 0.88, 0.97):
            q = _q("flat", memory_limit_bytes=f"vector({now / share:.0f})")
            [results[share]] = await mem.memory_usage(
                prom, q, warn_pct=80, critical_pct=95, target="f"
            )
        [unknown] = await mem.memory_usage(
            prom,
            _q(
                "flat",
                memory_bytes="process_resident_memory_bytes{job='flat'} * 0 + 1",
                memory_limit_bytes="vector(0) < 0",
            ),
            warn_pct=80,
            critical_pct=95,
            target="f",
        )
    assert (results[0.5].status, results[0.5].severity) == (Status.OK, None)
    assert (results[0.88].status, results[0.88].severity) == (Status.WARN, Severity.P2)
    assert (results[0.97].status, results[0.97].severity) == (Status.CRITICAL, Severity.P1)
    assert results[0.88].evidence["limit_source"] == "promql memory_limit_bytes"
    assert results[0.88].evidence["percent"] == pytest.approx(88, abs=2)
    # the leaky app says its own limit; "vector(0) < 0" is empty, so that is used
    assert unknown.evidence["limit_source"] == "app_memory_limit_bytes"


async def test_the_runtime_limit_wins_over_the_apps_own(stack):
    with KubeApiServer() as kube, DockerApiServer() as docker:
        kube.seed_deployment("flat", ["flat:1"], memory_limit="300Mi")
        docker.add_image("flat:1")
        docker.add_container("flat-1", "flat:1", memory_limit=200 * MiB)
        k = KubernetesTarget(deployment="flat", api_url=kube.url)
        d = DockerTarget(base_url=docker.base_url, container="flat-1")
        async with _client(stack) as prom, KubernetesReader(k) as kr, DockerReader(d) as dr:
            q = _q("flat")
            assert await mem.memory_limit(prom, q, kube=kr) == (300 * MiB, "kubernetes")
            assert await mem.memory_limit(prom, q, docker=dr) == (200 * MiB, "docker")
            assert await mem.memory_limit(prom, q) == (256 * MiB, "app_memory_limit_bytes")
            override = _q("flat", memory_limit_bytes="vector(123)")
            assert await mem.memory_limit(prom, override, kube=kr) == (
                123,
                "promql memory_limit_bytes",
            )


async def test_oom_kills_from_kubernetes_and_docker():
    with KubeApiServer() as kube, DockerApiServer() as docker:
        kube.seed_deployment("api", ["api:1"], replicas=2, deployed_ago=timedelta(minutes=30))
        pods = kube.seed_oom_kills("api")
        docker.add_image("worker:1")
        docker.add_container("worker-1", "worker:1", memory_limit=128 * MiB)
        docker.oom_kill("worker-1", exited=True)
        k = KubernetesTarget(deployment="api", api_url=kube.url)
        d = DockerTarget(base_url=docker.base_url, container="worker-1")
        async with KubernetesReader(k) as kr, DockerReader(d) as dr:
            [on_kube] = await mem.restarts(kube=kr, target="api")
            [on_docker] = await mem.restarts(docker=dr, target="worker")
            [since] = await mem.restarts(kube=kr, since=time.time(), target="api")
    assert (on_kube.status, on_kube.severity) == (Status.CRITICAL, Severity.P1)
    assert sorted(on_kube.evidence["oom_killed"]) == sorted(pods)
    assert on_kube.evidence["restarts"] == 6
    assert on_kube.evidence["kubernetes"]["memory_limit"] == "256Mi"
    assert on_docker.status is Status.CRITICAL and on_docker.evidence["oom_killed"] == ["worker-1"]
    assert since.status is Status.OK and since.summary == "no OOM kill since the restart"


async def test_memory_reset_sees_a_restart(stack):
    app = stack["apps"]["reset"]
    async with _client(stack) as prom:
        q = _q("reset")
        before = (await prom.query('process_resident_memory_bytes{job="reset"}')).value
        baseline = 28 * MiB
        since = time.time()
        [not_yet] = await mem.memory_reset(
            prom, q, before=before, baseline=baseline, since=since, step_s=1, target="r"
        )
        app.control(restart=True)
        for _ in range(30):
            [after] = await mem.memory_reset(
                prom, q, before=before, baseline=baseline, since=since, step_s=1, target="r"
            )
            if after.status is Status.OK:
                break
            await asyncio.sleep(0.3)
    assert not_yet.status is Status.WARN and "has not gone back" in not_yet.summary
    assert after.status is Status.OK, after.summary
    assert after.evidence["lowest_bytes"] < baseline + 0.5 * (before - baseline)


async def test_memory_after_restart_tells_a_leak_that_goes_on_from_a_flat_line(stack):
    app = stack["apps"]["relapse"]
    async with _client(stack) as prom:
        [flat] = await mem.memory_after_restart(
            prom, _q("flat"), WINDOW, since=time.time() - 10, target="flat"
        )
        since = time.time()
        app.control(restart=True)  # memory drops; the leak goes on
        [early] = await mem.memory_after_restart(
            prom, _q("relapse"), WINDOW, since=since, target="r"
        )
        await asyncio.sleep(6)
        [leak] = await mem.memory_after_restart(
            prom, _q("relapse"), WINDOW, since=since, target="r"
        )
    assert flat.status is Status.OK and flat.evidence["kind"] == "flat", flat.summary
    assert early.status is Status.UNKNOWN and "samples" in early.summary
    assert leak.status is Status.WARN and leak.summary.startswith("leak persists: memory grows")
    # Only the points after the restart's drop are fitted: the slope is the leak's own.
    assert leak.evidence["slope_bytes_per_s"] == pytest.approx(LEAK * MiB, rel=0.3)
    assert leak.evidence["points"] >= 4


async def test_prometheus_down_is_an_unreachable_error():
    down = PrometheusClient(PrometheusTarget(url=f"http://127.0.0.1:{free_port()}", retries=0))
    async with down:
        check = metrics_check(
            down,
            "memory_trend",
            "api",
            lambda: mem.memory_trend(down, _q("api"), WINDOW, horizon_s=60, target="api"),
        )
        [finding] = await check()
    assert finding.status is Status.ERROR and finding.unreachable
    assert finding.check == "memory_trend" and "cannot connect" in finding.summary


# -- a rollout's new pod, as Prometheus returns it (a recorded shape, no live stack) ---------

LOOKBACK = 600.0
ROLLOUT = mem.Window(lookback_s=LOOKBACK, step_s=15)


def _rollout_prometheus(version: str | None) -> PrometheusClient:
    """The old pod holds still until the deploy half-way through the window; the new pod's
    series starts then and grows 1 MiB every step from its first sample."""

    def handler(request: httpx.Request) -> httpx.Response:
        query, params = request.url.params["query"], request.url.params
        start, end, step = (float(params[k]) for k in ("start", "end", "step"))
        ticks = [start + i * step for i in range(int((end - start) // step) + 1)]
        deployed = start + LOOKBACK / 2
        result: list[dict[str, Any]] = []
        if query.startswith("sum by (pod)"):
            old = [[t, str(300 * MiB)] for t in ticks if t < deployed]
            new = [
                [t, str(200 * MiB + (t - deployed) / step * MiB)] for t in ticks if t >= deployed
            ]
            result = [
                {"metric": {"pod": "api-7f9c-old"}, "values": old},
                {"metric": {"pod": "api-8d1e-new"}, "values": new},
            ]
        elif query.startswith("app_deploy_timestamp_seconds"):
            stamped = [[t, str(deployed - step)] for t in ticks if t >= deployed]
            result = [{"metric": {"job": "api"}, "values": stamped}]
        elif query.startswith("app_build_info") and version:
            seen = [[t, "1"] for t in ticks if t >= deployed]
            result = [{"metric": {"job": "api", "version": version}, "values": seen}]
        body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
        return httpx.Response(200, json=body)

    target = PrometheusTarget(url="http://prometheus.test:9090", retries=0)
    return PrometheusClient(target, transport=httpx.MockTransport(handler))


def _on_kubernetes() -> mem.MemoryQueries:
    kube = KubernetesTarget(deployment="api", namespace="shop", container="app")
    return mem.MemoryQueries.for_service(Service(name="api", kubernetes=kube))


async def test_a_pod_whose_series_starts_mid_window_grew_from_its_start():
    """It used to say "steady growth began before the window" for a pod a deploy started."""
    async with _rollout_prometheus("v2") as prom:
        _, verdicts = await mem.analyse(prom, _on_kubernetes(), ROLLOUT, None)
        [deploy] = await mem.deploy_correlation(
            prom, _on_kubernetes(), ROLLOUT, window_s=60, target="api"
        )
    new = next(v for v in verdicts if v.name == "pod api-8d1e-new")
    assert new.trend.kind == "leak" and new.growth_start == new.points[0][0] == new.event_at
    assert "growing since its series began at" in new.trend.reason
    assert "before the" not in deploy.summary
    assert deploy.status is Status.WARN and deploy.evidence["series"] == "pod api-8d1e-new"
    assert deploy.evidence["deploy"]["what"] == "version v2"
    assert "15s after the deploy of version v2 (" in deploy.summary


async def test_a_deploy_without_a_version_is_named_once():
    """It used to say "after the deploy of a deploy"."""
    async with _rollout_prometheus(None) as prom:
        [deploy] = await mem.deploy_correlation(
            prom, _on_kubernetes(), ROLLOUT, window_s=60, target="api"
        )
    assert deploy.status is Status.WARN and deploy.evidence["deploy"]["what"] is None
    assert "15s after a deploy (" in deploy.summary and "of a deploy" not in deploy.summary


def test_a_series_covering_the_window_did_not_begin_inside_it():
    points = [(1000.0 + 15 * i, float(i)) for i in range(40)]
    assert not mem.began_inside(points, start=1000.0, step_s=15)
    assert mem.began_inside(points[10:], start=1000.0, step_s=15)


def test_a_deploy_names_itself_once_with_or_without_a_version():
    from checks._changes import DeployEvent

    at = 1_700_000_000.0
    unnamed = DeployEvent(at=at, what=None, source="app_deploy_timestamp_seconds")
    named = DeployEvent(at=at, what="version v2", source="app_build_info")
    assert unnamed.after(at + 12) == "12s after a deploy (22:13:20 UTC)"
    assert named.after(at + 12) == "12s after the deploy of version v2 (22:13:20 UTC)"
