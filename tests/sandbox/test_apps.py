"""The sandbox's leaky and faulty apps on their own, then as a real Prometheus sees them.

The Prometheus stack (three leaky apps: leaking, about to spike, idle; one faulty app) starts
with the module, because Prometheus's first scrape comes about five seconds after it is
ready; the app-only tests run meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from checks.trend import TrendKind, classify_memory
from flows.drills.sandbox.apps import ENDPOINTS, LATENCY_BUCKETS, SandboxApp
from flows.drills.sandbox.prometheus import (
    AlertmanagerProcess,
    PrometheusProcess,
    SandboxUnavailable,
    find_binary,
)
from integrations.errors import ConfigError
from integrations.prometheus import PrometheusClient, PrometheusTarget

MiB = 2**20
LEAK_MIB_PER_S = 5.0
FAULTS = {  # endpoint: (error rate, latency in seconds)
    "/api/sessions": (0.4, 0.35),
    "/api/users": (0.1, 0.12),
    "/api/rooms": (0.0, 0.05),
}


def metrics(app: SandboxApp) -> dict[str, float]:
    """The app's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(app.metrics_url, timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line and not line.startswith("#")
    }


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := check():
            return answer
        time.sleep(0.1)
    pytest.fail(f"not true within {timeout}s")


@pytest.fixture(scope="module", autouse=True)
def stack() -> Iterator[dict[str, Any]]:
    """Leaking, spiking and idle leaky apps plus a faulty app, scraped by a real Prometheus."""
    try:
        prom = PrometheusProcess()
    except SandboxUnavailable as exc:
        yield {"skip": str(exc)}
        return
    endpoints = {e: {"error_rate": r, "latency_s": s} for e, (r, s) in FAULTS.items()}
    apps = {
        "leaky-leak": SandboxApp("leaky", leak_mb_per_s=LEAK_MIB_PER_S, limit_mb=1024),
        "leaky-spike": SandboxApp("leaky", paused=True),
        "leaky-flat": SandboxApp("leaky", paused=True),
        "faulty": SandboxApp("faulty", endpoints=endpoints, rps=45),
    }
    try:
        for app in apps.values():
            app.start()
        for app in apps.values():
            app.wait_ready()
        leaky_only = {job: [app.address] for job, app in apps.items() if job != "faulty"}
        prom.set_targets(leaky_only)
        with prom:
            # faulty joins a running Prometheus, which is how a drill adds apps as it goes.
            prom.set_targets({job: [app.address] for job, app in apps.items()})
            yield {"prom": prom, "apps": apps}
    finally:
        for app in apps.values():
            app.stop()


@pytest.fixture
def real(stack) -> dict[str, Any]:
    if "skip" in stack:
        pytest.skip(stack["skip"])
    return stack


def client(real: dict[str, Any]) -> PrometheusClient:
    return PrometheusClient(PrometheusTarget(url=real["prom"].url, retries=0))


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := await check():
            return answer
        await asyncio.sleep(0.2)
    pytest.fail(f"not true within {timeout}s")


# --- the apps on their own ------------------------------------------------------------


def test_leaky_really_leaks_spikes_and_restarts():
    with SandboxApp("leaky", leak_mb_per_s=40, version="v7") as app:
        before = app.rss_bytes()
        time.sleep(1.0)
        grown = app.rss_bytes() - before
        assert 25 * MiB < grown < 60 * MiB  # ~40 MiB in a second, in real resident pages
        state = app.control(leak=False, spike_mb=64)
        assert state["spike_bytes"] == 64 * MiB and not state["leaking"]
        assert app.rss_bytes() - before > grown + 60 * MiB
        app.control(restart=True)
        assert app.rss_bytes() < before + 8 * MiB
        seen = metrics(app)
        assert seen['app_build_info{version="v7"}'] == 1.0
        assert seen['app_restarts_total{reason="manual"}'] == 1.0
        assert seen["app_memory_limit_bytes"] == 256 * MiB
        assert seen["app_leaked_bytes"] == 0.0
        assert abs(seen["process_resident_memory_bytes"] - app.rss_bytes()) < 4 * MiB


def test_leaky_restarts_itself_at_its_limit_like_an_oom_kill():
    with SandboxApp("leaky", leak_mb_per_s=100, limit_mb=80) as app:
        wait_until(lambda: metrics(app).get('app_restarts_total{reason="oom"}', 0) >= 1)
        assert app.rss_bytes() < 80 * MiB


def test_a_deploy_bumps_build_info_and_deploy_time():
    with SandboxApp("faulty", rps=0) as app:
        first = metrics(app)["app_deploy_timestamp_seconds"]
        state = app.control(version="v2")
        seen = metrics(app)
        assert state["version"] == "v2"
        assert seen['app_build_info{version="v2"}'] == 1.0
        assert 'app_build_info{version="v1"}' not in seen
        assert seen["app_deploy_timestamp_seconds"] > first


def test_faulty_serves_exactly_the_configured_share_of_errors():
    with SandboxApp("faulty", error_rate=0.25, latency=0.01, rps=0) as app:
        statuses = []
        for _ in range(8):
            try:
                with urllib.request.urlopen(f"{app.url}/api/users", timeout=5) as answer:
                    statuses.append(answer.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        assert statuses.count(500) == 2 and statuses.count(200) == 6
        seen = metrics(app)
        users = 'endpoint="/api/users",method="GET"'
        assert seen[f'http_requests_total{{{users},status="500"}}'] == 2.0
        assert seen['http_request_duration_seconds_count{endpoint="/api/users"}'] == 8.0
        with urllib.request.urlopen(f"{app.url}/health", timeout=5) as answer:
            assert answer.status == 200
        with pytest.raises(ConfigError, match="unknown endpoint"):
            app.control(endpoints={"/api/nope": {"error_rate": 1}})
        state = app.control(endpoints={"/api/rooms": {"latency_s": 2}}, rps=3)
        assert state["endpoints"]["/api/rooms"] == {"error_rate": 0.25, "latency_s": 2.0}
        assert state["rps"] == 3.0


def test_faulty_load_generator_makes_its_own_traffic():
    with SandboxApp("faulty", latency=0.01, rps=50) as app:
        time.sleep(0.6)
        total = sum(v for k, v in metrics(app).items() if k.startswith("http_requests_total"))
        assert total >= 15


def test_apps_stop_with_whoever_started_them():
    # A parent that dies by SIGKILL cannot run any cleanup; the app must still go.
    script = (
        "from flows.drills.sandbox.apps import SandboxApp\n"
        "app = SandboxApp('leaky', paused=True).start().wait_ready()\n"
        "print(app.pid, app.workdir, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True
    )
    workdir = ""
    try:
        pid, workdir = parent.stdout.readline().split()
        child = int(pid)
        os.kill(child, 0)  # alive
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=5)
    finally:
        parent.kill()
        parent.stdout.close()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)  # the killed parent could not tidy up


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_context_manager_leaves_no_process_behind():
    with SandboxApp("faulty", rps=10) as app:
        pid = app.pid
        assert app.running
    assert not app.running
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def test_missing_binaries_name_their_debian_package(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(
        SandboxUnavailable, match=r"needs `prometheus` \(apt-get install prometheus\)"
    ):
        find_binary("prometheus")
    with pytest.raises(SandboxUnavailable, match="apt-get install prometheus-alertmanager"):
        AlertmanagerProcess()
    with pytest.raises(SandboxUnavailable, match=r"apt-get install prometheus\)$"):
        PrometheusProcess()


def test_generated_configs_have_short_intervals(tmp_path):
    prom = PrometheusProcess(
        {"a": ["127.0.0.1:1"]},
        rule_groups=[{"name": "g", "rules": []}],
        alertmanager_url="http://127.0.0.1:9093",
        binary=sys.executable,  # only the config is looked at; nothing runs
    )
    am = AlertmanagerProcess("http://127.0.0.1:1/hook", binary=sys.executable)
    config = prom.config(tmp_path)
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["rule_files"] == [str(tmp_path / "rules.yml")]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [
        {"targets": ["127.0.0.1:9093"]}
    ]
    route = am.config()["route"]
    assert (route["group_wait"], route["group_interval"]) == ("1s", "1s")
    assert am.config()["receivers"][0]["webhook_configs"] == [
        {"url": "http://127.0.0.1:1/hook", "send_resolved": True}
    ]


# --- as a real Prometheus sees them ----------------------------------------------------


async def test_error_rate_promql_reflects_configured_rates(real):
    errors = 'sum by (endpoint) (rate(http_requests_total{job="faulty",status=~"5.."}[10s]))'
    total = 'sum by (endpoint) (rate(http_requests_total{job="faulty"}[10s]))'
    # An endpoint that never fails has no 5xx series at all; "or 0 * total" gives it a zero.
    query = f"({errors} or 0 * {total}) / {total}"
    async with client(real) as prom:

        async def rates() -> dict[str, float]:
            found = (await prom.query(query)).by("endpoint")
            return found if len(found) == len(ENDPOINTS) else {}

        found = await eventually(rates)
    for endpoint, (error_rate, _) in FAULTS.items():
        assert found[endpoint] == pytest.approx(error_rate, abs=0.05), endpoint


async def test_p95_latency_reflects_configured_latency(real):
    query = (
        "histogram_quantile(0.95, sum by (endpoint, le)"
        ' (rate(http_request_duration_seconds_bucket{job="faulty"}[10s])))'
    )
    async with client(real) as prom:

        async def p95() -> dict[str, float]:
            found = (await prom.query(query)).by("endpoint")
            return found if len(found) == len(ENDPOINTS) else {}

        found = await eventually(p95)
    for endpoint, (_, latency) in FAULTS.items():
        # The quantile lands in the bucket holding the configured latency (±10 % jitter),
        # allowing 50 ms for a busy machine to schedule the handler's threads.
        low = max([0.0, *(b for b in LATENCY_BUCKETS if b <= latency * 0.9)])
        high = min(b for b in LATENCY_BUCKETS if b >= latency * 1.1 + 0.05)
        assert low <= found[endpoint] <= high, (endpoint, found[endpoint])


async def test_leak_spike_and_flat_are_told_apart_on_real_data(real):
    apps = real["apps"]
    async with client(real) as prom:

        async def flat_history() -> bool:
            # a few samples before the spike, so "flat before" is something seen, not assumed
            selector = 'process_resident_memory_bytes{job="leaky-spike"}'
            return ((await prom.query(f"count_over_time({selector}[1m])")).value or 0) >= 4

        await eventually(flat_history)
        apps["leaky-spike"].control(spike_mb=80)
        apps["leaky-leak"].control(version="v2")  # a deploy the runbook can line growth up with
        spiked_at = time.time()
        await asyncio.sleep(4.2)
        raw = await prom.query('process_resident_memory_bytes{job=~"leaky-.*"}[30s]')
        deploys = (await prom.query('app_deploy_timestamp_seconds{job="leaky-leak"}')).value
        build = (await prom.query('app_build_info{job="leaky-leak"}')).samples
    series = {s.labels["job"]: s.points for s in raw.series}
    trends = {job: classify_memory(points, limit=1024 * MiB) for job, points in series.items()}
    assert trends["leaky-leak"].kind is TrendKind.LEAK, trends["leaky-leak"].reason
    assert trends["leaky-spike"].kind is TrendKind.SPIKE, trends["leaky-spike"].reason
    assert trends["leaky-flat"].kind is TrendKind.FLAT, trends["leaky-flat"].reason

    leak = trends["leaky-leak"]
    assert leak.fit.slope == pytest.approx(LEAK_MIB_PER_S * MiB, rel=0.15)
    expected = (1024 * MiB - series["leaky-leak"][-1][1]) / (LEAK_MIB_PER_S * MiB)
    assert leak.seconds_to_limit == pytest.approx(expected, rel=0.15)
    spike = trends["leaky-spike"]
    assert spike.jump.size == pytest.approx(80 * MiB, rel=0.1)
    assert abs(spike.jump.at - spiked_at) < 1.5
    assert deploys == pytest.approx(spiked_at, abs=1.5)
    assert [s.labels["version"] for s in build] == ["v2"]
