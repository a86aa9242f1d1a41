"""HTTP health from Prometheus: error rate, latency, the worst endpoints, and what changed.

Seed 000 Part E Incidents 5 (high error rates) and 6 (performance degradation), Part H alert
rules; seed 003 playbooks "High Error Rate" and "Performance Degradation". Every check takes a
read-only :class:`PrometheusClient` and a :class:`PromQL` (the service's queries, overridable
through ``service.promql``) and returns Findings whose ``severity`` follows the seeds via
:func:`checks.severity.severity_for_metric`.

Templates in ``service.promql`` may use ``$selector`` (label matchers, default
``job="<service>"``), ``$window`` (the rate window), ``$by`` (grouping labels, may be empty)
and ``$by_le`` (``$by`` plus ``le``). Shapes checked against Prometheus 2.42
(https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile).
The PromQL and its verdict live in ``checks._promql``, the change timeline in
``checks._changes``; this module re-exports both.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from checks import postgres as pg
from checks._changes import DeployEvent, Rise, change_timeline, deploy_events, rise_start
from checks._helpers import finding
from checks._promql import DEFAULT_PROMQL, PromQL, Signal, current_value, judge, metrics_check
from checks.evidence.http import CapacityEvidence, ErrorRateEvidence, LatencyEvidence
from checks.findings import Finding, Severity, Status
from integrations.errors import TargetError
from integrations.http import async_client, request
from integrations.postgres import PostgresReader
from integrations.prometheus import PrometheusClient
from integrations.service import HttpEndpoint

__all__ = [
    "DEFAULT_PROMQL",
    "DeployEvent",
    "PromQL",
    "Rise",
    "Signal",
    "capacity",
    "change_timeline",
    "current_value",
    "deploy_events",
    "error_rate",
    "external_calls",
    "judge",
    "latency",
    "metrics_check",
    "rise_start",
    "slow_queries",
    "top_endpoints",
]


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _secs(x: float) -> str:
    return f"{x:.2f}s"


async def error_rate(
    prom: PrometheusClient, q: PromQL, *, warn: float, critical: float, target: str
) -> list[Finding]:
    """The share of 5xx answers over the rate window (seed 000 Part H: >10 % P0, 5-10 % P1)."""
    ratio = await current_value(prom, q.error_ratio())
    rps = await current_value(prom, q.render("http_requests"))
    evidence = ErrorRateEvidence(error_ratio=ratio, requests_per_s=rps, query=q.error_ratio())
    if ratio is None:
        why = "no requests in the window" if rps == 0 else "no http request series matched"
        return [
            finding(
                "error_rate",
                target,
                Status.UNKNOWN,
                f"cannot tell the error rate: {why} ({q.selector})",
                evidence,
            )
        ]
    status, severity = judge("error_rate", ratio, warn, critical)
    summary = (
        f"{_pct(ratio)} of requests fail (5xx) over {q.window_s:.0f}s at {rps or 0:.1f} req/s"
        + (f"; above the {_pct(warn)} threshold" if status.is_problem else "")
    )
    return [finding("error_rate", target, status, summary, evidence, severity)]


async def latency(
    prom: PrometheusClient, q: PromQL, *, warn_s: float, critical_s: float, target: str
) -> list[Finding]:
    """p50/p95/p99 over the rate window (seed 000 Incident 6: p95 > 2 s P2, > 5 s P1)."""
    p50, p95, p99 = await asyncio.gather(
        *(current_value(prom, q.quantile(x)) for x in (0.5, 0.95, 0.99))
    )
    evidence = LatencyEvidence(p50_s=p50, p95_s=p95, p99_s=p99, query=q.quantile(0.95))
    if p95 is None:
        return [
            finding(
                "latency",
                target,
                Status.UNKNOWN,
                f"cannot tell the latency: no request-duration histogram ({q.selector})",
                evidence,
            )
        ]
    status, severity = judge("p95_seconds", p95, warn_s, critical_s)
    summary = f"p95 {_secs(p95)}, p99 {_secs(p99 or p95)}, p50 {_secs(p50 or 0)}" + (
        f"; p95 above {warn_s:g}s" if status.is_problem else ""
    )
    return [finding("latency", target, status, summary, evidence, severity)]


async def top_endpoints(
    prom: PrometheusClient,
    q: PromQL,
    *,
    signal: Signal,
    label: str,
    warn: float,
    limit: int,
    target: str,
) -> list[Finding]:
    """The endpoints failing most (``error_ratio``) or slowest (``p95``); one above ``warn`` is
    an isolated feature problem (seed 000 Part H: P2)."""
    check = "top_failing_endpoints" if signal == "error_ratio" else "slowest_endpoints"
    # (name, the signal's value, the evidence row), worst first
    ranked: list[tuple[str, float, dict[str, Any]]]
    shown: Callable[[float], str]
    if signal == "error_ratio":
        ratio, errors, total = await asyncio.gather(
            prom.query(q.error_ratio(label)),
            prom.query(q.render("http_errors", label)),
            prom.query(q.render("http_requests", label)),
        )
        failing = [
            (name, value, errors.by(label).get(name, 0.0))
            for name, value in ratio.by(label).items()
            if math.isfinite(value)
        ]
        failing.sort(key=lambda r: (r[2], r[1]), reverse=True)
        ranked = [
            (
                name,
                value,
                {
                    label: name,
                    "error_ratio": value,
                    "errors_per_s": errs,
                    "requests_per_s": total.by(label).get(name),
                },
            )
            for name, value, errs in failing
        ]
        shown, over = _pct, _pct(warn)
    else:
        p95 = await prom.query(q.quantile(0.95, label))
        slow = [(n, v) for n, v in p95.by(label).items() if math.isfinite(v)]
        slow.sort(key=lambda r: r[1], reverse=True)
        ranked = [(n, v, {label: n, "p95_s": v}) for n, v in slow]
        shown, over = (lambda v: f"p95 {_secs(v)}"), _secs(warn)
    ranked = ranked[:limit]
    if not ranked:
        return [
            finding(
                check,
                target,
                Status.UNKNOWN,
                f"no per-endpoint data: nothing carries the label {label!r}",
                {"label": label},
            )
        ]
    bad = [r for r in ranked if r[1] >= warn]
    listed = ", ".join(f"{name} {shown(value)}" for name, value, _ in (bad or ranked)[:3])
    summary = (
        f"{len(bad)} endpoint(s) above {over}: {listed}"
        if bad
        else f"no endpoint above the threshold; worst: {listed}"
    )
    rows = [row for _, _, row in ranked]
    return [
        finding(
            check,
            target,
            Status.WARN if bad else Status.OK,
            summary,
            {"label": label, "endpoints": rows},
            Severity.P2 if bad else None,
        )
    ]


async def external_calls(endpoints: list[HttpEndpoint], *, transport: Any = None) -> list[Finding]:
    """Calls each configured endpoint once: status and latency (seed 000 Incident 6 step 4)."""

    async def probe(ep: HttpEndpoint) -> Finding:
        headers = {k: v.get_secret_value() for k, v in ep.headers.items()}
        began = time.perf_counter()
        code: int | None = None
        failure = ""
        async with async_client(timeout=ep.timeout_s, transport=transport) as client:
            try:
                code = (
                    await request(client, ep.method, ep.url, target=ep.name, headers=headers)
                ).status_code
            except TargetError as exc:
                code, failure = exc.status, str(exc)
        ms = (time.perf_counter() - began) * 1000
        evidence = {
            "url": ep.url,
            "status_code": code,
            "latency_ms": round(ms, 1),
            "max_latency_ms": ep.max_latency_ms,
        }
        if code not in ep.expect_status:
            summary = failure or f"{ep.url} answered {code}, expected {ep.expect_status}"
            return finding(
                "external_call", ep.name, Status.CRITICAL, summary, evidence, Severity.P2
            )
        slow = ms > ep.max_latency_ms
        summary = f"{ep.url} answered {code} in {ms:.0f} ms" + (
            f", slower than {ep.max_latency_ms:.0f} ms" if slow else ""
        )
        return finding(
            "external_call", ep.name, Status.WARN if slow else Status.OK, summary, evidence
        )

    return list(await asyncio.gather(*(probe(ep) for ep in endpoints)))


async def slow_queries(
    db: PostgresReader,
    prom: PrometheusClient,
    q: PromQL,
    *,
    slow_mean_ms: float,
    signal: Signal,
    threshold: float,
) -> list[Finding]:
    """pg_stat_statements' heaviest statements; slow ones only count while the symptom lasts.

    pg_stat_statements accumulates since its last reset, so it cannot show a recovery: once
    the error rate or latency is back under its threshold the warning turns informational.
    """
    findings = await pg.top_statements(db, slow_mean_ms=slow_mean_ms)
    try:
        now = await current_value(prom, q.signal(signal))
    except TargetError:
        return findings
    if now is not None and now >= threshold:
        return findings
    return [
        f.model_copy(
            update={
                "status": Status.OK,
                "severity": None,
                "summary": f"{f.summary} (the service is within target now)",
            }
        )
        if f.status.is_problem
        else f
        for f in findings
    ]


async def capacity(*, kube: Any = None, docker: Any = None, target: str) -> list[Finding]:
    """How many replicas run now, for a scale-out plan (Kubernetes deployment or compose)."""
    if kube is not None:
        dep = await asyncio.to_thread(kube.deployment)
        evidence = CapacityEvidence(
            mechanism="kubernetes",
            name=dep.name,
            namespace=dep.namespace,
            replicas=dep.desired,
            ready=dep.ready,
        )
        name = f"deployment {dep.namespace}/{dep.name}"
    else:
        members = await asyncio.to_thread(docker.service_containers)
        running = sum(c.running for c in members)
        t = docker.target
        evidence = CapacityEvidence(
            mechanism="docker",
            project=t.compose_project,
            service=t.compose_service,
            replicas=running,
            ready=running,
        )
        name = f"compose service {t.compose_project}/{t.compose_service}"
    short = evidence.ready < evidence.replicas
    summary = f"{name}: {evidence.ready} of {evidence.replicas} replicas ready"
    return [finding("capacity", target, Status.WARN if short else Status.OK, summary, evidence)]
