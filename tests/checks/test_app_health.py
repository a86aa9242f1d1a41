"""App health checks against real local servers: an HTTP app, the local Kubernetes API and
Docker Engine, the machine's PostgreSQL and Redis; Prometheus answers through a transport."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from checks.app_health import (
    docker_workload,
    error_rate,
    http_endpoints,
    kubernetes_workload,
    postgres_dependency,
    redis_dependency,
    scrub_log,
)
from checks.findings import Severity, Status, timed
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.prometheus import free_port
from integrations.docker import DockerReader, DockerTarget
from integrations.kubernetes import KubernetesOperator, KubernetesReader, KubernetesTarget
from integrations.postgres import PostgresTarget
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.service import HttpEndpoint
from tests.support.docker_api import DockerApiServer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "prometheus"
API_KEY = "hdr-secret-91c2"


class _App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        _App.seen.append(dict(self.headers))
        path = self.path
        if path == "/slow":
            time.sleep(0.3)
        if path == "/hang":
            time.sleep(2)
        code = {"/down": 503, "/gateway": 502}.get(path, 200)
        body = json.dumps({"path": path, "echo": self.headers.get("X-Api-Key")}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def app() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _ep(name: str, url: str, **extra: Any) -> HttpEndpoint:
    return HttpEndpoint(name=name, url=url, **extra)


async def test_endpoints_tell_ok_slow_503_502_timeout_and_refused_apart(app):
    endpoints = [
        _ep("ok", f"{app}/health", headers={"X-Api-Key": SecretStr(API_KEY)}),
        _ep("slow", f"{app}/slow", max_latency_ms=100),
        _ep("down", f"{app}/down"),
        _ep("gateway", f"{app}/gateway"),
        _ep("hang", f"{app}/hang", timeout_s=0.5),
        _ep("refused", f"http://127.0.0.1:{free_port()}/health", timeout_s=1),
    ]
    found = {f.target.split()[0]: f for f in await http_endpoints(endpoints)}
    assert found["ok"].status is Status.OK and found["ok"].evidence["status"] == 200
    assert found["slow"].status is Status.WARN and "limit 100 ms" in found["slow"].summary
    assert found["down"].status is Status.CRITICAL
    assert found["down"].summary == "answered HTTP 503 (expected [200])"
    assert "no healthy upstream" in found["gateway"].summary
    assert found["hang"].summary == "no answer within 0.5 s"
    assert found["refused"].summary.startswith("does not accept connections")
    assert {f.severity for f in found.values() if f.status is Status.CRITICAL} == {Severity.P1}
    assert any(h.get("X-Api-Key") == API_KEY for h in _App.seen), "the header was sent"
    assert API_KEY not in json.dumps([f.model_dump(mode="json") for f in found.values()])


async def test_every_endpoint_failing_is_an_outage(app):
    found = await http_endpoints([_ep("a", f"{app}/down"), _ep("b", f"{app}/gateway")])
    assert [f.severity for f in found] == [Severity.P0, Severity.P0]


def test_scrub_log_masks_known_secrets_url_passwords_and_credential_pairs():
    text = (
        "connecting to postgresql://app:pw-123@db:5432/app\n"
        'config {"password": "hunter2", "api_key":"k-77"} token=abc.def\n'
        "Authorization: Bearer eyJhbGciOi\n"
        "plain sekret-value here"
    )
    lines = scrub_log(text, ["sekret-value"])
    joined = "\n".join(lines)
    for secret in ("pw-123", "hunter2", "k-77", "abc.def", "eyJhbGciOi", "sekret-value"):
        assert secret not in joined
    assert lines[0] == "connecting to postgresql://app:***@db:5432/app"


# -- Prometheus error rate (recorded shape, answers via a transport) -----------------------


def _prom(value: str | None, status: int = 200) -> PrometheusClient:
    recorded = json.loads((FIXTURES / "query_scalar.json").read_text())["body"]

    def handler(request: httpx.Request) -> httpx.Response:
        if status != 200:
            return httpx.Response(status, text="upstream down")
        result = [] if value is None else [{"metric": {}, "value": [time.time(), value]}]
        body = {**recorded, "data": {"resultType": "vector", "result": result}}
        return httpx.Response(200, json=body)

    target = PrometheusTarget(url="http://prometheus.test:9090", retries=0)
    return PrometheusClient(target, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("value", "status", "severity"),
    [
        ("0.42", Status.CRITICAL, Severity.P0),
        ("0.07", Status.CRITICAL, Severity.P1),
        ("0.02", Status.WARN, Severity.P2),
        ("0.001", Status.OK, None),
        (None, Status.UNKNOWN, None),
    ],
)
async def test_error_rate_follows_the_seed_alert_rules(value, status, severity):
    async with _prom(value) as prom:
        [f] = await error_rate(prom, window_s=60)
    assert (f.status, f.severity) == (status, severity)


async def test_error_rate_with_prometheus_failing_is_an_error_finding():
    async with _prom("0", status=503) as prom:
        [f] = await timed("error_rate", "p", lambda: error_rate(prom))
    assert f.status is Status.ERROR


# -- Kubernetes ------------------------------------------------------------------------------

API = ["ghcr.io/acme/api:1.4.1", "ghcr.io/acme/api:1.4.2"]


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer() as server:
        yield server


def _kt(kube: KubeApiServer) -> KubernetesTarget:
    return KubernetesTarget(api_url=kube.url, deployment="api")


async def test_crash_looping_pods_are_critical_with_their_logs(kube):
    kube.crashing_images.add(API[1])
    kube.seed_deployment("api", API)
    with KubernetesReader(_kt(kube)) as reader:
        pods, logs = await kubernetes_workload(reader, tail=2)
    assert (pods.status, pods.severity) == (Status.CRITICAL, Severity.P0)
    assert pods.summary == "none of the 3 pods of deployment default/api is ready: CrashLoopBackOff"
    assert pods.evidence["all_unavailable"] and not pods.evidence["scaled_to_zero"]
    assert logs.status is Status.WARN and logs.evidence["lines"] == [
        "INFO  listening on :8080",
        "FATAL config: missing required setting DATABASE_URL",
    ]
    logged = [r for r in kube.requests if r.path.endswith("/log")]
    assert logged[0].query["tailLines"] == "2"
    assert kube.writes() == []


async def test_oom_killed_pods_warn_and_their_logs_are_scrubbed(kube):
    kube.seed_deployment("api", API)
    names = kube.seed_oom_kills("api", restarts=4)
    kube.set_logs(names[0], ["INFO boot", "DEBUG DATABASE_URL=postgresql://app:s3cr3t@db/app"])
    with KubernetesReader(_kt(kube)) as reader:
        pods, logs = await kubernetes_workload(reader, restart_warn=3, secrets=["s3cr3t"])
    assert pods.status is Status.WARN and sorted(pods.evidence["oom_killed"]) == sorted(names)
    assert "OOMKilled" in pods.summary and "restarted 12 times" in pods.summary
    assert "s3cr3t" not in json.dumps(logs.evidence)
    assert (
        logs.evidence["previous_lines"][-1] == "ERROR java.lang.OutOfMemoryError: Java heap space"
    )


async def test_scaled_to_zero_is_critical_and_healthy_is_ok(kube):
    kube.seed_deployment("api", API)
    with KubernetesReader(_kt(kube)) as reader:
        [pods, logs] = await kubernetes_workload(reader)
        assert pods.status is Status.OK and logs.status is Status.OK
        with KubernetesOperator(_kt(kube)) as op:
            op.scale("api", 0)
        [pods] = await kubernetes_workload(reader)
    assert pods.status is Status.CRITICAL and pods.evidence["scaled_to_zero"]
    assert pods.summary == "deployment default/api is scaled to 0 replicas"


async def test_logs_that_cannot_be_read_do_not_hide_the_pod_state(kube):
    kube.crashing_images.add(API[1])
    kube.seed_deployment("api", API)
    kube.fail_next("GET", "/log", code=500)
    with KubernetesReader(_kt(kube)) as reader:
        pods, logs = await kubernetes_workload(reader)
    assert pods.status is Status.CRITICAL
    assert logs.check == "logs" and logs.status is Status.ERROR


# -- Docker ----------------------------------------------------------------------------------

WEB = ["ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]


@pytest.fixture
def engine() -> Iterator[DockerApiServer]:
    with DockerApiServer() as server:
        yield server


def _dt(engine: DockerApiServer, **extra: Any) -> DockerTarget:
    return DockerTarget(base_url=engine.base_url, **extra)


async def test_restarting_and_oom_killed_containers_are_critical(engine):
    engine.crashing_images.add(WEB[1])
    engine.seed_compose_service("shop", "web", WEB, replicas=2)
    with DockerReader(_dt(engine, compose_project="shop", compose_service="web")) as reader:
        containers, logs, *_ = await docker_workload(reader)
    assert (containers.status, containers.severity) == (Status.CRITICAL, Severity.P0)
    assert "2/2 containers failing: shop-web-1 restarting" in containers.summary
    assert logs.status is Status.WARN and "FATAL" in logs.evidence["lines"][-1]

    engine.crashing_images.clear()
    engine.add_container("solo", WEB[0])
    engine.oom_kill("solo", exited=True)
    with DockerReader(_dt(engine, container="solo")) as reader:
        containers, logs = await docker_workload(reader)
    assert containers.status is Status.CRITICAL and containers.evidence["none_running"]
    assert "solo exited (exit 137, OOMKilled)" in containers.summary
    assert engine.writes() == []


async def test_memory_near_the_limit_and_logs_are_reported(engine):
    engine.seed_compose_service("shop", "web", WEB, replicas=1, memory_limit=100 * 2**20)
    engine.set_usage("shop-web-1", memory=90 * 2**20, cpu_percent=12)
    engine.set_logs("shop-web-1", ["GET / 200"], ["WARN retry token=tk-991"])
    with DockerReader(_dt(engine, container="shop-web-1")) as reader:
        containers, logs, resources = await docker_workload(reader, tail=5)
        assert containers.status is Status.OK and logs.status is Status.OK
        assert logs.evidence["lines"] == ["GET / 200", "WARN retry token=***"]
        assert (resources.status, resources.severity) == (Status.WARN, Severity.P2)
        assert "(90%)" in resources.summary
        engine.set_usage("shop-web-1", memory=99 * 2**20)
        *_, resources = await docker_workload(reader)
    assert resources.status is Status.CRITICAL


# -- dependencies ----------------------------------------------------------------------------


async def test_postgres_reachable_and_unreachable(pgdb):
    [ok] = await postgres_dependency(PostgresTarget(name="db", dsn=pgdb.dsn))
    assert ok.status is Status.OK and ok.evidence["reachable"]
    gone = PostgresTarget(
        dsn=f"postgresql://app:pg-pw-1@127.0.0.1:{free_port()}/x", connect_timeout=1
    )
    [down] = await postgres_dependency(gone)
    assert (down.status, down.severity) == (Status.CRITICAL, Severity.P0)
    assert down.summary.startswith("unreachable: ") and "pg-pw-1" not in down.model_dump_json()


async def test_redis_reachable_and_unreachable():
    [ok] = await redis_dependency(SecretStr("redis://127.0.0.1:6379/0"))
    assert ok.status is Status.OK
    url = SecretStr(f"redis://:rd-pw-7@127.0.0.1:{free_port()}/0")
    [down] = await redis_dependency(url, timeout_s=1)
    assert (down.status, down.severity) == (Status.CRITICAL, Severity.P0)
    assert "rd-pw-7" not in down.model_dump_json() and down.evidence["error"] == "Unreachable"
