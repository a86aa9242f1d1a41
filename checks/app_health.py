"""Is the application up: health endpoints, pods or containers, logs, resources, dependencies.

Seed 004 "Application Down" (health checks failing, 502/503, timeouts; ``docker ps``,
``docker logs``, ``docker stats``; check dependencies DB and Redis) and seed 000 Part E
Incident 3 (database down: connection refused or timing out). A dependency that does not
answer is the diagnosis here, so it is a ``critical`` finding, not an ``error`` one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rx
from pydantic import SecretStr

from checks._helpers import finding
from checks._workloads import docker_workload, kubernetes_workload, scrub_log
from checks.deploys import ERROR_RATE_PROMQL, error_rate_at
from checks.findings import Finding, Severity, Status
from integrations.errors import AuthError, TargetError, Timeout, Unreachable
from integrations.http import async_client, request
from integrations.postgres import PostgresReader, PostgresTarget
from integrations.prometheus import PrometheusClient
from integrations.redact import redact_dsn, scrub
from integrations.redis_queue import translate_redis_error
from integrations.service import HttpEndpoint

__all__ = [
    "docker_workload",
    "error_rate",
    "http_endpoints",
    "kubernetes_workload",
    "postgres_dependency",
    "redis_dependency",
    "scrub_log",
]


def _body(text: str) -> str:
    return " ".join(text.split())[:200]


async def _probe(ep: HttpEndpoint, transport: Any) -> dict[str, Any]:
    headers = {k: v.get_secret_value() for k, v in ep.headers.items()}
    secrets = list(headers.values())
    url = scrub(ep.url, secrets)
    start = time.perf_counter()
    code: int | None
    error: TargetError | None
    try:
        async with async_client(timeout=ep.timeout_s, transport=transport) as client:
            answer = await request(client, ep.method, ep.url, target=url, headers=headers)
        code, body, error = answer.status_code, _body(answer.text), None
    except TargetError as exc:
        code, body, error = exc.status, "", exc
    ms = round((time.perf_counter() - start) * 1000, 1)
    row: dict[str, Any] = {"name": ep.name, "url": url, "status": code, "latency_ms": ms}
    if error is not None and code in ep.expect_status:
        error = None
    if error is not None:
        row["error"] = scrub(str(error), secrets)
        row["kind"] = (
            "down"
            if isinstance(error, Unreachable)
            else "timeout"
            if isinstance(error, Timeout)
            else "error answer"
        )
    elif code not in ep.expect_status:
        row["kind"], row["body"] = "unexpected status", scrub(body, secrets)
    elif ms > ep.max_latency_ms:
        row["kind"] = "slow"
    return row


async def http_endpoints(endpoints: list[HttpEndpoint], *, transport: Any = None) -> list[Finding]:
    """Probes each health endpoint once: status, 502/503, refused connections, timeouts, latency."""
    rows = await asyncio.gather(*(_probe(ep, transport) for ep in endpoints))
    failing = [r for r in rows if r.get("kind") not in (None, "slow")]
    findings = []
    for ep, row in zip(endpoints, rows, strict=True):
        kind = row.get("kind")
        where = f"{row['name']} {row['url']}"
        if kind is None:
            status, severity = Status.OK, None
            summary = f"answered {row['status']} in {row['latency_ms']:.0f} ms"
        elif kind == "slow":
            status, severity = Status.WARN, Severity.P1 if row["latency_ms"] > 5000 else Severity.P2
            summary = (
                f"answered {row['status']} but took {row['latency_ms']:.0f} ms"
                f" (limit {ep.max_latency_ms:.0f} ms)"
            )
        else:
            status = Status.CRITICAL
            severity = Severity.P0 if len(failing) == len(rows) else Severity.P1
            code = row["status"]
            summary = {
                "down": f"does not accept connections: {row.get('error')}",
                "timeout": f"no answer within {ep.timeout_s:g} s",
            }.get(kind, f"answered HTTP {code} (expected {ep.expect_status})")
            if code in (502, 504):
                summary += ": the proxy in front has no healthy upstream"
        findings.append(finding("http_endpoints", where, status, summary, row, severity))
    return findings


async def error_rate(
    prom: PrometheusClient,
    *,
    promql: str = ERROR_RATE_PROMQL,
    window_s: float = 300.0,
    warn_pct: float = 1.0,
    critical_pct: float = 5.0,
    outage_pct: float = 10.0,
) -> list[Finding]:
    """The error rate now over ``window_s``, against the seed's 1% / 5% / 10% alert rules."""
    pct = await error_rate_at(prom, promql, datetime.now(UTC), window_s)
    evidence = {"error_rate_pct": pct, "window_s": window_s, "promql": promql}
    if pct is None:
        status, severity, summary = Status.UNKNOWN, None, "no requests in the window"
    elif pct >= critical_pct:
        status = Status.CRITICAL
        severity = Severity.P0 if pct >= outage_pct else Severity.P1
        summary = f"error rate {pct:.1f}% over the last {window_s:g} s"
    elif pct >= warn_pct:
        status, severity = Status.WARN, Severity.P2
        summary = f"error rate {pct:.1f}% over the last {window_s:g} s"
    else:
        status, severity = Status.OK, None
        summary = f"error rate {pct:.2f}% over the last {window_s:g} s"
    return [finding("error_rate", prom.target.display, status, summary, evidence, severity)]


def _dependency(
    check: str, target: str, start: float, exc: Exception | None, **extra: Any
) -> Finding:
    ms = round((time.perf_counter() - start) * 1000, 1)
    if exc is None:
        evidence = {"reachable": True, "latency_ms": ms, **extra}
        return finding(check, target, Status.OK, f"answers in {ms:.0f} ms", evidence)
    auth = isinstance(exc, AuthError)
    text = ("refuses our credentials: " if auth else "unreachable: ") + str(exc)
    evidence = {"reachable": False, "error": type(exc).__name__, "latency_ms": ms, **extra}
    return finding(
        check, target, Status.CRITICAL, text, evidence, Severity.P1 if auth else Severity.P0
    )


async def postgres_dependency(target: PostgresTarget) -> list[Finding]:
    """Connects and runs ``SELECT 1`` (seed 004: ``psql $DATABASE_URL -c "SELECT 1"``)."""
    start = time.perf_counter()
    try:
        async with PostgresReader(target) as db:
            await db.fetch("SELECT 1 AS ok")
    except TargetError as exc:
        return [_dependency("postgres", target.display, start, exc)]
    return [_dependency("postgres", target.display, start, None)]


async def redis_dependency(url: SecretStr, timeout_s: float = 3.0) -> list[Finding]:
    """Sends ``PING`` to the service's Redis."""
    raw = url.get_secret_value()
    where = redact_dsn(raw)
    start = time.perf_counter()
    client = aioredis.from_url(raw, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await client.ping()
    except (rx.RedisError, OSError) as exc:
        error = translate_redis_error(exc, where, [raw])
        return [_dependency("redis", where, start, error)]
    finally:
        await client.aclose()
    return [_dependency("redis", where, start, None)]
