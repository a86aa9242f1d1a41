"""Memory diagnostics: leak, spike or flat; usage against the limit; OOM kills; the deploy.

Seed 000 Part E Incident 4 ("Check if memory grows over time — consistent growth? Leak
possible. Sudden jump? Unexpected load"; "Alert on memory > 80% max") and Part H. The memory
series comes from Prometheus (``service.promql["memory_bytes"]``, else the pods'
``container_memory_working_set_bytes`` when the service runs on Kubernetes, else
``process_resident_memory_bytes``); the limit from ``service.promql["memory_limit_bytes"]``,
else the container runtime that enforces it (Kubernetes, Docker), else the app's own
``app_memory_limit_bytes``. The trend maths is :func:`checks.trend.classify_memory`; reading
the series and the limit is ``checks._memory_series``, re-exported here.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from checks._changes import deploy_events, matching_deploy
from checks._helpers import clock_utc, finding
from checks._memory_series import (
    MemoryQueries,
    MiB,
    SeriesVerdict,
    Window,
    analyse,
    began_inside,
    growth_start,
    memory_limit,
    memory_now,
    series_name,
)
from checks.evidence.memory import (
    AfterRestartEvidence,
    ContainerRuntime,
    DeployCorrelationEvidence,
    KubeRuntime,
    MemoryEvidence,
    MemoryTrendEvidence,
    PodRuntime,
    RestartsEvidence,
)
from checks.findings import Finding, Severity, Status
from checks.trend import Point, Trend, TrendKind
from integrations.prometheus import PrometheusClient

__all__ = [
    "MemoryQueries",
    "SeriesVerdict",
    "Window",
    "analyse",
    "began_inside",
    "deploy_correlation",
    "growth_start",
    "memory_after_restart",
    "memory_limit",
    "memory_reset",
    "memory_trend",
    "memory_usage",
    "restarts",
]


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value / MiB:.1f} MiB"


def _none_found(check: str, target: str, promql: str) -> list[Finding]:
    text = f"no memory series found ({promql}); set service.promql['memory_bytes']"
    return [finding(check, target, Status.UNKNOWN, text, MemoryEvidence(query=promql))]


def _judge_trend(
    t: Trend, due: float | None, horizon_s: float, limited: bool
) -> tuple[Status, Severity | None, str]:
    if t.kind is TrendKind.LEAK:
        soon = due is not None and due <= horizon_s
        text = f"memory leak suspected: {t.reason}" + ("" if limited else "; no limit known")
        return (Status.CRITICAL, Severity.P1, text) if soon else (Status.WARN, Severity.P2, text)
    if t.kind is TrendKind.SPIKE:
        text = f"a spike, not a leak: {t.reason}; look at the load or a deploy at that time"
        return Status.WARN, None, text
    if t.kind is TrendKind.FLAT:
        return Status.OK, None, f"memory is {t.reason}"
    return Status.UNKNOWN, None, f"memory trend unclear: {t.reason}"


async def memory_trend(
    prom: PrometheusClient,
    q: MemoryQueries,
    w: Window,
    *,
    horizon_s: float,
    target: str,
    kube: Any = None,
    docker: Any = None,
) -> list[Finding]:
    """Leak, spike or flat per series, with its curve; a leak due within ``horizon_s`` is P1."""
    limit, source = await memory_limit(prom, q, kube=kube, docker=docker)
    promql, series = await analyse(prom, q, w, limit)
    if not series:
        return _none_found("memory_trend", target, promql)
    findings = []
    for v in series:
        t, fit, due = v.trend, v.trend.fit, v.trend.seconds_to_limit
        evidence = MemoryTrendEvidence(
            kind=str(t.kind),
            reason=t.reason,
            sparkline=t.sparkline,
            query=promql,
            series=v.name,
            current_bytes=v.current,
            baseline_bytes=v.baseline,
            limit_bytes=limit,
            limit_source=source,
            seconds_to_limit=due,
            slope_bytes_per_s=fit.slope if fit else None,
            r2=fit.r2 if fit else None,
            growth_start=v.growth_start,
            event_at=v.event_at,
            points=len(v.points),
        )
        status, severity, text = _judge_trend(t, due, horizon_s, limit is not None)
        summary = f"{text} (now {_mib(v.current)})"
        findings.append(finding("memory_trend", v.name, status, summary, evidence, severity))
    return findings


async def memory_usage(
    prom: PrometheusClient,
    q: MemoryQueries,
    *,
    warn_pct: float,
    critical_pct: float,
    target: str,
    kube: Any = None,
    docker: Any = None,
) -> list[Finding]:
    """Memory now against the limit (seed 000 Incident 4: alert above 80 %)."""
    limit, source = await memory_limit(prom, q, kube=kube, docker=docker)
    promql, current = await memory_now(prom, q)
    if not current:
        return _none_found("memory_usage", target, promql)
    findings = []
    for name, value in current.items():
        evidence = MemoryEvidence(
            current_bytes=value, limit_bytes=limit, limit_source=source, query=promql, series=name
        )
        if not limit:
            text = f"{_mib(value)} in use; no memory limit known (runtime, app or promql)"
            findings.append(finding("memory_usage", name, Status.UNKNOWN, text, evidence))
            continue
        pct = 100.0 * value / limit
        evidence.percent = round(pct, 1)
        status, severity = Status.OK, None
        if pct >= critical_pct:
            status, severity = Status.CRITICAL, Severity.P1
        elif pct >= warn_pct:
            status, severity = Status.WARN, Severity.P2
        text = f"{_mib(value)} of {_mib(limit)} ({pct:.0f} % of the {source} limit)"
        findings.append(finding("memory_usage", name, status, text, evidence, severity))
    return findings


async def deploy_correlation(
    prom: PrometheusClient,
    q: MemoryQueries,
    w: Window,
    *,
    window_s: float,
    target: str,
    revisions: list[Any] | None = None,
) -> list[Finding]:
    """Which deploy, if any, started the growth or came just before the jump."""
    _, series = await analyse(prom, q, w, None)
    moving = [v for v in series if v.trend.kind in (TrendKind.LEAK, TrendKind.SPIKE)]
    if not moving:
        nothing = DeployCorrelationEvidence()
        return [
            finding(
                "deploy_correlation", target, Status.OK, "no growth or jump to explain", nothing
            )
        ]
    first = min(moving, key=lambda v: v.event_at or 0)
    what = "growth" if first.trend.kind is TrendKind.LEAK else "the jump"
    if first.event_at is None:
        text = f"steady growth began before the {w.lookback_s:.0f}s window; widen lookback_seconds"
        evidence = DeployCorrelationEvidence(series=first.name)
        return [finding("deploy_correlation", target, Status.UNKNOWN, text, evidence)]
    end = time.time()
    events = await deploy_events(prom, q.deploys, end - w.lookback_s, end, w.step_s, revisions)
    deploy = matching_deploy(events, first.event_at, window_s, w.step_s)
    evidence = DeployCorrelationEvidence(
        series=first.name, event_at=first.event_at, kind=str(first.trend.kind), deploys=events[-5:]
    )
    if deploy is None:
        text = (
            f"{what} began at {clock_utc(first.event_at)}; no deploy in the {window_s:.0f}s before"
        )
        return [finding("deploy_correlation", target, Status.OK, text, evidence)]
    evidence.deploy = deploy
    text = (
        f"{what} began at {clock_utc(first.event_at)}, {deploy.after(first.event_at)}:"
        " roll back with the rollback runbook"
    )
    return [finding("deploy_correlation", target, Status.WARN, text, evidence)]


async def restarts(
    *,
    kube: Any = None,
    docker: Any = None,
    prom: PrometheusClient | None = None,
    query: str | None = None,
    since: float | None = None,
    target: str,
) -> list[Finding]:
    """Restarts and OOM kills from Kubernetes, Docker or a configured PromQL; OOM kills are P1
    (the service is degraded). With ``since``, only kills after that time count."""
    evidence = RestartsEvidence()
    oom: list[str] = []
    count = 0
    if kube is not None:
        dep, pods = await asyncio.gather(
            asyncio.to_thread(kube.deployment), asyncio.to_thread(kube.pods)
        )
        name = kube.target.container
        spec = next((c for c in dep.containers if c.name == name), None) or dep.containers[0]
        rows = []
        for pod in pods:
            for c in pod.containers:
                recent = since is None or (
                    c.last_terminated_at is not None and c.last_terminated_at.timestamp() >= since
                )
                if c.oom_killed and recent:
                    oom.append(pod.name)
                count += c.restart_count if since is None else 0
            rows.append(
                PodRuntime(
                    pod=pod.name,
                    restarts=pod.restarts,
                    ready=pod.ready,
                    oom_killed=any(c.oom_killed for c in pod.containers),
                )
            )
        evidence.kubernetes = KubeRuntime(
            deployment=dep.name,
            namespace=dep.namespace,
            container=spec.name,
            memory_limit=spec.limits.get("memory"),
            memory_request=spec.requests.get("memory"),
            replicas=dep.desired,
            pods=rows,
        )
    if docker is not None:
        infos = await asyncio.to_thread(docker.containers)
        for c in infos:
            recent = since is None or (
                c.finished_at is not None and c.finished_at.timestamp() >= since
            )
            if c.oom_killed and recent:
                oom.append(c.name)
            count += c.restart_count if since is None else 0
        evidence.docker = [
            ContainerRuntime(
                name=c.name,
                status=c.status,
                restarts=c.restart_count,
                oom_killed=c.oom_killed,
                memory_limit=c.memory_limit,
            )
            for c in infos
        ]
    if prom is not None and query and since is None:
        value = [s.value for s in (await prom.query(query)).samples if math.isfinite(s.value)]
        count += int(sum(value))
        evidence.restarts_query = {"query": query, "value": sum(value)}
    evidence.oom_killed, evidence.restarts = oom, count
    if oom:
        text = f"{len(oom)} OOM kill(s): {', '.join(oom[:5])}; the service is degraded"
        return [finding("restarts", target, Status.CRITICAL, text, evidence, Severity.P1)]
    if count:
        return [
            finding(
                "restarts",
                target,
                Status.WARN,
                f"{count} restart(s), none OOM-killed",
                evidence,
                Severity.P2,
            )
        ]
    text = "no OOM kill since the restart" if since else "no restarts or OOM kills"
    return [finding("restarts", target, Status.OK, text, evidence)]


async def memory_reset(
    prom: PrometheusClient,
    q: MemoryQueries,
    *,
    before: float,
    baseline: float,
    since: float,
    step_s: float,
    target: str,
) -> list[Finding]:
    """Whether memory went back towards its baseline after a restart (seed 000: "Memory resets
    to baseline"): the lowest value since then gave back at least half of the growth."""
    seconds = max(2 * step_s, math.ceil(time.time() - since) + step_s)
    evidence: dict[str, Any] = {"before_bytes": before, "baseline_bytes": baseline}
    found: list[float] = []
    for promql in q.memory:
        expr = f"min(min_over_time(({promql})[{seconds:.0f}s:{step_s:g}s]))"
        found = [s.value for s in (await prom.query(expr)).samples if math.isfinite(s.value)]
        evidence["query"] = expr
        if found:
            break
    if not found:
        return [
            finding(
                "memory_reset",
                target,
                Status.UNKNOWN,
                "no memory series since the restart",
                evidence,
            )
        ]
    low = found[0]
    goal = baseline + 0.5 * (before - baseline) if before > baseline else 0.9 * before
    evidence.update(lowest_bytes=low, goal_bytes=goal)
    if low <= goal:
        text = f"memory went back to {_mib(low)} (from {_mib(before)}; baseline {_mib(baseline)})"
        return [finding("memory_reset", target, Status.OK, text, evidence)]
    text = f"memory has not gone back: lowest {_mib(low)} since the restart, {_mib(before)} before"
    return [finding("memory_reset", target, Status.WARN, text, evidence)]


def _after_drop(points: list[Point], min_growth: float) -> list[Point]:
    """The points after the restart's drop (the largest fall, if it is a real one)."""
    steps = [b[1] - a[1] for a, b in zip(points, points[1:], strict=False)]
    if not steps:
        return points
    i = min(range(len(steps)), key=steps.__getitem__)
    level = max(abs(v) for _, v in points) or 1.0
    return points[i + 1 :] if steps[i] < -min_growth * level else points


async def memory_after_restart(
    prom: PrometheusClient,
    q: MemoryQueries,
    w: Window,
    *,
    since: float,
    target: str,
    leak_slope: float | None = None,
) -> list[Finding]:
    """Whether memory still grows after the restart at ``since`` (issue: a restart resets
    memory, not the leak). The samples after the restart's drop are fitted per series: a leak
    (or a slope at least half the ``leak_slope`` diagnosed before) that goes on is the cause
    still at work — warn; flat is ok; too few samples or no clear shape is unknown."""
    end = time.time()
    start = min(since, end - w.step_s)
    found, promql = [], q.memory[-1]
    for promql in q.memory:
        found = [s for s in await prom.query_range(promql, start, end, w.step_s) if s.points]
        if found:
            break
    if not found:
        return _none_found("memory_after_restart", target, promql)
    findings = []
    for series in sorted(found, key=lambda s: s.last or 0, reverse=True)[: w.max_series]:
        tail = _after_drop([(t, v) for t, v in series.points if math.isfinite(v)], w.min_growth)
        t = w.classify(tail, None)
        fit = t.fit
        rate = f"{(fit.slope if fit else 0) * 60 / MiB:+.1f} MiB/min"
        same = bool(leak_slope and fit and fit.slope >= 0.5 * leak_slope and fit.r2 >= w.min_r2)
        evidence = AfterRestartEvidence(
            kind=str(t.kind),
            reason=t.reason,
            slope_bytes_per_s=fit.slope if fit else None,
            r2=fit.r2 if fit else None,
            points=len(tail),
            since=since,
            leak_slope_bytes_per_s=leak_slope,
            sparkline=t.sparkline,
            query=promql,
        )
        name = series_name(series.labels)
        if t.kind is TrendKind.LEAK or same:
            text = f"leak persists: memory grows {rate} since the restart ({t.reason})"
            status = Status.WARN
        elif t.kind is TrendKind.FLAT:
            text, status = f"memory is flat since the restart ({t.reason})", Status.OK
        else:
            text, status = (
                f"no clear memory trend since the restart yet: {t.reason}",
                Status.UNKNOWN,
            )
        findings.append(finding("memory_after_restart", name, status, text, evidence, None))
    return findings
