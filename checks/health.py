"""The health sweep's checks: every target kind, concurrently and bounded, as flat rows.

The sweep itself (batches as Prefect tasks, alerts, artifacts) is :mod:`flows.health`.

Thresholds are the seeds' alert rules (seed 000 Part H, via :mod:`checks.severity`):
database unreachable → P0; error rate > 10 % P0, 5-10 % P1, 1-5 % P2; response time
> 5 s P1 (> 2 s P2, Incident 6); database CPU > 90 % P1, 70-90 % P2; a queue deeper than
10,000 P2 (seed 004). For HTTP endpoints, one endpoint down is "major service down" (P1)
and every endpoint of a service down is the application completely down (seed 004
SEV-1, seed 000 "All services down": P0), as :mod:`checks.app_health` judges it; slower
than ``max_latency_ms`` but under 2 s is performance degradation (Part H: P2).
A check that cannot run at all (our credentials refused, Prometheus away) is an
``error`` row, not an incident: it says nothing about the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from checks import postgres as pg
from checks.findings import Severity, Status
from checks.http_metrics import PromQL, current_value
from checks.severity import DEFAULT_RULES, SeverityRule, severity_for_metric
from integrations.errors import TargetError, Timeout, Unreachable
from integrations.http import request
from integrations.http_pool import http_client
from integrations.postgres import PostgresReader, PostgresTarget
from integrations.prometheus import PrometheusClient
from integrations.rabbitmq import RabbitReader, RabbitTarget
from integrations.redact import redact_dsn, scrub
from integrations.redis_queue import RedisQueueReader, RedisQueueTarget
from integrations.service import HttpEndpoint, Service

__all__ = [
    "Kind",
    "Result",
    "check_postgres",
    "check_prometheus",
    "check_queue",
    "postgres_batch",
    "prometheus_batch",
    "queue_batch",
    "rate_availability",
    "signals",
    "sweep_http",
]

Kind = Literal["http", "postgres", "queue", "prometheus"]
Rules = Sequence[SeverityRule]
OnDone = Callable[[int], None]
QueueTarget = RabbitTarget | RedisQueueTarget
_DOWN = (Unreachable, Timeout)
_ONE_DOWN = "an HTTP endpoint is down: major service down (seed 000 Part H: P1)"
_ALL_DOWN = (
    "every HTTP endpoint of the service is down: application completely down"
    " (seed 004 SEV-1; seed 000 Part H 'All services down': P0)"
)
_SLOW = "slower than its max_latency_ms: performance degradation (seed 000 Part H: P2)"
_POOL = "connection utilisation 70 % or more P2, 90 % or more P1 (checks/postgres.py)"
_BROKER_DOWN = "queue broker unreachable: major service down (seed 000 Part H: P1)"


class Result(BaseModel):
    """One target's outcome in a sweep; ``failing`` ones carry the seed rule they crossed."""

    model_config = ConfigDict(frozen=True)

    service: str
    kind: Kind
    check: str = Field(description="Which threshold, e.g. http_availability, error_rate")
    target: str = Field(description="What was checked, without secrets")
    status: Status
    summary: str
    severity: Severity | None = None
    reason: str = Field(default="", description="The seed rule crossed")
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_ms: float = 0.0

    @property
    def failing(self) -> bool:
        return self.status.is_problem

    def row(self) -> dict[str, Any]:
        """A flat row for the sweep's table artifact."""
        fields = ("service", "kind", "check", "target", "status", "severity", "summary")
        return {k: str(getattr(self, k) or "") for k in fields} | {"ms": self.duration_ms}


Where = tuple[str, Kind, str]  # (service, kind, target)


def _row(
    where: Where,
    check: str,
    start: float,
    summary: str,
    severity: Severity | None = None,
    reason: str = "",
    metrics: dict[str, float] | None = None,
    status: Status | None = None,
) -> Result:
    """A Result whose status follows its severity (P0/P1 critical, P2/P3 warn, none ok)."""
    if status is None:
        status = Status.OK if severity is None else _judged(severity)
    service, kind, target = where
    return Result(
        service=service,
        kind=kind,
        check=check,
        target=target,
        status=status,
        summary=summary,
        severity=severity,
        reason=reason,
        metrics=metrics or {},
        duration_ms=round((time.perf_counter() - start) * 1000, 1),
    )


def _judged(severity: Severity) -> Status:
    return Status.CRITICAL if severity.rank <= 1 else Status.WARN


def _error(where: Where, check: str, start: float, exc: Exception) -> Result:
    return _row(where, check, start, f"cannot check: {exc}", status=Status.ERROR)


async def bounded(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    """Runs the calls at most ``concurrency`` at a time; results in order."""
    limit = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with limit:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


# --- HTTP --------------------------------------------------------------------------


async def _probe(client: httpx.AsyncClient, service: str, ep: HttpEndpoint, rules: Rules) -> Result:
    headers = {name: value.get_secret_value() for name, value in ep.headers.items()}
    target = f"{ep.name} {scrub(redact_dsn(ep.url), list(headers.values()))}"
    start = time.perf_counter()
    code: int | None = None
    error: TargetError | None = None
    try:
        answer = await request(
            client, ep.method, ep.url, target=target, headers=headers, timeout=ep.timeout_s
        )
        code = answer.status_code
    except TargetError as exc:  # 4xx/5xx answers carry their status; transport errors none
        code, error = exc.status, exc
    ms = round((time.perf_counter() - start) * 1000, 1)
    where: Where = (service, "http", target)
    if code not in ep.expect_status:
        if code is not None:
            text = f"answered HTTP {code} (expected {', '.join(map(str, ep.expect_status))})"
        elif isinstance(error, Timeout):
            text = f"no answer within {ep.timeout_s:g} s"
        elif isinstance(error, Unreachable):
            text = f"does not accept connections ({error})"
        else:
            text = f"broken answer ({error})"
        metrics = {"http_up": 0.0, "latency_ms": ms} | ({"status_code": code} if code else {})
        return _row(where, "http_availability", start, text, Severity.P1, _ONE_DOWN, metrics)
    if ms > ep.max_latency_ms:
        # One probe's response time against the p95 bands: "Response time > 5s" is P1.
        severity, reason = severity_for_metric("p95_seconds", ms / 1000, rules)
        text = f"answered {code} in {ms:.0f} ms, slower than {ep.max_latency_ms:.0f} ms"
        metrics = {"latency_seconds": ms / 1000, "status_code": code}
        severity, reason = severity or Severity.P2, reason or _SLOW
        return _row(where, "http_latency", start, text, severity, reason, metrics)
    return _row(where, "http", start, f"answered {code} in {ms:.0f} ms", metrics={"latency_ms": ms})


def rate_availability(results: list[Result]) -> list[Result]:
    """HTTP-down rows at P0 when every endpoint of their service is down, else P1."""
    http: dict[str, list[Result]] = {}
    for r in results:
        if r.kind == "http":
            http.setdefault(r.service, []).append(r)
    dead = {s for s, rows in http.items() if all(r.check == "http_availability" for r in rows)}
    return [
        r.model_copy(
            update=(
                {"severity": Severity.P0, "reason": _ALL_DOWN}
                if r.service in dead
                else {"severity": Severity.P1, "reason": _ONE_DOWN}
            )
        )
        if r.check == "http_availability"
        else r
        for r in results
    ]


async def sweep_http(
    endpoints: Sequence[HttpEndpoint | tuple[str, HttpEndpoint]],
    concurrency: int = 50,
    client: httpx.AsyncClient | None = None,
    *,
    rules: Rules = DEFAULT_RULES,
    on_done: OnDone | None = None,
) -> list[Result]:
    """Probes every endpoint once, at most ``concurrency`` at a time, over one client.

    Items are endpoints or ``(service, endpoint)`` pairs; results come back in order.
    """
    owned = client is None
    shared = client or http_client(concurrency)

    async def one(item: HttpEndpoint | tuple[str, HttpEndpoint]) -> Result:
        service, ep = item if isinstance(item, tuple) else ("", item)
        result = await _probe(shared, service, ep, rules)
        if on_done is not None:
            on_done(1)
        return result

    try:
        results = await bounded([partial(one, i) for i in endpoints], concurrency)
    finally:
        if owned:
            await shared.aclose()
    return rate_availability(results)


# --- PostgreSQL ----------------------------------------------------------------------


async def check_postgres(service: str, target: PostgresTarget, rules: Rules) -> Result:
    """Reachability, then connection utilisation (checks/postgres.py), as one row."""
    start = time.perf_counter()
    where: Where = (service, "postgres", f"{target.name} {target.display}")
    async with PostgresReader(target) as db:
        try:
            reach = (await pg.reachability(db))[0]
            use = None if reach.status.is_problem else (await pg.connection_utilisation(db))[0]
        except _DOWN as exc:
            severity, reason = severity_for_metric("db_reachable", 0, rules)
            severity = severity or Severity.P0
            reason = reason or "database unreachable (seed 000 Part H: P0)"
            text = f"unreachable: {exc}"
            return _row(
                where, "postgres_reachability", start, text, severity, reason, {"db_reachable": 0}
            )
        except TargetError as exc:
            return _error(where, "postgres", start, exc)
    # No utilisation means the server refused us: every connection slot is taken.
    found, pct = (reach, 100.0) if use is None else (use, use.evidence.get("utilisation_pct", 0))
    problem = found.status.is_problem
    check, reason = ("postgres_connections", _POOL) if problem else ("postgres", "")
    metrics = {"db_reachable": 1.0, "db_connections_pct": float(pct)}
    return _row(where, check, start, found.summary, found.severity, reason, metrics, found.status)


async def postgres_batch(
    items: Sequence[tuple[str, PostgresTarget]], concurrency: int, rules: Rules, on_done: OnDone
) -> list[Result]:
    """Checks each distinct database once and reports it for every service that uses it."""
    users: dict[str, tuple[PostgresTarget, list[str]]] = {}
    for service, target in items:
        users.setdefault(target.dsn.get_secret_value(), (target, []))[1].append(service)

    async def one(target: PostgresTarget, services: list[str]) -> list[Result]:
        result = await check_postgres(services[0], target, rules)
        on_done(len(services))
        return [result.model_copy(update={"service": s}) for s in services]

    calls = [partial(one, t, s) for t, s in users.values()]
    return [r for batch in await bounded(calls, concurrency) for r in batch]


# --- queues --------------------------------------------------------------------------


async def check_queue(service: str, target: QueueTarget, rules: Rules) -> Result:
    """Depth of a RabbitMQ or Redis queue against the backlog rule."""
    start = time.perf_counter()
    where: Where = (service, "queue", target.label)
    extra: dict[str, float] = {}
    try:
        if isinstance(target, RabbitTarget):
            async with RabbitReader(target) as broker:
                depth, consumers = await broker.queue_counts(target.queue)
            extra = {"consumers": float(consumers)}
        else:
            async with RedisQueueReader(target) as reader:
                depth = await reader.depth()
    except _DOWN as exc:
        text = f"queue broker unreachable: {exc}"
        return _row(where, "queue_reachability", start, text, Severity.P1, _BROKER_DOWN)
    except TargetError as exc:
        return _error(where, "queue", start, exc)
    severity, reason = severity_for_metric("queue_depth", depth, rules)
    check = "queue_depth" if severity else "queue"
    metrics = {"queue_depth": float(depth), **extra}
    return _row(where, check, start, f"{depth:,} messages waiting", severity, reason or "", metrics)


async def queue_batch(
    items: Sequence[tuple[str, QueueTarget]], concurrency: int, rules: Rules, on_done: OnDone
) -> list[Result]:
    """Reads the depth of every RabbitMQ and Redis queue."""

    async def one(service: str, target: QueueTarget) -> Result:
        result = await check_queue(service, target, rules)
        on_done(1)
        return result

    return await bounded([partial(one, s, t) for s, t in items], concurrency)


# --- Prometheus ----------------------------------------------------------------------


def signals(service: Service) -> list[tuple[str, str, str]]:
    """(check, metric, PromQL) per seed rule Prometheus can answer for this service."""
    q = PromQL.for_service(service)
    found = [
        ("error_rate", "error_rate", q.error_ratio()),
        ("p95_latency", "p95_seconds", q.quantile(0.95)),
    ]
    # No exporter-neutral default exists for database CPU: only a configured query counts.
    if service.promql.get("db_cpu"):
        found.append(("db_cpu", "db_cpu_pct", q.render("db_cpu")))
    return found


async def check_prometheus(
    service: Service, prom: PrometheusClient, rules: Rules, limit: asyncio.Semaphore
) -> list[Result]:
    """Error rate, p95 latency and (when configured) database CPU from Prometheus."""
    where: Where = (
        service.name,
        "prometheus",
        f"{prom.target.name} {PromQL.for_service(service).selector}",
    )

    async def one(check: str, metric: str, promql: str) -> Result:
        start = time.perf_counter()
        try:
            async with limit:
                value = await current_value(prom, promql)
        except TargetError as exc:
            return _error(where, check, start, exc)
        if value is None:
            return _row(where, check, start, f"no data for {metric}", status=Status.UNKNOWN)
        severity, reason = severity_for_metric(metric, value, rules)
        text = f"{metric} = {value:.4g}"
        return _row(where, check, start, text, severity, reason or "", {metric: value})

    return list(await asyncio.gather(*(one(*s) for s in signals(service))))


async def prometheus_batch(
    services: Sequence[Service],
    concurrency: int,
    rules: Rules,
    on_done: OnDone,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Result]:
    """Evaluates the seeds' rules for every service, one client per distinct Prometheus."""
    limit = asyncio.Semaphore(concurrency)
    clients: dict[str, PrometheusClient] = {}

    async def one(service: Service) -> list[Result]:
        target = service.require("prometheus")
        # Same Prometheus, same credentials: one client (dumps mask secrets, so add them).
        secrets = [s.get_secret_value() for s in (target.bearer_token, target.password) if s]
        key = "\n".join([target.model_dump_json(), *secrets])
        if key not in clients:
            clients[key] = PrometheusClient(target, transport=transport)
        results = await check_prometheus(service, clients[key], rules, limit)
        on_done(len(results))
        return results

    try:
        batches = await asyncio.gather(*(one(s) for s in services))
    finally:
        for client in clients.values():
            await client.aclose()
    return [r for batch in batches for r in batch]
