"""The health sweep's checks (checks/health.py) without Prefect: real HTTP targets, Redis,
RabbitMQ, and Prometheus's documented answers."""

from __future__ import annotations

import time
import uuid
from asyncio import Semaphore

import aio_pika
import httpx
import pytest
import redis

from checks.findings import Severity, Status
from checks.health import check_prometheus, check_queue, sweep_http
from checks.severity import DEFAULT_RULES
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.rabbitmq import RabbitTarget
from integrations.redis_queue import RedisQueueTarget
from integrations.service import HttpEndpoint, Service
from tests.support.http_targets import HttpTargets

CLOSED = "http://127.0.0.1:9/health"  # discard port: nothing listens, connections are refused


@pytest.fixture(scope="module")
def targets():
    with HttpTargets(10, latency_ms=20) as served:
        yield served


async def test_sweep_http_judges_status_latency_timeouts_and_refusals(targets):
    targets.fail(1, 503)
    targets.hang(2)
    targets.slow(3, 400)
    endpoints = [
        ("api", HttpEndpoint(name=f"t{i}", url=targets.url(i), max_latency_ms=250, timeout_s=0.5))
        for i in range(4)
    ] + [("api", HttpEndpoint(name="refused", url=CLOSED)), ("dead", targets.endpoints([1])[0])]

    results = await sweep_http(endpoints, concurrency=10)

    by_target = {(r.service, r.target.split()[0]): r for r in results}
    assert by_target["api", "t0"].status is Status.OK
    down = by_target["api", "t1"]
    assert (down.check, down.severity, down.metrics["status_code"]) == (
        "http_availability",
        Severity.P1,
        503,
    )
    assert "expected 200" in down.summary
    assert by_target["api", "t2"].summary == "no answer within 0.5 s"
    assert by_target["api", "t2"].check == "http_availability"
    slow = by_target["api", "t3"]
    assert (slow.check, slow.status, slow.severity) == ("http_latency", Status.WARN, Severity.P2)
    assert "does not accept connections" in by_target["api", "refused"].summary
    # The only endpoint of "dead" is down: the application is completely down.
    assert by_target["dead", "t1"].severity is Severity.P0
    assert targets.hits["/t/1"] == 2 and targets.hits["/t/2"] == 1


async def test_queue_depth_over_the_backlog_rule_is_p2_and_a_dead_broker_p1():
    key = f"oncall-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    pipe = client.pipeline()
    for start in range(0, 10_001, 5_000):
        pipe.rpush(key, *range(start, min(start + 5_000, 10_001)))
    pipe.execute()
    try:
        deep = await check_queue(
            "mail", RedisQueueTarget(url="redis://127.0.0.1:6379/0", key=key), DEFAULT_RULES
        )
    finally:
        client.delete(key)
    assert (deep.check, deep.severity, deep.metrics["queue_depth"]) == (
        "queue_depth",
        Severity.P2,
        10_001,
    )
    gone = await check_queue(
        "mail", RedisQueueTarget(url="redis://127.0.0.1:1/0", key=key, timeout=1), DEFAULT_RULES
    )
    assert (gone.check, gone.severity) == ("queue_reachability", Severity.P1)

    queue = f"oncall-test-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue)
        rabbit = RabbitTarget(amqp_url="amqp://guest:guest@127.0.0.1:5672/", queue=queue)
        ok = await check_queue("mail", rabbit, DEFAULT_RULES)
        await declared.delete(if_unused=False, if_empty=False)
    assert (ok.status, ok.metrics["queue_depth"]) == (Status.OK, 1)


async def test_prometheus_rules_error_rate_p0_and_database_cpu_p1():
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        # Instant-query envelope: https://prometheus.io/docs/prometheus/latest/querying/api/
        query = request.url.params["query"]
        seen.append(query)
        value = "0.12" if "status=~" in query else "95" if "pg_cpu" in query else "0.4"
        result = [{"metric": {}, "value": [time.time(), value]}]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return httpx.Response(200, json=body)

    service = Service(
        name="web",
        prometheus=PrometheusTarget(url="http://prometheus.test:9090"),
        promql={"db_cpu": "max(pg_cpu_percent{$selector})"},
    )
    async with PrometheusClient(service.prometheus, transport=httpx.MockTransport(answer)) as p:
        results = {
            r.check: r for r in await check_prometheus(service, p, DEFAULT_RULES, Semaphore(2))
        }

    assert (results["error_rate"].severity, results["error_rate"].metrics) == (
        Severity.P0,
        {"error_rate": 0.12},
    )
    assert results["p95_latency"].status is Status.OK
    assert results["db_cpu"].severity is Severity.P1
    assert 'max(pg_cpu_percent{job="web"})' in seen
